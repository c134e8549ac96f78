"""vmcore.memory: guest-physical slots and the bounds-checked access devices use for DMA."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcore.memory import GuestMemory, GuestMemoryError, MemorySlot


@pytest.fixture
def memory():
    mem = GuestMemory()
    yield mem
    mem.close()


@pytest.mark.parametrize(
    ("base", "size"), [(0x100, 0x1000), (0, 0x800), (0, 0x1001), (0x1000, 0), (0x1000, -0x1000)],
    ids=["unaligned-base", "short", "ragged-size", "empty", "negative"],
)
def test_slot_base_and_size_must_be_positive_multiples_of_4k(memory, base, size):
    with pytest.raises(GuestMemoryError, match="multiples of 4K"):
        memory.add_slot("ram", base, size)
    assert len(memory) == 0


def test_new_slot_is_zero_filled(memory):
    memory.add_slot("ram", 0, 0x2000)
    assert memory.read(0, 0x2000) == bytes(0x2000)


def test_overlapping_slot_is_rejected_naming_both(memory):
    memory.add_slot("low", 0, 0x10000)
    with pytest.raises(GuestMemoryError) as excinfo:
        memory.add_slot("bios", 0xF000, 0x2000)
    message = str(excinfo.value)
    assert "'bios' (0xf000..0x10fff)" in message
    assert "'low' (0x0..0xffff)" in message
    assert [slot.name for slot in memory] == ["low"]


def test_adjacent_slots_are_fine(memory):
    memory.add_slot("high", 0x10000, 0x1000)
    memory.add_slot("low", 0, 0x10000)
    assert [slot.name for slot in memory] == ["low", "high"]


def test_write_then_read_round_trips(memory):
    memory.add_slot("ram", 0x10_0000, 0x10_0000)
    memory.write(0x10_0123, b"hello, guest")
    assert memory.read(0x10_0123, 12) == b"hello, guest"
    assert memory.read(0x10_0122, 1) == b"\0"


def test_write_accepts_bytearray_and_memoryview(memory):
    memory.add_slot("ram", 0, 0x1000)
    memory.write(0x10, bytearray(b"ab"))
    memory.write(0x12, memoryview(b"cd"))
    assert memory.read(0x10, 4) == b"abcd"


def test_access_spanning_two_adjacent_slots_works(memory):
    memory.add_slot("a", 0, 0x1000)
    memory.add_slot("b", 0x1000, 0x1000)
    memory.write(0xFFC, b"01234567")
    assert memory.read(0xFFC, 8) == b"01234567"
    assert memory.read_int(0xFFE, 4) == int.from_bytes(b"2345", "little")


@pytest.mark.parametrize(
    ("address", "length", "first_bad"),
    [(0x1000, 1, 0x1000), (0xFFE, 4, 0x1000), (0x3000, 8, 0x3000), (0x2FFF, 2, 0x3000)],
    ids=["in-gap", "runs-into-gap", "past-end", "runs-past-end"],
)
def test_read_touching_a_gap_raises_naming_the_address(memory, address, length, first_bad):
    memory.add_slot("a", 0, 0x1000)
    memory.add_slot("b", 0x2000, 0x1000)
    with pytest.raises(GuestMemoryError, match=f"guest-physical {first_bad:#x} is outside every memory slot"):
        memory.read(address, length)


def test_write_touching_a_gap_raises_and_changes_nothing(memory):
    memory.add_slot("a", 0, 0x1000)
    with pytest.raises(GuestMemoryError, match="guest-physical 0x1000 is outside"):
        memory.write(0xFFE, b"\xAA\xBB\xCC\xDD")
    # A refused DMA must not leave half its bytes behind.
    assert memory.read(0xFFE, 2) == b"\0\0"


def test_negative_address_is_rejected(memory):
    memory.add_slot("a", 0, 0x1000)
    with pytest.raises(GuestMemoryError, match="bad guest range"):
        memory.read(-1, 1)


def test_write_to_read_only_slot_raises_but_load_places_the_image(memory):
    memory.add_slot("bios", 0xF0000, 0x10000, readonly=True)
    with pytest.raises(GuestMemoryError, match="read-only slot 'bios'"):
        memory.write(0xFFFF0, b"\xEA")
    assert memory.read(0xFFFF0, 1) == b"\0"

    memory.load(0xFFFF0, b"\xEA\x5B\xE0\x00\xF0")
    assert memory.read(0xFFFF0, 5) == b"\xEA\x5B\xE0\x00\xF0"


def test_write_running_from_ram_into_rom_changes_nothing(memory):
    memory.add_slot("ram", 0, 0x1000)
    memory.add_slot("rom", 0x1000, 0x1000, readonly=True)
    with pytest.raises(GuestMemoryError, match="read-only"):
        memory.write(0xFFF, b"\x11\x22")
    assert memory.read(0xFFF, 2) == b"\0\0"


def test_views_are_guest_memory_itself_one_per_window(memory):
    memory.add_slot("a", 0, 0x1000)
    memory.add_slot("b", 0x1000, 0x1000)
    [inside] = memory.views(0x10, 4, writing=True)
    inside[:] = b"abcd"  # a write through the view is a write to guest RAM
    assert memory.read(0x10, 4) == b"abcd"
    first, second = memory.views(0xFFE, 4)
    assert (bytes(first), len(second)) == (b"\0\0", 2)
    with pytest.raises(TypeError):
        first[0] = 1  # views for reading are read-only


def test_views_are_checked_as_accesses_are(memory):
    memory.add_slot("ram", 0, 0x1000)
    memory.add_slot("rom", 0x1000, 0x1000, readonly=True)
    with pytest.raises(GuestMemoryError, match="outside every memory slot"):
        memory.views(0xF00, 0x2000)
    with pytest.raises(GuestMemoryError, match="read-only"):
        memory.views(0xFFF, 2, writing=True)
    assert [len(view) for view in memory.views(0xFFF, 2)] == [1, 1]  # reading ROM is fine


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_read_int_and_write_int_are_little_endian(memory, size):
    memory.add_slot("ram", 0, 0x1000)
    value = 0x8877665544332211 & ((1 << (8 * size)) - 1)
    memory.write_int(0x100, size, value)
    assert memory.read(0x100, size) == bytes([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88][:size])
    assert memory.read_int(0x100, size) == value


def test_write_int_keeps_only_the_low_bytes(memory):
    memory.add_slot("ram", 0, 0x1000)
    memory.write_int(0x10, 2, 0x123456)
    assert memory.read(0x10, 3) == b"\x56\x34\x00"


def test_slot_at_finds_the_slot_holding_an_address(memory):
    low = memory.add_slot("low", 0, 0x1000)
    high = memory.add_slot("high", 0x10000, 0x1000)
    assert memory.slot_at(0) is low
    assert memory.slot_at(0xFFF) is low
    assert memory.slot_at(0x1000) is None
    assert memory.slot_at(0x10800) is high
    assert memory.slot_at(0x11000) is None


def test_host_address_is_non_zero_and_stable(memory):
    slot = memory.add_slot("ram", 0, 0x4000)
    address = slot.host_address
    assert address != 0
    assert address % 4096 == 0  # an mmap: page-aligned, as KVM_SET_USER_MEMORY_REGION needs
    memory.write(0, b"x" * 0x4000)
    assert slot.host_address == address


def test_slot_repr_says_ram_or_rom():
    ram = MemorySlot("ram", 0, 0x1000)
    rom = MemorySlot("bios", 0xF0000, 0x10000, readonly=True)
    try:
        assert repr(ram) == "MemorySlot('ram', 0x0..0xfff, ram)"
        assert repr(rom) == "MemorySlot('bios', 0xf0000..0xfffff, rom)"
    finally:
        ram.close()
        rom.close()


WINDOW = 0x3000  # three slots, one of them absent: ram 0..0x1000, ram 0x1000..0x2000, gap above


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=WINDOW), st.binary(min_size=0, max_size=64)),
        max_size=40,
    )
)
def test_random_writes_then_reads_match_a_bytearray_model(writes):
    memory = GuestMemory()
    memory.add_slot("a", 0, 0x1000)
    memory.add_slot("b", 0x1000, 0x1000)
    model = bytearray(0x2000)
    try:
        for address, data in writes:
            # An empty write touches no byte, so it cannot hit the gap.
            if address + len(data) <= 0x2000 or not data:
                memory.write(address, data)
                model[address : address + len(data)] = data
            else:
                with pytest.raises(GuestMemoryError):
                    memory.write(address, data)
        assert memory.read(0, 0x2000) == bytes(model)
        for address, data in writes:
            if address + len(data) <= 0x2000:
                assert memory.read(address, len(data)) == bytes(model[address : address + len(data)])
    finally:
        memory.close()


# --- overlays: the flat map devices change at run time ------------------------------------------


def test_overlay_shows_a_block_hides_memory_and_clears(memory):
    ram = memory.add_slot("ram", 0, 0x10000)
    rom = memory.add_slot("rom", 0x100000, 0x2000, readonly=True)
    memory.load(0x100000, b"ROM!")
    overlay = memory.overlay("window", 0x4000, 0x2000)
    assert memory.slot_at(0x4000) is ram  # starts clear: the home layer shows through
    overlay.show(rom.block, 0, readonly=True)
    assert memory.read(0x4000, 4) == b"ROM!"
    with pytest.raises(GuestMemoryError, match="read-only"):
        memory.write(0x4000, b"x")
    overlay.hide()
    assert memory.slot_at(0x4000) is None and memory.slot_at(0x3FFF) is not None
    with pytest.raises(GuestMemoryError, match="outside every memory slot"):
        memory.read(0x5000, 1)
    overlay.clear()
    memory.write(0x4000, b"ram")
    assert bytes(ram.view[0x4000:0x4003]) == b"ram"


def test_listeners_get_removed_and_added_windows_once_per_transaction(memory):
    memory.add_slot("ram", 0, 0x10000)
    a = memory.overlay("a", 0x2000, 0x1000)
    b = memory.overlay("b", 0x8000, 0x1000)
    calls = []
    memory.add_listener(lambda removed, added: calls.append(
        ([(s.base, s.size) for s in removed], [(s.base, s.size) for s in added])))
    untouched = memory.slot_at(0xF000)
    with memory.transaction():
        a.hide()
        b.hide()
    assert len(calls) == 1
    removed, added = calls[0]
    assert removed == [(0, 0x10000)]
    assert added == [(0, 0x2000), (0x3000, 0x5000), (0x9000, 0x7000)]
    assert memory.slot_at(0xF000) is not untouched  # the split window is a new one
    kept = memory.slot_at(0xF000)
    a.clear()
    # The home layer shows through again below 0x8000: one window, as before the split.
    assert calls[-1] == ([(0, 0x2000), (0x3000, 0x5000)], [(0, 0x8000)])
    assert memory.slot_at(0xF000) is kept  # windows a change does not touch stay the same objects


def test_higher_priority_overlay_wins_and_pages_must_align(memory):
    memory.add_slot("ram", 0, 0x4000)
    other = memory.add_slot("other", 0x100000, 0x1000)
    memory.load(0x100000, b"top")
    low = memory.overlay("low", 0x1000, 0x1000, priority=1)
    high = memory.overlay("high", 0x1000, 0x1000, priority=2)
    high.show(other.block)
    low.hide()
    assert memory.read(0x1000, 3) == b"top"
    with pytest.raises(GuestMemoryError, match="multiples of 4K"):
        memory.overlay("ragged", 0x1800, 0x1000)
    with pytest.raises(GuestMemoryError, match="outside block"):
        memory.overlay("big", 0, 0x2000).show(other.block)
