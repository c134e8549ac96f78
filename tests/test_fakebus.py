"""vmcore.testing: the fake bus devices are unit-tested on, and the pytest fixtures around it."""

from typing import Sequence

import attrs
import pytest

from vmcore.bus import BusError, Direction, Region, Space, Transaction
from vmcore.clock import ManualClock
from vmcore.device import Device, DeviceContext, prop
from vmcore.memory import GuestMemory
from vmcore.testing import FakeBus

# --- tiny devices written for these tests -------------------------------------------------------


@attrs.frozen
class ProbeConfig:
    port: int = prop(0x300, "First port.")
    mmio: int = prop(0xD000_0000, "MMIO window base.")


class Probe(Device):
    """Logs every access on 8 ports and an 8-byte MMIO window; reads answer 0x1122334455667788 cut to size."""

    type_name = "probe"
    Config = ProbeConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.log = []

    def regions(self) -> Sequence[Region]:
        return [
            Region(Space.PIO, self.config.port, 8, self.pio_read, self.pio_write),
            Region(Space.MMIO, self.config.mmio, 0x10, self.mmio_read, self.mmio_write),
        ]

    def pio_read(self, offset, size):
        self.log.append(("pio", "read", offset, size))
        return 0x1122334455667788 & ((1 << (8 * size)) - 1)

    def pio_write(self, offset, size, value):
        self.log.append(("pio", "write", offset, size, value))

    def mmio_read(self, offset, size):
        self.log.append(("mmio", "read", offset, size))
        return 0x1122334455667788 & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset, size, value):
        self.log.append(("mmio", "write", offset, size, value))


@attrs.frozen
class TickerConfig:
    port: int = prop(0x40, "Control port.")
    irq: int = prop(0, "IRQ line pulsed on each tick.")
    period: int = prop(1_000, "Nanoseconds between ticks.")


class Ticker(Device):
    """A periodic timer: writing 1 to the port starts it; each period it pulses its IRQ line."""

    type_name = "ticker"
    Config = TickerConfig

    def __init__(self, config, ctx: DeviceContext):
        super().__init__(config, ctx)
        self.line = ctx.irq(config.irq)
        self.ticks = 0

    def regions(self):
        return [Region(Space.PIO, self.config.port, 1, None, self.write, sizes=(1,))]

    def write(self, offset, size, value):
        if value == 1:
            self.ctx.clock.call_later(self.config.period, self._tick)

    def _tick(self):
        self.ticks += 1
        self.line.pulse()
        self.ctx.clock.call_later(self.config.period, self._tick)


@attrs.frozen
class DmaConfig:
    base: int = prop(0xE000_0000, "Register window.")
    irq: int = prop(5, "Completion interrupt (level).")


class DmaCopier(Device):
    """Copy engine: SRC at 0x0, DST at 0x8, LEN at 0x10; writing LEN copies guest memory and raises IRQ.

    64-bit registers, reached as 32-bit halves (an 8-byte MMIO access reaches a device as its two
    4-byte halves, low first); only the low halves are used here."""

    type_name = "dma-copier"
    Config = DmaConfig

    def __init__(self, config, ctx: DeviceContext):
        super().__init__(config, ctx)
        self.memory: GuestMemory = ctx.memory
        self.line = ctx.irq(config.irq)
        self.regs = {0x0: 0, 0x8: 0}

    def regions(self):
        return [Region(Space.MMIO, self.config.base, 0x18, self.read, self.write, sizes=(4,))]

    def read(self, offset, size):
        return self.regs.get(offset, 0)

    def write(self, offset, size, value):
        if offset == 0x10:
            self.memory.write(self.regs[0x8], self.memory.read(self.regs[0x0], value))
            self.line.raise_()
        else:
            self.regs[offset] = value


@attrs.frozen
class BombConfig:
    delay: int = prop(500, "Nanoseconds until the run ends.")


class Bomb(Device):
    """Ends the run from a timer, the way a watchdog would."""

    type_name = "bomb"
    Config = BombConfig

    def __init__(self, config, ctx: DeviceContext):
        super().__init__(config, ctx)
        ctx.clock.call_later(config.delay, lambda: ctx.exit(7, "watchdog fired"))

    def regions(self):
        return []


# --- attaching ----------------------------------------------------------------------------------


