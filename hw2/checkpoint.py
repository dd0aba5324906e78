"""Checkpoints that survive crashes: the Checkpoint record, atomic writes, safe loading, finding the newest,
one run per modeldir.

On disk a checkpoint is a dict of tensors and plain Python values (the fields of Checkpoint), so it loads with
torch.load(weights_only=True): opening one cannot run code.
"""
import contextlib
import dataclasses
import os
import re
import warnings
from pathlib import Path

import filelock
import torch

from hw2 import runtime
from hw2.errors import CheckpointError, ModeldirBusy, field

NAME = re.compile(r"^model-(\d+)(?:-step(\d+))?\.ckpt$")
ARCHITECTURE = ("resnet_version", "resnet_size", "first_num_filters", "shortcut", "num_classes")


@dataclasses.dataclass
class Checkpoint:
    """One checkpoint: what training saves and resumes from, evaluation restores and import writes."""
    model: dict  # the network's state_dict
    config: dict  # the run's Config as a dict (dataclasses.asdict), which says what network `model` is
    mean: list  # the per-channel normalisation the network was trained with, on the 0-255 scale
    std: list
    epoch: int = 0  # whole epochs done
    step: int = 0  # steps done into the next epoch: a run stopped inside it (else 0)
    optimizer: dict = dataclasses.field(default_factory=dict)  # SGD's state_dict; empty for an imported network
    scaler: dict = dataclasses.field(default_factory=dict)  # float16's GradScaler state_dict; empty otherwise
    metrics: list = dataclasses.field(default_factory=list)  # one row per epoch done (hw2.train.METRICS)
    partial: dict = dataclasses.field(default_factory=dict)  # a stopped epoch's running totals (train.EpochTotals)
    average: dict = dataclasses.field(default_factory=dict)  # the weights' moving average (ema_decay), a state_dict
    # of the network that evaluation uses in place of `model`; empty without one
    source: dict = dataclasses.field(default_factory=dict)  # an imported network's file, sha256, layout (published)

    def save(self, path):
        """Write it to path atomically (_write_atomically)."""
        _write_atomically({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, path)

    @classmethod
    def load(cls, path):
        """The checkpoint at path, loaded on the CPU. One that cannot be used is a CheckpointError that names
        the newest readable checkpoint beside it."""
        path = Path(path)
        try:
            return _read(path)
        except CheckpointError as e:
            others = [p for p in reversed(list_checkpoints(path.parent)) if p != path]
            fallback, _, _ = _first_readable(others)
            instead = (f"the newest readable checkpoint there is {fallback}" if fallback
                       else f"{path.parent} holds no other readable checkpoint")
            raise CheckpointError(f"{e}; {instead}") from None


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


def _write_atomically(state, path):
    """Write to a temporary file in the same folder, fsync, then rename over `path`: a crash or a full disk
    mid-write leaves the previous file intact, never a truncated checkpoint. A failed write is a
    CheckpointError that names the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"could not write {path} ({e.strerror or e}); the checkpoints already in "
                              f"{path.parent} are intact. Make room or make it writable, then continue with "
                              f"{field('resume', True)}") from e
    finally:
        with contextlib.suppress(OSError):  # a leftover temporary file is harmless; the error above is not
            tmp.unlink(missing_ok=True)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder: there the rename is as durable as its file system makes it
        return
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _read(path):
    """The Checkpoint at path, loaded on the CPU; a CheckpointError that says why it cannot be used otherwise.
    Fields an older checkpoint lacks take their defaults."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as e:  # torch's own message advises weights_only=False: wrong for a damaged file, unsafe
        raise CheckpointError(f"{path} is damaged (truncated or overwritten) or not an hw2 checkpoint "
                              f"({type(e).__name__})") from None
    required = {f.name for f in dataclasses.fields(Checkpoint) if f.default is f.default_factory is dataclasses.MISSING}
    lacks = sorted(required - checkpoint.keys() if isinstance(checkpoint, dict) else required)
    if lacks:
        raise CheckpointError(f"{path} is not an hw2 checkpoint: it has no {', '.join(lacks)}")
    checkpoint["config"].setdefault("shortcut", "projection")  # written before shortcut was a choice
    return Checkpoint(**{f.name: checkpoint[f.name] for f in dataclasses.fields(Checkpoint) if f.name in checkpoint})


def _first_readable(paths):
    """(path, Checkpoint) of the first of `paths` that loads, or (None, None); and the errors of those before."""
    errors = []
    for path in paths:
        try:
            return path, _read(path), errors
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


def check_architecture(checkpoint, expected, path):
    """Raise CheckpointError unless the checkpoint's network is the `expected` one: a Config, or a dict of
    some of the ARCHITECTURE fields (the ones a user gave)."""
    if not isinstance(expected, dict):
        expected = {k: getattr(expected, k) for k in ARCHITECTURE}
    saved = checkpoint.config
    wrong = {k: v for k, v in expected.items() if saved[k] != v}
    if wrong:
        have = ", ".join(f"{k} {saved[k]}" for k in ARCHITECTURE)
        want = ", ".join(f"{k} {v}" for k, v in wrong.items())
        raise CheckpointError(f"{path} holds a network with {have}, not {want}: pass the values it was trained "
                              f"with, or choose another {field('modeldir')}")


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
