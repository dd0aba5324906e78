"""What a modeldir keeps about its run besides the checkpoints, and the table that compares runs
(`python -m hw2 runs DIR ...`, notebooks/05_compare.ipynb).

    config.json   the run's Config, device and dtype as they resolved (what ran); `Config(**json)` loads it
    log.txt       what the run printed, each session appended (a progress bar as it last stood)
    metrics.csv   one row per epoch, the METRICS columns (write_metrics)
    test.csv      checkpoint,tta,accuracy: each test of a checkpoint on the 10,000 test images, the latest kept

A folder of reports/ holds the same files, without the checkpoints, or a recipe's seeds: results.json
(seed_results) beside each seed's run in a folder NAME_seed{N}/ (benchmarks/seed_results.py).
"""
import contextlib
import csv
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from hw2.checkpoint import NAME, latest_checkpoint, list_checkpoints
from hw2.errors import Hw2Error, field
from hw2.models import ResNet, count_parameters

CONFIG, LOG, METRICS_FILE, TESTS = "config.json", "log.txt", "metrics.csv", "test.csv"
METRICS = ["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds"]  # of train()'s rows


def _replace(path, text):
    """Write `text` to path as it is (no newline translation) through a temporary file, so that a reader never
    sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, newline="")
    os.replace(tmp, path)


def _csv(header, rows, lineterminator):
    text = io.StringIO()
    writer = csv.DictWriter(text, header, lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_metrics(modeldir, rows):
    """modeldir/metrics.csv, rewritten whole after each epoch: it always holds exactly the epochs of the run so
    far, also after a resume from an older checkpoint. (Lines end in CRLF, the csv module's default.)"""
    _replace(Path(modeldir) / METRICS_FILE, _csv(METRICS, rows, "\r\n"))


def write_config(modeldir, fields):
    _replace(Path(modeldir) / CONFIG, json.dumps(fields, indent=1) + "\n")


def read_config(folder):
    """The run's config as a dict: config.json, or for a run older than config.json its newest checkpoint's."""
    path = Path(folder) / CONFIG
    if path.exists():
        return json.loads(path.read_text())
    _, checkpoint = latest_checkpoint(folder)
    if checkpoint is None:
        raise Hw2Error(f"{folder} is not a run: it has no {CONFIG} and no checkpoint")
    return checkpoint.config


def read_metrics(path):
    """metrics.csv -> metric rows as train() returns them: one {column: float} per epoch."""
    with open(path, newline="") as f:
        return [{name: float(value) for name, value in row.items()} for row in csv.DictReader(f)]


def record_test(path, tta, accuracy):
    """Keep a checkpoint's test accuracy in its modeldir's test.csv (replacing an earlier test of it with the
    same tta). A modeldir that cannot be written is left as it is: testing does not need it."""
    tests = Path(path).parent / TESTS
    rows = [row for row in read_tests(tests.parent) if (row["checkpoint"], row["tta"]) != (Path(path).name, str(tta))]
    rows.append({"checkpoint": Path(path).name, "tta": str(tta), "accuracy": f"{accuracy:.4f}"})
    with contextlib.suppress(OSError):
        _replace(tests, _csv(["checkpoint", "tta", "accuracy"], rows, "\n"))


def read_tests(folder):
    path = Path(folder) / TESTS
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _Tee:
    """A text stream that writes to `stream` and keeps each finished line in `log` as it last stood: text
    after a carriage return replaces the line's earlier text, and a line left blank by a progress bar that
    cleared itself is dropped. Anything else (encoding, isatty, ...) is the stream's."""

    def __init__(self, stream, log):
        self.stream, self.log, self.line = stream, log, ""

    def write(self, text):
        self.stream.write(text)
        *finished, self.line = (self.line + text).split("\n")
        for line in finished:
            self._keep(line)
        self.line = self.line.rpartition("\r")[2]  # a progress bar redraws its line over and over
        return len(text)

    def _keep(self, line):
        line = line.rpartition("\r")[2]
        if line == "" or line.strip():
            self.log.write(line + "\n")

    def close_line(self):
        if self.line.strip():
            self._keep(self.line)

    def flush(self):
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def log_output(modeldir, heading):
    """Keep what is printed (stdout and stderr) inside the block in modeldir/log.txt, after `heading`; an
    exception that ends the block is kept as its one line."""
    with open(Path(modeldir) / LOG, "a", encoding="utf-8") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {heading}\n")
        out, err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
        except BaseException as e:
            out.close_line()
            err.close_line()
            log.write(f"{type(e).__name__}: {e}\n")
            raise


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
        model = ResNet(config["resnet_version"], config["resnet_size"], config["num_classes"],
                       config["first_num_filters"], config.get("shortcut", "projection"))
    return f"ResNet-{model.depth} v{config['resnet_version']}", count_parameters(model)


def recipe(config):
    """The training recipe in a few words: rate and schedule, batch, weight decay, and what else is on."""
    c = config
    if c["lr_schedule"] == "step":
        drops = ",".join(map(str, [m for m in c["lr_milestones"] if m < c["epochs"]]))
        words = [f"lr {c['learning_rate']:g}" + (f" /10 at {drops}" if drops else "")]
    else:
        words = [f"lr {c['learning_rate']:g} cosine"]
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


def run_row(folder):
    """One run's row of runs_table."""
    config = read_config(folder)
    metrics_path = Path(folder) / METRICS_FILE
    metrics = read_metrics(metrics_path) if metrics_path.exists() else []
    valid = [row["valid_acc"] for row in metrics if not math.isnan(row["valid_acc"])]
    tests = read_tests(folder)
    newest = max((row["checkpoint"] for row in tests), default=None, key=lambda name: int(NAME.match(name)[1]))
    test = " / ".join(f"{100 * float(row['accuracy']):.2f}%" + (" tta" if row["tta"] == "True" else "")
                      for row in sorted(tests, key=lambda row: row["tta"]) if row["checkpoint"] == newest)
    name, parameters = network(config)
    return [Path(folder).name, name, recipe(config), f"{parameters:,}", f"{len(metrics)}/{config['epochs']}",
            _percent(max(valid, default=None)), _percent(valid[-1] if valid else None), test or "-",
            _duration(sum(row["seconds"] for row in metrics)), f"{config['device']} {config['dtype']}"]


def is_run(folder):
    return (Path(folder) / CONFIG).exists() or bool(list_checkpoints(folder))


def runs_table(folders):
    """One row per run (a modeldir, or a folder of reports/): network, recipe, parameters, epochs done of
    those asked for, best and last validation accuracy, test accuracy of the newest tested checkpoint,
    training time (the epochs' seconds added up), device and dtype. Folders that are not runs (a glob such
    as reports/*/ also finds benchmark folders) are named under the table; if none is a run, that is an
    error."""
    runs = [folder for folder in folders if is_run(folder)]
    if not runs:
        raise Hw2Error(f"{folders[0]} is not a run: it has no {CONFIG} and no checkpoint"
                       + (f" (nor has any of the other {len(folders) - 1})" if len(folders) > 1 else ""))
    header = ["run", "network", "recipe", "parameters", "epochs", "best valid", "last valid", "test", "time",
              "device"]
    table = format_table(header, [run_row(folder) for folder in runs], left=3)
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
    recipe in a few words and its config; the machine that trained them, as hw2.bench.processor describes it
    (this module does not look at the machine), and the dtype. Validation used flip TTA where the recipe has
    tta (valid_tta). Each folder must be a finished run of the same recipe, differing only in seed, modeldir
    and save_interval, tested both ways."""
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
        results["valid_accuracy"].append(round(metrics[-1]["valid_acc"], 4))
        results["seconds"].append(round(sum(row["seconds"] for row in metrics), 1))
        results["test_accuracy"].append(_final_test(folder, epochs, tta=False))
        results["test_accuracy_tta"].append(_final_test(folder, epochs, tta=True))
    for name in ("test_accuracy", "test_accuracy_tta", "valid_accuracy"):
        values = results[name]
        results[f"{name}_mean"] = round(statistics.fmean(values), 5)
        results[f"{name}_std"] = round(statistics.stdev(values), 5) if len(values) > 1 else None
    results.update(valid_tta=fields["tta"], description=recipe(fields), **processor,
                   dtype=configs[0]["dtype"], device=configs[0]["device"], config=fields)
    return results


def _recipe_fields(config):
    """A run's config less what does not change what is trained (where it is kept, how often, which seed)."""
    return {k: v for k, v in config.items() if k not in ("seed", "modeldir", "resume", "save_interval", "data_dir")}
