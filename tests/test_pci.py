"""vmcore/pci.py: config space masks, BAR registers, and BARs placed on plain buses."""

import logging

import pytest

from vmcore.bus import Bus, BusError, Region, Space
from vmcore.pci import Bar, PciBus, PciConfig, PciError

COMMAND, STATUS, BAR0, BAR1, INT_LINE, INT_PIN = 0x04, 0x06, 0x10, 0x14, 0x3C, 0x3D


class Function:
    """A PCI function with an I/O BAR0 (32 ports) and a 32-bit memory BAR1 (4 KiB)."""

    def __init__(self) -> None:
        self.pci_config = PciConfig()
        self.pci_config.set_ids(0x1234, 0x5678)
        self.bars = [Bar(0, "io", 0x20), Bar(1, "mem32", 0x1000, prefetchable=True)]
        self.pci_config.add_bars(self.bars)
        self.seen: list[tuple[int, int, int]] = []

    def bar_region(self, index: int, base: int) -> Region:
        def read(offset: int, size: int) -> int:
            self.seen.append((index, offset, size))
            return offset

        space = Space.PIO if index == 0 else Space.MMIO
        return Region(space, base, self.bars[index].size, read, None, name=f"bar{index}")


@pytest.fixture
def buses():
    pio, mmio = Bus(Space.PIO), Bus(Space.MMIO)
    return pio, mmio, PciBus(pio, mmio)


# --- the bus: unclaim ----------------------------------------------------------------------


def test_unclaim_removes_the_region_and_forgets_routes():
    bus = Bus(Space.PIO)
    region = Region(Space.PIO, 0x100, 4, lambda o, s: 0x12, None)
    bus.claim(region, "dev")
    assert bus.read_route(0x100, 1)[0] is region.read
    bus.unclaim(region)
    assert list(bus.claims()) == []
    assert bus.read_routes[1] == {}
    assert bus.read(0x100, 1) == 0xFF


def test_unclaim_of_an_unknown_region_is_a_bus_error():
    with pytest.raises(BusError, match="not claimed"):
        Bus(Space.MMIO).unclaim(Region(Space.MMIO, 0x1000, 16))


def test_unclaimed_range_can_be_claimed_again():
    bus = Bus(Space.MMIO)
    first = Region(Space.MMIO, 0x1000, 0x1000, lambda o, s: 1, None)
    bus.claim(first, "a")
    bus.unclaim(first)
    bus.claim(Region(Space.MMIO, 0x1800, 0x10, lambda o, s: 2, None), "b")
    assert bus.read(0x1800, 1) == 2


# --- config space masks ----------------------------------------------------------------------


def test_vendor_and_device_ids_are_read_only():
    config = Function().pci_config
    config.write(0, 4, 0xFFFFFFFF)
    assert config.read(0, 4) == 0x56781234


def test_command_decode_bits_are_writable_and_reserved_bits_are_not():
    config = PciConfig()
    config.write(COMMAND, 2, 0xFFFF)
    assert config.read(COMMAND, 2) == 0x0547


def test_status_error_bits_are_write_one_to_clear():
    config = PciConfig()
    config.set_word(STATUS, 0xF910 | 0x0008)  # errors, capabilities, interrupt status
    config.write(STATUS, 2, 0x2000)  # clear received master abort only
    assert config.read(STATUS, 2) == 0xD918
    config.write(STATUS, 2, 0xFFFF)
    assert config.read(STATUS, 2) == 0x0018  # read-only bits stay


def test_writing_zero_to_status_changes_nothing():
    config = PciConfig()
    config.set_word(STATUS, 0x8000)
    config.write(STATUS, 2, 0)
    assert config.status == 0x8000


def test_interrupt_line_is_writable_and_pin_read_only():
    config = PciConfig()
    config.set_interrupt_pin(1)
    config.write(INT_LINE, 2, 0xFF0B)
    assert config.interrupt_line == 0x0B
    assert config.interrupt_pin == 1


def test_unaligned_and_out_of_range_accesses():
    config = PciConfig()
    config.set_ids(0x8086, 0x1237)
    assert config.read(1, 2) == 0x3780
    assert config.read(0xFE, 4) == 0xFFFF0000


def test_interrupt_pin_must_be_none_or_inta_to_intd():
    with pytest.raises(PciError):
        PciConfig().set_interrupt_pin(5)


# --- BAR registers ------------------------------------------------------------------------------


def test_io_bar_sizing_reads_the_size_mask_with_bit_0_set():
    config = Function().pci_config
    config.write(BAR0, 4, 0xFFFFFFFF)
    assert config.read(BAR0, 4) == 0xFFFFFFE1


def test_mem32_bar_sizing_reads_the_size_mask_with_type_bits():
    config = Function().pci_config
    assert config.read(BAR1, 4) == 0x8  # prefetchable, 32-bit, memory
    config.write(BAR1, 4, 0xFFFFFFFF)
    assert config.read(BAR1, 4) == 0xFFFFF008


def test_mem64_bar_takes_two_registers():
    config = PciConfig()
    bar = Bar(2, "mem64", 1 << 33)
    bar.install(config)
    config.write(0x18, 4, 0xFFFFFFFF)
    config.write(0x1C, 4, 0xFFFFFFFF)
    assert config.read(0x18, 4) == 0x4
    assert config.read(0x1C, 4) == 0xFFFFFFFE
    config.write(0x1C, 4, 0x4)
    config.write(0x18, 4, 0)
    assert bar.address(config) == 0x4_0000_0000


