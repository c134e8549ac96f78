"""devices/ide.py: a legacy ATA channel on the fake bus, one test per behaviour (ATA/ATAPI-6)."""

import hashlib

import pytest

from tests.devices.seabios_ata import (
    BASE,
    BSY,
    CTL,
    DRDY,
    DRQ,
    ERR,
    SECTOR,
    SeaBiosAta,
    ata_text,
    pattern,
    word,
)
from vmcore.device import PropertyError
from vmcore.fuzz import fuzz_device

IRQ = 14
DATA, ERROR, NSECTOR, LBA_LOW, LBA_MID, LBA_HIGH, SELECT, STATUS = (BASE + i for i in range(8))
COMMAND = STATUS
DSC = 0x10
ABRT, IDNF = 0x04, 0x10
NIEN, SRST = 0x02, 0x04
LBA = 0xE0  # device register: LBA mode, master (bits 7 and 5 set, as drivers write them)
STEP = 1_000_000  # far longer than the device's BSY time


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(300))
    return path


@pytest.fixture
def ide(fake_bus, image):
    return fake_bus.attach("ide", image=str(image))


def settle(bus) -> int:
    """Let the device finish being busy; the status it then shows (read via alternate status)."""
    bus.step(STEP)
    return bus.inb(CTL)


def issue(bus, command: int, lba: int = 0, count: int = 1, select: int = LBA) -> None:
    bus.outb(NSECTOR, count & 0xFF)
    bus.outb(LBA_LOW, lba & 0xFF)
    bus.outb(LBA_MID, lba >> 8 & 0xFF)
    bus.outb(LBA_HIGH, lba >> 16 & 0xFF)
    bus.outb(SELECT, select | (lba >> 24 & 0x0F))
    bus.outb(COMMAND, command)


