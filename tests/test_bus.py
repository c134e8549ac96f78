"""vmcore.bus: claiming ranges, dispatch, unclaimed accesses, access-size adjustment, tracing."""

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcore.bus import Bus, BusError, Direction, Region, Space, Transaction


class Recorder:
    """A device stand-in that logs every access it receives and answers reads from a table."""

    def __init__(self, values=None):
        self.reads = []
        self.writes = []
        self.values = values or {}

    def read(self, offset, size):
        self.reads.append((offset, size))
        return self.values.get((offset, size), 0)

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


class ByteRegisters:
    """Little-endian byte registers: what a wide read of a byte-only device should assemble."""

    def __init__(self, data):
        self.data = bytearray(data)
        self.reads = []
        self.writes = []

    def read(self, offset, size):
        self.reads.append((offset, size))
        return int.from_bytes(self.data[offset : offset + size], "little")

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))
        self.data[offset : offset + size] = value.to_bytes(size, "little")


def pio_region(base, size, dev=None, **kwargs):
    dev = dev or Recorder()
    return Region(Space.PIO, base, size, dev.read, dev.write, **kwargs)


def mmio_region(base, size, dev=None, **kwargs):
    dev = dev or Recorder()
    return Region(Space.MMIO, base, size, dev.read, dev.write, **kwargs)


# --- claiming ----------------------------------------------------------------------------


def test_claimed_region_receives_offset_within_region_and_size():
    bus = Bus(Space.PIO)
    dev = Recorder({(2, 1): 0x5A})
    bus.claim(pio_region(0x3F8, 8, dev), "uart")

    assert bus.read(0x3FA, 1) == 0x5A
    bus.write(0x3FB, 1, 0x80)

    assert dev.reads == [(2, 1)]
    assert dev.writes == [(3, 1, 0x80)]


def test_overlapping_claim_is_rejected_naming_both_claimants_and_ranges():
    bus = Bus(Space.PIO)
    bus.claim(pio_region(0x3F8, 8), "uart0")
    with pytest.raises(BusError) as excinfo:
        bus.claim(pio_region(0x3FC, 8), "uart1")
    message = str(excinfo.value)
    assert "uart0" in message and "uart1" in message
    assert "0x3f8..0x3ff" in message
    assert "0x3fc..0x403" in message


@pytest.mark.parametrize(
    ("base", "size"),
    [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x3F0, 0x20), (0x3FA, 2)],
    ids=["same", "ends-inside", "last-byte", "covers", "inside"],
)
def test_any_overlap_is_rejected(base, size):
    bus = Bus(Space.PIO)
    bus.claim(pio_region(0x3F8, 8), "first")
    with pytest.raises(BusError, match="overlaps"):
        bus.claim(pio_region(base, size), "second")


def test_adjacent_ranges_do_not_overlap():
    bus = Bus(Space.PIO)
    low, mid, high = Recorder(), Recorder(), Recorder()
    bus.claim(pio_region(0x3F8, 8, mid), "mid")
    bus.claim(pio_region(0x3F0, 8, low), "low")
    bus.claim(pio_region(0x400, 8, high), "high")

    bus.write(0x3F7, 1, 1)
    bus.write(0x3F8, 1, 2)
    bus.write(0x3FF, 1, 3)
    bus.write(0x400, 1, 4)

    assert low.writes == [(7, 1, 1)]
    assert mid.writes == [(0, 1, 2), (7, 1, 3)]
    assert high.writes == [(0, 1, 4)]
    assert [owner for _, owner in bus.claims()] == ["low", "mid", "high"]


def test_port_region_past_0xffff_is_rejected():
    with pytest.raises(BusError, match="outside the space"):
        pio_region(0xFFFF, 2)
    with pytest.raises(BusError, match="outside the space"):
        pio_region(0x10000, 1)


def test_last_port_0xffff_can_be_claimed():
    bus = Bus(Space.PIO)
    dev = Recorder()
    bus.claim(pio_region(0xFFFF, 1, dev), "top")
    bus.write(0xFFFF, 1, 9)
    assert dev.writes == [(0, 1, 9)]


def test_mmio_region_may_sit_above_4g():
    bus = Bus(Space.MMIO)
    dev = Recorder({(0x10, 4): 0x12345678})
    bus.claim(mmio_region(0xFE_0000_0000, 0x1000, dev), "high")
    assert bus.read(0xFE_0000_0010, 4) == 0x12345678


