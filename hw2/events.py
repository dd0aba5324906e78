"""What training and the testing of checkpoints report as they go, and the text that shows it. The library prints
nothing: it calls the methods of a Reporter, and each front end shows them its own way: Lines, here, prints the
assignment's lines and a text progress bar (the command line's reporter, and a script's: `train(config, Lines())`);
hw2.notebook's adds a widget progress bar and live curves. The base class shows nothing, so a Python caller that
passes no reporter runs silently.

A message a reporter gets (`warning`) names parameters as the front end in charge does (hw2.errors.field). What a
reporter shows of a training run is also kept in the run's modeldir/log.txt (logging_to). With the Config's
`tensorboard`, training reports to a Relay (hw2.tensorboard's), which passes every event on to the front end's
reporter and writes TensorBoard's event files besides.
"""
import contextlib
import math
import sys
from pathlib import Path

from tqdm import tqdm

from hw2.data import reports_top5
from hw2.errors import field
from hw2.modeldir import BEST, list_checkpoints
from hw2.models import count_parameters
from hw2.runtime import dtype_name



class Reporter:
    # training (hw2.train.train), on the main process only
    def continuing(self, modeldir):
        """A notebook's rerun found a run of the same parameters in modeldir and continues it."""

    def resumed(self, path, epoch, step):
        """The run goes on from the checkpoint at path: `epoch` whole epochs and `step` steps into the next."""

    def started(self, config, model, device, dtype):
        """The run is set up: its Config, the network (hw2.models.ResNet), the torch device and dtype."""

    def nothing_to_train(self, modeldir, epochs):
        """The run in modeldir has finished all its epochs already."""

    def warning(self, message):
        """Something the user should know that does not stop the run."""

    def steps_begin(self, epoch, first_step, steps):
        """Epoch `epoch` (0-based) trains from step first_step (0, or where a resumed run stopped) of `steps`."""

    def step(self, loss):
        """One more step of the epoch is done; `loss` is its batch's loss, a tensor on the device, which reading
        waits for the device: now and then only, never every step."""

    def steps_end(self):
        """The epoch's steps are over: all done, or stopped."""

    def stopping(self, signal_name):
        """A stop signal arrived: the run stops after this step, with a checkpoint."""

    def epoch_finished(self, row, metrics):
        """An epoch ended: its metrics row (hw2.modeldir.METRICS), all rows so far; metrics.csv and any
        checkpoint of it are written."""

    def finished(self, metrics, modeldir):
        """The run has done all its epochs (also when there was nothing left to train)."""

    # testing checkpoints (hw2.evaluate.evaluate_checkpoints)
    def testing(self, path, tta):
        """The checkpoint at path is restored and about to be tested, with flip test-time augmentation or not."""

    def tested(self, path, result):
        """The checkpoint at path was tested: hw2.evaluate.evaluate's result."""

    @contextlib.contextmanager
    def logging_to(self, log):
        """Inside the block, what this reporter shows is also written to `log`, an open text file (training's
        modeldir/log.txt). The base class shows nothing, so it writes nothing."""
        yield


