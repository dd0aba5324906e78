#!/usr/bin/env bash
# hw2 on one CUDA GPU with no network, in one call of under 10 minutes: write the CIFAR-10 stand-in into
# data/, run the GPU tests, `python -m hw2.bench` for ResNet-20 (compiled) and ResNet-110, a resume check
# (benchmarks/resume_check.py), He et al.'s full 182-epoch ResNet-20 recipe (`python -m hw2 train` with the
# default flags but --modeldir, --device and --compile) and its `python -m hw2 test` accuracy, then, in
# whatever time is left, the CPU unit tests that exercise the same code on this machine's torch.
#
#   bash benchmarks/gpu.sh [OUT]              # on the GPU machine; OUT defaults to reports/gpu
#   bash benchmarks/gpu.sh --dry-run [OUT]    # on a CPU: the same steps on toy sizes, to try the script
#
# What the GPU machine needs: python3 with a CUDA build of torch (used as it is: never installed here),
# numpy, tqdm, pytest, and pillow when data/ must be written; the stand-in's files in .shared-data/
# (benchmarks/prepare_gpu_carry.sh copies them from ../shared/data) unless data/ already holds CIFAR-10.
# Wheels in .whl/ (prepare_gpu_carry.sh NAME==VERSION fetches them) are installed without network into
# /tmp/site first. Each step runs under `timeout`; the steps before the recipe are cut short so that the
# recipe and its test keep 270 s, and a recipe that runs out of time is stopped with SIGTERM, which hw2
# answers with a checkpoint, so its accuracy is still tested. HW2_GPU_BUDGET (seconds, default 560) is
# the whole script's; give the device call's timeout_s 600.
#
# OUT receives 7 files (a device call returns at most 8): gpu.log (everything printed), bench_resnet20.json,
# bench_resnet110.json, resume.json, metrics.csv and the newest checkpoint of the recipe, summary.json.
set -uo pipefail  # no -e: a failed step is recorded in summary.json and the next step still runs

dry_run=0
if [ "${1:-}" = --dry-run ]; then
  dry_run=1
  shift
fi
out=${1:-reports/gpu}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TQDM_MININTERVAL=30  # a progress line every 30 s, not thousands in the log
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

if ((dry_run)); then
  device=cpu budget=${HW2_GPU_BUDGET:-1200} recipe_seconds=240
  data=$scratch/data  # always written, to try make_cifar10.py too
  bench_flags=(--batch_size 16 --steps 1 --eval_images 64 --ref_eval_images 4 --windows 1)
  bench20=(--resnet_size 1 "${bench_flags[@]}") bench110=(--resnet_size 2 "${bench_flags[@]}")
  resume_flags=(--resnet_size 1 --first_num_filters 8 --train_subset 400 --batch_size 50 --valid_size 100
                --epochs 3 --lr_milestones 2 --save_interval 1)
  recipe_flags=(--resnet_size 1 --first_num_filters 8 --train_subset 1000 --valid_size 500 --epochs 2
                --lr_milestones 1 --save_interval 1)
  gpu_tests=(tests/test_cuda.py tests/test_bench.py) cpu_tests=(tests/test_runtime.py)
else
  device=cuda budget=${HW2_GPU_BUDGET:-560} recipe_seconds=270
  data=data
  bench20=(--resnet_size 3 --compile --steps 50 --eval_images 10000 --windows 7)  # its compile warms the recipe's
  bench110=(--resnet_size 18 --steps 20 --eval_images 10000 --windows 5)
  resume_flags=(--train_subset 10000 --epochs 3 --lr_milestones 2 --save_interval 1)
  recipe_flags=(--compile)
  gpu_tests=(tests/test_cuda.py tests/test_bench.py tests/test_runtime.py)
  cpu_tests=(tests/test_augment.py tests/test_evaluate.py tests/test_train.py tests/test_checkpoint.py
             tests/test_distributed.py tests/test_data.py tests/test_models.py)
fi
deadline=$((SECONDS + budget))
keep=0  # seconds the current step must leave for the steps after it

