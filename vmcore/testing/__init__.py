"""Unit-testing devices with no VM: the fake bus.

:class:`FakeBus` puts devices on a port-IO and an MMIO bus exactly as a machine
does, with a :class:`~vmcore.clock.ManualClock`, recorded IRQ lines and fake guest
RAM for DMA; tests issue reads and writes of every width (qtest style)::

    def test_console(fake_bus):
        console = fake_bus.attach("debugcon", backend="memory")
        fake_bus.outb(0xF1, ord("A"))
        assert console.output == b"A"

Installed vmcore registers :mod:`vmcore.testing.pytest_plugin` through the
``pytest11`` entry point, so the ``fake_bus`` fixture is there in any project.
"""

from __future__ import annotations

from typing import Any

from ..bus import Bus, Space, Transaction
from ..clock import ManualClock
from ..device import GuestExit, GuestReset, build_config
from ..irq import InterruptController, IrqLine
from ..memory import GuestMemory
from ..pci import PciBus
from ..plugins import DeviceRegistry
from ..wiring import IrqLines, build_device, claim_regions, controller_of, cpu_interrupts, irq_route

__all__ = ["FakeBus", "IrqEvent"]

IrqEvent = tuple[int, int, bool]  # (machine time in ns, line, new level)


class FakeBus:
    """Devices on real :class:`Bus` objects, driven by the test instead of a CPU."""

    def __init__(self, registry: DeviceRegistry | None = None, ram_size: int = 1 << 20, ram_base: int = 0,
                 trace: bool = True) -> None:
        self._registry = registry
        self.clock = ManualClock()
        self.memory = GuestMemory()
        if ram_size:
            self.memory.add_slot("ram", ram_base, ram_size)
        self.pio = Bus(Space.PIO)
        self.mmio = Bus(Space.MMIO)
        #: The PCI bus over the two buses above: PCI devices attach their functions here.
        self.pci = PciBus(self.pio, self.mmio)
        self.devices: dict[str, Any] = {}
        #: Every IRQ line change, in order: (time, line, level).
        self.irq_events: list[IrqEvent] = []
        #: The IRQ lines, wired as a machine wires them: each change recorded, then routed to
        #: the attached interrupt controller, if any.
        self.irq_lines = IrqLines(record=self._record_irq)
        self.irq_lines.route = self._route_irq
        #: Every access that crossed either bus, in order.
        self.transactions: list[Transaction] = []
        #: Set when a device ended the run (debug-exit): the process status and why, and the stop's
        #: kind: "exit", or "reset" where the device reset the machine (ctx.reset).
        self.exit_status: int | None = None
        self.exit_reason: str | None = None
        self.exit_kind: str | None = None
        if trace:
            self.pio.set_tracer(self.transactions.append)
            self.mmio.set_tracer(self.transactions.append)

    @property
    def registry(self) -> DeviceRegistry:
        if self._registry is None:
            self._registry = DeviceRegistry.default()
        return self._registry

    # --- wiring ------------------------------------------------------------------

    def attach(self, device: str | type, name: str | None = None, **props: Any) -> Any:
        """Build a device (a registered type name, or a device class), claim its regions and start it.

        Properties are given as keywords and converted and validated as a profile's
        would be (``port="0xF1"`` and ``port=0xF1`` both work).
        """
        cls = self.registry.get(device).cls if isinstance(device, str) else device
        name = name or f"{cls.type_name}{'' if cls.type_name not in self.devices else len(self.devices)}"
        config = build_config(cls.Config, props)
        instance = build_device(cls, config, name, clock=self.clock, memory=self.memory, mmio=self.mmio,
                                irq_lines=self.irq_lines, pci=self.pci)
        try:
            regions = list(instance.regions())
            claim_regions(regions, name, self.pio, self.mmio)  # all or none
        except BaseException:
            _close(instance)
            raise
        try:
            # The fake bus is a running machine: host files open now (Device.start).
            start = getattr(instance, "start", None)
            if start is not None:
                start()
        except BaseException:
            for region in regions:
                (self.pio if region.space is Space.PIO else self.mmio).unclaim(region)
            _close(instance)
            raise
        self.devices[name] = instance
        # Interrupt controllers are wired as a machine wires them: an 8259 to a local APIC's
        # LINT0, I/O APICs to the local APIC.
        cpu_interrupts(self.devices.values(), self.controller)
        return instance

    def irq(self, number: int) -> IrqLine:
        """The IRQ line ``number``, recorded in :attr:`irq_events`."""
        return self.irq_lines.line(number)

    def _record_irq(self, number: int, level: bool) -> None:
        self.irq_events.append((self.clock.now(), number, level))

    def _route_irq(self, number: int, level: bool) -> None:
        route = irq_route(self.devices.values(), self.controller)
        if route is not None:
            self._guarded(route, number, level)

    @property
    def controller(self) -> InterruptController | None:
        """The attached interrupt controller (e.g. an i8259), which IRQ lines are routed to."""
        return controller_of(self.devices.values())

    @property
    def cpu_controller(self) -> Any:
        """What the CPU asks for interrupts: an attached local APIC (the controller above on its
        LINT0), else the controller itself, as a machine wires them."""
        return cpu_interrupts(self.devices.values(), self.controller)

    def intr(self) -> bool:
        """The INTR level the CPU would see (False without an interrupt controller)."""
        controller = self.cpu_controller
        return controller is not None and controller.pending()

    def acknowledge(self) -> int:
        """Take the pending interrupt as the CPU would (INTA): its vector."""
        controller = self.cpu_controller
        if controller is None:
            raise RuntimeError("no interrupt controller is attached")
        return controller.acknowledge()

    def irq_level(self, number: int) -> bool:
        """The current level of line ``number``."""
        return self.irq(number).level

    def step(self, nanoseconds: int) -> int:
        """Advance the fake clock, firing due device timers; returns how many fired."""
        return self._guarded(self.clock.step, nanoseconds)

    def close(self) -> None:
        for device in self.devices.values():
            close = getattr(device, "close", None)
            if close is not None:
                close()
        self.memory.close()

    # --- accesses -------------------------------------------------------------------

    def _guarded(self, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except GuestExit as exc:
            self.exit_status = exc.status
            self.exit_reason = exc.reason
            self.exit_kind = "reset" if isinstance(exc, GuestReset) else "exit"
            return None

    def io_read(self, port: int, size: int) -> int:
        return self._guarded(self.pio.read, port, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        self._guarded(self.pio.write, port, size, value)

    def mmio_read(self, address: int, size: int) -> int:
        return self._guarded(self.mmio.read, address, size)

    def mmio_write(self, address: int, size: int, value: int) -> None:
        self._guarded(self.mmio.write, address, size, value)

    def inb(self, port: int) -> int:
        return self.io_read(port, 1)

    def inw(self, port: int) -> int:
        return self.io_read(port, 2)

    def inl(self, port: int) -> int:
        return self.io_read(port, 4)

    def outb(self, port: int, value: int) -> None:
        self.io_write(port, 1, value)

    def outw(self, port: int, value: int) -> None:
        self.io_write(port, 2, value)

    def outl(self, port: int, value: int) -> None:
        self.io_write(port, 4, value)

    def readb(self, address: int) -> int:
        return self.mmio_read(address, 1)

    def readw(self, address: int) -> int:
        return self.mmio_read(address, 2)

    def readl(self, address: int) -> int:
        return self.mmio_read(address, 4)

    def readq(self, address: int) -> int:
        return self.mmio_read(address, 8)

    def writeb(self, address: int, value: int) -> None:
        self.mmio_write(address, 1, value)

    def writew(self, address: int, value: int) -> None:
        self.mmio_write(address, 2, value)

    def writel(self, address: int, value: int) -> None:
        self.mmio_write(address, 4, value)

    def writeq(self, address: int, value: int) -> None:
        self.mmio_write(address, 8, value)


def _close(device: Any) -> None:
    close = getattr(device, "close", None)
    if close is not None:
        close()
