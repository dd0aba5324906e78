"""A run's folder, its modeldir: what it holds, who may write it, and whether a run may continue the one in it.

    model-{epoch}.ckpt         a checkpoint after a whole epoch (hw2.checkpoint.Checkpoint)
    model-{epoch}-step{N}.ckpt a run stopped N steps into epoch `epoch` (deleted once a later epoch is saved)
    model-best.ckpt            the epoch of the best validation accuracy so far (never chosen on the test set)
    config.json                the run's Config as it was asked for (`Config.from_dict(json)` loads it)
    resolved.json              what hw2 decided for it: device, dtype, resumed or not, the paths it resolved to
    metrics.csv                one row per epoch, the METRICS columns (and valid_top5 for CIFAR-100)
    log.txt                    what the front end showed of the run (its lines), each run appended
    test.csv                   checkpoint,tta,accuracy(,top5): each test of a checkpoint on the test images, the
                               latest kept
    .lock                      held by the one training run that may write here (ModeldirLock)

A folder of reports/ holds the same files without the checkpoints (hw2.runs compares them).
"""
import contextlib
import csv
import dataclasses
import io
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import filelock

from hw2 import runtime
from hw2.checkpoint import Checkpoint
from hw2.errors import CheckpointError, ModeldirBusy, ModeldirError, field
from hw2.models import ARCHITECTURE

NAME = re.compile(r"^model-(\d+)(?:-step(\d+))?\.ckpt$")  # the checkpoints a run resumes from
BEST = "model-best.ckpt"
CONFIG, RESOLVED, LOG, METRICS_FILE, TESTS = "config.json", "resolved.json", "log.txt", "metrics.csv", "test.csv"
METRICS = ["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds"]  # of train()'s rows
# Config fields that say where and how a run computes and what it writes besides, not what it learns: a run
# continued under other values of these is still the same run, and runs of one recipe differ in these and the seed
# alone.
NOT_THE_RUN = ("data_dir", "modeldir", "save_interval", "tensorboard", "resume", "on_nan", "device", "dtype",
               "compile")
TENSORBOARD = "tensorboard"  # modeldir's folder of TensorBoard event files (hw2.tensorboard)


# --- checkpoints --------------------------------------------------------------------------------------------

def checkpoint_path(modeldir, epoch, step=0):
    """model-{epoch}.ckpt after a whole epoch; model-{epoch}-step{step}.ckpt for a run stopped inside
    epoch `epoch` (1-based) after `step` steps."""
    name = f"model-{epoch}.ckpt" if step == 0 else f"model-{epoch}-step{step}.ckpt"
    return Path(modeldir) / name


def _position(path):
    """Sort key: (completed epochs, steps into the next epoch)."""
    epoch, step = NAME.match(path.name).groups()
    return (int(epoch), 0) if step is None else (int(epoch) - 1, int(step))


def list_checkpoints(modeldir):
    """Checkpoint paths in modeldir, oldest first."""
    folder = Path(modeldir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if NAME.match(p.name)), key=_position)


def _first_readable(paths):
    """(path, Checkpoint) of the first of `paths` that loads, or (None, None); and the errors of those before."""
    errors = []
    for path in paths:
        try:
            return path, Checkpoint.load(path), errors
        except CheckpointError as e:
            errors.append(e)
    return None, None, errors


def latest_checkpoint(modeldir):
    """(path, Checkpoint) of the newest checkpoint in modeldir that loads, or (None, None). A damaged
    newer file is skipped with a warning, so a run resumes from the last good one."""
    path, checkpoint, errors = _first_readable(reversed(list_checkpoints(modeldir)))
    for e in errors:
        warnings.warn(f"skipped: {e}")
    return path, checkpoint


def read_checkpoint(path):
    """The checkpoint at path (Checkpoint.load); one that cannot be used is a CheckpointError that also names
    the newest readable checkpoint beside it."""
    path = Path(path)
    try:
        return Checkpoint.load(path)
    except CheckpointError as e:
        others = [p for p in reversed(list_checkpoints(path.parent)) if p != path]
        fallback, _, _ = _first_readable(others)
        instead = (f"the newest readable checkpoint there is {fallback}" if fallback
                   else f"{path.parent} holds no other readable checkpoint")
        raise CheckpointError(f"{e}; {instead}") from None


def save_checkpoint(modeldir, checkpoint):
    """Write the checkpoint under its position's name (atomically); a whole-epoch one supersedes, and deletes, the
    mid-epoch checkpoints of this and earlier epochs. -> its path."""
    path = checkpoint_path(modeldir, checkpoint.epoch + 1 if checkpoint.step else checkpoint.epoch, checkpoint.step)
    checkpoint.save(path)
    if not checkpoint.step:
        for older in list_checkpoints(modeldir):
            older_epoch, older_step = NAME.match(older.name).groups()
            if older_step is not None and int(older_epoch) <= checkpoint.epoch:
                older.unlink()
    return path