# step NAME LIMIT [--stdout FILE] COMMAND...: run COMMAND for at most LIMIT seconds (less if the deadline,
# minus $keep, comes first; skipped under 10), stopped with $signal (default TERM), then KILL 20 s later.
# Its exit status (124: out of time) and duration go to steps.jsonl for summary.json.
step() {
  local name=$1 limit=$2 stdout=/dev/stdout
  shift 2
  if [ "$1" = --stdout ]; then
    stdout=$2
    shift 2
  fi
  local left=$((deadline - keep - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    echo "== $name: skipped, out of time"
    echo "{\"step\": \"$name\", \"exit\": null, \"seconds\": 0}" >> "$scratch/steps.jsonl"
    return 1
  fi
  echo "== $name (at most ${limit} s, $((deadline - SECONDS)) s left): $*"
  local started=$SECONDS status
  timeout -s "${signal:-TERM}" -k 20 "$limit" "$@" > "$stdout"
  status=$?
  echo "== $name: exit $status after $((SECONDS - started)) s"
  echo "{\"step\": \"$name\", \"exit\": $status, \"seconds\": $((SECONDS - started))}" >> "$scratch/steps.jsonl"
  return $status
}

run() {
  echo "hw2 on a GPU: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), dry run $dry_run"
  if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "no nvidia-smi on this machine"; fi
  if compgen -G ".whl/*.whl" > /dev/null; then
    if ((dry_run)); then
      echo "dry run: would install $(ls .whl)"
    else
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
      export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
  fi
  python3 - "$device" "$data" <<'PY' || return 1
import importlib.util, sys
device, data = sys.argv[1:]
from pathlib import Path
needed = ["torch", "numpy", "tqdm", "pytest"] + ([] if (Path(data) / "cifar-10-batches-py/test_batch").exists() else ["PIL"])
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    names = " ".join("pillow" if m == "PIL" else m for m in missing)
    sys.exit(f"python3 lacks {names}: on a machine with internet run `bash benchmarks/prepare_gpu_carry.sh NAME==VERSION ...` "
             f"for each of them (the versions that machine's python3 -m pip show gives), and name .whl in the run's carry")
import numpy, torch, tqdm
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}, "
      f"tqdm {tqdm.__version__}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit(f"torch {torch.__version__} sees no CUDA GPU (built for CUDA {torch.version.cuda}; nvidia-smi above says "
                 "what the system sees): this script needs the machine's own CUDA build of torch")
    print(f"GPU: {torch.cuda.get_device_name()}, compute capability {torch.cuda.get_device_capability()}")
PY

  if [ ! -f "$data/cifar-10-batches-py/test_batch" ]; then
    if [ ! -f .shared-data/make_cifar10.py ]; then
      echo "no CIFAR-10 in $data and no .shared-data/: run bash benchmarks/prepare_gpu_carry.sh where ../shared/data is, and name .shared-data in the run's carry"
      return 1
    fi
    step data 90 python3 .shared-data/make_cifar10.py "$data" || return 1
  fi
  keep=$recipe_seconds
  signal=INT step gpu_tests 150 python3 -m pytest -q -rs -o addopts= -p no:cacheprovider "${gpu_tests[@]}"
  step bench_resnet20 150 --stdout "$out/bench_resnet20.json" \
    python3 -m hw2.bench --device "$device" --data_dir "$data" "${bench20[@]}"
  step bench_resnet110 90 --stdout "$out/bench_resnet110.json" \
    python3 -m hw2.bench --device "$device" --data_dir "$data" "${bench110[@]}"
  step resume 90 python3 benchmarks/resume_check.py "$out/resume.json" --data_dir "$data" --device "$device" "${resume_flags[@]}"

  keep=45  # the test of the recipe's checkpoint and the summary
  step recipe "$budget" python3 -m hw2 train --modeldir "$scratch/r20_he" --device "$device" --data_dir "$data" "${recipe_flags[@]}"
  keep=0
  step test 60 --stdout "$scratch/test.txt" python3 -m hw2 test --modeldir "$scratch/r20_he" --device "$device" --data_dir "$data"
  cat "$scratch/test.txt"

  local xdist=()
  python3 -c "import xdist" 2> /dev/null && xdist=(-n 8)
  keep=15  # for the summary
  if ((deadline - SECONDS > 90)); then
    signal=INT step cpu_tests 150 python3 -m pytest -q -o addopts= -p no:cacheprovider "${xdist[@]}" "${cpu_tests[@]}"
  else
    echo "== cpu_tests: skipped, under 90 s left"
  fi
  python3 benchmarks/gpu_summary.py "$out" "$scratch/steps.jsonl" "$scratch/r20_he" "$scratch/test.txt" "$data"
}

run 2>&1 | tee "$out/gpu.log"
exit "${PIPESTATUS[0]}"
