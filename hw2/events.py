"""What training and the testing of checkpoints report as they go. The library prints nothing: it calls the
methods of a Reporter, and each front end shows them its own way (hw2.cli: lines and a text progress bar;
hw2.notebook: the same lines, a widget progress bar and live curves). This base class shows nothing, so a
Python caller that passes no reporter runs silently.

A message a reporter gets (`warning`) may name parameters with hw2.errors.field, which hw2.errors.in_words(message)
words as the front end in charge says (hw2.errors.use_words).
"""


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
        """An epoch ended: its metrics row (hw2.train.METRICS), all rows so far; metrics.csv and any
        checkpoint of it are written."""

    def finished(self, metrics, modeldir):
        """The run has done all its epochs (also when there was nothing left to train)."""

    # testing checkpoints (hw2.evaluate.evaluate_checkpoints)
    def testing(self, path, tta):
        """The checkpoint at path is restored and about to be tested, with flip test-time augmentation or not."""

    def tested(self, path, result):
        """The checkpoint at path was tested: hw2.evaluate.evaluate's result."""
