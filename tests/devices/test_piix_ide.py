"""devices/piix_ide.py: the PIIX3 IDE function at 00:01.1 and its two legacy channels, on the fake bus."""

import random

import pytest

from tests.devices.seabios_ata import SeaBiosAta, ata_text, pattern, word
from vmcore.device import PropertyError
from vmcore.fuzz import fuzz_device

SLOT, FUNCTION = 1, 1
COMMAND, STATUS, BAR4, INT_LINE = 0x04, 0x06, 0x20, 0x3C
IDETIM_PRI, IDETIM_SEC, SIDETIM = 0x40, 0x42, 0x44
PRIMARY, PRIMARY_CTL, SECONDARY, SECONDARY_CTL = 0x1F0, 0x3F6, 0x170, 0x376
BSY, DRDY, DSC, DRQ, ERR = 0x80, 0x40, 0x10, 0x08, 0x01
NIEN = 0x02
SECTOR = 512
STEP = 1_000_000
BM_BASE, BM_MOVED = 0xC040, 0xC100


def read32(bus, register: int, function: int = FUNCTION, device: int = SLOT) -> int:
    return bus.pci.config_read(0, device, function, register, 4)


def read16(bus, register: int) -> int:
    return bus.pci.config_read(0, SLOT, FUNCTION, register, 2)


def read8(bus, register: int) -> int:
    return bus.pci.config_read(0, SLOT, FUNCTION, register, 1)


def write32(bus, register: int, value: int) -> None:
    bus.pci.config_write(0, SLOT, FUNCTION, register, 4, value)


def write16(bus, register: int, value: int) -> None:
    bus.pci.config_write(0, SLOT, FUNCTION, register, 2, value)


def write8(bus, register: int, value: int) -> None:
    bus.pci.config_write(0, SLOT, FUNCTION, register, 1, value)


def raises(bus, irq: int) -> int:
    return sum(1 for _, n, level in bus.irq_events if n == irq and level)


def owners(bus) -> list[str]:
    return [owner for _, owner in bus.claims()]


def enable_bm(bus, base: int = BM_BASE) -> None:
    write32(bus, BAR4, base)
    write16(bus, COMMAND, 0x0001)


@pytest.fixture
def images(tmp_path):
    """Primary master: pattern(64); secondary master: 40 sectors of the pattern from sector 1000 (all differ)."""
    primary = tmp_path / "primary.img"
    primary.write_bytes(pattern(64))
    secondary = tmp_path / "secondary.img"
    secondary.write_bytes(pattern(1040)[1000 * SECTOR:])
    return primary, secondary


@pytest.fixture
def pc(fake_bus):
    """The PIIX3 ISA bridge at 00:01.0, function 0 of the device the IDE function joins.

    Configuration cycles go straight to the fake bus's PCI bus (``fake_bus.pci``), which is
    where the i440fx host bridge's 0xCF8/0xCFC ports forward them.
    """
    fake_bus.attach("piix3")
    return fake_bus


@pytest.fixture
def piix(pc, images):
    primary, secondary = images
    return pc.attach("piix-ide", primary_master=str(primary), secondary_master=str(secondary))


# --- registration and properties -----------------------------------------------------------------


def test_type_is_registered_with_its_properties(device_registry):
    dtype = device_registry.get("piix-ide")
    assert [p.name for p in dtype.properties] == ["primary_master", "primary_slave", "secondary_master",
                                                  "secondary_slave", "readonly", "slot", "function"]
    assert {p.name: p.default for p in dtype.properties} == {
        "primary_master": "", "primary_slave": "", "secondary_master": "", "secondary_slave": "",
        "readonly": False, "slot": 1, "function": 1}


def test_every_drive_is_optional(pc):
    ide = pc.attach("piix-ide")
    assert ide.disks == [None, None, None, None]
    assert read32(pc, 0x00) == 0x7010_8086


def test_missing_image_is_a_property_error_naming_the_drive(fake_bus, tmp_path):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("piix-ide", secondary_slave=str(tmp_path / "nope.img"))
    assert info.value.key == "secondary_slave"


def test_one_image_on_two_writable_drives_is_refused(fake_bus, images):
    primary, _ = images
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("piix-ide", primary_master=str(primary), secondary_master=str(primary))
    assert info.value.key == "secondary_master"
    assert "already the image of primary_master" in info.value.message


