"""devices/ioapic.py: the I/O APIC on the fake bus, wired to a local APIC as on a PC (82093AA datasheet)."""

import pytest

from vmcore.fuzz import assert_survives_fuzzing

IOAPIC, LAPIC = 0xFEC0_0000, 0xFEE0_0000
MASKED, LEVEL, REMOTE_IRR, LOW_ACTIVE, LOGICAL = 1 << 16, 1 << 15, 1 << 14, 1 << 13, 1 << 11


def reg(bus, index: int) -> int:
    bus.writel(IOAPIC, index)
    return bus.readl(IOAPIC + 0x10)


def set_reg(bus, index: int, value: int) -> None:
    bus.writel(IOAPIC, index)
    bus.writel(IOAPIC + 0x10, value)


def route(bus, pin: int, low: int, destination: int = 0) -> None:
    set_reg(bus, 0x11 + 2 * pin, destination << 24)
    set_reg(bus, 0x10 + 2 * pin, low)


def eoi(bus) -> None:
    bus.writel(LAPIC + 0xB0, 0)


@pytest.fixture
def pc(fake_bus):
    fake_bus.attach("lapic")
    fake_bus.writel(LAPIC + 0xF0, 0x1FF)  # software-enable the local APIC
    fake_bus.attach("ioapic")
    return fake_bus


def test_power_on_registers(fake_bus):
    fake_bus.attach("ioapic", apic_id=5)
    assert reg(fake_bus, 0) == 5 << 24
    assert reg(fake_bus, 1) == 0x0017_0020  # 24 entries, version 0x20
    assert all(reg(fake_bus, 0x10 + 2 * pin) == MASKED for pin in range(24))
    set_reg(fake_bus, 0, 0xFFFF_FFFF)
    assert reg(fake_bus, 0) == 0x0F00_0000  # only bits 24-27 are writable


def test_an_edge_triggered_pin_sends_one_interrupt_per_rising_edge(pc):
    route(pc, 4, 0x41)
    pc.irq(4).raise_()
    assert pc.acknowledge() == 0x41
    eoi(pc)
    pc.irq(4).raise_()  # already high: no new edge
    assert not pc.intr()
    pc.irq(4).lower()
    pc.irq(4).raise_()
    assert pc.acknowledge() == 0x41


def test_the_timer_line_0_arrives_on_pin_2(pc):
    route(pc, 2, 0x30)
    pc.irq(0).pulse()
    assert pc.acknowledge() == 0x30


def test_a_level_triggered_pin_holds_remote_irr_until_eoi_and_resends_while_asserted(pc):
    route(pc, 10, LEVEL | 0x50)
    pc.irq(10).raise_()
    assert reg(pc, 0x10 + 20) & REMOTE_IRR
    assert pc.acknowledge() == 0x50
    assert not pc.intr()
    eoi(pc)  # the local APIC broadcasts the EOI: still asserted, so it comes again
    assert pc.acknowledge() == 0x50
    pc.irq(10).lower()
    eoi(pc)
    assert not reg(pc, 0x10 + 20) & REMOTE_IRR and not pc.intr()


def test_the_eoi_register_clears_remote_irr_too(pc):
    route(pc, 11, LEVEL | 0x51)
    pc.irq(11).raise_()
    pc.acknowledge()
    pc.irq(11).lower()
    pc.writel(IOAPIC + 0x40, 0x51)
    assert not reg(pc, 0x10 + 22) & REMOTE_IRR


def test_masked_pins_send_nothing_and_unmasking_an_asserted_level_pin_sends(pc):
    route(pc, 9, MASKED | LEVEL | 0x60)
    pc.irq(9).raise_()
    assert not pc.intr()
    route(pc, 9, LEVEL | 0x60)
    assert pc.acknowledge() == 0x60


def test_active_low_pins_assert_when_the_line_is_low(pc):
    pc.irq(12).raise_()
    route(pc, 12, LOW_ACTIVE | 0x70)
    assert not pc.intr()
    pc.irq(12).lower()
    assert pc.acknowledge() == 0x70


def test_messages_go_only_to_a_matching_destination(pc):
    route(pc, 5, 0x45, destination=3)  # physical ID 3: not this CPU (ID 0)
    pc.irq(5).raise_()
    assert not pc.intr()
    pc.writel(LAPIC + 0xD0, 0x01 << 24)  # logical ID bit 0
    route(pc, 6, LOGICAL | 0x46, destination=0x01)
    pc.irq(6).raise_()
    assert pc.acknowledge() == 0x46


def test_survives_fuzzing():
    assert_survives_fuzzing("ioapic", runs=10, steps=300)


def test_a_flood_of_unmodelled_messages_is_logged_once(pc, caplog):
    route(pc, 7, 0x400 | 0x20)  # NMI delivery mode
    for _ in range(1000):
        pc.irq(7).pulse()
    assert sum("NMI messages are not modelled" in r.getMessage() for r in caplog.records) == 1
    assert not pc.intr()
