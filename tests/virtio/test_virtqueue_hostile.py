"""A hostile driver against the virtqueue: each of the queue's rules broken on purpose.

Each case must be refused with a VirtqueueError naming what is wrong (the transport then
marks the device as needing a reset), never hang, and never take more memory than one
descriptor table: checked through the transport on the fake bus, and on the queue alone by
hypothesis for arbitrary tables.
"""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmcore.memory import GuestMemory
from vmcore.testing.virtio import VirtioDriver
from vmcore.virtio.mmio import DEVICE_NEEDS_RESET, F_VERSION_1, STATUS
from vmcore.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, Chain, Virtqueue, VirtqueueError

BASE = 0x1000_0000
RAM = 1 << 20  # the fake bus's RAM: 0..1 MiB


def _rng(fake_bus, features: int | None = None):  # type: ignore[no-untyped-def]
    rng = fake_bus.attach("virtio-rng", base=BASE, irq=5, rate=0)
    driver = VirtioDriver(fake_bus, BASE)
    driver.start(features=features)
    return rng, driver, driver.queue(0)


# Each case writes a broken chain (or ring) into the queue and says what the refusal names.
def _loop(q, d) -> None:
    q.descriptor(0, 0x8000, 16, DESC_F_WRITE | DESC_F_NEXT, 1)
    q.descriptor(1, 0x8010, 16, DESC_F_WRITE | DESC_F_NEXT, 0)
    q.publish(0)


def _next_out_of_range(q, d) -> None:
    q.descriptor(0, 0x8000, 16, DESC_F_WRITE | DESC_F_NEXT, 64)
    q.publish(0)


def _head_out_of_range(q, d) -> None:
    q.publish(64)


def _outside_ram(q, d) -> None:
    q.descriptor(0, RAM - 8, 16, DESC_F_WRITE)
    q.publish(0)


def _wraps(q, d) -> None:
    q.descriptor(0, (1 << 64) - 8, 16, DESC_F_WRITE)
    q.publish(0)


def _over_the_registers(q, d) -> None:
    q.descriptor(0, BASE, 16, DESC_F_WRITE)  # the device's own window: never a buffer
    q.publish(0)


def _too_long(q, d) -> None:
    q.descriptor(0, 0x8000, 0xFFFF_FFF0, DESC_F_NEXT, 1)  # lengths that add up past 2**32 (and past RAM)
    q.publish(0)


def _readable_after_writable(q, d) -> None:
    q.descriptor(0, 0x8000, 16, DESC_F_WRITE | DESC_F_NEXT, 1)
    q.descriptor(1, 0x8010, 16, 0)
    q.publish(0)


def _indirect_nested(q, d) -> None:
    table = d.alloc(32)
    q.descriptor(0, table, 32, DESC_F_INDIRECT)
    q.descriptor(0, table, 32, DESC_F_INDIRECT, table=table)
    q.publish(0)


def _indirect_bad_length(q, d) -> None:
    q.descriptor(0, d.alloc(32), 24, DESC_F_INDIRECT)
    q.publish(0)


def _indirect_empty(q, d) -> None:
    q.descriptor(0, d.alloc(32), 0, DESC_F_INDIRECT)
    q.publish(0)


def _indirect_outside_ram(q, d) -> None:
    q.descriptor(0, RAM - 16, 32, DESC_F_INDIRECT)
    q.publish(0)


def _indirect_loop(q, d) -> None:
    table = d.alloc(32)
    q.descriptor(0, 0x8000, 16, DESC_F_WRITE | DESC_F_NEXT, 1, table=table)
    q.descriptor(1, 0x8010, 16, DESC_F_WRITE | DESC_F_NEXT, 0, table=table)
    q.descriptor(0, table, 32, DESC_F_INDIRECT)
    q.publish(0)


def _indirect_with_next(q, d) -> None:
    table = d.alloc(16)
    q.descriptor(0, 0x8000, 16, DESC_F_WRITE, table=table)
    q.descriptor(0, table, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1)
    q.publish(0)


def _indirect_not_first(q, d) -> None:
    table = d.alloc(16)
    q.descriptor(0, table, 16, DESC_F_WRITE, table=table)
    q.descriptor(0, 0x8000, 16, DESC_F_WRITE | DESC_F_NEXT, 1)
    q.descriptor(1, table, 16, DESC_F_INDIRECT)
    q.publish(0)


def _avail_ahead(q, d) -> None:
    q.set_avail_idx(65)  # 65 chains available in a queue of 64


