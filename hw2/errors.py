"""Expected failures: each message says what is wrong and what to do, and the command line prints it as one
line. Anything else (a shape bug, CUDA out of memory) is a bug or a resource problem and keeps its traceback."""
import signal


class Hw2Error(Exception):
    """Base class of the failures a user can fix: bad input, missing data, a busy or damaged modeldir."""

    def _render_traceback_(self):
        """What IPython shows instead of a traceback: the one line, as on the command line."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(Hw2Error, ValueError):
    """A Config field (a flag, a notebook parameter) has a value it cannot take."""


class DataError(Hw2Error):
    """The CIFAR-10 files are missing, damaged or not CIFAR-10, or cannot be downloaded."""


class CheckpointError(Hw2Error):
    """A checkpoint is missing, unreadable, not an hw2 checkpoint, of another network, or cannot be written."""


class ModeldirError(Hw2Error):
    """The modeldir cannot be used: not writable, or holding another run's checkpoints."""


class ModeldirBusy(ModeldirError):
    """Another training run holds the modeldir's lock."""


class TrainingDiverged(Hw2Error):
    """The loss became infinite or NaN."""


class Interrupted(Hw2Error):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum, path):
        self.signum, self.path = signum, path
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint written to {path}. Run the same "
                         "command with --resume (resume = True in a notebook) to continue.")
