"""devices/i440fx.py and devices/piix3.py on the fake bus: config mechanism #1 and BARs that follow the guest."""

from typing import Sequence

import attrs
import pytest

from vmcore.bus import Region, Space
from vmcore.memory import GuestMemoryError
from vmcore.device import Device
from vmcore.fuzz import fuzz_device
from vmcore.pci import Bar, PciConfig

ADDRESS, DATA = 0xCF8, 0xCFC
ENABLE = 0x80000000
COMMAND, STATUS, BAR0, BAR1, INT_LINE, INT_PIN = 0x04, 0x06, 0x10, 0x14, 0x3C, 0x3D
IO_BASE, MEM_BASE = 0xC000, 0xFEB0_0000
SLOT = 3


def cfg(device: int, register: int, function: int = 0, bus: int = 0) -> int:
    return ENABLE | bus << 16 | device << 11 | function << 8 | register & 0xFC


def read32(fake_bus, device: int, register: int, function: int = 0) -> int:
    fake_bus.outl(ADDRESS, cfg(device, register, function))
    return fake_bus.inl(DATA)


def write32(fake_bus, device: int, register: int, value: int) -> None:
    fake_bus.outl(ADDRESS, cfg(device, register))
    fake_bus.outl(DATA, value)


def write16(fake_bus, device: int, register: int, value: int) -> None:
    fake_bus.outl(ADDRESS, cfg(device, register))
    fake_bus.outw(DATA + (register & 2), value)


@attrs.frozen
class ProbeConfig:
    pass


class Probe(Device):
    """A test PCI function at 00:03.0: I/O BAR0 of 32 ports, 32-bit memory BAR1 of 4 KiB, INTA#."""

    type_name = "pci-probe"
    Config = ProbeConfig

    def __init__(self, config, ctx) -> None:
        super().__init__(config, ctx)
        self.pci_config = PciConfig()
        self.pci_config.set_ids(0x1AF4, 0x10F0)
        self.pci_config.set_interrupt_pin(1)
        self.bars = [Bar(0, "io", 0x20), Bar(1, "mem32", 0x1000)]
        self.pci_config.add_bars(self.bars)
        self.accesses: list[tuple[str, int, int, int | None]] = []
        ctx.pci.attach(self, SLOT, name=ctx.name)

    def regions(self) -> Sequence[Region]:
        return []

    def bar_region(self, index: int, base: int) -> Region:
        kind = "io" if index == 0 else "mem"

        def read(offset: int, size: int) -> int:
            self.accesses.append((kind, offset, size, None))
            return 0xA0 + offset

        def write(offset: int, size: int, value: int) -> None:
            self.accesses.append((kind, offset, size, value))

        space = Space.PIO if index == 0 else Space.MMIO
        return Region(space, base, self.bars[index].size, read, write, name=f"bar{index}")


BIOS_BASE, BIOS_SIZE = 0xFFFE_0000, 0x20000