HOSTILE = {
    "a descriptor loop": (_loop, "a loop"),
    "next out of range": (_next_out_of_range, "not below"),
    "a head out of range": (_head_out_of_range, "not below the queue size"),
    "a buffer past RAM": (_outside_ram, "not in writable guest RAM"),
    "a buffer wrapping 2**64": (_wraps, "wraps"),
    "a buffer over device registers": (_over_the_registers, "not in writable guest RAM"),
    "a chain of 2**32 bytes": (_too_long, "guest RAM"),
    "readable after writable": (_readable_after_writable, "device-readable after a device-writable"),
    "nested indirect tables": (_indirect_nested, "one level deep"),
    "an indirect table not a multiple of 16": (_indirect_bad_length, "multiple of 16"),
    "an empty indirect table": (_indirect_empty, "multiple of 16"),
    "an indirect table past RAM": (_indirect_outside_ram, "indirect table"),
    "a loop inside an indirect table": (_indirect_loop, "a loop"),
    "indirect and next together": (_indirect_with_next, "indirect and next"),
    "an indirect table after a buffer": (_indirect_not_first, "one level deep"),
    "avail.idx ahead by more than the size": (_avail_ahead, "ahead of the used index"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_broken_rule_marks_the_device_as_needing_reset_and_serves_nothing(fake_bus, caplog, case: str) -> None:
    write, names = HOSTILE[case]
    _, driver, queue = _rng(fake_bus)
    write(queue, driver)
    tracemalloc.start()
    queue.notify()
    queue.notify()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 256 * 1024
    assert driver.read(STATUS) & DEVICE_NEEDS_RESET and fake_bus.irq_level(5)
    assert queue.used() == []
    reports = [record.message for record in caplog.records if "needs a reset" in record.message]
    assert len(reports) == 1 and names in reports[0], reports


@pytest.mark.parametrize("size, desc, why", [(48, None, "power of two"), (128, None, "power of two up to 64"),
                                             (64, 0x8008, "aligned"), (64, RAM - 64, "descriptor table")])
def test_a_queue_set_up_wrong_is_refused_when_made_ready(fake_bus, caplog, size, desc, why) -> None:
    fake_bus.attach("virtio-rng", base=BASE, irq=5)
    driver = VirtioDriver(fake_bus, BASE)
    driver.start(queues=())
    driver.write(0x030, 0)  # QueueSel
    driver.write(0x038, size)  # QueueNum
    for low, address in ((0x080, desc if desc is not None else 0x8000), (0x090, 0x9000), (0x0A0, 0xA000)):
        driver.write(low, address)
    driver.write(0x044, 1)  # QueueReady
    assert driver.read(STATUS) & DEVICE_NEEDS_RESET
    assert any(why in record.message for record in caplog.records)


def test_indirect_tables_are_refused_unless_negotiated(fake_bus, caplog) -> None:
    _, driver, queue = _rng(fake_bus, features=F_VERSION_1)
    queue.add([(16, True)], indirect=True)
    queue.notify()
    assert driver.read(STATUS) & DEVICE_NEEDS_RESET
    assert any("not negotiated" in record.message for record in caplog.records)


# --- the chain parser alone, fuzzed -----------------------------------------------------------------

QUEUE_SIZE = 16
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000


def _queue(memory: GuestMemory) -> Virtqueue:
    queue = Virtqueue(memory, QUEUE_SIZE, indirect=True)
    queue.size, queue.desc, queue.avail, queue.used = QUEUE_SIZE, DESC, AVAIL, USED
    queue.enable()
    return queue


_descriptor = st.tuples(
    st.one_of(st.integers(0, 0x1_0000), st.integers(0, (1 << 64) - 1), st.sampled_from([0x4000, 0xF000, 0xFFF0])),
    st.one_of(st.integers(0, 64), st.integers(0, (1 << 32) - 1), st.sampled_from([16, 32, 48])),
    st.integers(0, 7),  # NEXT, WRITE, INDIRECT in any mix
    st.one_of(st.integers(0, QUEUE_SIZE + 2), st.integers(0, 0xFFFF)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.lists(_descriptor, min_size=QUEUE_SIZE, max_size=QUEUE_SIZE),
       indirect=st.lists(_descriptor, min_size=0, max_size=8),
       heads=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4),
       avail_idx=st.integers(0, 0xFFFF))
def test_any_table_gives_checked_chains_or_a_virtqueue_error(table, indirect, heads, avail_idx) -> None:
    memory = GuestMemory()
    memory.add_slot("ram", 0, 0x10000)
    try:
        queue = _queue(memory)
        for index, (address, length, flags, following) in enumerate(table):
            memory.write(DESC + 16 * index, (address.to_bytes(8, "little") + length.to_bytes(4, "little")
                                             + flags.to_bytes(2, "little") + following.to_bytes(2, "little")))
        for index, (address, length, flags, following) in enumerate(indirect):  # a table at 0x4000
            memory.write(0x4000 + 16 * index, (address.to_bytes(8, "little") + length.to_bytes(4, "little")
                                               + flags.to_bytes(2, "little") + following.to_bytes(2, "little")))
        for slot, head in enumerate(heads):
            memory.write_int(AVAIL + 4 + 2 * slot, 2, head)
        memory.write_int(AVAIL + 2, 2, avail_idx)
        for _ in range(len(heads)):
            try:
                chain = queue.pop()
            except VirtqueueError:
                return  # refused: what the device does next is the transport's (tested above)
            if chain is None:
                return
            _check(chain, memory)
            queue.push(chain, 0)
    finally:
        memory.close()


def _check(chain: Chain, memory: GuestMemory) -> None:
    """What a chain promises the device: every buffer backed, writable ones writable, within limits."""
    assert 0 <= chain.head < QUEUE_SIZE
    assert len(chain.readable) + len(chain.writable) <= max(QUEUE_SIZE, 8)
    assert chain.readable_length + chain.writable_length < 1 << 32
    for buffer in chain.readable + chain.writable:
        if buffer.length:
            memory.check_range(buffer.address, buffer.length, writing=buffer in chain.writable)


# An indirect table laid out in order (each entry's next the one after it), as Linux writes
# them: checked in bulk (Virtqueue._in_table_order) unless something looks wrong. Whatever the
# entries, the bulk check must end as the descriptor-by-descriptor one does: the same chain,
# or a refusal.
_in_order_entry = st.tuples(
    st.one_of(st.integers(0, 0x3000), st.integers(0, 0x3000), st.integers(0, 0x3000),
              st.sampled_from([-0x1000, 0x3FF0, 0x4000, 0x6000, (1 << 64) - 8])),  # offset in the region, or off it
    st.one_of(st.integers(0, 0x1000), st.integers(0, 0x1000), st.sampled_from([0, 1, 16, 0x10000, (1 << 32) - 1])),
    st.sampled_from([0, 0, 0, DESC_F_WRITE, 8, DESC_F_INDIRECT]),  # extra flags (beside NEXT and the suffix's WRITE)
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(_in_order_entry, min_size=1, max_size=40), writable_from=st.integers(0, 40),
       broken_next=st.one_of(st.none(), st.none(), st.integers(0, 39)), last_next=st.booleans(),
       region=st.sampled_from([0x1000, 0x1000, 0x10000]))
def test_an_indirect_table_in_order_is_checked_in_bulk_as_one_by_one(entries, writable_from, broken_next,
                                                                    last_next, region) -> None:
    memory = GuestMemory()
    memory.add_slot("ram", 0, 0x10000)
    memory.add_slot("rom", 0x10000, 0x4000, readonly=True)  # writable buffers may not be here
    try:
        queue = _queue(memory)
        table = 0x8000
        count = len(entries)
        for index, (offset, length, extra) in enumerate(entries):
            address = (region + offset) % (1 << 64)  # RAM from 0x1000, or all in the ROM
            flags = extra | (DESC_F_WRITE if index >= writable_from else 0)
            following = index + 1
            if index < count - 1 or (last_next and broken_next is not None):
                flags |= DESC_F_NEXT
            if index == broken_next:
                following = (index * 7 + 3) % (count + 2)
            memory.write(table + 16 * index, address.to_bytes(8, "little") + length.to_bytes(4, "little")
                         + flags.to_bytes(2, "little") + following.to_bytes(2, "little"))
        memory.write(DESC, table.to_bytes(8, "little") + (16 * count).to_bytes(4, "little")
                     + DESC_F_INDIRECT.to_bytes(2, "little") + bytes(2))

        def outcome(bulk: bool) -> object:
            if not bulk:
                queue._in_table_order = lambda *_args: None  # type: ignore[method-assign]
            try:
                chain = queue._chain(0)
            except VirtqueueError:
                return "refused"
            finally:
                queue.__dict__.pop("_in_table_order", None)
            return (chain.head, chain.readable, chain.writable, chain.readable_length, chain.writable_length)

        assert outcome(bulk=True) == outcome(bulk=False)
    finally:
        memory.close()
