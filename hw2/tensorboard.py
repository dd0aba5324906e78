"""TensorBoard event files of training runs, so that `tensorboard --logdir` shows runs side by side: written as a
run trains (the Config's `tensorboard`: TensorBoardReport, in modeldir/tensorboard/), or afterwards from the
metrics.csv of runs that exist (write_runs: `python -m hw2 runs DIR... --tensorboard OUT`), under the same names.

The scalars, against TensorBoard's step, the SGD steps done since the start of the run (He et al. count
iterations so): at the end of each epoch, its metrics row (hw2.modeldir.METRICS, and valid_top5 for CIFAR-100) as
`epoch/<column>`, NaN ones left out (no validation split), and `epoch/images_per_second`, the epoch's training
images over its seconds; while training, every so many steps of an epoch (hw2.train.CHECK_EVERY) that step's batch
loss as `step/train_loss`. Each start of a run (the first, and each resume) writes an event file of its own, which tells TensorBoard to drop
what earlier ones hold from the step it goes on from: a resumed run shows the epochs it trains again once,
as trained again.

TensorBoard is an optional install (`pip install tensorboard`): without it, asking for its files is refused at
once (require_tensorboard).
"""
import math
from pathlib import Path

from hw2.config import Config
from hw2.data import steps_per_epoch
from hw2.errors import ConfigError, Hw2Error, field
from hw2.events import Relay
from hw2.modeldir import is_run, read_config
from hw2.runs import run_metrics


def require_tensorboard():
    """torch's SummaryWriter; where the tensorboard package is not installed, a ConfigError that says how to
    install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"{field('tensorboard', True)} needs the tensorboard package, which is not installed: "
                          "pip install tensorboard (or, in the repository, pip install -e .[tensorboard])") from None
    return SummaryWriter


def write_epoch(writer, row, steps, batch_size):
    """An epoch's scalars, from its metrics row (train()'s, or metrics.csv's), at the steps done by its end; it took
    `steps` steps of `batch_size` images."""
    end = int(row["epoch"]) * steps
    for name, value in row.items():
        if name != "epoch" and not math.isnan(value):
            writer.add_scalar(f"epoch/{name}", value, end)
    writer.add_scalar("epoch/images_per_second", steps * batch_size / row["seconds"], end)


class TensorBoardReport(Relay):
    """Passes every event of a training run on to the front end's reporter (`shown`) and writes the run's event
    files in `logdir` as it goes: each epoch's scalars once it is done, and every `every` steps of an epoch that
    step's loss. Reading the loss waits for the device, so `every` is the loop's CHECK_EVERY, the steps at which the
    loop looks at the device too. A context manager: its end closes the files."""

    def __init__(self, shown, logdir, every):
        super().__init__(shown)
        self.logdir, self.every, self.writer = logdir, every, None
        self.batch_size, self.epoch, self.done, self.steps = None, 0, 0, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()

    def started(self, config, model, device, dtype):
        super().started(config, model, device, dtype)
        self.batch_size = config.batch_size  # over all processes: an epoch trains steps * batch_size images

    def steps_begin(self, epoch, first_step, steps):
        super().steps_begin(epoch, first_step, steps)
        self.epoch, self.done, self.steps = epoch, first_step, steps
        if self.writer is None:  # this start's first step: what earlier starts wrote from here on is dropped
            self.writer = require_tensorboard()(str(self.logdir), purge_step=epoch * steps + first_step + 1)

    def step(self, loss):
        super().step(loss)
        self.done += 1
        if self.done % self.every == 0:
            self.writer.add_scalar("step/train_loss", loss.item(), self.epoch * self.steps + self.done)

    def epoch_finished(self, row, metrics):
        super().epoch_finished(row, metrics)
        write_epoch(self.writer, row, self.steps, self.batch_size)
        self.writer.flush()  # for a TensorBoard that watches the run


def write_runs(folders, out):
    """Event files for the runs among `folders` (modeldirs, folders of reports/), from their metrics.csv: the
    epochs' scalars as training writes them (metrics.csv has no step losses), in a folder of `out` named after each
    run's folder, whose earlier event files are replaced -> those folders. An epoch's steps and images are counted as
    training on CIFAR's 50,000 training images takes them (hw2.data.steps_per_epoch)."""
    SummaryWriter = require_tensorboard()
    runs = [Path(folder) for folder in folders if is_run(folder)]
    names = [run.resolve().name for run in runs]
    shared = sorted({name for name in names if names.count(name) > 1})
    if shared:
        raise Hw2Error(f"more than one run is in a folder named {', '.join(shared)}, which would mix them in one "
                       f"TensorBoard run: compare them in two goes, each with another {field('tensorboard')}")
    written = []
    for run, name in zip(runs, names):
        logdir = Path(out) / name
        for old in logdir.glob("events.out.tfevents.*"):
            old.unlink()
        config = Config.from_dict(read_config(run))
        with SummaryWriter(str(logdir)) as writer:
            for row in run_metrics(run):
                write_epoch(writer, row, steps_per_epoch(config), config.batch_size)
        written.append(logdir)
    return written