def test_attach_by_registered_type_name(fake_bus):
    console = fake_bus.attach("debugcon", backend="memory")
    assert fake_bus.devices == {"debugcon": console}
    assert type(console).__module__ == "vmcore_devices.debugcon"


def test_attach_by_class_converts_properties_like_a_profile(fake_bus):
    probe = fake_bus.attach(Probe, port="0x380")
    assert fake_bus.devices == {"probe": probe}
    assert probe.config.port == 0x380
    assert probe.ctx.name == "probe"


def test_second_device_of_a_type_gets_a_distinct_name(fake_bus):
    first = fake_bus.attach("debugcon", backend="memory")
    second = fake_bus.attach("debugcon", backend="memory", port=0xE9)
    assert fake_bus.devices["debugcon"] is first
    assert [name for name, dev in fake_bus.devices.items() if dev is second] != ["debugcon"]
    assert len(fake_bus.devices) == 2


def test_attach_with_an_explicit_name(fake_bus):
    probe = fake_bus.attach(Probe, name="left")
    assert fake_bus.devices == {"left": probe}
    assert fake_bus.pio.find(0x300)[1] == "left"


def test_overlapping_devices_are_rejected_naming_both(fake_bus):
    fake_bus.attach(Probe, name="first")
    with pytest.raises(BusError) as excinfo:
        fake_bus.attach(Probe, name="second", port=0x304, mmio=0xC000_0000)
    assert "first" in str(excinfo.value) and "second" in str(excinfo.value)
    assert "second" not in fake_bus.devices


def test_rejected_device_leaves_no_claim_behind(fake_bus):
    fake_bus.attach(Probe, name="first")
    # The PIO range is free; the MMIO window overlaps "first".
    with pytest.raises(BusError):
        fake_bus.attach(Probe, name="second", port=0x380)
    assert fake_bus.pio.find(0x380) is None
    assert [owner for _, owner in fake_bus.pio.claims()] == ["first"]


def test_rejected_device_is_closed(fake_bus):
    closed = []

    class ClosingProbe(Probe):
        def close(self):
            closed.append(self.ctx.name)

    fake_bus.attach(Probe, name="first")
    with pytest.raises(BusError):
        fake_bus.attach(ClosingProbe, name="second")
    assert closed == ["second"]


# --- accesses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "size", "expected"),
    [("inb", 1, 0x88), ("inw", 2, 0x7788), ("inl", 4, 0x55667788)],
)
def test_port_reads_reach_the_device_with_their_width(fake_bus, call, size, expected):
    probe = fake_bus.attach(Probe)
    assert getattr(fake_bus, call)(0x302) == expected
    assert probe.log == [("pio", "read", 2, size)]


@pytest.mark.parametrize(("call", "size"), [("outb", 1), ("outw", 2), ("outl", 4)])
def test_port_writes_reach_the_device_with_their_width(fake_bus, call, size):
    probe = fake_bus.attach(Probe)
    getattr(fake_bus, call)(0x304, 0xAB)
    assert probe.log == [("pio", "write", 4, size, 0xAB)]


@pytest.mark.parametrize(
    ("call", "size", "expected"),
    [("readb", 1, 0x88), ("readw", 2, 0x7788), ("readl", 4, 0x55667788)],
)
def test_mmio_reads_reach_the_device_with_their_width(fake_bus, call, size, expected):
    probe = fake_bus.attach(Probe)
    assert getattr(fake_bus, call)(0xD000_0008) == expected
    assert probe.log == [("mmio", "read", 8, size)]


@pytest.mark.parametrize(("call", "size"), [("writeb", 1), ("writew", 2), ("writel", 4)])
def test_mmio_writes_reach_the_device_with_their_width(fake_bus, call, size):
    probe = fake_bus.attach(Probe)
    getattr(fake_bus, call)(0xD000_0008, 0x5A)
    assert probe.log == [("mmio", "write", 8, size, 0x5A)]


def test_an_8_byte_mmio_access_reaches_the_device_as_two_halves_low_first(fake_bus):
    probe = fake_bus.attach(Probe)
    assert fake_bus.readq(0xD000_0008) == 0x5566778855667788
    fake_bus.writeq(0xD000_0008, 0x1122334455667788)
    assert probe.log == [("mmio", "read", 8, 4), ("mmio", "read", 12, 4),
                         ("mmio", "write", 8, 4, 0x55667788), ("mmio", "write", 12, 4, 0x11223344)]


