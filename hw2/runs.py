"""The table that compares runs (`python -m hw2 runs DIR ...`, notebooks/05_compare.ipynb), and one recipe's results
over several seeds: what reports/NAME/results.json holds (seed_results), beside each seed's run in a folder
NAME_seed{N}/ (benchmarks/seed_results.py). A run is a modeldir, or a folder of reports/ that holds its files
without the checkpoints (hw2.modeldir lists them).
"""
import math
import statistics
from pathlib import Path

import torch

from hw2.errors import Hw2Error, field
from hw2.modeldir import (CONFIG, METRICS_FILE, NAME, NOT_THE_RUN, is_run, read_config, read_metrics, read_resolved,
                          read_tests)
from hw2.models import build_network, count_parameters


# --- the table of runs --------------------------------------------------------------------------------

def format_table(header, rows, left=1):
    """A plain-text table: the first `left` columns left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def network(config):
    """('ResNet-20 v1', parameter count) of a run's config; the network is built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_network(config)
    return f"ResNet-{model.depth} v{config['resnet_version']}", count_parameters(model)


def recipe(config):
    """The training recipe in a few words: rate and schedule, batch, weight decay, and what else is on."""
    c = config
    words = [] if c.get("dataset", "cifar10") == "cifar10" else [c["dataset"]]  # runs older than CIFAR-100: 10
    if c["lr_schedule"] == "step":
        drops = ",".join(map(str, [m for m in c["lr_milestones"] if m < c["epochs"]]))
        words.append(f"lr {c['learning_rate']:g}" + (f" /10 at {drops}" if drops else ""))
    else:
        words.append(f"lr {c['learning_rate']:g} cosine")
    if c["warmup_epochs"]:
        words.append(f"warm-up {c['warmup_epochs']:g}")
    words += [f"batch {c['batch_size']}", f"wd {c['weight_decay']:g}"]
    words += [name for name in ("nesterov", "tta") if c[name]]
    if c["label_smoothing"]:
        words.append(f"smoothing {c['label_smoothing']:g}")
    if c.get("ema_decay"):  # runs older than ema_decay have none
        words.append(f"ema {c['ema_decay']:g}")
    if c["resize_fraction"]:
        words.append(f"resize {c['resize_fraction']:g}")
    if c.get("cutout"):  # runs older than the augmentation fields had neither
        words.append(f"cutout {c['cutout']}")
    if c.get("flip", "random") != "random":
        words.append(f"{c['flip']} flip")
    if c["train_subset"]:
        words.append(f"{c['train_subset']} images")
    return ", ".join(words)


def _percent(value):
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _duration(seconds):
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def run_metrics(folder):
    """A run's metrics rows: its metrics.csv; none before its first epoch."""
    path = Path(folder) / METRICS_FILE
    return read_metrics(path) if path.exists() else []


def newest_tests(folder):
    """The test.csv rows of the newest tested checkpoint of a run (model-best.ckpt's aside), without flip TTA
    first."""
    tests = [row for row in read_tests(folder) if NAME.match(row["checkpoint"])]
    newest = max((row["checkpoint"] for row in tests), default=None, key=lambda name: int(NAME.match(name)[1]))
    return sorted((row for row in tests if row["checkpoint"] == newest), key=lambda row: row["tta"])


def run_row(folder):
    """One run's row of runs_table."""
    config = read_config(folder)
    metrics = run_metrics(folder)
    valid = [row for row in metrics if not math.isnan(row["valid_acc"])]
    best = max(valid, key=lambda row: row["valid_acc"], default=None)  # the first of equals, as model-best.ckpt
    test = " / ".join(f"{100 * float(row['accuracy']):.2f}%" + (" tta" if row["tta"] == "True" else "")
                      + (f" (top-5 {100 * float(row['top5']):.2f}%)" if row.get("top5") else "")
                      for row in newest_tests(folder))
    name, parameters = network(config)
    resolved = read_resolved(folder)
    return [Path(folder).name, name, recipe(config), f"{parameters:,}", f"{len(metrics)}/{config['epochs']}",
            f"{_percent(best['valid_acc'])} ({best['epoch']:.0f})" if best else "-",
            _percent(valid[-1]["valid_acc"] if valid else None), test or "-",
            _duration(sum(row["seconds"] for row in metrics)), f"{resolved['device']} {resolved['dtype']}"]


def seed_groups(folders):
    """The groups of two or more runs that differ only in seed (and in what does not change what is learned), each
    in the order of `folders`."""
    groups = {}
    for folder in folders:
        fields = _recipe_fields(read_config(folder))
        groups.setdefault(repr(sorted(fields.items())), []).append(folder)
    return [group for group in groups.values() if len(group) > 1]


