"""Resume check for benchmarks/gpu.sh, through the command line: one short run made twice, once straight
through and once stopped with SIGINT (as Ctrl-C) during its second epoch and continued with --resume. The
two must end alike: the same epochs in metrics.csv, the same checkpoints, and on a CPU the same weights
(on a GPU close ones: its kernels need not add in the same order twice). Writes OUT as JSON; exit 1 if
the resumed run does not end as the uninterrupted one.

    python3 benchmarks/resume_check.py OUT.json --device cuda --train_subset 10000 --epochs 3 --lr_milestones 2

The flags go to `python -m hw2 train` (each run gets its own --modeldir); --epochs must be at least 2.
"""
import argparse
import csv
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hw2.checkpoint import Checkpoint
from hw2.modeldir import list_checkpoints


def command(flags, modeldir, *more):
    return [sys.executable, "-m", "hw2", "train", *flags, "--modeldir", str(modeldir), *more]


def rows(modeldir):
    path = Path(modeldir) / "metrics.csv"  # replaced whole after each epoch, so never read half-written
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def straight(flags, modeldir, *more):
    """(exit status, its output) of a run to the end."""
    run = subprocess.run(command(flags, modeldir, *more), capture_output=True, text=True)
    print(run.stdout + run.stderr, end="", flush=True)
    return run.returncode, run.stdout


def interrupted(flags, modeldir, patience=600):
    """Exit status of a run sent SIGINT as soon as metrics.csv holds its first epoch."""
    process = subprocess.Popen(command(flags, modeldir))
    deadline = time.monotonic() + patience
    while not rows(modeldir):
        if process.poll() is not None:
            sys.exit(f"the run to interrupt ended (exit {process.returncode}) before its first epoch")
        if time.monotonic() > deadline:
            process.kill()
            sys.exit(f"the run to interrupt did not finish its first epoch in {patience} s")
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    return process.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the JSON file to write")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="flags of python -m hw2 train")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="resume_check_") as root:
        result = check(args.flags, Path(root) / "whole", Path(root) / "cut")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"resume check: {'ok' if result['ok'] else 'FAILED'}; final weights: {result['final_weights']}; "
          f"written to {args.out}")
    return 0 if result["ok"] else 1


def check(flags, whole, cut):
    """The three runs and what they left -> the JSON's dict."""
    started = time.perf_counter()
    whole_exit, _ = straight(flags, whole)
    seconds = time.perf_counter() - started
    cut_exit = interrupted(flags, cut)
    stop_checkpoints = [p.name for p in list_checkpoints(cut)]
    resumed_exit, resumed_output = straight(flags, cut, "--resume")
    resumed_from = [line for line in resumed_output.splitlines() if line.startswith("Resuming from")]

    def run(folder):
        return {"epochs": [int(row["epoch"]) for row in rows(folder)],
                "checkpoints": [p.name for p in list_checkpoints(folder)],
                "valid_acc": [float(row["valid_acc"]) for row in rows(folder)]}

    result = {
        "flags": " ".join(flags),
        "uninterrupted": {"exit": whole_exit, "seconds": seconds, **run(whole)},
        "interrupted": {"exit": cut_exit, "expected_exit": 128 + signal.SIGINT, "checkpoints_then": stop_checkpoints},
        "resumed": {"exit": resumed_exit, "resumed_from": resumed_from[0] if resumed_from else None, **run(cut)},
        "final_weights": weight_difference(whole, cut),
    }
    result["ok"] = (whole_exit == 0 and cut_exit == 128 + signal.SIGINT and resumed_exit == 0 and bool(resumed_from)
                    and result["uninterrupted"]["epochs"] == result["resumed"]["epochs"] != []
                    and result["uninterrupted"]["checkpoints"] == result["resumed"]["checkpoints"])
    return result


def weight_difference(whole, cut):
    """The floating-point tensors of the two runs' newest checkpoints compared, or None if one has none."""
    ends = [list_checkpoints(folder) for folder in (whole, cut)]
    if not all(ends):
        return None
    a, b = (Checkpoint.load(end[-1]).model for end in ends)
    keys = [k for k, v in a.items() if v.is_floating_point()]
    difference = torch.cat([(b[k] - a[k]).flatten() for k in keys])
    largest = difference.abs().max().item()
    return {"max_abs_difference": largest, "identical": largest == 0,
            "relative_l2_difference": (difference.norm() / torch.cat([a[k].flatten() for k in keys]).norm()).item()}


if __name__ == "__main__":
    sys.exit(main())
