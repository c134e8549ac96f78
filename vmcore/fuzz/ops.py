"""What the hostile guest does: one :class:`Op`, and its line in a report."""

from __future__ import annotations

import attrs

from ..bus import ACCESS_SIZES, Space

#: The value mask of each access size.
ACCESS_MASKS = {size: (1 << (8 * size)) - 1 for size in ACCESS_SIZES}
_SUFFIX = {1: "b", 2: "w", 4: "l", 8: "q"}  # qtest's width letters: outb, inw, readl


@attrs.frozen
class Op:
    """One thing the hostile guest does; ``str(op)`` is its line in a report.

    ``kind`` is ``read``/``write`` (``space``, ``address``, ``size``, ``value``),
    ``step`` (``value`` ns of machine time), ``irq`` (line ``address`` to level
    ``value``), ``ack`` (take the pending interrupt, if any) or ``fill`` (guest RAM
    at ``address`` gets ``data``).
    """

    kind: str
    address: int = 0
    size: int = 0
    value: int = 0
    space: Space = Space.PIO
    data: bytes = attrs.field(default=b"", repr=False)

    def __str__(self) -> str:
        kind = self.kind
        if kind in ("read", "write"):
            pio = self.space is Space.PIO
            verb = ("in" if pio else "read") if kind == "read" else ("out" if pio else "write")
            name = f"{verb}{_SUFFIX[self.size]} {self.address:#x}"
            return name if kind == "read" else f"{name} {hex_of_size(self.value, self.size)}"
        if kind == "step":
            return f"step {self.value}{_human_ns(self.value)}"
        if kind == "irq":
            return f"irq {self.address} {'high' if self.value else 'low'}"
        if kind == "ack":
            return "acknowledge"
        return f"fill {self.address:#x} {_dump(self.data)}"


def hex_of_size(value: int, size: int) -> str:
    return f"{value:#0{2 + 2 * size}x}"


def _human_ns(ns: int) -> str:
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= scale:
            return f"  ({ns / scale:g} {unit})"
    return ""


def _dump(data: bytes) -> str:
    if data and data.count(data[:1]) == len(data):
        return f"{len(data)} x {data[0]:#04x}"
    shown = " ".join(data[i : i + 4].hex() for i in range(0, min(len(data), 32), 4))
    return shown + (f" ... ({len(data)} bytes)" if len(data) > 32 else "")
