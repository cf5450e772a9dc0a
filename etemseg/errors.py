"""Exceptions raised for bad input; the CLI turns them into a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class EtemsegError(Exception):
    """Base class for errors a user can fix (bad input file, bad config, bad option)."""


class InputFileError(EtemsegError):
    """A source file (frame, model, store) is missing, corrupt or unsupported.

    The message always starts with the offending path.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(EtemsegError):
    """A configuration key is unknown, missing or of the wrong type; the message names the key."""


def is_int(value) -> bool:
    """True for Python/NumPy integers (not bools): the check every ``validate()`` uses."""
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """True for finite Python/NumPy ints and floats (not bools)."""
    import math

    import numpy as np

    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)) and math.isfinite(float(value)))


class OutputPathError(EtemsegError):
    """An output path is refused: it holds something that is not this stage's previous output, or
    it is, contains or lies inside one of the stage's inputs. The message starts with the path."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {problem}")
