#!/usr/bin/env bash
# hw2 on one CUDA GPU with no network, within a time budget: a pre-flight of every step's imports,
# the CIFAR-10 stand-in written into data/, the GPU tests, a resume check (benchmarks/resume_check.py),
# `python -m hw2.bench` for ResNet-20 (compiled), He et al.'s full 182-epoch ResNet-20 recipe (`python -m hw2
# train` with the default flags but --modeldir, --device and --compile) and its `python -m hw2 test`
# accuracy, a summary; then, in the time the steps before left, the ResNet-110 bench and the CPU unit tests
# on this machine's torch, and the summary again.
#
#   bash benchmarks/prepare_gpu_carry.sh           # here first: .shared-data/ (the data's source, the commit)
#   bash benchmarks/gpu.sh OUT                     # on the GPU machine, with .shared-data/ beside the repo
#   bash benchmarks/gpu.sh --dry-run [OUT]         # on a CPU: the same steps on toy sizes, limits doubled
#
# What the GPU machine needs: python3 with a CUDA build of torch (used as it is: never installed here),
# numpy, matplotlib, tqdm, pytest, pillow; wheels in .whl/ (prepare_gpu_carry.sh NAME==VERSION fetches them)
# are installed into /tmp/site by the pre-flight.
#
# Time (printed first): of the budget (HW2_GPU_BUDGET seconds, 560 by default), the recipe, its test and the
# summary are sure of their limits (300, 20 and 15 s), each plus the $grace s that `timeout -k` may add; the
# steps before them share the rest (210 s), in order, each at most its own limit and cut to what is left of
# the share; the extras run in what is left at the end, always leaving the summary's. So nothing runs past
# the budget, and the recipe starts with its 300 s whatever the steps before it do. At its limit a step is
# stopped with SIGTERM (SIGINT for pytest, which then prints what passed; hw2 train answers either with a
# checkpoint, so the recipe's accuracy is tested even when it runs out of time) and killed $grace s later.
#
# OUT gets 7 files, each as soon as its step ends, so a run cut short keeps what it finished: gpu.log
# (everything printed, as it goes), bench_resnet20.json, resume.json, metrics.csv and the newest checkpoint
# of the recipe, summary.json, bench_resnet110.json.
set -uo pipefail  # no -e: a failed step is recorded in summary.json and the next step still runs

dry_run=0
if [ "${1:-}" = --dry-run ]; then
  dry_run=1
  shift
fi
out=${1:-reports/gpu}
((dry_run)) && out=${1:-/tmp/hw2_gpu_dry_run}  # never over the real results
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:/tmp/site" PYTHONUNBUFFERED=1  # /tmp/site: carried wheels
export TQDM_MININTERVAL=30  # a progress line every 30 s, not thousands in the log
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
modeldir=$scratch/r20_he

# The plan: steps and their limits in seconds, in the order they run (0: whatever is left).
first=(preflight 30 data 40 gpu_tests 90 resume 50 bench_resnet20 60)  # sharing what the sure steps leave
sure=(recipe 300 test 20 summary 15)
extras=(bench_resnet110 30 cpu_tests 0)
budget=${HW2_GPU_BUDGET:-560} grace=5 scale=1
gpu_tests=(tests/test_cuda.py)
cpu_tests=(tests/test_bench.py tests/test_runtime.py tests/test_augment.py tests/test_evaluate.py tests/test_train.py
           tests/test_checkpoint.py tests/test_distributed.py tests/test_data.py tests/test_models.py tests/test_conftest.py)
if ((dry_run)); then
  device=cpu scale=2  # toy sizes on a shared CPU take about as long as the full ones on the GPU
  # one thread a process: on busy cores torch's threads wait for each other (`hw2 test` of a ResNet-8 took
  # 74 s with 2 threads and 13 s with 1 on 2 cores under a load of 10)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  preflight_flags=(--dry-run)
  data=$scratch/data  # always written, to try make_cifar10.py too
  compile=()
  bench_flags=(--batch_size 16 --steps 1 --eval_images 64 --ref_eval_images 4 --windows 1)
  bench20=(--resnet_size 1 "${bench_flags[@]}") bench110=(--resnet_size 2 "${bench_flags[@]}")
  resume_flags=(--resnet_size 1 --first_num_filters 8 --train_subset 400 --batch_size 50 --valid_size 100
                --epochs 3 --lr_milestones 2 --save_interval 1)
  recipe_flags=(--resnet_size 1 --first_num_filters 8 --train_subset 1000 --valid_size 500 --epochs 2
                --lr_milestones 1 --save_interval 1)
  cpu_tests_run=(tests/test_runtime.py tests/test_conftest.py)  # the pre-flight still collects them all
else
  device=cuda
  preflight_flags=()
  data=data
  compile=(--compile)  # dropped for the recipe if the compiled bench fails
  bench20=(--resnet_size 3 --steps 50 --eval_images 10000 --windows 5)  # its compile warms the recipe's
  bench110=(--resnet_size 18 --steps 20 --eval_images 5000 --windows 3)
  resume_flags=(--train_subset 10000 --epochs 3 --lr_milestones 2 --save_interval 1)
  recipe_flags=()
  cpu_tests_run=("${cpu_tests[@]}")
fi

