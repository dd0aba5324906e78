"""summary.json for benchmarks/gpu.sh: the source (commit, as benchmarks/prepare_gpu_carry.sh recorded
it in SOURCE_DIR), the machine, each step's limit, exit status and seconds, the benchmarks' main figures,
the resume check, and He et al.'s recipe (epochs, time, validation and test accuracy). Writes OUT/summary.json
and prints it.

    python3 benchmarks/gpu_summary.py OUT STEPS_JSONL RECIPE_MODELDIR TEST_OUTPUT DATA_DIR SOURCE_DIR
"""
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from hw2.checkpoint import Checkpoint
from hw2.data import BATCH_DIR, TEST_BATCH, data_label, md5sum
from hw2.modeldir import list_checkpoints
from hw2.runtime import cpu_name


def source(folder):
    """The commit the tree was prepared from, its uncommitted changes then, and the files that differ now
    from what was prepared (edited after prepare_gpu_carry.sh ran)."""
    folder = Path(folder)
    if not (folder / "commit.txt").exists():
        return {"missing": f"no {folder}/commit.txt: run benchmarks/prepare_gpu_carry.sh before the run"}
    commit, *status = (folder / "commit.txt").read_text().splitlines()
    prepared = [line.split("  ", 1) for line in (folder / "tree.md5").read_text().splitlines()]
    changed = [path for digest, path in prepared if not Path(path).is_file() or md5sum(path) != digest]
    return {"commit": commit, "uncommitted_when_prepared": status, "changed_since_prepared": changed}


def machine():
    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cpu": cpu_name(), "cpu_count": len(os.sched_getaffinity(0))}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10)
        info["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()
    return info


def bench(path):
    """The main figures of a `python -m hw2.bench` JSON."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"missing": f"{path.name}: {e}"}
    rates = report["img_per_s"]
    return {"file": path.name, "model": report["model"], "dtype": report["dtype"], "compile": report["compile"],
            "hw2_img_per_s": {task: round(rate) for task, rate in rates["hw2"].items()},
            "reference_img_per_s": {task: round(rate) for task, rate in rates["reference"].items()},
            "ratios": {name: round(ratio, 2) for name, ratio in report["ratios"].items()},
            "fold_batchnorm_seconds": report["fold_batchnorm_seconds"], "peak_memory_mib": report["peak_memory_mib"]}


def recipe(modeldir, test_output):
    """He et al.'s run: what it trained and its test accuracy."""
    checkpoints = list_checkpoints(modeldir)
    if not checkpoints:
        return {"missing": f"no checkpoint in {modeldir}"}
    with open(modeldir / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    seconds = [row["seconds"] for row in rows]
    tested = [line for line in test_output.splitlines() if line.startswith("Test accuracy: ")]
    return {"epochs": len(rows), "of_epochs": Checkpoint.load(checkpoints[-1]).config["epochs"],
            "newest_checkpoint": checkpoints[-1].name,
            "training_seconds": sum(seconds), "first_epoch_seconds": seconds[0] if seconds else None,
            "median_epoch_seconds": statistics.median(seconds) if seconds else None,
            "last_valid_acc": rows[-1]["valid_acc"] if rows else None,
            "best_valid_acc": max(row["valid_acc"] for row in rows) if rows else None,
            "test_accuracy": float(tested[-1].split(": ")[1]) if tested else None}


def main(out, steps, modeldir, test_output, data_dir, source_dir):
    out, modeldir, data_dir = Path(out), Path(modeldir), Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    test_batch = data_dir / BATCH_DIR / TEST_BATCH
    resume = out / "resume.json"
    summary = {
        "source": source(source_dir),
        "machine": machine(),
        "data": {"label": data_label(data_dir), "test_batch_md5": md5sum(test_batch)} if test_batch.exists() else None,
        "steps": [json.loads(line) for line in Path(steps).read_text().splitlines()] if Path(steps).exists() else [],
        "bench": [bench(out / name) for name in ("bench_resnet20.json", "bench_resnet110.json")],
        "resume": json.loads(resume.read_text()) if resume.exists() else None,
        "recipe": recipe(modeldir, Path(test_output).read_text() if Path(test_output).exists() else ""),
    }
    if summary["resume"]:
        summary["resume"] = {k: summary["resume"][k] for k in ("ok", "final_weights", "flags")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"files in {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


if __name__ == "__main__":
    main(*sys.argv[1:])