def test_one_image_on_two_readonly_drives_is_allowed(fake_bus, images):
    primary, _ = images
    ide = fake_bus.attach("piix-ide", primary_master=str(primary), secondary_master=str(primary), readonly=True)
    assert [disk.sectors for disk in ide.disks if disk is not None] == [64, 64]


def test_slot_out_of_range_is_a_property_error(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("piix-ide", slot=32)
    assert info.value.key == "slot"


def test_a_taken_pci_slot_is_refused_naming_the_owner(pc):
    with pytest.raises(ValueError, match="00:01.0 is already taken by piix3"):
        pc.attach("piix-ide", function=0)


def test_slot_and_function_place_the_function(pc, images):
    pc.attach("piix-ide", slot=5, function=0, primary_master=str(images[0]))
    assert read32(pc, 0x00, function=0, device=5) == 0x7010_8086
    assert read32(pc, 0x00) == 0xFFFFFFFF  # nothing at 00:01.1


# --- configuration space ---------------------------------------------------------------------------


def test_ids_class_prog_if_and_header_at_00_01_1(piix, pc):
    assert read32(pc, 0x00) == 0x7010_8086
    assert read32(pc, 0x08) == 0x0101_8000  # class 01 (mass storage), sub-class 01 (IDE), prog-if 80, rev 0
    assert read8(pc, 0x0E) == 0x00  # header type 0: the multi-function bit is function 0's
    assert read32(pc, 0x0C, function=0) >> 16 & 0xFF == 0x80  # (the piix3 ISA bridge has it)
    assert read8(pc, 0x3D) == 0  # interrupt pin: none, the channels use IRQ 14 and 15


def test_ids_class_and_prog_if_are_read_only(piix, pc):
    write32(pc, 0x00, 0)
    write32(pc, 0x08, 0xFFFFFFFF)
    write8(pc, 0x09, 0x8F)  # native mode cannot be switched on
    assert read32(pc, 0x00) == 0x7010_8086
    assert read32(pc, 0x08) == 0x0101_8000


def test_bars_0_to_3_are_not_implemented(piix, pc):
    for register in (0x10, 0x14, 0x18, 0x1C):
        write32(pc, register, 0xFFFFFFFF)  # sizing finds nothing
        assert read32(pc, register) == 0
        write32(pc, register, 0x1F0 | 1)  # as SeaBIOS's storage_ide_setup would write for a generic IDE
        assert read32(pc, register) == 0


def test_command_register_takes_io_and_bus_master_only(piix, pc):
    assert read16(pc, COMMAND) == 0
    write16(pc, COMMAND, 0xFFFF)
    assert read16(pc, COMMAND) == 0x0005
    write16(pc, COMMAND, 0x0103)  # SeaBIOS's pci_bios_init_device: IO, memory, SERR
    assert read16(pc, COMMAND) == 0x0001


def test_status_is_0280_and_abort_bits_are_write_one_to_clear(piix, pc):
    assert read16(pc, STATUS) == 0x0280
    piix.pci_config.set_word(STATUS, 0x0280 | 0x3800)
    write16(pc, STATUS, 0x2000)
    assert read16(pc, STATUS) == 0x0280 | 0x1800
    write16(pc, STATUS, 0xFFFF)
    assert read16(pc, STATUS) == 0x0280


def test_interrupt_line_is_scratch_and_pin_stays_zero(piix, pc):
    write16(pc, INT_LINE, 0x010E)
    assert read16(pc, INT_LINE) == 0x000E


# --- BAR4: the bus-master IDE registers ------------------------------------------------------------


def test_bar4_is_a_16_byte_io_bar(piix, pc):
    assert read32(pc, BAR4) == 0x1  # I/O space indicator, address not assigned
    write32(pc, BAR4, 0xFFFFFFFF)
    assert read32(pc, BAR4) == 0xFFFFFFF1  # ~(16 - 1) with bit 0: 16 ports
    write32(pc, BAR4, BM_BASE | 0xF)  # the low bits are not address bits
    assert read32(pc, BAR4) == BM_BASE | 1


def test_bar4_appears_when_io_decoding_is_enabled(piix, pc):
    write32(pc, BAR4, BM_BASE)
    assert pc.inb(BM_BASE + 2) == 0xFF  # decoding off: unclaimed
    assert "piix-ide:bar4" not in owners(pc.pio)
    write16(pc, COMMAND, 0x0001)
    assert pc.inb(BM_BASE + 2) == 0x00
    assert [(region.base, region.size) for region, owner in pc.pio.claims() if owner == "piix-ide:bar4"] \
        == [(BM_BASE, 16)]


def test_moving_bar4_moves_the_registers_with_their_contents(piix, pc):
    enable_bm(pc)
    pc.outl(BM_BASE + 4, 0x0012_3458)  # primary descriptor table pointer
    write32(pc, BAR4, BM_MOVED)
    assert pc.inl(BM_BASE + 4) == 0xFFFFFFFF  # old place unclaimed
    assert pc.inl(BM_MOVED + 4) == 0x0012_3458
    write16(pc, COMMAND, 0x0000)
    assert pc.inl(BM_MOVED + 4) == 0xFFFFFFFF
    assert "piix-ide:bar4" not in owners(pc.pio)


def test_bus_master_command_stores_start_and_direction_only(piix, pc):
    enable_bm(pc)
    pc.outb(BM_BASE, 0xFF)
    assert pc.inb(BM_BASE) == 0x09  # RWCON and SSBM
    assert pc.inb(BM_BASE + 2) & 0x01 == 0  # no transfer: never active
    assert pc.inb(BM_BASE + 8) == 0  # the secondary channel's is its own


def test_bus_master_status_bits(piix, pc):
    enable_bm(pc)
    pc.outb(BM_BASE + 2, 0xFF)
    assert pc.inb(BM_BASE + 2) == 0x60  # drive 0/1 DMA capable are R/W; simplex, active read 0
    piix.bm[2] |= 0x06  # as if an interrupt and an error had been latched
    pc.outb(BM_BASE + 2, 0x64)  # write 1 to clear the interrupt bit, keep the capable bits
    assert pc.inb(BM_BASE + 2) == 0x62
    pc.outb(BM_BASE + 2, 0x02)
    assert pc.inb(BM_BASE + 2) == 0x00


def test_descriptor_table_pointer_is_dword_aligned_in_every_width(piix, pc):
    enable_bm(pc)
    pc.outl(BM_BASE + 8 + 4, 0xFFFFFFFF)
    assert pc.inl(BM_BASE + 8 + 4) == 0xFFFFFFFC
    pc.outw(BM_BASE + 8 + 4, 0x1237)
    pc.outb(BM_BASE + 8 + 7, 0x00)
    assert pc.inl(BM_BASE + 8 + 4) == 0x00FF_1234
    assert pc.inl(BM_BASE + 4) == 0  # the primary's untouched


def test_a_rising_channel_irq_latches_the_bus_master_interrupt_bit(piix, pc):
    enable_bm(pc)
    pc.outb(SECONDARY + 6, 0xA0)
    pc.outb(SECONDARY + 7, 0xEF)  # SET FEATURES on the secondary: completes with an interrupt
    assert pc.irq_level(15)
    assert pc.inb(BM_BASE + 8 + 2) & 0x04
    assert pc.inb(BM_BASE + 2) & 0x04 == 0  # the primary did not interrupt
    pc.inb(SECONDARY + 7)  # acknowledging at the drive leaves the latch set...
    assert pc.inb(BM_BASE + 8 + 2) & 0x04
    pc.outb(BM_BASE + 8 + 2, 0x04)  # ...until software clears it
    assert pc.inb(BM_BASE + 8 + 2) & 0x04 == 0


def test_no_bus_master_interrupt_while_nien_masks_the_channel(piix, pc):
    enable_bm(pc)
    pc.outb(PRIMARY_CTL, NIEN)
    pc.outb(PRIMARY + 6, 0xA0)
    pc.outb(PRIMARY + 7, 0xEF)
    assert not pc.irq_level(14)
    assert pc.inb(BM_BASE + 2) & 0x04 == 0


# --- IDETIM -----------------------------------------------------------------------------------------


def test_idetim_resets_to_zero_and_takes_seabios_decode_enable(piix, pc):
    assert read32(pc, IDETIM_PRI) == 0
    write16(pc, IDETIM_PRI, 0x8000)  # SeaBIOS piix_ide_setup: enable IDE0
    write16(pc, IDETIM_SEC, 0x8000)  # and IDE1
    assert read32(pc, IDETIM_PRI) == 0x8000_8000
    assert (piix.idetim(0), piix.idetim(1)) == (0x8000, 0x8000)
    assert read8(pc, 0x41) & 0x80 and read8(pc, 0x43) & 0x80  # the bits Linux's ata_piix checks


def test_idetim_reserved_bits_read_zero(piix, pc):
    write32(pc, IDETIM_PRI, 0xFFFFFFFF)
    assert read32(pc, IDETIM_PRI) == 0xF3FF_F3FF
    write8(pc, 0x41, 0x40)  # one byte: SITRE alone, decode now off
    assert piix.idetim(0) == 0x40FF


def test_sidetim_is_stored(piix, pc):
    write8(pc, SIDETIM, 0xA5)
    assert read8(pc, SIDETIM) == 0xA5
    assert read8(pc, 0x45) == 0  # nothing past it


def test_legacy_ports_decode_whatever_idetim_says(piix, pc):
    write16(pc, IDETIM_PRI, 0x0000)
    assert pc.inb(PRIMARY + 7) == DRDY | DSC  # stored only, as in QEMU


def test_reset_returns_config_and_bar4_to_power_on(piix, pc):
    enable_bm(pc)
    write16(pc, IDETIM_PRI, 0x8000)
    pc.outb(BM_BASE, 0x01)
    piix.reset()
    assert read16(pc, COMMAND) == 0
    assert read32(pc, IDETIM_PRI) == 0
    assert read32(pc, BAR4) == 0x1
    assert "piix-ide:bar4" not in owners(pc.pio)
    enable_bm(pc)
    assert pc.inb(BM_BASE) == 0


# --- the legacy channels ----------------------------------------------------------------------------


def test_claims_both_legacy_channels_and_nothing_around_them(piix, pc):
    for port in [*range(PRIMARY, PRIMARY + 8), PRIMARY_CTL, *range(SECONDARY, SECONDARY + 8), SECONDARY_CTL]:
        assert pc.pio.find(port) is not None, hex(port)
    for port in (PRIMARY + 8, PRIMARY_CTL + 1, SECONDARY + 8, SECONDARY_CTL + 1, SECONDARY - 1):
        assert pc.pio.find(port) is None, hex(port)  # 0x3F7/0x377 belong to the floppy controller


def test_both_channels_answer_with_the_ata_signature(piix, pc):
    for port in (PRIMARY, SECONDARY):
        assert pc.inb(port + 7) == DRDY | DSC
        assert [pc.inb(port + n) for n in (1, 2, 3, 4, 5)] == [0x01, 1, 1, 0, 0]


def test_channel_registers_are_separate(piix, pc):
    pc.outb(PRIMARY + 2, 0x11)
    pc.outb(SECONDARY + 2, 0x22)
    assert (pc.inb(PRIMARY + 2), pc.inb(SECONDARY + 2)) == (0x11, 0x22)


def test_identify_on_the_secondary_master(piix, pc):
    pc.outb(SECONDARY + 6, 0xA0)
    pc.outb(SECONDARY + 7, 0xEC)
    assert pc.inb(SECONDARY_CTL) == BSY
    pc.step(STEP)
    assert pc.irq_level(15) and not pc.irq_level(14)
    assert pc.inb(SECONDARY + 7) == DRDY | DSC | DRQ
    data = b"".join(pc.inw(SECONDARY).to_bytes(2, "little") for _ in range(SECTOR // 2))
    assert ata_text(data, 27, 20).rstrip() == "VMCORE HARDDISK"
    assert ata_text(data, 10, 10).rstrip() == "VMC0003"  # serials by position: secondary master is the third
    assert word(data, 60) | word(data, 61) << 16 == 40
    assert pc.inb(SECONDARY + 7) == DRDY | DSC
    assert raises(pc, 15) == 1 and raises(pc, 14) == 0


def test_read_sectors_on_the_secondary_master(piix, pc, images):
    _, secondary = images
    pc.outb(SECONDARY + 2, 2)
    pc.outb(SECONDARY + 3, 7)
    pc.outb(SECONDARY + 4, 0)
    pc.outb(SECONDARY + 5, 0)
    pc.outb(SECONDARY + 6, 0xE0)
    pc.outb(SECONDARY + 7, 0x20)
    got = b""
    for _ in range(2):
        pc.step(STEP)
        assert pc.inb(SECONDARY + 7) == DRDY | DSC | DRQ
        got += b"".join(pc.inw(SECONDARY).to_bytes(2, "little") for _ in range(SECTOR // 2))
    assert got == secondary.read_bytes()[7 * SECTOR:9 * SECTOR]
    assert got != images[0].read_bytes()[7 * SECTOR:9 * SECTOR]
    assert raises(pc, 15) == 2 and raises(pc, 14) == 0


def test_write_on_the_secondary_reaches_only_its_image(piix, pc, images):
    primary, secondary = images
    before_primary, before_secondary = primary.read_bytes(), secondary.read_bytes()
    new = bytes(range(256)) * 2
    seabios = SeaBiosAta(pc, SECONDARY, SECONDARY_CTL)
    assert seabios.readwrite(0, lba=3, count=1, data=new) == (0, b"")
    pc.close()
    assert secondary.read_bytes() == before_secondary[:3 * SECTOR] + new + before_secondary[4 * SECTOR:]
    assert primary.read_bytes() == before_primary


def test_readonly_aborts_writes_on_every_drive(pc, images):
    primary, secondary = images
    pc.attach("piix-ide", primary_master=str(primary), secondary_slave=str(secondary), readonly=True)
    for port, select in ((PRIMARY, 0xE0), (SECONDARY, 0xF0)):
        pc.outb(port + 2, 1)
        pc.outb(port + 6, select)
        pc.outb(port + 7, 0x30)
        assert pc.inb(port + 7) == DRDY | DSC | ERR
        assert pc.inb(port + 1) == 0x04


# --- empty channels and drives alone -----------------------------------------------------------------


def test_an_empty_channel_reads_zero_everywhere_and_ignores_commands(pc, images):
    pc.attach("piix-ide", secondary_master=str(images[1]))
    for select in (0xA0, 0xB0):
        pc.outb(PRIMARY + 6, select)
        assert pc.inb(PRIMARY + 7) == 0  # BSY clear: nothing to wait for
        assert pc.inb(PRIMARY_CTL) == 0
    pc.outb(PRIMARY + 2, 0x55)
    pc.outb(PRIMARY + 3, 0xAA)
    assert [pc.inb(PRIMARY + n) for n in range(8)] == [0] * 8  # no register holds a value
    assert pc.inw(PRIMARY) == 0 and pc.inl(PRIMARY) == 0
    pc.outb(PRIMARY + 7, 0xEC)
    pc.outb(PRIMARY_CTL, 0x04)  # SRST
    pc.step(STEP)
    assert pc.inb(PRIMARY + 7) == 0
    assert not pc.irq_level(14) and raises(pc, 14) == 0


def test_seabios_probe_gives_up_on_an_empty_channel_at_once(pc, images):
    pc.attach("piix-ide", secondary_master=str(images[1]))
    seabios = SeaBiosAta(pc, PRIMARY, PRIMARY_CTL)
    transactions = len(pc.transactions)
    assert seabios.detect() == []
    assert seabios.polls == 4  # two powerup status reads per device position, each answered at once
    assert len(pc.transactions) - transactions < 30
    assert pc.clock.now() < 1_000_000  # under a millisecond of machine time, not IDE_TIMEOUT's 32 s


def test_seabios_probe_of_both_channels(piix, pc):
    primary = SeaBiosAta(pc, PRIMARY, PRIMARY_CTL).detect()
    secondary = SeaBiosAta(pc, SECONDARY, SECONDARY_CTL).detect()
    assert [(kind, slave, word(data, 60)) for kind, slave, data in primary] == [("ata", 0, 64)]
    assert [(kind, slave, word(data, 60)) for kind, slave, data in secondary] == [("ata", 0, 40)]
    assert raises(pc, 14) == 0 and raises(pc, 15) == 0  # SeaBIOS polls with nIEN set


def test_seabios_reads_from_the_secondary_master(piix, pc, images):
    seabios = SeaBiosAta(pc, SECONDARY, SECONDARY_CTL)
    seabios.detect()
    assert seabios.readwrite(0, lba=30, count=4) == (0, images[1].read_bytes()[30 * SECTOR:34 * SECTOR])


def test_a_slave_alone_on_its_channel(pc, images):
    pc.attach("piix-ide", secondary_slave=str(images[1]))
    pc.outb(SECONDARY + 6, 0xA0)
    assert pc.inb(SECONDARY + 7) == 0  # the absent master
    pc.outb(SECONDARY + 6, 0xB0)
    assert pc.inb(SECONDARY + 7) == DRDY | DSC
    seabios = SeaBiosAta(pc, SECONDARY, SECONDARY_CTL)
    (kind, slave, data), = seabios.detect()
    assert (kind, slave, ata_text(data, 10, 10).rstrip()) == ("ata", 1, "VMC0004")
    assert seabios.readwrite(1, lba=2, count=1) == (0, images[1].read_bytes()[2 * SECTOR:3 * SECTOR])


def test_execute_device_diagnostic_on_a_slave_alone(pc, images):
    pc.attach("piix-ide", secondary_slave=str(images[1]))
    pc.outb(SECONDARY + 6, 0xB0)
    pc.outb(SECONDARY + 7, 0x90)
    assert pc.inb(SECONDARY + 6) == 0  # signature: device 0 selected, which is absent
    pc.outb(SECONDARY + 6, 0xB0)
    assert pc.inb(SECONDARY + 7) == DRDY | DSC
    assert pc.inb(SECONDARY + 1) == 0x01


# --- robustness -------------------------------------------------------------------------------------


def test_piix_ide_survives_a_hostile_guest():
    report = fuzz_device("piix-ide", runs=20, steps=40, seed=1)
    assert report.ok, str(report)


@pytest.mark.parametrize("drives", [
    {"primary_master": "", "primary_slave": "", "secondary_slave": ""},  # no drive at all
    {"primary_master": "", "primary_slave": ""},  # an empty primary channel
])
def test_piix_ide_with_empty_positions_survives_a_hostile_guest(drives):
    report = fuzz_device("piix-ide", drives, runs=10, steps=40, seed=2, mode="random")
    assert report.ok, str(report)


def test_config_space_and_bus_master_registers_survive_random_writes(piix, pc):
    rng = random.Random(7)
    mapped = 0
    for _ in range(3000):
        size = rng.choice((1, 2, 4))
        # Half the writes at the registers that matter (command, BAR4, IDETIM), half anywhere.
        register = rng.choice((COMMAND, BAR4, IDETIM_PRI, rng.randrange(0x100))) & ~(size - 1)
        value = rng.choice((0, 0xFFFFFFFF, rng.getrandbits(32), 1 << rng.randrange(32), rng.randrange(0x10000)))
        pc.pci.config_write(0, SLOT, FUNCTION, register, size, value & (1 << 8 * size) - 1)
        assert 0 <= pc.pci.config_read(0, SLOT, FUNCTION, register, size) < 1 << 8 * size
        base = pc.pci.mapping(piix, 4)
        if base is not None:  # BAR4 decoded somewhere: poke the bus-master registers there
            mapped += 1
            assert base == read32(pc, BAR4) & ~0x3 and read16(pc, COMMAND) & 1
            offset = rng.randrange(16)
            assert 0 <= pc.inl(base + offset) <= 0xFFFFFFFF
            pc.outb(base + offset, rng.getrandbits(8))
    assert mapped > 100  # the bus-master block was reached, at many places
    assert read32(pc, 0x00) == 0x7010_8086
    assert read32(pc, 0x08) == 0x0101_8000
    assert read8(pc, 0x0E) == 0 and read8(pc, 0x3D) == 0
    assert [read32(pc, r) for r in (0x10, 0x14, 0x18, 0x1C, 0x24)] == [0] * 5
    assert read32(pc, BAR4) & 0xF == 0x1
    assert read16(pc, COMMAND) & ~0x5 == 0
    assert read32(pc, IDETIM_PRI) & ~0xF3FF_F3FF == 0
    assert pc.inb(PRIMARY + 7) == DRDY | DSC  # the channels are untouched by all that