def bios_image() -> bytes:
    """128K whose every 4K page says where in the image it is."""
    return b"".join(bytes([page]) * 0x1000 for page in range(BIOS_SIZE // 0x1000))


@pytest.fixture
def pc(fake_bus):
    fake_bus.memory.add_slot("bios", BIOS_BASE, BIOS_SIZE, readonly=True)
    fake_bus.memory.load(BIOS_BASE, bios_image())
    fake_bus.attach("i440fx")
    fake_bus.attach("piix3")
    return fake_bus


@pytest.fixture
def probe(pc):
    return pc.attach(Probe, name="probe")


def owners(bus) -> list[str]:
    return [owner for _, owner in bus.claims()]


# --- configuration mechanism #1 -------------------------------------------------------------------


def test_host_bridge_ids_at_00_00_0(pc):
    assert read32(pc, 0, 0x00) == 0x1237_8086
    assert read32(pc, 0, 0x08) >> 8 == 0x060000


def test_isa_bridge_ids_at_00_01_0_multifunction(pc):
    assert read32(pc, 1, 0x00) == 0x7000_8086
    assert read32(pc, 1, 0x08) >> 8 == 0x060100
    assert (read32(pc, 1, 0x0C) >> 16) & 0xFF == 0x80


def test_absent_device_reads_all_ones(pc):
    assert read32(pc, 7, 0x00) == 0xFFFFFFFF
    assert read32(pc, 0, 0x00, function=1) == 0xFFFFFFFF


def test_other_buses_read_all_ones(pc):
    pc.outl(ADDRESS, cfg(0, 0, bus=1))
    assert pc.inl(DATA) == 0xFFFFFFFF


def test_byte_and_word_reads_take_the_offset_from_the_data_port(pc):
    pc.outl(ADDRESS, cfg(0, 0x00))
    assert [pc.inb(DATA + n) for n in range(4)] == [0x86, 0x80, 0x37, 0x12]
    assert pc.inw(DATA) == 0x8086
    assert pc.inw(DATA + 2) == 0x1237


def test_data_port_reads_all_ones_without_the_enable_bit(pc):
    pc.outl(ADDRESS, cfg(0, 0) & ~ENABLE)
    assert pc.inl(DATA) == 0xFFFFFFFF
    assert pc.inb(DATA + 1) == 0xFF


def test_data_port_writes_are_dropped_without_the_enable_bit(pc):
    pc.outl(ADDRESS, cfg(1, 0x60) & ~ENABLE)
    pc.outb(DATA, 0x0B)
    assert read32(pc, 1, 0x60) == 0x80808080


def test_address_register_reads_back_the_latched_address(pc):
    pc.outl(ADDRESS, 0x80001234 | 0x3)
    assert pc.inl(ADDRESS) == 0x80001234  # bits 1:0 read as 0


def test_address_bits_1_0_select_the_byte_the_data_port_starts_at(pc):
    """As QEMU decodes them (register | port offset): kvm-unit-tests reads a word at register 2 this way."""
    pc.outl(ADDRESS, cfg(0, 0) | 0x2)
    assert pc.inw(DATA) == 0x1237
    assert pc.inb(DATA + 1) == 0x12
    pc.outl(ADDRESS, cfg(0, 0))
    assert pc.inw(DATA) == 0x8086


def test_byte_access_to_the_address_port_does_not_change_it(pc):
    pc.outl(ADDRESS, cfg(1, 0))
    pc.outb(ADDRESS + 1, 0x06)  # 0xCF9 is the reset control register, not CONFIG_ADDRESS
    assert pc.inl(ADDRESS) == cfg(1, 0)


# --- host bridge and ISA bridge registers ----------------------------------------------------------


def test_pam_registers_round_trip(pc):
    pc.outl(ADDRESS, cfg(0, 0x58))
    pc.outb(DATA + 1, 0x30)  # PAM0: BIOS segment read/write to RAM
    for register in range(0x5A, 0x60):
        pc.outl(ADDRESS, cfg(0, register))
        pc.outb(DATA + (register & 3), 0x33)
    pc.outl(ADDRESS, cfg(0, 0x58))
    assert pc.inl(DATA) == 0x3333_3000
    pc.outl(ADDRESS, cfg(0, 0x5C))
    assert pc.inl(DATA) == 0x3333_3333
    assert pc.devices["i440fx"].pam() == bytes([0x30] + [0x33] * 6)


def test_pam_reserved_bits_read_zero(pc):
    pc.outl(ADDRESS, cfg(0, 0x5C))
    pc.outl(DATA, 0xFFFFFFFF)
    assert pc.inl(DATA) == 0x3333_3333


def test_smram_defaults_to_the_a0000_segment_and_stores_d_open(pc):
    pc.outl(ADDRESS, cfg(0, 0x72))
    assert pc.inb(DATA + 2) == 0x02
    pc.outb(DATA + 2, 0x4A)  # D_OPEN, G_SMRAME
    assert pc.inb(DATA + 2) == 0x4A


def test_smram_d_lck_closes_and_locks_d_open(pc):
    pc.outl(ADDRESS, cfg(0, 0x72))
    pc.outb(DATA + 2, 0x5A)  # D_OPEN, D_LCK, G_SMRAME
    assert pc.inb(DATA + 2) == 0x1A
    pc.outb(DATA + 2, 0x42)
    assert pc.inb(DATA + 2) == 0x1A


def test_pirq_routes_default_to_disabled_and_are_stored(pc):
    assert read32(pc, 1, 0x60) == 0x80808080
    pc.outl(ADDRESS, cfg(1, 0x60))
    pc.outb(DATA + 2, 0x0B)  # PIRQC -> IRQ 11
    assert read32(pc, 1, 0x60) == 0x800B8080
    assert pc.devices["piix3"].pirq_route(2) == 11
    assert pc.devices["piix3"].pirq_route(0) is None


def test_apm_ports_are_stored(pc):
    pc.outb(0xB2, 0x5A)
    pc.outb(0xB3, 0xA5)
    assert (pc.inb(0xB2), pc.inb(0xB3)) == (0x5A, 0xA5)


def test_second_host_bridge_is_refused_naming_both(pc):
    with pytest.raises(ValueError, match="00:00.0 is already taken by i440fx; cannot attach other"):
        pc.attach("i440fx", name="other")


# --- a PCI function's config space through the ports ---------------------------------------------


def test_vendor_id_is_not_writable(probe, pc):
    write32(pc, SLOT, 0x00, 0)
    assert read32(pc, SLOT, 0x00) == 0x10F0_1AF4


def test_status_error_bits_are_write_one_to_clear(probe, pc):
    probe.pci_config.set_word(STATUS, 0x2000 | 0x0800)  # received master abort, signaled target abort
    write16(pc, SLOT, STATUS, 0x2000)
    assert read32(pc, SLOT, COMMAND) >> 16 == 0x0800
    write16(pc, SLOT, STATUS, 0)
    assert read32(pc, SLOT, COMMAND) >> 16 == 0x0800


def test_interrupt_line_is_writable_and_pin_is_read_only(probe, pc):
    write16(pc, SLOT, INT_LINE, 0x030B)
    assert read32(pc, SLOT, INT_LINE) & 0xFFFF == 0x010B


# --- BARs: sizing, placing, moving -------------------------------------------------------------------


def test_io_bar_sizing_gives_the_mask_with_bit_0(probe, pc):
    write32(pc, SLOT, BAR0, 0xFFFFFFFF)
    assert read32(pc, SLOT, BAR0) == 0xFFFFFFE1


def test_mem32_bar_sizing_gives_the_mask_with_type_bits(probe, pc):
    write32(pc, SLOT, BAR1, 0xFFFFFFFF)
    assert read32(pc, SLOT, BAR1) == 0xFFFFF000


def test_programmed_bars_appear_when_decoding_is_enabled(probe, pc):
    write32(pc, SLOT, BAR0, IO_BASE)
    write32(pc, SLOT, BAR1, MEM_BASE)
    assert pc.inb(IO_BASE + 4) == 0xFF  # decoding still off: unclaimed
    write16(pc, SLOT, COMMAND, 0x3)
    assert pc.inb(IO_BASE + 4) == 0xA4
    assert pc.readl(MEM_BASE + 0x10) == 0xB0
    pc.writel(MEM_BASE + 0x20, 0x1234)
    assert probe.accesses == [("io", 4, 1, None), ("mem", 0x10, 4, None), ("mem", 0x20, 4, 0x1234)]
    assert "probe:bar0" in owners(pc.pio) and "probe:bar1" in owners(pc.mmio)


def test_moving_a_bar_moves_the_region(probe, pc):
    write32(pc, SLOT, BAR1, MEM_BASE)
    write16(pc, SLOT, COMMAND, 0x2)
    pc.readl(MEM_BASE)
    write32(pc, SLOT, BAR1, 0xFEC0_0000)
    assert pc.readl(MEM_BASE) == 0xFFFFFFFF  # old address unclaimed
    assert pc.readl(0xFEC0_0008) == 0xA8
    assert [region.base for region, owner in pc.mmio.claims() if owner == "probe:bar1"] == [0xFEC0_0000]


def test_moving_an_io_bar(probe, pc):
    write32(pc, SLOT, BAR0, IO_BASE)
    write16(pc, SLOT, COMMAND, 0x1)
    write32(pc, SLOT, BAR0, 0xD000 | 1)
    assert pc.inb(IO_BASE) == 0xFF
    assert pc.inb(0xD002) == 0xA2


def test_disabling_memory_decode_removes_the_region(probe, pc):
    write32(pc, SLOT, BAR0, IO_BASE)
    write32(pc, SLOT, BAR1, MEM_BASE)
    write16(pc, SLOT, COMMAND, 0x3)
    write16(pc, SLOT, COMMAND, 0x1)
    assert "probe:bar1" not in owners(pc.mmio)
    assert pc.readl(MEM_BASE) == 0xFFFFFFFF
    assert pc.inb(IO_BASE) == 0xA0  # I/O decoding still on


def test_sizing_with_decoding_on_and_restoring_puts_the_bar_back(probe, pc):
    write32(pc, SLOT, BAR1, MEM_BASE)
    write16(pc, SLOT, COMMAND, 0x2)
    write32(pc, SLOT, BAR1, 0xFFFFFFFF)
    assert read32(pc, SLOT, BAR1) == 0xFFFFF000
    write32(pc, SLOT, BAR1, MEM_BASE)
    assert pc.readl(MEM_BASE + 4) == 0xA4


def test_bar_over_another_device_is_left_unmapped_not_raised(probe, pc):
    write32(pc, SLOT, BAR0, 0xCF8)  # on top of the config ports
    write16(pc, SLOT, COMMAND, 0x1)
    assert "probe:bar0" not in owners(pc.pio)
    assert read32(pc, 0, 0) == 0x1237_8086  # mechanism #1 still works


# --- robustness ------------------------------------------------------------------------------------


def test_i440fx_survives_a_hostile_guest():
    report = fuzz_device("i440fx", runs=20, steps=40, seed=1)
    assert report.ok, str(report)



def test_piix3_survives_a_hostile_guest():
    report = fuzz_device("piix3", runs=5, steps=20, seed=1)
    assert report.ok, str(report)


# --- PAM and SMRAM: the memory below 1M follows the registers ---------------------------------------

PAM_SEGMENTS = [(0xC0000 + 0x4000 * i, 0x4000) for i in range(12)] + [(0xF0000, 0x10000)]


def set_pam(fake_bus, register: int, value: int) -> None:
    fake_bus.outl(ADDRESS, cfg(0, register))
    fake_bus.outb(DATA + (register & 3), value)


def test_at_reset_the_bios_area_shows_the_rom_top_and_nothing_else(pc):
    memory = pc.memory
    # 0xE0000-0xFFFFF: the ROM's 128K, read-only (the CPU's first fetches below 1M).
    assert memory.read(0xE0000, 1) == b"\x00"
    assert memory.read(0xFFFF0, 16) == bytes([0x1F]) * 16
    assert memory.read(0xF0000, 1) == memory.read(BIOS_BASE + 0x10000, 1)
    with pytest.raises(GuestMemoryError, match="read-only"):
        memory.write(0xF0000, b"x")
    # 0xA0000-0xDFFFF: no memory (VGA window closed, no option ROMs): the MMIO bus.
    for address in (0xA0000, 0xBFFFF, 0xC0000, 0xDFFFF):
        assert memory.slot_at(address) is None
    # Below and above, DRAM as the profile laid it out.
    memory.write(0x9FFFF, b"r")
    assert memory.read(0x9FFFF, 1) == b"r"


def test_pam_read_write_maps_dram_and_read_only_drops_writes(pc):
    memory = pc.memory
    set_pam(pc, 0x59, 0x30)  # F segment: read and write DRAM
    assert memory.read(0xF0000, 4) == bytes(4)  # DRAM, zero-filled, not the ROM
    memory.write(0xF0000, b"RAM!")
    set_pam(pc, 0x59, 0x10)  # read-only DRAM: what SeaBIOS leaves after copying itself
    assert memory.read(0xF0000, 4) == b"RAM!"
    with pytest.raises(GuestMemoryError, match="read-only"):
        memory.write(0xF0000, b"x")
    pc.writel(0xF0000, 0x12345678)  # a guest write: PCI takes it, i.e. it is dropped
    assert memory.read(0xF0000, 4) == b"RAM!"
    set_pam(pc, 0x59, 0x00)  # back to the ROM; the DRAM behind keeps its bytes
    assert memory.read(0xF0000, 1) == bytes([0x10])
    set_pam(pc, 0x59, 0x30)
    assert memory.read(0xF0000, 4) == b"RAM!"


def test_write_only_segments_read_the_rom_and_write_dram(pc):
    memory = pc.memory
    set_pam(pc, 0x5F, 0x20)  # 0xEC000 segment (PAM6 high nibble): WE only
    assert memory.slot_at(0xEC000) is None  # neither side alone: this device's region serves it
    assert pc.readb(0xEC000) == 0x0C  # the ROM's page 0x0C (0xEC000 - 0xE0000)
    pc.writel(0xEC000, 0xAABBCCDD)
    assert pc.readl(0xEC000) == 0x0C0C0C0C  # reads still go to the ROM
    set_pam(pc, 0x5F, 0x30)
    assert memory.read_int(0xEC000, 4) == 0xAABBCCDD
    assert memory.read(0xE8000, 1) == bytes([0x08])  # the low nibble's segment is untouched


def test_each_pam_nibble_maps_its_own_segment(pc):
    memory = pc.memory
    for index, (base, size) in enumerate(PAM_SEGMENTS[:-1]):
        register, shift = 0x5A + index // 2, 4 * (index % 2)
        pc.outl(ADDRESS, cfg(0, register))
        current = pc.inb(DATA + (register & 3))
        set_pam(pc, register, current | (0x3 << shift))
        memory.write(base, bytes([index + 1]))
    for index, (base, size) in enumerate(PAM_SEGMENTS[:-1]):
        assert memory.read(base, 1) == bytes([index + 1])
        assert memory.read(base + size - 1, 1) == b"\x00"
    assert pc.devices["i440fx"].pam() == bytes([0x00] + [0x33] * 6)


def test_smram_d_open_shows_dram_at_0xa0000(pc):
    memory = pc.memory
    pc.outl(ADDRESS, cfg(0, 0x70))
    pc.outb(DATA + 2, 0x4A)  # D_OPEN | G_SMRAME | C_BASE_SEG 010
    memory.write(0xA0000, b"smram")
    pc.outb(DATA + 2, 0x0A)  # closed again: the window is the PCI side (VGA) once more
    assert memory.slot_at(0xA0000) is None
    pc.outb(DATA + 2, 0x4A)
    assert memory.read(0xA0000, 5) == b"smram"


def test_a_dword_pam_write_is_one_map_update(pc):
    updates = []
    pc.memory.add_listener(lambda removed, added: updates.append((removed, added)))
    pc.outl(ADDRESS, cfg(0, 0x5C))
    pc.outl(DATA, 0x33333333)  # PAM3-PAM6: eight segments at once
    assert len(updates) == 1
    removed, added = updates[0]
    # 0xD0000-0xEFFFF leave the PCI side (a hole, then the ROM) for DRAM, one window per
    # segment: windows from different overlays never merge, so a change to one segment
    # remaps that segment alone. The ROM's window at 0xF0000 is untouched.
    assert [(slot.base, slot.size, slot.readonly) for slot in added] == [
        (0xD0000 + 0x4000 * i, 0x4000, False) for i in range(8)]
    assert [(slot.base, slot.size, slot.readonly) for slot in removed] == [
        (0xE0000 + 0x4000 * i, 0x4000, True) for i in range(4)]
    pc.outl(DATA, 0x33333333)  # the same again: nothing to tell the accelerator
    assert len(updates) == 1


def test_seabios_shadowing_sequence(pc):
    """What SeaBIOS's make_bios_writable and make_bios_readonly do, on the fake bus."""
    memory = pc.memory
    rom = memory.read(BIOS_BASE, BIOS_SIZE)
    pc.outl(ADDRESS, cfg(0, 0x58))
    pc.outl(DATA, 0x30 << 8)  # PAM0 = 0x30
    pc.outl(ADDRESS, cfg(0, 0x5C))
    pc.outl(DATA, 0x33333333)
    pc.outl(ADDRESS, cfg(0, 0x58))
    pc.outl(DATA, 0x33333000)
    memory.write(0xE0000, rom)  # the copy from the high alias
    memory.write(0xF1234, b"variable")  # it writes its data in place
    pc.outl(DATA, 0x11111000)  # read-only again
    pc.outl(ADDRESS, cfg(0, 0x5C))
    pc.outl(DATA, 0x11111111)
    assert memory.read(0xE0000, 0x1234 + 0x10000) [:4] == rom[:4]
    assert memory.read(0xF1234, 8) == b"variable"
    pc.writeb(0xF1234, 0)
    assert memory.read(0xF1234, 8) == b"variable"


def test_a_missing_ram_or_bios_slot_is_named(fake_bus):
    with pytest.raises(ValueError, match="no memory slot named 'bios'.*set the i440fx's ram and bios"):
        fake_bus.attach("i440fx")
    with pytest.raises(ValueError, match="no memory slot named 'dram'"):
        fake_bus.attach("i440fx", ram="dram", bios="")


def test_ram_that_does_not_cover_the_bios_area_is_refused():
    from vmcore.testing import FakeBus

    bus = FakeBus(ram_size=0x80000)
    try:
        with pytest.raises(ValueError, match="must be RAM covering 0xa0000..0xfffff"):
            bus.attach("i440fx", bios="")
    finally:
        bus.close()


def test_without_ram_the_bridge_leaves_memory_alone(fake_bus):
    fake_bus.attach("i440fx", ram="", bios="")
    assert fake_bus.memory.read(0xF0000, 1) == b"\x00"
    fake_bus.memory.write(0xF0000, b"x")
