"""What broke: a :class:`Problem` with its signature (what "the same failure" means) and the device's traceback."""

from __future__ import annotations

import os
import traceback
from typing import Any

import attrs

from .watchdog import Hung


@attrs.frozen
class Problem:
    """One failure: ``kind`` and ``message`` for the report, ``signature`` to tell it from others."""

    kind: str
    message: str
    signature: tuple[Any, ...]
    exception: str = ""
    traceback: str = ""


#: This package's folder: its frames are the fuzzer's, not the device's.
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _format_tb(exc: BaseException) -> str:
    """The traceback from the first frame outside the fuzzer and the bus: where the device is."""
    frames = traceback.extract_tb(exc.__traceback__)
    keep = [f for f in frames if os.path.dirname(f.filename) != _PACKAGE
            and not f.filename.endswith(("vmcore/bus.py", "vmcore/clock.py"))]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(keep or frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()


def _where(exc: BaseException) -> tuple[str, int, str]:
    frames = traceback.extract_tb(exc.__traceback__)
    frame = frames[-1] if frames else None
    return (frame.filename, frame.lineno or 0, frame.name) if frame else ("?", 0, "?")


def exception_problem(exc: BaseException, doing: str) -> Problem:
    filename, lineno, func = _where(exc)
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return Problem("exception", f"{text} (in {func}, {filename}:{lineno}, during {doing})",
                   ("exception", type(exc).__qualname__, filename, lineno), text, _format_tb(exc))


def hang_problem(exc: Hung, doing: str) -> Problem:
    tb = ""
    if exc.cause is not None:
        tb = _format_tb(exc.cause).rsplit("\n", 1)[0] + "\n(interrupted there by the fuzzer's watchdog)"
    where = ""
    if exc.cause is not None:
        filename, lineno, func = _where(exc.cause)
        where = f"; interrupted in {func}, {filename}:{lineno}"
    return Problem("hang", f"{doing} {exc}{where}", ("hang",), "", tb)


def region_problem(message: str, exc: BaseException | None = None) -> Problem:
    text = "" if exc is None else "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return Problem("region", message + (f": {text}" if text else ""), ("region", message),
                   text, "" if exc is None else _format_tb(exc))
