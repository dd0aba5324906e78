"""What training and the testing of checkpoints report as they go, and the text that shows it. The library prints
nothing: it calls the methods of a Reporter, and each front end shows them its own way: Lines, here, prints the
assignment's lines and a text progress bar (the command line's reporter, and a script's: `train(config, Lines())`);
hw2.notebook's adds a widget progress bar and live curves. The base class shows nothing, so a Python caller that
passes no reporter runs silently.

A message a reporter gets (`warning`) may name parameters with hw2.errors.field, which the reporter words its way
(hw2.errors.in_words).
"""
import math
from pathlib import Path

from tqdm import tqdm

from hw2.data import reports_top5
from hw2.errors import field, in_words, python_words
from hw2.modeldir import BEST, list_checkpoints
from hw2.models import count_parameters



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
        """Something the user should know that does not stop the run (a str, may name fields)."""

    def steps_begin(self, epoch, first_step, steps):
        """Epoch `epoch` (0-based) trains from step first_step (0, or where a resumed run stopped) of `steps`."""

    def step(self):
        """One more step of the epoch is done."""

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


class Lines(Reporter):
    """Shows what training and testing report as the assignment's lines on stdout (`Epoch 36 Loss 0.2091
    Duration 48.022 seconds.`, `Test accuracy: 0.8612`) and each epoch's steps as a text progress bar: the
    command line's way, which a notebook's reporter builds on. `words` names parameters in its messages
    (hw2.errors: python_words, flag_words, ...)."""

    def __init__(self, words=python_words):
        self.bar, self.epochs, self.words = None, None, words

    def show(self, text):
        print(text, flush=True)

    def progress_bar(self, **kwargs):
        """A tqdm bar on stderr, which the lines on stdout leave alone when stdout goes to a file."""
        return tqdm(**kwargs)

    def continuing(self, modeldir):
        self.show(in_words(f"{modeldir} holds a run of these same parameters: continuing it, as "
                           f"{field('resume', True)} would (a new {field('modeldir')} trains another).", self.words))

    def resumed(self, path, epoch, step):
        self.show(f"Resuming from {path} (epoch {epoch}, step {step})")

    def started(self, config, model, device, dtype):
        self.epochs = config.epochs
        self.show(f"ResNet-{model.depth} (version {config.resnet_version}, {count_parameters(model):,} parameters) "
                  f"on {device} in {str(dtype).removeprefix('torch.')}")

    def nothing_to_train(self, modeldir, epochs):
        self.show(f"{modeldir} has finished all {epochs} epochs; nothing to train.")

    def warning(self, message):
        self.show(f"warning: {in_words(message, self.words)}")

    def steps_begin(self, epoch, first_step, steps):
        self.bar = self.progress_bar(total=steps, initial=first_step, desc=f"Epoch {epoch + 1}/{self.epochs}",
                                     leave=False)

    def step(self):
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
