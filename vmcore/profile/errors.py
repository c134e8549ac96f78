"""Where a profile value came from, and the error that names it."""

from __future__ import annotations

from ..immutable import Immutable


class Where(Immutable):
    """A place in a profile: file and 1-based line (line 0: not from a file)."""

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class ProfileError(Exception):
    """A profile problem, as ``file:line: key: what is wrong (what was expected)``."""

    def __init__(self, where: Where, key: str, message: str) -> None:
        self.where = where
        self.key = key
        self.message = message
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")
