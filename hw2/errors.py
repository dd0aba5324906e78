"""Expected failures: each message says what is wrong and what to do, and a front end shows it as one line.
Anything else (a shape bug, CUDA out of memory) is a bug or a resource problem and keeps its traceback.

A message names the Config fields (or a front end's own parameters) it is about with `field(name, value)`, and
the front end in charge words them (`use_words`): `--on_nan skip` on the command line, `on_nan = 'skip'` in a
notebook, `on_nan='skip'` (a keyword argument) for a Python caller.
"""
import ast
import contextlib
import re
import signal

_MARK = "\x1f"  # the ASCII unit separator: never in a path or a value's repr
_FIELD = re.compile(f"{_MARK}(\\w+)(?:=(.*?))?{_MARK}", re.DOTALL)
NO_VALUE = object()  # field(name) with no value to give it


def field(name, value=NO_VALUE):
    """A reference, inside an error message, to the parameter `name` and optionally the value to give it."""
    return f"{_MARK}{name}{'' if value is NO_VALUE else '=' + repr(value)}{_MARK}"


def python_words(name, value):
    """How a Python caller names a parameter: as a keyword argument of Config (or of the function)."""
    return name if value is NO_VALUE else f"{name}={value!r}"


_words = python_words


def set_words(words):
    """From now on messages name parameters as words(name, value) says (value NO_VALUE when the message names
    no value): a front end's own terms. -> the words before."""
    global _words
    before, _words = _words, words
    return before


@contextlib.contextmanager
def use_words(words):
    """set_words for the block only."""
    before = set_words(words)
    try:
        yield
    finally:
        set_words(before)


def in_words(text):
    """`text` with each field() in it worded as the front end in charge says (use_words)."""
    return _FIELD.sub(lambda m: _words(m[1], NO_VALUE if m[2] is None else ast.literal_eval(m[2])), text)


class Hw2Error(Exception):
    """Base class of the failures a user can fix: bad input, missing data, a busy or damaged modeldir."""

    def __str__(self):
        return in_words(super().__str__())

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
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum, path):
        self.signum, self.path = signum, path
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint written to {path}. Run it again "
                         f"with {field('resume', True)} to continue.")


class ImageError(Hw2Error):
    """A picture to classify cannot be read: missing, empty, not an image, truncated or damaged, or too large."""
