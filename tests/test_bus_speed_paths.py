"""The bus's fast paths: the small-region index, direct handlers and route tables, and region flags.

Every fast path must do exactly what the full access path does; the property tests
below run random accesses both ways, against the same devices, and compare what the
devices saw, what came back and what the bus counted.
"""

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcore.bus import ROUTE_CACHE, SMALL_REGION, Bus, BusError, Direction, Doorbell, Region, Space
from vmcore.faults import DeviceFault


class Log:
    """A device stand-in: logs every access (with its owner) and answers reads from a formula."""

    def __init__(self, name, events):
        self.name = name
        self.events = events

    def read(self, offset, size):
        self.events.append((self.name, "r", offset, size))
        return (offset * 7 + size) & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.events.append((self.name, "w", offset, size, value))


def build(regions, events):
    """A PIO bus with the given (base, size, sizes, has_read, has_write) regions."""
    bus = Bus(Space.PIO)
    for n, (base, size, sizes, has_read, has_write) in enumerate(regions):
        dev = Log(f"dev{n}", events)
        bus.claim(Region(Space.PIO, base, size, dev.read if has_read else None,
                         dev.write if has_write else None, sizes=sizes), f"dev{n}")
    return bus


@st.composite
def layouts(draw):
    """Up to 6 non-overlapping regions in ports 0..200, some larger than SMALL_REGION."""
    cuts = sorted(draw(st.sets(st.integers(0, 200), min_size=2, max_size=12)))
    spans = [(a, b - a) for a, b in zip(cuts, cuts[1:])]
    chosen = draw(st.lists(st.sampled_from(spans), unique=True, max_size=6)) if spans else []
    sizes = st.sampled_from([(1,), (1, 2), (2,), (4,), (1, 2, 4, 8), (8,)])
    return [(base, size, draw(sizes), draw(st.booleans()), draw(st.booleans())) for base, size in chosen]


accesses = st.lists(st.tuples(st.booleans(), st.integers(0, 210), st.sampled_from([1, 2, 4, 8]),
                              st.integers(0, (1 << 64) - 1)), max_size=40)


def route_read(bus, address, size):
    """What an accelerator does with a route (containment included)."""
    handler, first = bus.read_route(address, size)
    try:
        return handler(first, size)
    except Exception as exc:
        bus.fault(Direction.READ, address, size, None, exc)
        return (1 << (8 * size)) - 1


def route_write(bus, address, size, value):
    handler, first = bus.write_route(address, size)
    try:
        handler(first, size, value)
    except Exception as exc:
        bus.fault(Direction.WRITE, address, size, value, exc)


@settings(max_examples=200, deadline=None)
@given(layouts(), accesses)
def test_routes_do_what_the_access_path_does(regions, ops):
    slow_events, fast_events = [], []
    slow, fast = build(regions, slow_events), build(regions, fast_events)
    for is_write, address, size, value in ops:
        value &= (1 << (8 * size)) - 1
        if is_write:
            slow.write(address, size, value)
            route_write(fast, address, size, value)
        else:
            assert route_read(fast, address, size) == slow.read(address, size)
    assert fast_events == slow_events
    assert fast.unclaimed == slow.unclaimed


@settings(max_examples=200, deadline=None)
@given(layouts(), accesses)
def test_the_small_region_index_agrees_with_the_binary_search(regions, ops):
    bus = build(regions, [])
    for _is_write, address, _size, _value in ops:
        entry = bus._small.get(address)
        found = bus.find(address)
        if entry is not None:
            assert found is not None and found[0] is entry.region
            assert entry.region.size <= SMALL_REGION


def test_direct_names_the_device_handler_and_offset():
    events = []
    bus = build([(0x3F8, 8, (1,), True, True)], events)
    handler, offset = bus.direct(Direction.WRITE, 0x3FB, 1)
    assert offset == 3
    handler(offset, 1, 0x80)
    assert events == [("dev0", "w", 3, 1, 0x80)]


@pytest.mark.parametrize(("direction", "address", "size", "why"), [
    (Direction.READ, 0x70, 1, "unclaimed"),
    (Direction.READ, 0x3FF, 2, "runs past the region's end"),
    (Direction.READ, 0x3F8, 2, "a width the device does not take (split)"),
    (Direction.WRITE, 0x500, 1, "no write handler (dropped)"),
])
def test_direct_is_none_where_the_full_path_has_work_to_do(direction, address, size, why):
    bus = build([(0x3F8, 8, (1,), True, True), (0x500, 1, (1,), True, False)], [])
    assert bus.direct(direction, address, size) is None, why