@pytest.mark.parametrize(("size", "sizes"), [(0, (1,)), (-1, (1,)), (4, (3,)), (4, ())])
def test_region_needs_positive_size_and_valid_access_sizes(size, sizes):
    with pytest.raises(BusError):
        pio_region(0x100, size, sizes=sizes)


def test_region_from_the_other_space_is_rejected():
    bus = Bus(Space.PIO)
    with pytest.raises(BusError, match="mmio region cannot go on the pio bus"):
        bus.claim(mmio_region(0x1000, 0x10), "dev")


def test_find_returns_region_and_owner():
    bus = Bus(Space.PIO)
    region = pio_region(0x60, 1)
    bus.claim(region, "kbd")
    assert bus.find(0x60) == (region, "kbd")
    assert bus.find(0x61) is None
    assert bus.find(0x5F) is None


@st.composite
def disjoint_regions(draw, window=1024):
    """Up to 20 non-overlapping (base, size) pairs in ports 0..window, in random order."""
    cuts = sorted(draw(st.sets(st.integers(min_value=0, max_value=window), min_size=2, max_size=40)))
    spans = [(a, b - a) for a, b in zip(cuts, cuts[1:])]
    chosen = draw(st.lists(st.sampled_from(spans), unique=True, max_size=20)) if spans else []
    return chosen


@given(disjoint_regions(), st.data())
def test_lookup_among_many_regions_matches_a_brute_force_model(regions, data):
    bus = Bus(Space.PIO)
    owner_of = {}
    for n, (base, size) in enumerate(regions):
        bus.claim(pio_region(base, size), f"dev{n}")
        for address in range(base, base + size):
            owner_of[address] = f"dev{n}"
    for address in range(0, 1030):
        found = bus.find(address)
        assert (found[1] if found else None) == owner_of.get(address)


# --- access widths ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 4])
def test_every_access_width_reaches_the_device_with_its_offset_and_size(size):
    bus = Bus(Space.MMIO)
    dev = Recorder({(0x10, size): (1 << (8 * size)) - 2})
    bus.claim(mmio_region(0x1000_0000, 0x100, dev), "dev")

    assert bus.read(0x1000_0010, size) == (1 << (8 * size)) - 2
    bus.write(0x1000_0020, size, 0x0102030405060708 & ((1 << (8 * size)) - 1))

    assert dev.reads == [(0x10, size)]
    assert dev.writes == [(0x20, size, 0x0102030405060708 & ((1 << (8 * size)) - 1))]


# --- unclaimed accesses ------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "ones"), [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFF_FFFF), (8, 0xFFFF_FFFF_FFFF_FFFF)])
def test_unclaimed_read_returns_all_ones_for_its_width(size, ones):
    bus = Bus(Space.MMIO)
    assert bus.read(0xDEAD_0000, size) == ones


def test_unclaimed_write_is_dropped_and_counted():
    bus = Bus(Space.PIO)
    dev = Recorder()
    bus.claim(pio_region(0x80, 1, dev), "post")
    bus.write(0x81, 1, 0x42)
    assert dev.writes == []
    assert bus.unclaimed == {(Direction.WRITE, 0x81): 1}


def test_unclaimed_accesses_are_counted_per_direction_and_address():
    bus = Bus(Space.PIO)
    for _ in range(3):
        bus.read(0x70, 1)
    bus.write(0x70, 1, 0)
    bus.write(0x71, 1, 0)
    bus.write(0x71, 1, 0)
    assert bus.unclaimed == {
        (Direction.READ, 0x70): 3,
        (Direction.WRITE, 0x70): 1,
        (Direction.WRITE, 0x71): 2,
    }


def test_unclaimed_address_is_logged_once_however_often_it_is_hit(caplog):
    bus = Bus(Space.PIO)
    with caplog.at_level(logging.WARNING, logger="vmcore.bus"):
        for _ in range(5):
            bus.read(0x70, 1)
        for _ in range(5):
            bus.write(0x71, 1, 0)
    messages = [r.getMessage() for r in caplog.records if r.name == "vmcore.bus"]
    assert len(messages) == 2
    assert "unclaimed pio read at 0x70" in messages[0]
    assert "unclaimed pio write at 0x71" in messages[1]


def test_write_only_region_reads_all_ones():
    bus = Bus(Space.PIO)
    dev = Recorder()
    bus.claim(Region(Space.PIO, 0x501, 2, None, dev.write), "exit")
    assert bus.read(0x501, 1) == 0xFF
    assert bus.read(0x501, 2) == 0xFFFF
    bus.write(0x501, 1, 3)
    assert dev.writes == [(0, 1, 3)]


