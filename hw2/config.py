"""The one Config: every field is a notebook parameter and a command-line flag of the same name, and its
`help` is the one place that says what it means (argparse, the notebooks' parameters cells and the README's
flag table are checked against it).

The defaults are He et al.'s recipe: batch 128, SGD with momentum 0.9, learning rate 0.1 divided by 10
after epochs 91 and 136 of 182, weight decay 1e-4, 45k/5k train/validation split.
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path


from hw2.data import dataset_spec
from hw2.errors import ConfigError, field
from hw2.models import architecture_problems
from hw2.runtime import parse_device


def knob(default, help):
    """A Config field with its meaning; a list default is copied for each Config."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Config:
    # network
    resnet_version: int = knob(1, "1: standard blocks (He 2015); 2: pre-activation bottleneck blocks (He 2016)")
    resnet_size: int = knob(3, "blocks per stack: depth 6n+2 for version 1 (3: ResNet-20, 18: ResNet-110), "
                               "9n+2 for version 2 (18: ResNet-164)")
    first_num_filters: int = knob(16, "filters of the start convolution and the first stack (then x2, x4)")
    shortcut: str = knob("projection", "version 1, where a stack changes the shape: 'projection' (1x1 convolution "
                                       "and BN, He et al.'s option B) or 'identity' (zero-padded, option A: "
                                       "the paper's CIFAR-10 networks)")
    # optimisation
    batch_size: int = knob(128, "images per step, over all processes together")
    epochs: int = knob(182, "passes over the training split")
    learning_rate: float = knob(0.1, "peak learning rate of SGD")
    momentum: float = knob(0.9, "SGD momentum")
    nesterov: bool = knob(False, "Nesterov momentum")
    weight_decay: float = knob(1e-4, "L2 penalty on every parameter, as He et al.")
    lr_schedule: str = knob("step", "'step': divide by 10 after each of lr_milestones; 'cosine': cosine decay to 0")
    lr_milestones: list = knob([91, 136], "epochs after which the step schedule divides the rate by 10")
    warmup_epochs: float = knob(0.0, "linear warm-up from 0 over this many epochs (fractions allowed)")
    label_smoothing: float = knob(0.0, "cross-entropy label smoothing")
    ema_decay: float = knob(0.0, "decay of a per-step moving average of the weights and BatchNorm statistics, "
                                 "which validation and testing use (e.g. 0.999; 0: off)")
    resize_fraction: float = knob(0.0, "progressive resizing: this first fraction of the epochs trains on "
                                       "downscaled images (0: off)")
    min_image_size: int = knob(16, "progressive resizing starts at this size and grows in steps of 4 to 32")
    cutout: int = knob(0, "Cutout: side of a square of each training image set to the mean, centred anywhere in the "
                          "image (DeVries & Taylor 2017 use 8 on CIFAR-10; 0: off)")
    flip: str = knob("random", "training images mirrored left-right: 'random' (each with probability 1/2 in every "
                               "epoch, He et al.) or 'alternate' (every other epoch, from a seeded first choice)")
    tta: bool = knob(False, "evaluate each image and its mirror image, logits averaged")
    # data
    dataset: str = knob("cifar10", "'cifar10' or 'cifar100' (its 100 fine labels), which also sets the outputs of "
                                   "the last layer")
    data_dir: str = knob("data", "holds the data set's folder, cifar-10-batches-py/ or cifar-100-python/ "
                                 "(downloaded there when missing)")
    valid_size: int = knob(5000, "images held out of the 50,000 for validation (shuffled, seeded; 0: none)")
    train_subset: int = knob(0, "train on the first N images of the training split only (0: all)")
    # checkpoints
    modeldir: str = knob("", "where checkpoints and metrics.csv go ('': model_v{resnet_version})")
    save_interval: int = knob(10, "checkpoint every this many epochs, and always after the last one")
    tensorboard: bool = knob(False, "also write TensorBoard event files to modeldir/tensorboard/ as training goes: "
                                    "each epoch's metrics.csv columns and images per second, and every 50 steps the "
                                    "training loss (needs pip install tensorboard)")
    resume: bool = knob(False, "continue from the newest checkpoint in modeldir")
    on_nan: str = knob("stop", "non-finite loss: 'stop' with an error, or 'skip' the batch")
    # runtime
    seed: int = knob(0, "initialisation, split, batch order and augmentation")
    device: str = knob("auto", "'auto' (cuda if torch sees an NVIDIA GPU, else mps if it sees an Apple GPU, "
                               "else cpu), 'cpu', 'cuda', 'cuda:1', ..., 'mps'")
    dtype: str = knob("auto", "'auto' (bfloat16 where the hardware runs it natively, float16 on older GPUs, "
                              "else float32), 'bfloat16', 'float16' or 'float32'")
    compile: bool = knob(False, "torch.compile the network: a wait to compile at the start, then faster steps, "
                                "worth it for long runs; where it cannot, training goes on uncompiled")
    # derived, not a knob: the outputs of the last layer are the data set's classes (kept in config.json and in
    # checkpoints, which say what network they hold)
    num_classes: int = dataclasses.field(init=False)

    def __post_init__(self):
        self.num_classes = len(dataset_spec(self.dataset).classes)  # a ConfigError names the data sets
        positive = ["first_num_filters", "batch_size", "epochs", "save_interval"]
        milestones = self.lr_milestones
        checks = [
            *[(name, False, rule) for name, rule, _ in architecture_problems(self.resnet_version, self.resnet_size,
                                                                              self.shortcut)],
            *[(name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "must be an integer >= 1")
              for name in positive],
            ("learning_rate", self.learning_rate > 0, "must be > 0"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("lr_schedule", self.lr_schedule in ("step", "cosine"), "must be 'step' or 'cosine'"),
            ("lr_milestones", isinstance(milestones, list) and all(_is_int(m) and m > 0 for m in milestones),
             "must be a list of positive epochs"),
            ("lr_milestones", milestones == sorted(set(milestones)), "must be increasing"),
            ("warmup_epochs", 0 <= self.warmup_epochs < self.epochs, "must be in [0, epochs)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("ema_decay", 0 <= self.ema_decay < 1, "must be in [0, 1) (0: off)"),
            ("resize_fraction", 0 <= self.resize_fraction < 1, "must be in [0, 1)"),
            ("min_image_size", _is_int(self.min_image_size) and 8 <= self.min_image_size <= 32, "must be in [8, 32]"),
            ("cutout", _is_int(self.cutout) and 0 <= self.cutout <= 32, "must be in [0, 32] (0: off)"),
            ("flip", self.flip in ("random", "alternate"), "must be 'random' or 'alternate'"),
            ("valid_size", _is_int(self.valid_size) and 0 <= self.valid_size < 50000, "must be in [0, 50000)"),
            ("train_subset", _is_int(self.train_subset) and self.train_subset >= 0, "must be >= 0 (0: all)"),
            ("on_nan", self.on_nan in ("stop", "skip"), "must be 'stop' or 'skip'"),
            ("dtype", self.dtype in ("auto", "bfloat16", "float16", "float32"),
             "must be 'auto', 'bfloat16', 'float16' or 'float32'"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{field(name)} {rule}, got {getattr(self, name)!r}")
        if self.device != "auto":
            parse_device(self.device)

    @classmethod
    def from_dict(cls, saved):
        """The Config a saved one (config.json, a checkpoint's config) holds: fields it lacks (older runs) take their
        defaults, and derived ones (num_classes) are derived again."""
        return cls(**{name: value for name, value in saved.items() if name in FIELDS})

    @property
    def checkpoint_dir(self):
        return Path(self.modeldir or f"model_v{self.resnet_version}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


FIELDS = [f.name for f in dataclasses.fields(Config) if f.init]  # the knobs: flags and notebook parameters


def help_text(name):
    return Config.__dataclass_fields__[name].metadata["help"]


# A recipe for a fixed budget of about half an hour of a 2-core CPU (docs/timing.md), knowing that a step costs
# in proportion to the pixels. So 16 epochs of all 50,000 images, the first 12 downscaled (3 each at 16, 20, 24,
# 28: about 5.5 epochs' worth of compute) and the last 4 at 32; cosine schedule after a 1-epoch warm-up,
# Nesterov momentum, more weight decay, label smoothing and flip test-time augmentation.
FAST_RECIPE = dict(epochs=16, batch_size=128, learning_rate=0.2, nesterov=True, weight_decay=5e-4,
                   lr_schedule="cosine", warmup_epochs=1, label_smoothing=0.1, resize_fraction=0.75, min_image_size=16,
                   tta=True, valid_size=0)

# A small run: the network and schedule of the smoke recipe, of notebook 03's first try and, with what the tests
# need changed, of the tests' runs (tests/conftest.py's FIRST_TRY and TEST_RUN say what and why). ResNet-8, on the
# cosine schedule, which decays to 0 over however many epochs a run has, so no milestones need fitting to its
# length. Each use adds its data size, epochs and modeldir.
SMALL_RUN = dict(resnet_size=1, lr_schedule="cosine")

# A check that everything works in minutes (docs/timing.md): 4 epochs on 20,000 images, enough to learn
# visibly (well above chance on the validation images).
SMOKE_RECIPE = {**SMALL_RUN, "epochs": 4, "train_subset": 20000, "valid_size": 1000}

# The fast recipe for 60 epochs, a third of He et al.'s 182: the most accurate short recipe measured
# (docs/reproducing.md, reports/fast60/). It keeps 5,000 validation images, as those runs did, so that it reproduces them and shows a validation
# curve.
FAST60_RECIPE = {**FAST_RECIPE, "epochs": 60, "valid_size": 5000}

RECIPES = {"he": {}, "fast": FAST_RECIPE, "fast60": FAST60_RECIPE, "smoke": SMOKE_RECIPE}


def config_from(recipe="he", **overrides):
    """The Config of a recipe (RECIPES: its values over the defaults) with `overrides` over it: how the command line
    (the flags given) and the notebooks (the parameters set) both make a run's Config."""
    if recipe not in RECIPES:
        raise ConfigError(f"{field('recipe')} must be one of {', '.join(map(repr, RECIPES))}, got {recipe!r}")
    return Config(**{**RECIPES[recipe], **overrides})
