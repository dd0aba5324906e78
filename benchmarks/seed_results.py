"""reports/NAME/ for one recipe trained once per seed: results.json (hw2.runs.seed_results), the seeds'
curves overlaid, and each seed's run as reports/NAME/NAME_seed{N}/ (its config.json, resolved.json, metrics.csv,
test.csv and log.txt, without checkpoints), which `python -m hw2 runs` and notebooks/05_compare.ipynb read like any run.
Run it on the machine that trained the runs, after testing each run's last checkpoint with and without flip
TTA: it records this machine's processor.

    for d in runs/fast60_s0 runs/fast60_s1 runs/fast60_s2; do
        python -m hw2 test --modeldir $d --no-tta; python -m hw2 test --modeldir $d --tta; done
    python benchmarks/seed_results.py fast60 runs/fast60_s0 runs/fast60_s1 runs/fast60_s2
"""
import json
import shutil
import sys
from pathlib import Path

import torch

from hw2.errors import Hw2Error, flag_words, use_words
from hw2.modeldir import CONFIG, LOG, METRICS_FILE, RESOLVED, TESTS, read_metrics, read_resolved
from hw2.report import compare_curves
from hw2.runs import seed_results
from hw2.runtime import processor

name, *folders = sys.argv[1:]
use_words(flag_words)  # its errors name the flags of python -m hw2 test and train
try:
    results = seed_results(folders, name, processor(torch.device(read_resolved(folders[0])["device"])))
except Hw2Error as e:
    sys.exit(f"Error: {e}")
out = Path("reports") / name
out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
curves = {}
for seed, folder in zip(results["seeds"], folders):
    seed_dir = out / f"{name}_seed{seed}"
    seed_dir.mkdir(exist_ok=True)
    for file in (CONFIG, RESOLVED, METRICS_FILE, TESTS, LOG):
        if (Path(folder) / file).exists():  # runs older than resolved.json have none
            shutil.copyfile(Path(folder) / file, seed_dir / file)
    curves[f"seed {seed}"] = read_metrics(Path(folder) / METRICS_FILE)
compare_curves(curves, f"{name}: ResNet-20, CIFAR-10 (JPEG stand-in)").savefig(out / "training_curves.png", dpi=80)
for what in ("test_accuracy", "test_accuracy_tta", "valid_accuracy"):
    mean, std = results[what + "_mean"], results[what + "_std"]
    if mean is None:
        print(f"{what:18} - (no validation split)")
        continue
    print(f"{what:18} {100 * mean:.2f}%" + (f" +- {100 * std:.2f}" if std is not None else "")
          + "  seeds: " + " ".join(f"{100 * v:.2f}" for v in results[what]))
print(f"{len(folders)} seeds, {results['epochs']} epochs, {results['processor']}, {results['dtype']}; "
      f"written to {out}/")
