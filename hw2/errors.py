"""Expected failures: each message says what is wrong and what to do, and the command line prints it as one
line. Anything else (a shape bug, CUDA out of memory) is a bug or a resource problem and keeps its traceback."""


class Hw2Error(Exception):
    """Base class of the failures a user can fix: bad input, missing data, a busy or damaged modeldir."""


class ConfigError(Hw2Error, ValueError):
    """A Config field (a flag, a notebook parameter) has a value it cannot take."""