def _mean_std(values, show, unit=""):
    """'mean ± std' of the values (None left out) as `show` writes one, then `unit`; '-' without any."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{show(statistics.fmean(values))} ± {show(std)}{unit}"


def group_row(group):
    """The mean ± std row of a group of seeds: best and last validation accuracy, the test accuracy of each run's
    newest tested checkpoint (with flip TTA where tested so) and the training time, over the runs."""
    rows = {"best": [], "last": [], "False": [], "True": [], "seconds": []}
    for folder in group:
        metrics = run_metrics(folder)
        valid = [row["valid_acc"] for row in metrics if not math.isnan(row["valid_acc"])]
        rows["best"].append(max(valid, default=None))
        rows["last"].append(valid[-1] if valid else None)
        tests = {row["tta"]: float(row["accuracy"]) for row in newest_tests(folder)}
        rows["False"].append(tests.get("False"))
        rows["True"].append(tests.get("True"))
        rows["seconds"].append(sum(row["seconds"] for row in metrics))
    percent = lambda value: f"{100 * value:.2f}"
    test = [_mean_std(rows[tta], percent, "%" + " tta" * (tta == "True")) for tta in ("False", "True")
            if any(v is not None for v in rows[tta])]
    config = read_config(group[0])
    name, parameters = network(config)
    seeds = ",".join(str(read_config(folder)["seed"]) for folder in group)
    return [f"mean ± std (seeds {seeds})", name, recipe(config), f"{parameters:,}", "",
            _mean_std(rows["best"], percent, "%"), _mean_std(rows["last"], percent, "%"),
            " / ".join(test) or "-", _mean_std(rows["seconds"], lambda s: f"{s / 60:.1f}", " min"), ""]


def runs_table(folders):
    """One row per run (a modeldir, or a folder of reports/): network, recipe, parameters, epochs done of
    those asked for, best validation accuracy and its epoch, the last one, test accuracy of the newest tested
    checkpoint (and its top-5 accuracy for CIFAR-100),
    training time (the epochs' seconds added up), device and dtype; below them, for each group of runs that
    differ only in seed, their mean ± std. Folders that are not runs (a glob such as reports/*/ also finds
    benchmark folders) are named under the table; if none is a run, that is an error."""
    runs = [folder for folder in folders if is_run(folder)]
    if not runs:
        raise Hw2Error(f"{folders[0]} is not a run: it has no {CONFIG} and no checkpoint"
                       + (f" (nor has any of the other {len(folders) - 1})" if len(folders) > 1 else ""))
    header = ["run", "network", "recipe", "parameters", "epochs", "best valid (epoch)", "last valid", "test", "time",
              "device"]
    rows = [run_row(folder) for folder in runs] + [group_row(group) for group in seed_groups(runs)]
    table = format_table(header, rows, left=3)
    others = [str(folder) for folder in folders if folder not in runs]
    return table + (f"\nNot runs (no {CONFIG}, no checkpoint), left out: {', '.join(others)}" if others else "")


# --- one recipe over several seeds ------------------------------------------------------------------

def _final_test(folder, epochs, tta):
    """The test accuracy of a finished run's last checkpoint, with or without flip TTA, from its test.csv."""
    name = f"model-{epochs}.ckpt"
    for row in read_tests(folder):
        if row["checkpoint"] == name and row["tta"] == str(tta):
            return float(row["accuracy"])
    raise Hw2Error(f"{folder} has no test of {name} {'with' if tta else 'without'} flip TTA: test that "
                   f"checkpoint with {field('tta', tta)}")


def seed_results(folders, recipe_name, processor):
    """What reports/<name>/results.json holds for one recipe trained once per seed: per seed (lists in the
    order of `folders`) the last epoch's validation accuracy, the last checkpoint's test accuracy without
    and with flip TTA, and the training seconds; their mean and standard deviation (None for one seed); the
    recipe in a few words and its config; the machine that trained them, as hw2.runtime.processor describes it
    (this module does not look at the machine), and the dtype. Validation used flip TTA where the recipe has
    tta (valid_tta); a recipe without a validation split (valid_size 0) has None for it. Each folder must be a
    finished run of the same recipe, differing only in seed and what does not change what is learned
    (NOT_THE_RUN), tested both ways."""
    configs = [read_config(folder) for folder in folders]
    fields = _recipe_fields(configs[0])
    for folder, config in zip(folders, configs):
        differ = sorted(k for k, v in _recipe_fields(config).items() if fields.get(k) != v)
        if differ:
            raise Hw2Error(f"{folder} is not the recipe of {folders[0]}: {', '.join(differ)} differ")
    epochs = configs[0]["epochs"]
    results = {"recipe": recipe_name, "epochs": epochs, "seeds": [c["seed"] for c in configs],
               "test_accuracy": [], "test_accuracy_tta": [], "valid_accuracy": [], "seconds": []}
    for folder in folders:
        metrics = read_metrics(Path(folder) / METRICS_FILE)
        if len(metrics) != epochs:
            raise Hw2Error(f"{folder} has trained {len(metrics)} of its {epochs} epochs: finish it (train it again "
                           f"with {field('resume', True)})")
        valid = metrics[-1]["valid_acc"]
        results["valid_accuracy"].append(None if math.isnan(valid) else round(valid, 4))
        results["seconds"].append(round(sum(row["seconds"] for row in metrics), 1))
        results["test_accuracy"].append(_final_test(folder, epochs, tta=False))
        results["test_accuracy_tta"].append(_final_test(folder, epochs, tta=True))
    for name in ("test_accuracy", "test_accuracy_tta", "valid_accuracy"):
        values = [v for v in results[name] if v is not None]
        results[f"{name}_mean"] = round(statistics.fmean(values), 5) if values else None
        results[f"{name}_std"] = round(statistics.stdev(values), 5) if len(values) > 1 else None
    resolved = read_resolved(folders[0])
    results.update(valid_tta=fields["tta"], description=recipe(fields), **processor,
                   dtype=resolved["dtype"], device=resolved["device"], config=fields)
    return results


def _recipe_fields(config):
    """A run's config less its seed and what does not change what it learns (NOT_THE_RUN)."""
    return {k: v for k, v in config.items() if k not in (*NOT_THE_RUN, "seed")}