def read_block(bus) -> bytes:
    return b"".join(bus.inw(DATA).to_bytes(2, "little") for _ in range(SECTOR // 2))


def write_block(bus, data: bytes) -> None:
    for i in range(0, SECTOR, 2):
        bus.outw(DATA, int.from_bytes(data[i:i + 2], "little"))


def identify(bus) -> bytes:
    bus.outb(SELECT, 0xA0)
    bus.outb(COMMAND, 0xEC)
    assert settle(bus) == DRDY | DSC | DRQ
    return read_block(bus)


def raises(bus, irq: int = IRQ) -> int:
    return sum(1 for _, n, level in bus.irq_events if n == irq and level)


# --- registration and properties -----------------------------------------------------------


def test_type_is_registered_with_its_properties(device_registry):
    dtype = device_registry.get("ide")
    assert [p.name for p in dtype.properties] == ["port", "ctl_port", "irq", "image", "slave_image", "readonly",
                                                  "model", "serial"]
    assert [p.default_text() for p in dtype.properties][:3] == ["0x1f0", "0x3f6", "14"]


def test_claims_eight_command_ports_and_the_control_port(fake_bus, ide):
    assert all(fake_bus.pio.find(BASE + i) is not None for i in range(8))
    assert fake_bus.pio.find(BASE + 8) is None
    assert fake_bus.pio.find(CTL) is not None and fake_bus.pio.find(CTL + 1) is None


def test_missing_image_property_is_a_property_error_naming_image(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("ide")
    assert info.value.key == "image"


def test_image_file_that_does_not_exist_is_a_property_error_naming_image(fake_bus, tmp_path):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("ide", image=str(tmp_path / "nope.img"))
    assert info.value.key == "image"


def test_missing_slave_image_is_a_property_error_naming_slave_image(fake_bus, image, tmp_path):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("ide", image=str(image), slave_image=str(tmp_path / "nope.img"))
    assert info.value.key == "slave_image"


def test_port_out_of_range_is_a_property_error_naming_port(fake_bus, image):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("ide", image=str(image), port=0xFFFA)
    assert info.value.key == "port"


def test_ctl_port_inside_the_command_block_is_a_property_error(fake_bus, image):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("ide", image=str(image), ctl_port=0x1F7)
    assert info.value.key == "ctl_port"


def test_model_longer_than_40_characters_is_a_property_error(fake_bus, image):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("ide", image=str(image), model="M" * 41)
    assert info.value.key == "model"


# --- power-on and IDENTIFY ---------------------------------------------------------------------


def test_power_on_shows_ready_and_the_ata_signature(fake_bus, ide):
    assert fake_bus.inb(STATUS) == DRDY | DSC
    assert [fake_bus.inb(p) for p in (ERROR, NSECTOR, LBA_LOW, LBA_MID, LBA_HIGH)] == [0x01, 1, 1, 0, 0]


def test_identify_returns_model_serial_byte_swapped_and_lba28_capacity(fake_bus, image):
    fake_bus.attach("ide", image=str(image), model="ACME DISK", serial="SN42")
    data = identify(fake_bus)
    assert ata_text(data, 27, 20) == "ACME DISK".ljust(40)
    assert ata_text(data, 10, 10) == "SN42".ljust(20)
    assert ata_text(data, 23, 4) == "0.1".ljust(8)
    assert data[54:58] == b"CAEM"  # "ACME" with each word's bytes swapped, as it sits in the buffer
    assert word(data, 60) | word(data, 61) << 16 == 300
    assert word(data, 0) == 0x0040
    assert (word(data, 3), word(data, 6)) == (16, 63)
    assert word(data, 49) & 1 << 9  # LBA
    assert word(data, 80) & 1 << 6  # ATA-6
    assert word(data, 47) == 0x8001
    assert sum(data) & 0xFF == 0 and data[510] == 0xA5  # integrity word
    assert fake_bus.inb(STATUS) == DRDY | DSC  # all 512 bytes taken: DRQ drops


def test_image_size_not_a_multiple_of_512_drops_the_partial_sector(fake_bus, tmp_path):
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(10 * SECTOR + 100))
    fake_bus.attach("ide", image=str(path))
    data = identify(fake_bus)
    assert word(data, 60) == 10
    issue(fake_bus, 0x20, lba=10)
    assert settle(fake_bus) == DRDY | DSC | ERR
    assert fake_bus.inb(ERROR) == IDNF


# --- READ SECTORS -------------------------------------------------------------------------------


def test_read_one_sector_returns_the_image_bytes_bsy_then_drq_and_irq(fake_bus, ide, image):
    issue(fake_bus, 0x20, lba=5)
    assert fake_bus.inb(CTL) == BSY
    assert not fake_bus.irq_level(IRQ)
    assert settle(fake_bus) == DRDY | DSC | DRQ
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(STATUS) == DRDY | DSC | DRQ  # acknowledges the interrupt
    assert not fake_bus.irq_level(IRQ)
    assert read_block(fake_bus) == image.read_bytes()[5 * SECTOR:6 * SECTOR]
    assert fake_bus.inb(CTL) == DRDY | DSC  # no interrupt after the last sector of a read
    assert raises(fake_bus) == 1


def test_read_several_sectors_interrupts_once_per_sector(fake_bus, ide, image):
    issue(fake_bus, 0x21, lba=7, count=3)
    got = b""
    for n in range(3):
        assert fake_bus.inb(CTL) == BSY
        assert settle(fake_bus) == DRDY | DSC | DRQ
        assert fake_bus.irq_level(IRQ)
        fake_bus.inb(STATUS)
        got += read_block(fake_bus)
    assert got == image.read_bytes()[7 * SECTOR:10 * SECTOR]
    assert fake_bus.inb(CTL) == DRDY | DSC
    assert raises(fake_bus) == 3


def test_read_with_32_bit_data_accesses(fake_bus, ide, image):
    issue(fake_bus, 0x20, lba=2)
    settle(fake_bus)
    got = b"".join(fake_bus.inl(DATA).to_bytes(4, "little") for _ in range(SECTOR // 4))
    assert got == image.read_bytes()[2 * SECTOR:3 * SECTOR]


def test_sector_count_zero_means_256_sectors(fake_bus, ide, image):
    issue(fake_bus, 0x20, lba=0, count=0)
    got = b""
    for _ in range(256):
        assert settle(fake_bus) & DRQ
        fake_bus.inb(STATUS)  # acknowledge, as a driver's handler would
        got += read_block(fake_bus)
    assert got == image.read_bytes()[:256 * SECTOR]
    assert fake_bus.inb(STATUS) == DRDY | DSC
    assert raises(fake_bus) == 256


def test_chs_addressing_maps_to_the_right_lba(fake_bus, ide, image):
    # Cylinder 0, head 2, sector 5 with 16 heads x 63 sectors: LBA 2 * 63 + 4 = 130.
    fake_bus.outb(NSECTOR, 1)
    fake_bus.outb(LBA_LOW, 5)
    fake_bus.outb(LBA_MID, 0)
    fake_bus.outb(LBA_HIGH, 0)
    fake_bus.outb(SELECT, 0xA0 | 2)
    fake_bus.outb(COMMAND, 0x20)
    settle(fake_bus)
    assert read_block(fake_bus) == image.read_bytes()[130 * SECTOR:131 * SECTOR]


def test_chs_sector_zero_is_idnf(fake_bus, ide):
    issue(fake_bus, 0x20, lba=0, select=0xA0)  # CHS, sector number 0
    assert fake_bus.inb(STATUS) == DRDY | DSC | ERR
    assert fake_bus.inb(ERROR) == IDNF


def test_lba_past_the_end_is_idnf(fake_bus, ide):
    issue(fake_bus, 0x20, lba=300)
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(STATUS) == DRDY | DSC | ERR
    assert fake_bus.inb(ERROR) == IDNF


def test_read_running_past_the_end_stops_with_idnf_at_the_first_missing_sector(fake_bus, ide, image):
    issue(fake_bus, 0x20, lba=298, count=4)
    for _ in range(2):
        assert settle(fake_bus) & DRQ
        read_block(fake_bus)
    assert settle(fake_bus) == DRDY | DSC | ERR
    assert fake_bus.inb(ERROR) == IDNF
    assert (fake_bus.inb(LBA_LOW), fake_bus.inb(LBA_MID), fake_bus.inb(NSECTOR)) == (300 & 0xFF, 300 >> 8, 2)


# --- WRITE SECTORS ------------------------------------------------------------------------------


def test_write_sectors_changes_exactly_those_bytes_in_the_image(fake_bus, ide, image):
    before = image.read_bytes()
    new = bytes(range(256)) * 4  # two sectors
    issue(fake_bus, 0x30, lba=11, count=2)
    assert fake_bus.inb(CTL) == DRDY | DSC | DRQ  # first sector: DRQ at once, no interrupt
    assert not fake_bus.irq_level(IRQ)
    write_block(fake_bus, new[:SECTOR])
    assert fake_bus.inb(CTL) == BSY
    assert settle(fake_bus) == DRDY | DSC | DRQ
    assert fake_bus.irq_level(IRQ)
    fake_bus.inb(STATUS)
    write_block(fake_bus, new[SECTOR:])
    assert settle(fake_bus) == DRDY | DSC
    assert fake_bus.irq_level(IRQ)  # after the last sector is written
    assert fake_bus.inb(STATUS) == DRDY | DSC
    after = image.read_bytes()
    assert len(after) == len(before)
    assert after == before[:11 * SECTOR] + new + before[13 * SECTOR:]


def test_a_partly_transferred_sector_never_reaches_the_file(fake_bus, ide, image):
    before = image.read_bytes()
    issue(fake_bus, 0x30, lba=3)
    for _ in range(100):
        fake_bus.outw(DATA, 0xFFFF)
    fake_bus.outb(CTL, SRST)
    fake_bus.outb(CTL, 0)
    assert image.read_bytes() == before


def test_readonly_refuses_writes_with_abrt_and_leaves_the_file_identical(fake_bus, image):
    digest = hashlib.sha256(image.read_bytes()).digest()
    fake_bus.attach("ide", image=str(image), readonly=True)
    issue(fake_bus, 0x30, lba=0)
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(STATUS) == DRDY | DSC | ERR
    assert fake_bus.inb(ERROR) == ABRT
    for _ in range(256):
        fake_bus.outw(DATA, 0x5555)
    fake_bus.close()
    assert hashlib.sha256(image.read_bytes()).digest() == digest


def test_write_past_the_end_is_idnf_and_leaves_the_file_its_size(fake_bus, ide, image):
    issue(fake_bus, 0x30, lba=300)
    assert fake_bus.inb(STATUS) == DRDY | DSC | ERR
    assert fake_bus.inb(ERROR) == IDNF
    assert image.stat().st_size == 300 * SECTOR


def test_flush_cache_completes_with_an_interrupt(fake_bus, ide):
    fake_bus.outb(SELECT, 0xA0)
    fake_bus.outb(COMMAND, 0xE7)
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(STATUS) == DRDY | DSC


# --- devices, resets and interrupts -------------------------------------------------------------


def test_selecting_an_absent_slave_reads_status_zero_and_ignores_commands(fake_bus, ide):
    fake_bus.outb(SELECT, 0xB0)
    assert fake_bus.inb(STATUS) == 0
    assert fake_bus.inb(CTL) == 0
    fake_bus.outb(COMMAND, 0xEC)
    fake_bus.step(STEP)
    assert fake_bus.inb(STATUS) == 0
    assert not fake_bus.irq_level(IRQ)
    fake_bus.outb(SELECT, 0xA0)
    assert fake_bus.inb(STATUS) == DRDY | DSC  # the master did nothing either


def test_a_present_slave_answers_for_its_own_image(fake_bus, image, tmp_path):
    slave = tmp_path / "slave.img"
    slave.write_bytes(b"\x5a" * (4 * SECTOR))
    fake_bus.attach("ide", image=str(image), slave_image=str(slave))
    issue(fake_bus, 0x20, lba=1, select=LBA | 0x10)
    settle(fake_bus)
    assert read_block(fake_bus) == b"\x5a" * SECTOR


def test_soft_reset_sets_bsy_then_the_diagnostic_signature(fake_bus, ide):
    issue(fake_bus, 0x20, lba=77, count=5)
    settle(fake_bus)
    fake_bus.outb(CTL, SRST)
    assert fake_bus.inb(CTL) == BSY
    assert not fake_bus.irq_level(IRQ)
    fake_bus.outb(CTL, 0)
    assert fake_bus.inb(CTL) == DRDY | DSC
    assert [fake_bus.inb(p) for p in (ERROR, NSECTOR, LBA_LOW, LBA_MID, LBA_HIGH)] == [0x01, 1, 1, 0, 0]
    assert fake_bus.inw(DATA) == 0  # the read was dropped


def test_execute_device_diagnostic_sets_the_signature_and_error_01(fake_bus, ide):
    issue(fake_bus, 0x90, lba=0x123456, count=9)
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(STATUS) == DRDY | DSC
    assert [fake_bus.inb(p) for p in (ERROR, NSECTOR, LBA_LOW, LBA_MID, LBA_HIGH)] == [0x01, 1, 1, 0, 0]


def test_nien_suppresses_the_interrupt(fake_bus, ide):
    fake_bus.outb(CTL, NIEN)
    issue(fake_bus, 0x20, lba=0)
    assert settle(fake_bus) & DRQ
    assert not fake_bus.irq_level(IRQ)
    assert raises(fake_bus) == 0


def test_alternate_status_does_not_clear_the_interrupt_but_status_does(fake_bus, ide):
    issue(fake_bus, 0xEF)
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(CTL) == DRDY | DSC
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(STATUS) == DRDY | DSC
    assert not fake_bus.irq_level(IRQ)


def test_unknown_command_is_aborted(fake_bus, ide):
    issue(fake_bus, 0x55)
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(STATUS) == DRDY | DSC | ERR
    assert fake_bus.inb(ERROR) == ABRT


def test_identify_packet_device_is_aborted_by_an_ata_disk(fake_bus, ide):
    issue(fake_bus, 0xA1)
    assert fake_bus.inb(STATUS) == DRDY | DSC | ERR
    assert fake_bus.inb(ERROR) == ABRT


def test_initialize_device_parameters_changes_the_chs_translation(fake_bus, ide, image):
    fake_bus.outb(NSECTOR, 32)
    fake_bus.outb(SELECT, 0xA0 | 3)  # 4 heads
    fake_bus.outb(COMMAND, 0x91)
    assert fake_bus.inb(STATUS) == DRDY | DSC
    # Cylinder 1, head 1, sector 2 with 4 x 32: LBA (1 * 4 + 1) * 32 + 1 = 161.
    fake_bus.outb(NSECTOR, 1)
    fake_bus.outb(LBA_LOW, 2)
    fake_bus.outb(LBA_MID, 1)
    fake_bus.outb(LBA_HIGH, 0)
    fake_bus.outb(SELECT, 0xA0 | 1)
    fake_bus.outb(COMMAND, 0x20)
    settle(fake_bus)
    assert read_block(fake_bus) == image.read_bytes()[161 * SECTOR:162 * SECTOR]


def test_ide_survives_a_hostile_guest(image):
    report = fuzz_device("ide", {"image": str(image)}, runs=30, steps=40, seed=1)
    assert report.ok, str(report)


# --- what SeaBIOS's ATA driver (src/hw/ata.c) does with a channel ---------------------------------


def test_seabios_probe_finds_the_master_and_no_slave_without_a_timeout_or_an_interrupt(fake_bus, ide):
    seabios = SeaBiosAta(fake_bus)
    (kind, slave, data), = seabios.detect()
    assert (kind, slave) == ("ata", 0)
    assert ata_text(data, 27, 20).rstrip() == "VMCORE HARDDISK"
    assert word(data, 60) | word(data, 61) << 16 == 300
    assert not word(data, 83) & 1 << 10  # no LBA48: SeaBIOS takes the size from words 60-61
    assert word(data, 80) & 1 << 6  # "ATA-6" in SeaBIOS's banner
    assert seabios.polls < 30  # a handful of status reads, none of them waiting long
    assert raises(fake_bus) == 0  # SeaBIOS polls with nIEN set; every interrupt was acknowledged by Status


def test_seabios_probe_finds_a_present_slave_too(fake_bus, image, tmp_path):
    slave = tmp_path / "slave.img"
    slave.write_bytes(bytes(8 * SECTOR))
    fake_bus.attach("ide", image=str(image), slave_image=str(slave))
    found = SeaBiosAta(fake_bus).detect()
    assert [(kind, n, word(data, 60)) for kind, n, data in found] == [("ata", 0, 300), ("ata", 1, 8)]


def test_seabios_register_test_on_the_absent_slave_passes_but_identify_finds_nothing(fake_bus, ide):
    # With device 1 absent, device 0 answers the task file for it (ATA-6 section 9.16.1),
    # so the 0x55/0xAA test passes; the commands then go unanswered with Status 0.
    seabios = SeaBiosAta(fake_bus)
    fake_bus.outb(SELECT, 0xB0)
    fake_bus.outb(NSECTOR, 0x55)
    fake_bus.outb(LBA_LOW, 0xAA)
    assert (fake_bus.inb(NSECTOR), fake_bus.inb(LBA_LOW), fake_bus.inb(SELECT)) == (0x55, 0xAA, 0xB0)
    assert seabios.identify(1, 0xA1) == (-5, b"")  # status 0: no DRQ
    assert seabios.identify(1, 0xEC) == (-5, b"")
    assert fake_bus.inb(STATUS) == 0


def test_seabios_reads_sectors_by_pio_with_interrupts_disabled(fake_bus, ide, image):
    seabios = SeaBiosAta(fake_bus)
    seabios.detect()
    assert seabios.readwrite(0, lba=5, count=3) == (0, image.read_bytes()[5 * SECTOR:8 * SECTOR])
    assert raises(fake_bus) == 0
    assert fake_bus.inb(CTL) == DRDY | DSC  # nothing left pending
    assert not fake_bus.irq_level(IRQ)  # nIEN cleared again afterwards, and no interrupt pending


def test_seabios_reads_with_32_bit_pio(fake_bus, ide, image):
    seabios = SeaBiosAta(fake_bus, pio32=True)
    assert seabios.readwrite(0, lba=0x101, count=2) == (0, image.read_bytes()[0x101 * SECTOR:0x103 * SECTOR])


def test_seabios_writes_sectors_by_pio(fake_bus, ide, image):
    before = image.read_bytes()
    new = bytes((i * 7) & 0xFF for i in range(2 * SECTOR))
    seabios = SeaBiosAta(fake_bus)
    assert seabios.readwrite(0, lba=20, count=2, data=new) == (0, b"")
    assert image.read_bytes() == before[:20 * SECTOR] + new + before[22 * SECTOR:]
    assert raises(fake_bus) == 0


def test_seabios_read_past_the_end_fails_with_an_error_not_a_hang(fake_bus, ide):
    assert SeaBiosAta(fake_bus).readwrite(0, lba=299, count=2)[0] == -6  # second sector: ERR, no DRQ
    assert fake_bus.inb(ERROR) == IDNF


def test_seabios_int13_reset_of_a_found_drive_waits_for_drdy(fake_bus, image, tmp_path):
    slave = tmp_path / "slave.img"
    slave.write_bytes(bytes(8 * SECTOR))
    fake_bus.attach("ide", image=str(image), slave_image=str(slave))
    seabios = SeaBiosAta(fake_bus)
    seabios.ata_reset(1, ata_type=True)  # CMD_RESET on ata0-1: SRST, reselect device 1, wait for RDY
    assert fake_bus.inb(SELECT) == 0xB0
    assert fake_bus.inb(STATUS) == DRDY | DSC
    assert seabios.readwrite(1, lba=0, count=1) == (0, bytes(SECTOR))


def test_seabios_srst_pulse_selects_device_0_and_drops_the_pending_interrupt(fake_bus, ide):
    fake_bus.outb(CTL, 0x08 | NIEN)
    issue(fake_bus, 0xEF)  # completes with an interrupt pending, masked by nIEN
    fake_bus.outb(SELECT, 0xB0)
    fake_bus.outb(CTL, 0x08 | NIEN | SRST)  # ata_reset's pulse, HD15 set as SeaBIOS writes it
    fake_bus.outb(CTL, 0x08 | NIEN)
    fake_bus.outb(CTL, 0x08)  # interrupts enabled again
    assert not fake_bus.irq_level(IRQ)  # the reset dropped the pending interrupt
    assert fake_bus.inb(SELECT) == 0
    assert fake_bus.inb(STATUS) == DRDY | DSC


def test_an_interrupt_pending_under_nien_reaches_the_line_when_nien_clears(fake_bus, ide):
    fake_bus.outb(CTL, NIEN)
    issue(fake_bus, 0xEF)
    assert not fake_bus.irq_level(IRQ)
    fake_bus.outb(CTL, 0)  # INTRQ pending and no longer masked (ATA-6 section 5.2.9)
    assert fake_bus.irq_level(IRQ)
    fake_bus.inb(STATUS)
    assert not fake_bus.irq_level(IRQ)


def test_execute_device_diagnostic_runs_with_the_absent_slave_selected(fake_bus, ide):
    # Both devices execute it whatever DEV says (ATA-6 section 8.11); device 0 reports.
    issue(fake_bus, 0x20, lba=1)
    issue(fake_bus, 0x90, select=0xB0)
    assert fake_bus.inb(SELECT) == 0  # the signature selects device 0
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(STATUS) == DRDY | DSC
    assert [fake_bus.inb(p) for p in (ERROR, NSECTOR, LBA_LOW, LBA_MID, LBA_HIGH)] == [0x01, 1, 1, 0, 0]