def test_port_and_mmio_spaces_are_separate(fake_bus):
    probe = fake_bus.attach(Probe, port=0x300, mmio=0x1000_0000)
    assert fake_bus.readb(0x300) == 0xFF
    fake_bus.outb(0x1000_0000 & 0xFFFF, 1)
    assert probe.log == []
    assert fake_bus.mmio.unclaimed == {(Direction.READ, 0x300): 1}


def test_every_access_is_recorded_as_a_transaction(fake_bus):
    fake_bus.attach(Probe, name="p")
    fake_bus.outw(0x300, 0x1234)
    fake_bus.readl(0xD000_0004)
    fake_bus.inb(0x200)
    assert fake_bus.transactions == [
        Transaction(Space.PIO, 0x300, 2, Direction.WRITE, 0x1234, "p"),
        Transaction(Space.MMIO, 0xD000_0004, 4, Direction.READ, 0x55667788, "p"),
        Transaction(Space.PIO, 0x200, 1, Direction.READ, 0xFF, None),
    ]


def test_fake_bus_without_tracing_records_no_transactions():
    bus = FakeBus(trace=False)
    try:
        probe = bus.attach(Probe)
        bus.outb(0x300, 1)
        assert probe.log == [("pio", "write", 0, 1, 1)]
        assert bus.transactions == []
    finally:
        bus.close()


# --- time, interrupts, DMA ----------------------------------------------------------------------


def test_step_fires_device_timers_and_irq_events_carry_the_clock_time(fake_bus):
    ticker = fake_bus.attach(Ticker, irq=3, period=1_000)
    fake_bus.outb(0x40, 1)

    assert fake_bus.step(2_500) == 2

    assert ticker.ticks == 2
    assert fake_bus.irq_events == [(1_000, 3, True), (1_000, 3, False), (2_000, 3, True), (2_000, 3, False)]
    assert fake_bus.clock.now() == 2_500
    assert fake_bus.irq_level(3) is False


def test_no_timer_runs_until_the_device_is_started(fake_bus):
    ticker = fake_bus.attach(Ticker)
    assert fake_bus.step(10_000) == 0
    assert ticker.ticks == 0
    assert fake_bus.irq_events == []


def test_device_dma_reads_and_writes_fake_guest_memory(fake_bus, fake_memory):
    fake_memory.write(0x1000, b"payload!")
    fake_bus.attach(DmaCopier, irq=5)

    fake_bus.writeq(0xE000_0000, 0x1000)
    fake_bus.writeq(0xE000_0008, 0x2000)
    fake_bus.writeq(0xE000_0010, 8)

    assert fake_memory.read(0x2000, 8) == b"payload!"
    assert fake_bus.irq_level(5) is True
    assert fake_bus.irq_events == [(0, 5, True)]


def test_irq_lines_are_shared_by_number(fake_bus):
    assert fake_bus.irq(4) is fake_bus.irq(4)
    assert fake_bus.irq(4) is not fake_bus.irq(3)


def test_guest_exit_from_a_timer_is_recorded_not_raised(fake_bus):
    fake_bus.attach(Bomb, delay=500)
    fake_bus.step(400)
    assert fake_bus.exit_status is None
    fake_bus.step(200)
    assert fake_bus.exit_status == 7
    assert fake_bus.exit_reason == "watchdog fired"


def test_fixtures_share_one_clock_and_memory(fake_bus, fake_clock, fake_memory):
    assert isinstance(fake_clock, ManualClock)
    assert fake_clock is fake_bus.clock
    assert fake_memory is fake_bus.memory
    # 1 MiB of RAM at 0, as the fixture documents.
    assert [(slot.base, slot.size) for slot in fake_memory] == [(0, 1 << 20)]


def test_device_registry_fixture_has_the_built_ins(device_registry):
    assert "debugcon" in device_registry and "debug-exit" in device_registry


# --- the pytest plugin ----------------------------------------------------------------------------


def test_fixtures_arrive_in_a_fresh_pytest_run_through_the_entry_point(pytester):
    pytester.makepyfile(
        test_console="""
        def test_console(fake_bus, fake_clock, fake_memory, device_registry):
            console = fake_bus.attach("debugcon", backend="memory")
            fake_bus.outb(0xF1, ord("A"))
            fake_clock.step(10)
            fake_memory.write(0, b"x")
            assert console.output == b"A"
            assert fake_clock.now() == 10
            assert "debug-exit" in device_registry
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
