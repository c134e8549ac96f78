"""Building devices and wiring them up: one place for the machine, the fake bus and the fuzzer.

Each of the three builds a device the same way (a :class:`DeviceContext` with the clock,
memory, DMA and IRQ lines of its world), claims its regions the same way (all or none),
and keeps its IRQ lines in an :class:`IrqLines`: one :class:`IrqLine` per number, shared by
every device that asks for it, each change recorded if asked and routed to whatever takes
lines in that world (the interrupt controller device, KVM's in-kernel irqchip, nothing).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Sequence

from .bus import Bus, BusError, Region, Space
from .clock import Clock
from .device import DeviceContext
from .dma import DmaSpace
from .irq import InterruptController, IrqLine, LocalInterruptController
from .memory import GuestMemory
from .pci import PciBus

#: Receives (line, level) for every change of any line.
IrqRoute = Callable[[int, bool], None]


class IrqLines:
    """The IRQ lines of one machine (or fake bus), by number.

    ``record(line, level)`` sees every change first (a log, a counter); ``route`` then
    receives it. Both may be set at any time: the controller is known only once the
    machine runs.
    """

    def __init__(self, record: IrqRoute | None = None) -> None:
        self._lines: dict[int, IrqLine] = {}
        self.record = record
        self.route: IrqRoute | None = None

    def line(self, number: int) -> IrqLine:
        """The line ``number``: made on first use, the same object for every device after."""
        line = self._lines.get(number)
        if line is None:
            line = self._lines[number] = IrqLine(number, self._changed)
        return line

    def get(self, number: int) -> IrqLine | None:
        """The line ``number`` if some device asked for it, else None."""
        return self._lines.get(number)

    def __iter__(self) -> Iterator[IrqLine]:
        return iter(list(self._lines.values()))

    def __len__(self) -> int:
        return len(self._lines)

    def _changed(self, number: int, level: bool) -> None:
        record = self.record
        if record is not None:
            record(number, level)
        route = self.route
        if route is not None:
            route(number, level)


def build_device(cls: type, config: Any, name: str, *, clock: Clock, memory: GuestMemory, mmio: Bus | None,
                 irq_lines: IrqLines, pci: PciBus | None = None, log: logging.Logger | None = None) -> Any:
    """An instance of device type ``cls`` with ``config``, handed what its world offers.

    Raises what the device's ``create`` raises: each caller turns that into its own report
    (a profile error, a test failure, a fuzzing finding).
    """
    ctx = DeviceContext(name=name, clock=clock, memory=memory, irq_line=irq_lines.line,
                        log=log if log is not None else logging.getLogger(f"vmcore.device.{name}"), pci=pci,
                        dma=DmaSpace(name, memory, mmio))
    return cls.create(config, ctx)


def claim_regions(regions: Sequence[Region], owner: str, pio: Bus, mmio: Bus) -> None:
    """Claim every region for ``owner``, or none: a BusError (overlap, wrong space) leaves no claim behind."""
    done: list[tuple[Bus, Region]] = []
    try:
        for region in regions:
            bus = pio if region.space is Space.PIO else mmio
            bus.claim(region, owner)
            done.append((bus, region))
    except BusError:
        for bus, region in reversed(done):
            bus.unclaim(region)
        raise


def controller_of(devices: Iterable[Any]) -> InterruptController | None:
    """The first device that is an interrupt controller (takes IRQ lines, raises INTR), or None."""
    for device in devices:
        if isinstance(device, InterruptController):
            return device
    return None


def cpu_interrupts(devices: Iterable[Any], lines: InterruptController | None
                   ) -> InterruptController | LocalInterruptController | None:
    """What raises the CPU's INTR: a local APIC among ``devices``, with ``lines`` (the controller
    that takes the IRQ lines) wired to it; without one, ``lines`` itself."""
    for device in devices:
        if isinstance(device, LocalInterruptController):
            if lines is not None:
                device.connect_external(lines)
            return device
    return lines
