#!/usr/bin/env bash
# hw2 on one CUDA GPU (written for one H100 with no internet): `python -m hw2.bench` for ResNet-20 and
# ResNet-110, then one timed training epoch of each; JSON files in OUT (default reports/gpu).
# Not yet run on a GPU: none was available when it was written.
#
#   bash benchmarks/gpu.sh [OUT [more bench flags, e.g. --compile]]
#
# Wheels in .whl/ (torch's CUDA build with its dependencies, numpy, tqdm), if any, are installed without
# internet into a temporary virtual environment; otherwise python3 on PATH must have a CUDA build of torch.
# The epochs need CIFAR-10 in data/: made from ../shared/data when that is there, else downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/gpu}
bench_flags=("${@:2}")
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m venv "$scratch/venv"
  "$scratch/venv/bin/pip" install -q --no-index --find-links .whl torch numpy tqdm
  export PATH="$scratch/venv/bin:$PATH"
fi
python3 -c 'import sys, torch; torch.cuda.is_available() or sys.exit(f"no CUDA GPU visible to torch {torch.__version__}")'

for size in 3 18; do  # ResNet-20, ResNet-110
  python3 -m hw2.bench --device cuda --resnet_size "$size" --steps 50 --eval_images 10000 --windows 7 \
    "${bench_flags[@]}" > "$out/bench_resnet$((6 * size + 2)).json"
done

if [ ! -f data/cifar-10-batches-py/test_batch ] && [ -f ../shared/data/make_cifar10.py ]; then
  python3 ../shared/data/make_cifar10.py data  # the offline stand-in; needs pillow
fi
for size in 3 18; do
  start=$(date +%s.%N)
  python3 -m hw2 train --device cuda --resnet_size "$size" --epochs 1 --modeldir "$scratch/model$size"
  python3 - "$scratch/model$size/metrics.csv" "$start" "$(date +%s.%N)" "$size" > "$out/epoch_resnet$((6 * size + 2)).json" <<'PY'
import csv, json, sys, torch
metrics, start, end, size = sys.argv[1:]
row = list(csv.DictReader(open(metrics)))[-1]
print(json.dumps({"model": f"ResNet-{6 * int(size) + 2} (version 1, resnet_size {size})", "gpu": torch.cuda.get_device_name(),
                  "torch": torch.__version__, "recipe": "he (batch 128, 45,000 training images, validation on 5,000)",
                  "epoch_seconds": float(row["seconds"]), "wall_seconds": float(end) - float(start),
                  "train_loss": float(row["train_loss"]), "valid_acc": float(row["valid_acc"])}, indent=2))
PY
done
echo "wrote $(ls "$out")"