def test_tracing_sends_every_route_through_the_traced_path():
    events, trace = [], []
    bus = build([(0x80, 1, (1,), True, True)], events)
    assert bus.write_route(0x80, 1)[0].__self__ is not bus  # the device's own method
    bus.set_tracer(trace.append)
    handler, first = bus.write_route(0x80, 1)
    handler(first, 1, 0x42)
    assert [(t.address, t.value, t.device) for t in trace] == [(0x80, 0x42, "dev0")]
    assert events == [("dev0", "w", 0, 1, 0x42)]


def test_route_tables_are_emptied_when_claims_or_the_tracer_change():
    bus = build([(0x80, 1, (1,), True, True)], [])
    table = bus.write_routes[1]  # held by a running loop: must be cleared in place, not replaced
    bus.write_route(0x80, 1)
    bus.write_route(0x90, 1)
    assert set(table) == {0x80}  # nobody claims 0x90: its route is not kept
    bus.claim(Region(Space.PIO, 0x90, 1, None, lambda o, s, v: None), "late")
    assert table == {} and bus.write_routes[1] is table
    bus.write_route(0x80, 1)
    bus.set_tracer(lambda txn: None)
    assert table == {}


def test_route_tables_stop_growing_at_their_bound():
    bus = Bus(Space.MMIO)
    bus.claim(Region(Space.MMIO, 0, 1 << 20, lambda o, s: 7, None, sizes=(4,)), "big")
    for address in range(0, 4 * (ROUTE_CACHE + 10), 4):
        bus.read_route(address, 4)
    assert len(bus.read_routes[4]) == ROUTE_CACHE
    handler, first = bus.read_route(4 * (ROUTE_CACHE + 20), 4)
    assert handler(first, 4) == 7  # still answered, just not kept


def test_routes_to_unclaimed_addresses_are_not_kept():
    bus = Bus(Space.MMIO)
    for address in range(0, 1 << 20, 4096):
        handler, first = bus.read_route(address, 4)
        assert handler(first, 4) == 0xFFFF_FFFF
    assert all(table == {} for table in bus.read_routes)
    assert sum(bus.unclaimed.values()) == 256


def test_a_direct_handler_that_raises_is_contained_by_fault_as_the_access_path_would(caplog):
    def broken(offset, size):
        raise ValueError("model bug")

    bus = Bus(Space.PIO)
    bus.claim(Region(Space.PIO, 0x60, 1, broken, None), "kbd")
    with pytest.raises(DeviceFault, match="kbd"):
        route_read(bus, 0x60, 1)
    bus.device_errors = "continue"
    with caplog.at_level(logging.ERROR, logger="vmcore.bus"):
        assert route_read(bus, 0x60, 1) == 0xFF
    assert bus.device_faults == {("kbd", "ValueError"): 1}


# --- region flags: posted and doorbells --------------------------------------------------------


def test_regions_are_synchronous_unless_declared_posted():
    assert Region(Space.PIO, 0xF1, 1).posted is False
    assert Region(Space.PIO, 0xF1, 1, posted=True).posted is True


def test_doorbells_are_kept_as_a_tuple():
    region = Region(Space.MMIO, 0x1000, 0x100, None, lambda o, s, v: None, doorbells=[Doorbell(0x50, 4, 0)])
    assert region.doorbells == (Doorbell(0x50, 4, 0),)


@pytest.mark.parametrize(("space", "bell", "sizes", "message"), [
    (Space.PIO, Doorbell(0, 8), (1, 2, 4, 8), "size must be one of (1, 2, 4)"),
    (Space.MMIO, Doorbell(0, 3), (1, 2, 4, 8), "size must be one of (1, 2, 4)"),
    (Space.MMIO, Doorbell(0, 8), (1, 2, 4, 8), "size must be one of (1, 2, 4)"),
    (Space.MMIO, Doorbell(2, 4), (1, 2, 4, 8), "not naturally aligned"),
    (Space.MMIO, Doorbell(0, 2), (4,), "not among the region's access sizes"),
    (Space.MMIO, Doorbell(0xE, 4), (1, 2, 4, 8), "do not fit"),
    (Space.MMIO, Doorbell(-1, 1), (1, 2, 4, 8), "do not fit"),
    (Space.MMIO, Doorbell(0, 1, value=0x100), (1, 2, 4, 8), "does not fit in 1 bytes"),
])
def test_a_doorbell_the_region_cannot_take_is_rejected(space, bell, sizes, message):
    with pytest.raises(BusError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Region(space, 0x10, 16, None, lambda o, s, v: None, sizes=sizes, doorbells=(bell,))


def test_a_doorbell_needs_a_write_handler():
    with pytest.raises(BusError, match="no write handler"):
        Region(Space.PIO, 0x10, 1, lambda o, s: 0, None, doorbells=(Doorbell(0, 1),))
