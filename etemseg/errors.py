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