declare -A limit
shown=() sure_total=0
budget=$((budget * scale))
for list in first sure extras; do
  declare -n steps=$list
  shown+=("$list:")
  for ((i = 0; i < ${#steps[@]}; i += 2)); do
    limit[${steps[i]}]=$((steps[i + 1] * scale))
    shown+=("${steps[i]} ${limit[${steps[i]}]}")
    [ $list = sure ] && sure_total=$((sure_total + limit[${steps[i]}] + grace))
  done
done
share=$((budget - sure_total))  # the first steps', grace included

# step NAME [--stdout FILE] COMMAND...: run COMMAND for at most ${limit[NAME]} s (0: all the time left), and
# where $end is set, cut so as to be over, grace included, by then (in $SECONDS); stopped with $signal
# (default TERM) and killed $grace s later; skipped if under 10 s are left. Its limit, exit status (124:
# out of time) and seconds go to steps.jsonl.
end=0
step() {
  local name=$1 stdout=/dev/stdout seconds=${limit[$1]}
  shift
  if [ "$1" = --stdout ]; then
    stdout=$2
    shift 2
  fi
  local left=$((end - grace - SECONDS))
  ((end && (seconds == 0 || seconds > left))) && seconds=$left
  if ((seconds < 10)); then
    echo "== $name: skipped, out of time"
    echo "{\"step\": \"$name\", \"limit\": $seconds, \"exit\": null, \"seconds\": 0}" >> "$scratch/steps.jsonl"
    return 1
  fi
  echo "== $name (at most $seconds s, $((deadline - SECONDS)) s of the budget left): $*"
  local started=$SECONDS status
  timeout -s "${signal:-TERM}" -k "$grace" "$seconds" "$@" > "$stdout"
  status=$?
  echo "== $name: exit $status after $((SECONDS - started)) s"
  echo "{\"step\": \"$name\", \"limit\": $seconds, \"exit\": $status, \"seconds\": $((SECONDS - started))}" >> "$scratch/steps.jsonl"
  return $status
}

# The recipe's metrics.csv and newest checkpoint into OUT at once, so that no later step can lose them.
keep_recipe() {
  local newest
  newest=$(ls -t "$modeldir"/model-*.ckpt 2> /dev/null | head -n 1)
  [ -f "$modeldir/metrics.csv" ] && cp "$modeldir/metrics.csv" "$out/"
  [ -n "$newest" ] && cp "$newest" "$out/" && echo "kept metrics.csv and $(basename "$newest") in $out"
}

summary() {
  step summary python3 benchmarks/gpu_summary.py "$out" "$scratch/steps.jsonl" "$modeldir" "$scratch/test.txt" \
    "$data" .shared-data
}

run() {
  deadline=$((SECONDS + budget))
  local commit=unknown
  [ -f .shared-data/commit.txt ] && commit=$(head -n 1 .shared-data/commit.txt)
  echo "hw2 on a GPU: $(date -u +%FT%TZ), commit $commit (benchmarks/prepare_gpu_carry.sh), dry run $dry_run"
  echo "time plan, limits in s (0: what is left): ${shown[*]}; each + $grace s grace. Budget $budget s =" \
       "sure steps $sure_total s (limits and grace) + the first steps' share $share s; the extras only in what" \
       "the others left, keeping the summary's"
  if ((share < limit[preflight] + grace)); then
    echo "the budget leaves the first steps too little: lower a sure step's limit"
    return 1
  fi
  end=$((SECONDS + share))

  step preflight python3 benchmarks/gpu_preflight.py --device "$device" --data_dir "$data" \
    "${preflight_flags[@]}" "${gpu_tests[@]}" "${cpu_tests[@]}" || return 1
  if [ ! -f "$data/cifar-10-batches-py/test_batch" ]; then
    step data python3 .shared-data/make_cifar10.py "$data" || return 1
  fi
  signal=INT step gpu_tests python3 -m pytest -q -rs -o addopts= -p no:cacheprovider "${gpu_tests[@]}"
  step resume python3 benchmarks/resume_check.py "$out/resume.json" --data_dir "$data" --device "$device" "${resume_flags[@]}"
  if ! step bench_resnet20 --stdout "$out/bench_resnet20.json" \
      python3 -m hw2.bench --device "$device" --data_dir "$data" "${bench20[@]}" "${compile[@]}" && ((${#compile[@]})); then
    echo "the compiled bench failed: the recipe runs without --compile"
    compile=()
  fi

  end=0  # the sure steps: their limits fit, by the plan
  step recipe python3 -m hw2 train --modeldir "$modeldir" --device "$device" --data_dir "$data" "${recipe_flags[@]}" \
    "${compile[@]}"
  keep_recipe
  step test --stdout "$scratch/test.txt" python3 -m hw2 test --modeldir "$modeldir" --device "$device" --data_dir "$data"
  cat "$scratch/test.txt"
  summary

  # The extras, in the time left, always leaving the summary's
  end=$((deadline - limit[summary] - grace))
  if ((end - grace - SECONDS >= limit[bench_resnet110])); then
    step bench_resnet110 --stdout "$out/bench_resnet110.json" \
      python3 -m hw2.bench --device "$device" --data_dir "$data" "${bench110[@]}"
  else
    echo "== bench_resnet110: skipped, under ${limit[bench_resnet110]} s left"
  fi
  local xdist=() workers
  workers=$(nproc)
  ((workers > 8)) && workers=8
  python3 -c "import xdist" 2> /dev/null && ((workers > 1)) && xdist=(-n "$workers")
  if ((end - grace - SECONDS >= 30)); then
    signal=INT step cpu_tests python3 -m pytest -q -o addopts= -p no:cacheprovider "${xdist[@]}" "${cpu_tests_run[@]}"
  else
    echo "== cpu_tests: skipped, under 30 s left"
  fi
  end=0
  summary
}

run 2>&1 | tee "$out/gpu.log"
exit "${PIPESTATUS[0]}"