@pytest.mark.parametrize("kwargs", [
    {"index": 0, "kind": "io", "size": 24},
    {"index": 0, "kind": "io", "size": 512},
    {"index": 0, "kind": "mem32", "size": 8},
    {"index": 6, "kind": "mem32", "size": 16},
    {"index": 5, "kind": "mem64", "size": 16},
    {"index": 0, "kind": "rom", "size": 16},
])
def test_bad_bars_are_refused(kwargs):
    with pytest.raises(PciError):
        Bar(**kwargs)


# --- the PCI bus ------------------------------------------------------------------------------


def test_attaching_twice_to_one_slot_names_both(buses):
    _, _, pci = buses
    pci.attach(Function(), 3, name="first")
    with pytest.raises(PciError, match="00:03.0 is already taken by first; cannot attach second"):
        pci.attach(Function(), 3, name="second")


def test_absent_function_reads_all_ones_and_drops_writes(buses):
    _, _, pci = buses
    assert pci.config_read(0, 5, 0, 0, 4) == 0xFFFFFFFF
    assert pci.config_read(1, 0, 0, 0, 2) == 0xFFFF
    pci.config_write(0, 5, 0, COMMAND, 2, 3)  # nothing there: no error


def test_bar_maps_only_when_decoding_is_enabled(buses):
    pio, mmio, pci = buses
    function = Function()
    pci.attach(function, 3, name="dev")
    pci.config_write(0, 3, 0, BAR0, 4, 0xC000)
    assert list(pio.claims()) == []
    pci.config_write(0, 3, 0, COMMAND, 2, 0x1)
    (region, owner), = pio.claims()
    assert (region.base, owner) == (0xC000, "dev:bar0")
    assert pio.read(0xC004, 2) == 4
    assert function.seen == [(0, 4, 2)]
    assert list(mmio.claims()) == []  # memory decoding still off


def test_bar_address_zero_is_not_mapped(buses):
    pio, _, pci = buses
    pci.attach(Function(), 3)
    pci.config_write(0, 3, 0, COMMAND, 2, 0x3)
    assert list(pio.claims()) == []


def test_io_bar_past_the_port_space_is_not_mapped(buses):
    pio, _, pci = buses
    pci.attach(Function(), 3)
    pci.config_write(0, 3, 0, COMMAND, 2, 0x1)
    pci.config_write(0, 3, 0, BAR0, 4, 0xFFFFFFFF)  # sizing with decoding on
    assert list(pio.claims()) == []


def test_overlapping_bar_is_logged_and_left_unmapped(buses, caplog):
    pio, _, pci = buses
    pio.claim(Region(Space.PIO, 0xC010, 1, lambda o, s: 0x5A, None), "other")
    function = Function()
    pci.attach(function, 3, name="dev")
    pci.config_write(0, 3, 0, BAR0, 4, 0xC000)
    with caplog.at_level(logging.WARNING, logger="vmcore.pci"):
        pci.config_write(0, 3, 0, COMMAND, 2, 0x1)
    assert "BAR0 at 0xc000 left unmapped" in caplog.text
    assert pci.mapping(function, 0) is None
    assert [owner for _, owner in pio.claims()] == ["other"]
    pci.config_write(0, 3, 0, BAR0, 4, 0xD000)  # a free place: mapped
    assert pci.mapping(function, 0) == 0xD000


# --- assign: BARs laid out as firmware does --------------------------------------------------


class BigFunction(Function):
    """A 64-bit prefetchable memory BAR2 of 64 KiB and an I/O BAR4 of 256 ports, besides Function's."""

    def __init__(self) -> None:
        super().__init__()
        self.bars += [Bar(2, "mem64", 0x10000, prefetchable=True), Bar(4, "io", 0x100)]
        self.pci_config.add_bars(self.bars[2:])

    def bar_region(self, index: int, base: int) -> Region:
        if index < 2:
            return super().bar_region(index, base)
        size, space = (0x100, Space.PIO) if index == 4 else (0x10000, Space.MMIO)
        return Region(space, base, size, lambda o, s: 0, None, name=f"bar{index}")


def test_assign_lays_bars_out_largest_first_aligned_and_enables_decoding(buses):
    pio, mmio, pci = buses
    small, big = Function(), BigFunction()
    pci.attach(small, 3, name="small")
    pci.attach(big, 4, name="big")
    pci.assign()
    assert pci.mapping(big, 2) == 0xE000_0000  # 64 KiB first
    assert pci.mapping(small, 1) == 0xE001_0000 and pci.mapping(big, 1) == 0xE001_1000
    assert pci.mapping(big, 4) == 0xC000  # 256 ports, then the 32
    assert pci.mapping(small, 0) == 0xC100 and pci.mapping(big, 0) == 0xC120
    for function in (small, big):
        assert function.pci_config.word(COMMAND) & 0x3 == 0x3
    assert big.pci_config.long(0x18) == 0xE000_000C and big.pci_config.long(0x1C) == 0  # type bits kept
    assert small.pci_config.long(BAR0) == 0xC101
    assert [region.name for region in pci.bar_regions()] == ["bar0", "bar1", "bar0", "bar1", "bar2", "bar4"]
    assert pio.read(0xC105, 1) == 5 and small.seen == [(0, 5, 1)]


def test_assign_leaves_a_bar_that_does_not_fit_at_zero_and_logs_it(buses, caplog):
    _pio, _mmio, pci = buses
    function = Function()
    pci.attach(function, 3, name="tight")
    with caplog.at_level(logging.WARNING, logger="vmcore.pci"):
        pci.assign(memory_window=(0xE000_0000, 0xE000_0800))
    assert pci.mapping(function, 1) is None and function.pci_config.long(BAR1) & ~0xF == 0
    assert pci.mapping(function, 0) == 0xC000
    assert "tight: no room for BAR1" in caplog.text