def save_best(modeldir, checkpoint):
    """Write the checkpoint as modeldir/model-best.ckpt (atomically), replacing the one before -> its path."""
    path = Path(modeldir) / BEST
    checkpoint.save(path)
    return path


# --- config.json, resolved.json, metrics.csv, test.csv, log.txt ------------------------------------------

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
    far, also after a resume from an older checkpoint. Columns: METRICS, then any other the rows have
    (valid_top5). (Lines end in CRLF, the csv module's default.)"""
    columns = METRICS + [name for name in (rows[0] if rows else {}) if name not in METRICS]
    _replace(Path(modeldir) / METRICS_FILE, _csv(columns, rows, "\r\n"))


def read_metrics(path):
    """metrics.csv -> metric rows as train() returns them: one {column: float} per epoch."""
    with open(path, newline="") as f:
        return [{name: float(value) for name, value in row.items()} for row in csv.DictReader(f)]


def write_config(modeldir, config, resolved):
    """config.json (the Config as asked for) and resolved.json (a dict: what was decided for it)."""
    _replace(Path(modeldir) / CONFIG, json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    _replace(Path(modeldir) / RESOLVED, json.dumps(resolved, indent=1) + "\n")


def read_config(folder):
    """The run's config as a dict: config.json, or for a run older than config.json its newest checkpoint's."""
    path = Path(folder) / CONFIG
    if path.exists():
        return json.loads(path.read_text())
    _, checkpoint = latest_checkpoint(folder)
    if checkpoint is None:
        raise ModeldirError(f"{folder} is not a run: it has no {CONFIG} and no checkpoint")
    return checkpoint.config


def read_resolved(folder):
    """What was decided for the run (a dict with at least device and dtype): resolved.json, or for a run older than
    it the device and dtype that its config.json recorded in place of the request."""
    path = Path(folder) / RESOLVED
    if path.exists():
        return json.loads(path.read_text())
    config = read_config(folder)
    return {"device": config["device"], "dtype": config["dtype"]}


def data_dir_of(folder, default="data"):
    """Where to read a run's test images when not told: the data_dir it read its data from (resolved.json's, an
    absolute path) while that folder exists, else `default` (the run was moved from another machine, is older
    than resolved.json, or `folder` holds no run)."""
    found = read_resolved(folder).get("data_dir") if (Path(folder) / RESOLVED).exists() else None
    return found if found and Path(found).is_dir() else default


def is_run(folder):
    return (Path(folder) / CONFIG).exists() or bool(list_checkpoints(folder))


def record_test(path, tta, accuracy, top5=None):
    """Keep a checkpoint's test accuracy (and its top-5 accuracy, where given) in its modeldir's test.csv,
    replacing an earlier test of it with the same tta. A modeldir that cannot be written is left as it is:
    testing does not need it."""
    tests = Path(path).parent / TESTS
    rows = [row for row in read_tests(tests.parent) if (row["checkpoint"], row["tta"]) != (Path(path).name, str(tta))]
    rows.append({"checkpoint": Path(path).name, "tta": str(tta), "accuracy": f"{accuracy:.4f}",
                 **({"top5": f"{top5:.4f}"} if top5 is not None else {})})
    columns = ["checkpoint", "tta", "accuracy"] + (["top5"] if any(row.get("top5") for row in rows) else [])
    with contextlib.suppress(OSError):
        _replace(tests, _csv(columns, rows, "\n"))


def read_tests(folder):
    path = Path(folder) / TESTS
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def open_log(modeldir, heading):
    """modeldir/log.txt, open to append to after `heading`, for what the front end shows of the run (its reporter's
    lines: hw2.events.Reporter.logging_to); an exception that ends the block is kept as its one line. Line-buffered,
    so the file follows the run as it goes."""
    with open(Path(modeldir) / LOG, "a", encoding="utf-8", buffering=1) as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {heading}\n")
        try:
            yield log
        except BaseException as e:
            log.write(f"{type(e).__name__}: {e}\n")
            raise


# --- who may write it, and whether a run continues the one in it ------------------------------------------

class ModeldirLock:
    """Context manager: one training run per modeldir. The run holds an exclusive lock on modeldir/.lock, the
    system's own (filelock's: flock on Unix, LockFileEx on Windows), which the system releases when the
    process ends, however it ends, so a crashed run leaves no stale lock. The file also holds the run's PID
    for the message a second run gets."""

    def __init__(self, modeldir):
        self.path = Path(modeldir) / ".lock"
        # Never filelock's soft lock (a file that merely exists), which a killed run would leave behind.
        kind = filelock.WindowsFileLock if runtime.WINDOWS else filelock.UnixFileLock
        self.lock = kind(self.path, blocking=False, fallback_to_soft=False, on_acquired=_write_pid)

    def __enter__(self):
        try:
            self.lock.acquire()
        except filelock.Timeout:
            pid = _holder(self.path)
            owner = f" (PID {pid})" if pid else ""
            raise ModeldirBusy(f"{self.path.parent} is in use by another training run{owner}; wait for it, "
                               f"stop it, or choose another {field('modeldir')}") from None
        return self

    def __exit__(self, *exc):
        # Remove the file while still holding the lock, so that a run which opened it meanwhile finds its lock on a
        # removed file, which filelock refuses (a link count of 0: that run is refused as if the lock were still
        # held), and the next run creates a new one. Windows refuses to remove a file that is open: there filelock
        # removes it after the release. A leftover .lock is harmless, so failing to remove it must not hide an
        # exception in flight.
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.lock.release()


def _write_pid(fd):
    """filelock's on_acquired: the PID into the lock file, from its second byte on (see _holder)."""
    os.ftruncate(fd, 0)
    os.write(fd, f" {os.getpid()}".encode())


def _holder(path):
    """The PID the lock file names, or None: gone, not yet written, or unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(1)  # on Windows the lock covers byte 0, which no other process may read meanwhile
            return int(f.read())
    except (OSError, ValueError):
        return None


def run_differences(saved, config):
    """{field: (saved value, config's value)} where a saved config (a dict: a checkpoint's, config.json's) and
    `config` describe different runs; a field the saved config lacks (older runs) counts as its default."""
    saved = {**dataclasses.asdict(type(config)()), **saved}
    return {name: (saved[name], value) for name, value in dataclasses.asdict(config).items()
            if name not in NOT_THE_RUN and saved[name] != value}


def may_continue(modeldir, config, continue_same_run):
    """Whether this run continues the one in modeldir: when config.resume, or with continue_same_run when the
    newest checkpoint is of the same parameters. Checkpoints it may not continue are a ModeldirError that names
    the parameters that differ and both ways out."""
    existing = list_checkpoints(modeldir)
    if not existing:
        return False  # nothing to continue: resume starts afresh
    if config.resume:
        return True
    _, checkpoint = latest_checkpoint(modeldir)
    differences = run_differences(checkpoint.config, config) if checkpoint else {}
    if continue_same_run and checkpoint and not differences:
        return True
    what = "checkpoints of a run with these parameters"
    if differences:
        what = "checkpoints of a run with other parameters (" + "; ".join(
            f"{name} {old!r} there, {new!r} here" for name, (old, new) in differences.items()) + ")"
    same_network = not set(differences) & set(ARCHITECTURE)
    resume = field("resume", True)
    if continue_same_run:  # a notebook's rerun, which continues a run of the same parameters by itself
        ways = ("Set those back to see or continue that run" + (f", set {resume} to continue it with these"
                                                               if same_network else "")
                + f", or choose a new {field('modeldir')} to start another")
    elif same_network:
        ways = f"Pass {resume} to continue that run" + (" with these values" if differences else "")
        ways += f"; to start another, choose a new {field('modeldir')}"
    else:
        ways = f"To continue that run, pass the values it has and {resume}; to start another, choose a new " \
               f"{field('modeldir')}"
    raise ModeldirError(f"{modeldir} holds {what}; newest {existing[-1].name}. {ways}. Nothing was overwritten.")


@contextlib.contextmanager
def claim(modeldir, config, continue_same_run=False):
    """The run's modeldir, made if missing and locked against a second run -> whether to resume (may_continue).
    Refused before any work if it cannot be written or holds checkpoints this run may not continue; removed
    again if this run created it and fails before its first checkpoint, so that a failed start leaves nothing
    behind."""
    modeldir = Path(modeldir)
    created = not modeldir.exists()
    try:
        modeldir.mkdir(parents=True, exist_ok=True)
        probe = modeldir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ModeldirError(f"modeldir {modeldir} is not writable ({e.strerror}); choose another "
                            f"{field('modeldir')}") from None
    try:
        with ModeldirLock(modeldir):
            yield may_continue(modeldir, config, continue_same_run)
    except BaseException:
        if created and not list_checkpoints(modeldir):
            for name in (METRICS_FILE, CONFIG, RESOLVED, LOG):
                (modeldir / name).unlink(missing_ok=True)
            shutil.rmtree(modeldir / TENSORBOARD, ignore_errors=True)
            with contextlib.suppress(OSError):
                modeldir.rmdir()
        raise