def test_read_only_region_drops_writes():
    bus = Bus(Space.PIO)
    dev = Recorder({(0, 1): 0x11})
    bus.claim(Region(Space.PIO, 0x92, 1, dev.read, None), "ro")
    bus.write(0x92, 1, 0xFF)
    assert bus.read(0x92, 1) == 0x11
    assert dev.writes == []


# --- access-size adjustment --------------------------------------------------------------------


def test_byte_only_device_gets_a_dword_write_as_four_byte_writes_low_byte_first():
    bus = Bus(Space.PIO)
    dev = ByteRegisters(bytes(4))
    bus.claim(pio_region(0x100, 4, dev, sizes=(1,)), "bytes")

    bus.write(0x100, 4, 0x44332211)

    assert dev.writes == [(0, 1, 0x11), (1, 1, 0x22), (2, 1, 0x33), (3, 1, 0x44)]


def test_byte_only_device_gets_a_dword_read_assembled_little_endian():
    bus = Bus(Space.PIO)
    dev = ByteRegisters(bytes([0x11, 0x22, 0x33, 0x44]))
    bus.claim(pio_region(0x100, 4, dev, sizes=(1,)), "bytes")

    assert bus.read(0x100, 4) == 0x44332211
    assert dev.reads == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_qword_write_to_dword_device_is_split_into_two_dwords():
    bus = Bus(Space.MMIO)
    dev = ByteRegisters(bytes(8))
    bus.claim(mmio_region(0x1000, 8, dev, sizes=(4,)), "dwords")

    bus.write(0x1000, 8, 0x8877665544332211)

    assert dev.writes == [(0, 4, 0x44332211), (4, 4, 0x88776655)]
    assert bus.read(0x1000, 8) == 0x8877665544332211


@pytest.mark.parametrize(("address", "byte"), [(0x1000, 0x11), (0x1001, 0x22), (0x1002, 0x33), (0x1003, 0x44), (0x1005, 0x66)])
def test_byte_read_of_dword_only_device_reads_the_aligned_dword_and_extracts_the_byte(address, byte):
    bus = Bus(Space.MMIO)
    dev = ByteRegisters(bytes([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]))
    bus.claim(mmio_region(0x1000, 8, dev, sizes=(4,)), "dwords")

    assert bus.read(address, 1) == byte
    aligned = (address - 0x1000) & ~3
    assert dev.reads == [(aligned, 4)]


def test_word_read_of_dword_only_device_extracts_the_upper_half():
    bus = Bus(Space.MMIO)
    dev = ByteRegisters(bytes([0x11, 0x22, 0x33, 0x44]))
    bus.claim(mmio_region(0x1000, 4, dev, sizes=(4,)), "dwords")
    assert bus.read(0x1002, 2) == 0x4433
    assert dev.reads == [(0, 4)]


def test_byte_write_to_dword_only_device_is_dropped_and_counted(caplog):
    bus = Bus(Space.MMIO)
    dev = ByteRegisters(bytes(4))
    bus.claim(mmio_region(0x1000, 4, dev, sizes=(4,)), "dwords")

    with caplog.at_level(logging.WARNING, logger="vmcore.bus"):
        bus.write(0x1001, 1, 0xAB)
        bus.write(0x1001, 1, 0xAB)

    assert dev.writes == []
    assert bus.unclaimed == {(Direction.WRITE, 0x1001): 2}
    messages = [r.getMessage() for r in caplog.records if r.name == "vmcore.bus"]
    assert len(messages) == 1
    assert "not accepted by dwords" in messages[0]


def test_access_crossing_the_end_of_a_region_is_split_per_byte_and_the_rest_is_unclaimed():
    bus = Bus(Space.PIO)
    dev = ByteRegisters(bytes([0x11, 0x22]))
    bus.claim(pio_region(0x100, 2, dev), "two")

    assert bus.read(0x101, 4) == 0xFFFFFF22
    bus.write(0x101, 4, 0xCCBBAA99)

    assert dev.reads == [(1, 1)]
    assert dev.writes == [(1, 1, 0x99)]
    for address in (0x102, 0x103, 0x104):
        assert bus.unclaimed[(Direction.READ, address)] == 1
        assert bus.unclaimed[(Direction.WRITE, address)] == 1