class Lines(Reporter):
    """Shows what training and testing report as the assignment's lines on stdout (`Epoch 36 Loss 0.2091
    Duration 48.022 seconds.`, `Test accuracy: 0.8612`) and each epoch's steps as a text progress bar: the
    command line's way, which a notebook's reporter builds on."""

    def __init__(self):
        self.bar, self.epochs, self.log = None, None, None

    def show(self, text):
        print(text, flush=True)
        if self.log is not None:
            self.log.write(text + "\n")

    @contextlib.contextmanager
    def logging_to(self, log):
        self.log = log
        try:
            yield
        finally:
            self.log = None

    def progress_bar(self, **kwargs):
        """A tqdm bar on stderr where a person watches it, a terminal; none where stderr goes to a file or a pipe
        (a batch job's output, a log), which would keep each of its redraws: the epoch lines tell the same."""
        return tqdm(**{"disable": not sys.stderr.isatty(), **kwargs})

    def continuing(self, modeldir):
        self.show(f"{modeldir} holds a run of these same parameters: continuing it, as {field('resume', True)} "
                  f"would (a new {field('modeldir')} trains another).")

    def resumed(self, path, epoch, step):
        self.show(f"Resuming from {path} (epoch {epoch}, step {step})")

    def started(self, config, model, device, dtype):
        self.epochs = config.epochs
        self.show(f"ResNet-{model.depth} (version {config.resnet_version}, {count_parameters(model):,} parameters) "
                  f"on {device} in {dtype_name(dtype)}")

    def nothing_to_train(self, modeldir, epochs):
        self.show(f"{modeldir} has finished all {epochs} epochs; nothing to train.")

    def warning(self, message):
        self.show(f"warning: {message}")

    def steps_begin(self, epoch, first_step, steps):
        self.bar = self.progress_bar(total=steps, initial=first_step, desc=f"Epoch {epoch + 1}/{self.epochs}",
                                     leave=False)

    def step(self, loss):
        self.bar.update()

    def steps_end(self):
        self.bar.close()

    def stopping(self, signal_name):
        self.show(f"\n{signal_name}: stopping after this step (again to stop at once)")

    def epoch_finished(self, row, metrics):
        self.show(epoch_line(row))

    def finished(self, metrics, modeldir):
        self.show(summary(metrics, modeldir))

    def testing(self, path, tta):
        self.show(f"Restored model parameters from {path}")
        if tta:
            self.show("With flip test-time augmentation (tta): each image's logits averaged with its mirror image's")

    def tested(self, path, result):
        self.show(f"Test accuracy: {result['accuracy']:.4f}")
        if reports_top5(len(result["per_class_accuracy"])):
            self.show(f"Top-5 test accuracy: {result['top5_accuracy']:.4f}")


class Relay(Reporter):
    """Passes every event on to another reporter, `shown` (the front end's): the base of a reporter that does
    more with some events, whatever the front end shows of them (hw2.tensorboard's writes them down)."""

    def __init__(self, shown):
        self.shown = shown

    def logging_to(self, log):
        return self.shown.logging_to(log)


def _relay(name):
    def relay(self, *args):
        return getattr(self.shown, name)(*args)
    return relay


for _name in [name for name in vars(Reporter) if not name.startswith("_") and name != "logging_to"]:  # the events
    setattr(Relay, _name, _relay(_name))


def epoch_line(row):
    """The assignment's line, `Epoch 36 Loss 0.2091 Duration 48.022 seconds.`, with the validation accuracy."""
    line = f"Epoch {row['epoch']} Loss {row['train_loss']:.4f} Duration {row['seconds']:.3f} seconds."
    if not math.isnan(row["valid_acc"]):
        line += f" Validation accuracy {row['valid_acc']:.4f}"
    return line


def summary(metrics, modeldir):
    """One line on a finished run: epochs, time, best and last validation accuracy, where the checkpoints are,
    and which holds the best epoch (none without a validation split)."""
    seconds = sum(row["seconds"] for row in metrics)
    took = f"{seconds:.1f} seconds" if seconds < 60 else f"{seconds / 60:.1f} minutes"
    text = f"Trained {len(metrics)} epoch{'s' if len(metrics) != 1 else ''} in {took}"
    valid = [row for row in metrics if not math.isnan(row["valid_acc"])]
    best = max(valid, key=lambda row: row["valid_acc"]) if valid else None  # the first of equals, as training keeps
    if best:
        text += (f"; validation accuracy best {best['valid_acc']:.4f} (epoch {best['epoch']}), "
                 f"last {valid[-1]['valid_acc']:.4f}")
    newest = list_checkpoints(modeldir)[-1:]
    text += f". Checkpoints in {modeldir}" + (f" (newest {newest[0].name})." if newest else ".")
    if metrics and not best:
        return text + f" No validation split, so no {BEST}."
    return text + (f" {BEST} holds epoch {best['epoch']}." if best and (Path(modeldir) / BEST).exists() else "")
