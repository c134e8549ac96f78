"""Building devices and wiring them up: one place for the machine, the fake bus and the fuzzer.

Each of the three builds a device the same way (a :class:`DeviceContext` with the clock,
memory, DMA and IRQ lines of its world), claims its regions the same way (all or none),
and keeps its IRQ lines in an :class:`IrqLines`: one :class:`IrqLine` per number, shared by
every device that asks for it, each change recorded if asked and routed to whatever takes
lines in that world (the interrupt controller device, KVM's in-kernel irqchip, nothing).
"""

from __future__ import annotations

import functools

import logging
from typing import Any, Callable, Iterable, Iterator, Sequence

from .bus import Bus, BusError, Region, Space
from .clock import Clock
from .device import DeviceContext
from .dma import DmaSpace
from .irq import InterruptController, IoInterruptController, IrqLine, LocalInterruptController, implements
from .memory import GuestMemory
from .pci import PciBus
from .tsc import TimeStampCounter

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
        self._owners: dict[int, tuple[str, ...]] = {}
        self.record = record
        self.route: IrqRoute | None = None

    def line(self, number: int, owner: str | None = None) -> IrqLine:
        """The line ``number``: made on first use, the same object for every device after.
        ``owner``: the device asking for it (a trace names who drives each line)."""
        line = self._lines.get(number)
        if line is None:
            line = self._lines[number] = IrqLine(number, self._changed)
        if owner is not None and owner not in self._owners.get(number, ()):
            self._owners[number] = self._owners.get(number, ()) + (owner,)
        return line

    def owners(self, number: int) -> tuple[str, ...]:
        """The devices that asked for line ``number`` (several, where they share it)."""
        return self._owners.get(number, ())

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
                 irq_lines: IrqLines, pci: PciBus | None = None, log: logging.Logger | None = None,
                 tsc: TimeStampCounter | None = None) -> Any:
    """An instance of device type ``cls`` with ``config``, handed what its world offers.

    Raises what the device's ``create`` raises: each caller turns that into its own report
    (a profile error, a test failure, a fuzzing finding).
    """
    ctx = DeviceContext(name=name, clock=clock, memory=memory, irq_line=functools.partial(irq_lines.line, owner=name),
                        log=log if log is not None else logging.getLogger(f"vmcore.device.{name}"), pci=pci,
                        dma=DmaSpace(name, memory, mmio), **({} if tsc is None else {"tsc": tsc}))
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
        if implements(device, InterruptController):
            return device
    return None


def cpu_interrupts(devices: Iterable[Any], lines: InterruptController | None
                   ) -> InterruptController | LocalInterruptController | None:
    """What raises the CPU's INTR: a local APIC among ``devices``, with ``lines`` (the controller
    that takes the IRQ lines) wired to it; without one, ``lines`` itself."""
    devices = list(devices)
    for device in devices:
        if implements(device, LocalInterruptController):
            if lines is not None:
                device.connect_external(lines)
            for ioapic in devices:
                if implements(ioapic, IoInterruptController):
                    ioapic.connect_local(device)  # idempotent
            return device
    return lines


def ioapic_pin(line: int) -> int | None:
    """The I/O APIC pin a PC wires IRQ line ``line`` to: the same number, but the timer's
    line 0 on pin 2 (the override PC firmware announces) and nothing for the cascade's line 2."""
    if line == 0:
        return 2
    return None if line == 2 else line


def irq_route(devices: Iterable[Any], lines: InterruptController | None) -> Callable[[int, bool], None] | None:
    """Where IRQ line changes go, as on a PC: to ``lines`` (the 8259 pair) and to every I/O APIC."""
    ioapics = [device for device in devices if implements(device, IoInterruptController)]
    if not ioapics:
        return lines.set_irq if lines is not None else None

    def route(number: int, level: bool) -> None:
        if lines is not None:
            lines.set_irq(number, level)
        pin = ioapic_pin(number)
        if pin is not None:
            for ioapic in ioapics:
                ioapic.set_irq(pin, level)

    return route
