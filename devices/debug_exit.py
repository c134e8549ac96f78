"""Debug exit: a port whose write ends the run, as in QEMU's ``isa-debug-exit``.

Writing value v makes the VMM exit with status ``(v << 1) | 1``, so a guest can
report pass or fail to a test harness; the status is always odd, which keeps it
apart from a plain ``hlt`` (0).
"""

from __future__ import annotations

from typing import Sequence

import attrs

from vmcore.bus import Region, Space
from vmcore.device import Device, config, in_range, prop
from vmcore.hookspecs import hookimpl


def _width(_instance: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if value not in (1, 2, 4):
        raise ValueError(f"{attribute.name} must be 1, 2 or 4, got {value}")


@config
class DebugExitConfig:
    port: int = prop(0x501, "First I/O port (QEMU's iobase).", hex=True, validator=in_range(0, 0xFFFF))
    width: int = prop(2, "Number of ports claimed, 1, 2 or 4 (QEMU's iosize).", validator=_width)

    def __attrs_post_init__(self) -> None:
        if self.port + self.width > 0x10000:
            raise ValueError(f"port {self.port:#x} + width {self.width} runs past port 0xffff")


class DebugExit(Device):
    """Ends the run: a write of v exits with status (v << 1) | 1. Reads return all ones."""

    type_name = "debug-exit"
    Config = DebugExitConfig
    class State:
        """Nothing: a write ends the run."""

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, self.config.width, None, self.write, name="exit")]

    def write(self, offset: int, size: int, value: int) -> None:
        self.ctx.exit((value << 1) | 1, f"debug-exit: guest wrote {value:#x}")


@hookimpl
def vmcore_device_types() -> list[type]:
    return [DebugExit]
