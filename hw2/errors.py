"""Expected failures: each message says what is wrong and what to do, and a front end shows it as one line.
Anything else (a shape bug, CUDA out of memory) is a bug or a resource problem and keeps its traceback.

A message names the Config fields (or a front end's own parameters) it is about with `field(name, value)`, which
words them as the front end in charge names its parameters: keyword arguments for a Python caller, `on_nan='skip'`
(python_words, the default); flags on the command line, `--on_nan skip` (flag_words, for the length of a command:
worded_as); assignments in a notebook, `on_nan = 'skip'` (hw2.notebook.parameter_words, once its parameters cell
has run). A message is worded as it is made, so an error, or a warning a reporter shows (hw2.events), reads the
same wherever it is shown.
"""
import contextlib
import signal

NO_VALUE = object()  # field(name) with no value to give it


def python_words(name, value):
    """How a Python caller names a parameter: as a keyword argument of Config (or of the function)."""
    return name if value is NO_VALUE else f"{name}={value!r}"


def format_default(value):
    """A value as it is typed on the command line: `91 136` for a list, `''` for the empty string."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return repr(value) if value == "" else str(value)


def flag_words(name, value):
    """How a command line (python -m hw2, hw2.bench, the benchmarks' scripts) names a parameter: `--on_nan skip`,
    `--resume`, `--no-tta`."""
    if value is NO_VALUE or value is True:
        return f"--{name}"
    if value is False:
        return f"--no-{name}"
    return f"--{name} {format_default(value)}"


_words = python_words  # how the front end in charge names parameters (use_words)


def field(name, value=NO_VALUE):
    """The parameter `name`, and optionally the value to give it, as the front end in charge names it: for a
    message."""
    return _words(name, value)


def use_words(words):
    """From now on messages name parameters as words(name, value) does (a notebook's: for the kernel's life)
    -> the words they used until now."""
    global _words
    previous, _words = _words, words
    return previous


@contextlib.contextmanager
def worded_as(words):
    """Messages made inside the block name parameters as words(name, value) does (a command line's)."""
    previous = use_words(words)
    try:
        yield
    finally:
        use_words(previous)


class Hw2Error(Exception):
    """Base class of the failures a user can fix: bad input, missing data, a busy or damaged modeldir."""

    def _render_traceback_(self):
        """What IPython shows instead of a traceback: the one line, as on the command line."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(Hw2Error, ValueError):
    """A Config field (a flag, a notebook parameter) has a value it cannot take."""


class DataError(Hw2Error):
    """The CIFAR-10 or CIFAR-100 files are missing, damaged or not what they should be, or cannot be downloaded."""


class CheckpointError(Hw2Error):
    """A checkpoint is missing, unreadable, not an hw2 checkpoint, of another network, or cannot be written."""


class ModeldirError(Hw2Error):
    """The modeldir cannot be used: not writable, or holding another run's checkpoints."""


class ModeldirBusy(ModeldirError):
    """Another training run holds the modeldir's lock."""


class TrainingDiverged(Hw2Error):
    """The loss became infinite or NaN."""


class Interrupted(Hw2Error):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint (`path`; None on a process other than the main
    one, which writes none)."""

    def __init__(self, signum, path):
        self.signum, self.path = signum, path
        written = f"checkpoint written to {path}" if path else "the main process wrote the checkpoint"
        super().__init__(f"stopped by {signal.Signals(signum).name}; {written}. Run it again with "
                         f"{field('resume', True)} to continue.")


class ImageError(Hw2Error):
    """A picture to classify cannot be read: missing, empty, not an image, truncated or damaged, or too large."""
