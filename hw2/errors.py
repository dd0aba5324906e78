"""Expected failures: each message says what is wrong and what to do, and a front end shows it as one line.
Anything else (a shape bug, CUDA out of memory) is a bug or a resource problem and keeps its traceback.

A message names the Config fields (or a front end's own parameters) it is about with `field(name, value)`, and
each front end words them in its own `except` by setting the error's `words`: `--on_nan skip` on the command line
(flag_words), `on_nan = 'skip'` in a notebook (hw2.notebook.parameter_words); a Python caller reads keyword
arguments, `on_nan='skip'` (python_words, the default). Messages a reporter gets (hw2.events) are worded the same
way, by in_words.
"""
import ast
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


def in_words(text, words=python_words):
    """`text` with each field() in it worded as words(name, value) says (value NO_VALUE where it names none)."""
    return _FIELD.sub(lambda m: words(m[1], NO_VALUE if m[2] is None else ast.literal_eval(m[2])), text)


class Hw2Error(Exception):
    """Base class of the failures a user can fix: bad input, missing data, a busy or damaged modeldir. `words` is
    how its message names parameters (python_words unless a front end's except sets its own)."""

    words = staticmethod(python_words)

    def __str__(self):
        return in_words(super().__str__(), self.words)

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
