"""devices/pci_testdev.py on the fake bus: kvm-unit-tests' protocol on both BARs, and BARs laid out as firmware does."""

import pytest

from vmcore.fuzz import fuzz_device

ADDRESS, DATA = 0xCF8, 0xCFC
ENABLE = 0x80000000
SLOT = 3


def config_read(bus, device: int, register: int) -> int:
    bus.outl(ADDRESS, ENABLE | device << 11 | register)
    return bus.inl(DATA)


@pytest.fixture
def pc(fake_bus):
    fake_bus.attach("i440fx", ram="", bios="", assign_bars=True)
    fake_bus.attach("pci-testdev", name="pcitest")
    fake_bus.devices["i440fx"].start()  # the machine starts devices once all are built
    return fake_bus


def bars(bus) -> tuple[int, int]:
    return config_read(bus, SLOT, 0x10), config_read(bus, SLOT, 0x14)


def test_ids_class_and_bar_kinds(pc):
    assert config_read(pc, SLOT, 0x00) == 0x0005_1B36
    assert config_read(pc, SLOT, 0x08) >> 16 == 0x00FF
    mem, io = bars(pc)
    assert mem & 1 == 0 and io & 1 == 1


def test_assign_bars_places_and_enables_both(pc):
    mem, io = bars(pc)
    assert mem & ~0xF == 0xE000_0000  # the first, largest, memory BAR at the window's start
    assert io & ~0x3 == 0xC000
    assert config_read(pc, SLOT, 0x04) & 0x3 == 0x3  # I/O and memory decoding on
    assert "pcitest:bar0" in [owner for _, owner in pc.mmio.claims()]
    assert "pcitest:bar1" in [owner for _, owner in pc.pio.claims()]


def header(read, base: int) -> tuple[int, int, int, int, str]:
    width, offset, data, count = read(base + 1, 1), read(base + 4, 4), read(base + 8, 4), read(base + 12, 4)
    name = bytearray()
    while (c := read(base + 16 + len(name), 1)) != 0 and len(name) < 64:
        name.append(c)
    return width, offset, data, count, name.decode()


@pytest.mark.parametrize("kind", ["mem", "io"])
def test_each_test_counts_the_writes_kvm_unit_tests_makes(pc, kind):
    """lib/pci-testdev.c's pci_testdev_one, as the guest runs it, for every test until the device says no more."""
    mem, io = bars(pc)
    if kind == "mem":
        base, read, write = mem & ~0xF, pc.mmio_read, pc.mmio_write
    else:
        base = io & ~0x3
        read, write = pc.io_read, pc.io_write
    names = []
    for n in range(10):
        write(base, 1, n)
        width, offset, data, count, name = header(read, base)
        if count != 0 or width not in (1, 2, 4):
            break
        for _ in range(16):
            write(base + offset, width, data)
        assert read(base + 12, 4) == 16
        names.append(name)
    prefix = "mmio" if kind == "mem" else "portio"
    assert names == [f"{prefix}-no-eventfd", f"{prefix}-wildcard-eventfd", f"{prefix}-datamatch-eventfd"]


def test_datamatch_counts_only_matching_data_and_selecting_zeroes_the_count(pc):
    base = bars(pc)[0] & ~0xF
    pc.mmio_write(base, 1, 2)
    offset, data = pc.mmio_read(base + 4, 4), pc.mmio_read(base + 8, 4)
    pc.mmio_write(base + offset, 2, data ^ 1)
    pc.mmio_write(base + offset + 2, 2, data)  # elsewhere
    pc.mmio_write(base + offset, 2, data)
    assert pc.mmio_read(base + 12, 4) == 1
    pc.mmio_write(base, 1, 2)
    assert pc.mmio_read(base + 12, 4) == 0


def test_unknown_test_reads_zeros(pc):
    base = bars(pc)[0] & ~0xF
    pc.mmio_write(base, 1, 3)
    assert [pc.mmio_read(base + k, 4) for k in range(0, 32, 4)] == [0] * 8


def test_without_assignment_bars_stay_unmapped(fake_bus):
    fake_bus.attach("i440fx", ram="", bios="")
    fake_bus.attach("pci-testdev", name="pcitest")
    fake_bus.devices["i440fx"].start()
    assert bars(fake_bus) == (0, 1)
    assert not [owner for _, owner in fake_bus.mmio.claims() if owner.startswith("pcitest")]


def test_survives_a_hostile_guest_on_its_bars():
    report = fuzz_device("pci-testdev", runs=20, steps=60, seed=3)
    assert report.ok, str(report)


def test_the_write_count_wraps_at_32_bits(pc):
    base = bars(pc)[0] & ~0xF
    pc.mmio_write(base, 1, 0)
    offset = pc.mmio_read(base + 4, 4)
    pc.devices["pcitest"].state[0].count = 0xFFFF_FFFF  # as after 2^32 - 1 writes
    pc.mmio_write(base + offset, 2, 0)
    assert pc.mmio_read(base + 12, 4) == 0