def test_access_starting_in_a_gap_reaches_the_region_it_runs_into():
    bus = Bus(Space.PIO)
    dev = ByteRegisters(bytes([0x11, 0x22]))
    bus.claim(pio_region(0x100, 2, dev), "two")

    assert bus.read(0xFF, 2) == 0x11FF
    bus.write(0xFE, 4, 0x44332211)

    assert dev.reads == [(0, 1)]
    assert dev.writes == [(0, 1, 0x33), (1, 1, 0x44)]
    assert bus.unclaimed == {(Direction.READ, 0xFF): 1, (Direction.WRITE, 0xFE): 1, (Direction.WRITE, 0xFF): 1}


def test_access_crossing_into_an_adjacent_region_reaches_both_devices():
    bus = Bus(Space.PIO)
    left, right = ByteRegisters(bytes([0xA0, 0xA1])), ByteRegisters(bytes([0xB0, 0xB1]))
    bus.claim(pio_region(0x100, 2, left), "left")
    bus.claim(pio_region(0x102, 2, right), "right")

    assert bus.read(0x101, 2) == 0xB0A1
    bus.write(0x101, 2, 0x2211)

    assert left.writes == [(1, 1, 0x11)]
    assert right.writes == [(0, 1, 0x22)]
    assert bus.unclaimed == {}


@settings(max_examples=300)
@given(
    disjoint_regions(window=64),
    st.lists(st.sampled_from([(1, 2, 4, 8), (1,), (1, 2), (1, 4)]), min_size=20, max_size=20),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=70), st.sampled_from([1, 2, 4, 8]), st.integers(min_value=0, max_value=(1 << 64) - 1)),
        max_size=30,
    ),
)
def test_any_access_equals_the_byte_by_byte_view_of_the_bus(regions, accepted, writes):
    # Whatever the widths the devices accept and wherever an access falls, the bus behaves
    # like little-endian bytes: device bytes where claimed, 0xFF (reads) or nothing (writes) elsewhere.
    bus = Bus(Space.PIO)
    model = {}
    for n, (base, size) in enumerate(regions):
        bus.claim(pio_region(base, size, ByteRegisters(bytes(size)), sizes=accepted[n]), f"dev{n}")
        for address in range(base, base + size):
            model[address] = 0
    for address, size, value in writes:
        address = min(address, 0x10000 - size)
        value &= (1 << (8 * size)) - 1
        bus.write(address, size, value)
        for k in range(size):
            if address + k in model:
                model[address + k] = (value >> (8 * k)) & 0xFF
    for address, size, _ in writes:
        address = min(address, 0x10000 - size)
        expected = sum(model.get(address + k, 0xFF) << (8 * k) for k in range(size))
        assert bus.read(address, size) == expected


# --- tracing ----------------------------------------------------------------------------------


def test_tracing_records_each_transaction_with_the_device_name():
    bus = Bus(Space.PIO)
    dev = Recorder({(0, 1): 0x5A})
    bus.claim(pio_region(0x3F8, 8, dev), "uart")
    seen = []
    bus.set_tracer(seen.append)

    bus.write(0x3F8, 1, 0x41)
    bus.read(0x3F8, 1)
    bus.read(0x70, 2)

    assert seen == [
        Transaction(Space.PIO, 0x3F8, 1, Direction.WRITE, 0x41, "uart"),
        Transaction(Space.PIO, 0x3F8, 1, Direction.READ, 0x5A, "uart"),
        Transaction(Space.PIO, 0x70, 2, Direction.READ, 0xFFFF, None),
    ]
    # The device still saw the accesses: tracing observes, it does not replace dispatch.
    assert dev.writes == [(0, 1, 0x41)]
    assert dev.reads == [(0, 1)]


def test_turning_tracing_off_stops_recording():
    bus = Bus(Space.PIO)
    dev = Recorder()
    bus.claim(pio_region(0x80, 1, dev), "post")
    seen = []
    bus.set_tracer(seen.append)
    bus.write(0x80, 1, 1)
    bus.set_tracer(None)
    bus.write(0x80, 1, 2)
    bus.read(0x80, 1)

    assert len(seen) == 1
    assert dev.writes == [(0, 1, 1), (0, 1, 2)]


def test_transaction_str_shows_space_direction_address_size_value_and_device():
    write = Transaction(Space.PIO, 0x3F8, 1, Direction.WRITE, 0x41, "uart")
    read = Transaction(Space.MMIO, 0xFEE0_0030, 4, Direction.READ, 0x50014, None)
    assert str(write) == "pio  write 0x000003f8/1 -> 0x41 uart"
    assert str(read) == "mmio read  0xfee00030/4 <- 0x00050014 (unclaimed)"
