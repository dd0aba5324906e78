"""Checkpoints that survive crashes: atomic writes, safe loading, finding the newest, one run per modeldir.

A checkpoint is a dict of tensors and plain Python values (model, optimizer, position in the run, RNG
states, config, metrics so far), so it loads with torch.load(weights_only=True): opening one cannot run code.
"""
import os
import re
import warnings
from pathlib import Path

import torch

NAME = re.compile(r"^model-(\d+)(?:-step(\d+))?\.ckpt$")
ARCHITECTURE = ("resnet_version", "resnet_size", "first_num_filters", "num_classes")


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or does not fit the config; the message names the file and the mismatch."""


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


def save_checkpoint(state, path):
    """Write to a temporary file in the same folder, fsync, then rename over `path`: a crash or a full disk
    mid-write leaves the previous file intact, never a truncated checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path, map_location="cpu"):
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable hw2 checkpoint (truncated or corrupt?): {e}") from e


def latest_checkpoint(modeldir):
    """(path, checkpoint) of the newest checkpoint in modeldir that loads, or (None, None). A damaged
    newer file is skipped with a warning, so a run resumes from the last good one."""
    for path in reversed(list_checkpoints(modeldir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}")
    return None, None


def check_architecture(checkpoint, config, path):
    """Raise CheckpointError unless the checkpoint's network is the one config describes."""
    saved = checkpoint["config"]
    if any(saved[k] != getattr(config, k) for k in ARCHITECTURE):
        have = ", ".join(f"{k} {saved[k]}" for k in ARCHITECTURE)
        want = ", ".join(str(getattr(config, k)) for k in ARCHITECTURE)
        raise CheckpointError(f"{path}: checkpoint is {have}; config asks for {want}")


class ModeldirLock:
    """modeldir/.lock holds the PID of the run that owns the folder. A second run refuses to start; a lock
    left by a process that no longer exists is taken over."""

    def __init__(self, modeldir):
        self.path = Path(modeldir) / ".lock"

    def __enter__(self):
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise RuntimeError(f"{self.path.parent} is in use by another training run (PID {pid}); "
                                       "wait for it, stop it, or choose another --modeldir") from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
