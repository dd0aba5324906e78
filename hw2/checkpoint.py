"""Checkpoints that survive crashes: the Checkpoint record, written atomically and loaded safely. (What a modeldir
holds, and which of its checkpoints is the newest, is hw2.modeldir's.)

On disk a checkpoint is a dict of tensors and plain Python values (the fields of Checkpoint), so it loads with
torch.load(weights_only=True): opening one cannot run code.
"""
import contextlib
import dataclasses
import os
from pathlib import Path

import torch

from hw2.errors import CheckpointError, field
from hw2.models import ARCHITECTURE

# The trained ResNet-20 that hw2 ships (hw2/pretrained/README.md), which test, predict and 04_evaluate.ipynb use
# until the default modeldir holds a run of one's own
PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "resnet20_v1.ckpt"


def checkpoint_label(path):
    """How messages name a checkpoint: by its path, the bundled one (PRETRAINED) as such, by its place in hw2."""
    if Path(path).resolve() != PRETRAINED:
        return str(path)
    return f"the bundled ResNet-20 {PRETRAINED.relative_to(PRETRAINED.parents[2]).as_posix()}"


@dataclasses.dataclass
class Checkpoint:
    """One checkpoint: what training saves and resumes from (a training state's state_dict, hw2.state.TrainingState,
    with the run's config and normalisation), evaluation restores and import writes."""
    model: dict  # the network's state_dict
    config: dict  # the run's Config as a dict (dataclasses.asdict), which says what network `model` is
    mean: list  # the per-channel normalisation the network was trained with, on the 0-255 scale
    std: list
    epoch: int = 0  # whole epochs done
    step: int = 0  # steps done into the next epoch: a run stopped inside it (else 0)
    optimizer: dict = dataclasses.field(default_factory=dict)  # SGD's state_dict; empty for an imported network
    scaler: dict = dataclasses.field(default_factory=dict)  # float16's GradScaler state_dict; empty otherwise
    metrics: list = dataclasses.field(default_factory=list)  # one row per epoch done (hw2.modeldir.METRICS)
    partial: dict = dataclasses.field(default_factory=dict)  # a stopped epoch's running totals (hw2.state.EpochTotals)
    average: dict = dataclasses.field(default_factory=dict)  # the weights' moving average (ema_decay), a state_dict
    # of the network that evaluation uses in place of `model`; empty without one
    source: dict = dataclasses.field(default_factory=dict)  # an imported network's file, sha256, layout (published)

    def save(self, path):
        """Write it to path atomically (_write_atomically)."""
        _write_atomically({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, path)

    @classmethod
    def load(cls, path):
        """The checkpoint at path, loaded on the CPU; a CheckpointError that says why it cannot be used otherwise.
        Fields an older checkpoint lacks take their defaults."""
        path = Path(path)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path} does not exist") from None
        except Exception as e:  # torch's own message advises weights_only=False: wrong for a damaged file, unsafe
            raise CheckpointError(f"{path} is damaged (truncated or overwritten) or not an hw2 checkpoint "
                                  f"({type(e).__name__})") from None
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING}
        lacks = sorted(required - checkpoint.keys() if isinstance(checkpoint, dict) else required)
        if lacks:
            raise CheckpointError(f"{path} is not an hw2 checkpoint: it has no {', '.join(lacks)}")
        checkpoint["config"].setdefault("shortcut", "projection")  # written before shortcut was a choice
        checkpoint["config"].setdefault("dataset", "cifar10")  # written before CIFAR-100
        return cls(**{f.name: checkpoint[f.name] for f in fields if f.name in checkpoint})


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


def check_architecture(checkpoint, expected, path):
    """Raise CheckpointError unless the checkpoint's network is the `expected` one: a Config, or a dict of some of
    the ARCHITECTURE fields (the ones a user gave) and the dataset it is tested on, whose classes its outputs are."""
    if not isinstance(expected, dict):
        expected = {k: getattr(expected, k) for k in (*ARCHITECTURE, "dataset")}
    saved = checkpoint.config
    if "dataset" in expected and saved["dataset"] != expected["dataset"]:
        raise CheckpointError(f"{path} was trained on {saved['dataset']} ({saved['num_classes']} classes) and cannot "
                              f"be tested on {expected['dataset']}: use {field('dataset', saved['dataset'])}, or a "
                              f"checkpoint of a run on {expected['dataset']}")
    wrong = {k: v for k, v in expected.items() if k != "dataset" and saved[k] != v}
    if wrong:
        have = ", ".join(f"{k} {saved[k]}" for k in ARCHITECTURE)
        want = ", ".join(f"{k} {v}" for k, v in wrong.items())
        raise CheckpointError(f"{path} holds a network with {have}, not {want}: pass the values it was trained "
                              f"with, or choose another {field('modeldir')}")
