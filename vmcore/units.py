"""Parsing of the numbers people write in profiles and on the command line.

Addresses and sizes are taken as strings and parsed here, in one place, so that
YAML 1.1's surprises (``010`` read as 8, ``0x3F8`` typed by the YAML library)
never decide what a number means.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(
    # A prefix needs a digit after it ("0x_" is not zero), and "i" only follows a unit ("KiB", not "1iB").
    r"^\s*(0x_*[0-9a-f][0-9a-f_]*|0b_*[01][01_]*|0o_*[0-7][0-7_]*|[0-9][0-9_]*)\s*([kmgt]?)(?:(?<=[kmgt])i)?b?\s*$",
    re.IGNORECASE,
)


def parse_int(text: str | int) -> int:
    """Parse ``42``, ``0x2A``, ``0b101010``, ``0o52`` or a size like ``4K``/``1M``/``1GiB``.

    Decimal numbers with a leading zero are decimal (``010`` is ten), unlike YAML 1.1.
    Raises ValueError with a message saying what was expected.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a number, got {text!r}")
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"expected a number like 42, 0x2A, 4K, 1M or 1G, got {text!r}")
    digits, unit = match.groups()
    digits = digits.replace("_", "").lower()
    if digits[:2] in ("0x", "0b", "0o"):
        value = int(digits, 0)
    else:
        value = int(digits, 10)
    return value * _UNITS[unit.upper()]


def format_size(size: int) -> str:
    """The shortest exact unit form: 4096 -> '4K', 3000 -> '3000'."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
