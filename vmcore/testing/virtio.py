"""A virtio driver for fake-bus tests: a device's queues driven as a guest's driver drives them.

::

    def test_entropy(fake_bus):
        rng = fake_bus.attach("virtio-rng", base=0x10000000, irq=5)
        driver = VirtioDriver(fake_bus, 0x10000000)
        driver.start()
        queue = driver.queue(0)
        queue.add([(64, True)])          # one device-writable buffer of 64 bytes
        queue.notify()
        [(head, written)] = queue.used()

:class:`VirtioDriver` negotiates features and sets queues up in the fake bus's guest RAM
(from ``arena`` on) through the virtio-mmio registers; :class:`DriverQueue` makes chains
available, notifies, and reads the used ring back. For hostile tests it also writes raw
descriptors (:meth:`DriverQueue.descriptor`) and publishes any head or index.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

from ..virtio.mmio import (ACKNOWLEDGE, DEVICE_FEATURES, DEVICE_FEATURES_SEL, DRIVER, DRIVER_FEATURES,
                           DRIVER_FEATURES_SEL, DRIVER_OK, F_INDIRECT_DESC, F_VERSION_1, FEATURES_OK, INTERRUPT_ACK,
                           INTERRUPT_STATUS, QUEUE_DESC_HIGH, QUEUE_DESC_LOW, QUEUE_DEVICE_HIGH, QUEUE_DEVICE_LOW,
                           QUEUE_DRIVER_HIGH, QUEUE_DRIVER_LOW, QUEUE_NOTIFY, QUEUE_NUM, QUEUE_NUM_MAX, QUEUE_READY,
                           QUEUE_SEL, STATUS)
from ..virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

__all__ = ["DriverQueue", "VirtioDriver"]

#: A chain's buffer as a test gives it: bytes the device reads, or (length or bytes, device-writable?).
BufferSpec = Any


class VirtioDriver:
    """Drives the virtio-mmio device at ``base`` on ``bus`` (a :class:`~vmcore.testing.FakeBus`)."""

    def __init__(self, bus: Any, base: int, arena: int = 0x10000) -> None:
        self.bus = bus
        self.base = base
        self.memory = bus.memory
        self._next = arena
        self.features = 0
        self._queues: dict[int, DriverQueue] = {}

    def read(self, offset: int) -> int:
        return int(self.bus.readl(self.base + offset))

    def write(self, offset: int, value: int) -> None:
        self.bus.writel(self.base + offset, value)

    def alloc(self, length: int, align: int = 16) -> int:
        """A fresh range of guest RAM (never given twice)."""
        address = -(-self._next // align) * align
        self._next = address + max(length, 1)
        return address

    def offered(self) -> int:
        words = []
        for select in (0, 1):
            self.write(DEVICE_FEATURES_SEL, select)
            words.append(self.read(DEVICE_FEATURES))
        return words[0] | words[1] << 32

    def start(self, features: int | None = None, queues: Sequence[int] = (0,), size: int | None = None) -> int:
        """Reset, negotiate (by default everything offered), set ``queues`` up and set DRIVER_OK.

        Returns the status read back after FEATURES_OK (without FEATURES_OK: refused)."""
        self.write(STATUS, 0)
        self._queues.clear()  # a reset forgets every queue's set-up
        self.write(STATUS, ACKNOWLEDGE)
        self.write(STATUS, ACKNOWLEDGE | DRIVER)
        self.features = self.offered() if features is None else features
        for select in (0, 1):
            self.write(DRIVER_FEATURES_SEL, select)
            self.write(DRIVER_FEATURES, self.features >> (32 * select) & 0xFFFFFFFF)
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        status = self.read(STATUS)
        if not status & FEATURES_OK:
            return status
        for index in queues:
            self.queue(index, size)
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
        return status

    def queue(self, index: int, size: int | None = None) -> DriverQueue:
        """Queue ``index``, set up (size: the device's maximum, at most 64) the first time asked."""
        if index not in self._queues:
            self.write(QUEUE_SEL, index)
            maximum = self.read(QUEUE_NUM_MAX)
            size = size or min(maximum, 64)
            queue = DriverQueue(self, index, size)
            self.write(QUEUE_NUM, size)
            for low, high, address in ((QUEUE_DESC_LOW, QUEUE_DESC_HIGH, queue.desc),
                                       (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, queue.avail),
                                       (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, queue.used_ring)):
                self.write(low, address & 0xFFFFFFFF)
                self.write(high, address >> 32)
            self.write(QUEUE_READY, 1)
            self._queues[index] = queue
        return self._queues[index]

    def interrupt(self) -> int:
        """Read and acknowledge InterruptStatus (bit 0: used buffers, bit 1: configuration change)."""
        status = self.read(INTERRUPT_STATUS)
        self.write(INTERRUPT_ACK, status)
        return status

    @staticmethod
    def standard_features() -> int:
        return F_VERSION_1 | F_INDIRECT_DESC


class DriverQueue:
    """One queue's rings in guest RAM, written as a driver writes them."""

    def __init__(self, driver: VirtioDriver, index: int, size: int) -> None:
        self.driver = driver
        self.memory = driver.memory
        self.index = index
        self.size = size
        self.desc = driver.alloc(16 * size, 16)
        self.avail = driver.alloc(6 + 2 * size, 2)
        self.used_ring = driver.alloc(6 + 8 * size, 4)
        self.memory.write(self.desc, bytes(16 * size))
        self.memory.write(self.avail, bytes(6 + 2 * size))
        self.memory.write(self.used_ring, bytes(6 + 8 * size))
        #: Each chain add() made: its head -> the (address, length) of its buffers.
        self.buffers: dict[int, list[tuple[int, int]]] = {}
        self._free = 0  # the next descriptor add() uses (round robin: tests recycle the table)
        self._avail_idx = 0
        self._used_seen = 0

    def descriptor(self, slot: int, address: int, length: int, flags: int = 0, next: int = 0,
                   table: int | None = None) -> None:
        """Write descriptor ``slot`` of the queue's table (or of an indirect ``table``) as given."""
        where = (self.desc if table is None else table) + 16 * slot
        self.memory.write(where, struct.pack("<QIHH", address, length, flags, next))

    def publish(self, head: int) -> None:
        """Make the chain at ``head`` available (avail ring, then avail.idx)."""
        self.memory.write_int(self.avail + 4 + 2 * (self._avail_idx % self.size), 2, head)
        self._avail_idx = (self._avail_idx + 1) & 0xFFFF
        self.memory.write_int(self.avail + 2, 2, self._avail_idx)

    def set_avail_idx(self, value: int) -> None:
        self._avail_idx = value & 0xFFFF
        self.memory.write_int(self.avail + 2, 2, self._avail_idx)

    def suppress_interrupts(self, on: bool = True) -> None:
        self.memory.write_int(self.avail, 2, int(on))

    def add(self, buffers: Sequence[BufferSpec], indirect: bool = False) -> int:
        """Make a chain of ``buffers`` available and return its head. Each buffer is bytes (device-
        readable, copied to fresh RAM) or ``(length or bytes, writable)``; ``indirect``: through an
        indirect table. The buffers' addresses are in :attr:`buffers` under the head."""
        specs = [(spec, False) if isinstance(spec, (bytes, bytearray)) else tuple(spec) for spec in buffers]
        placed = []
        for content, writable in specs:
            length = content if isinstance(content, int) else len(content)
            address = self.driver.alloc(length)
            if not isinstance(content, int):
                self.memory.write(address, bytes(content))
            placed.append((address, length, DESC_F_WRITE if writable else 0))
        if indirect:
            table = self.driver.alloc(16 * len(placed))
            for i, (address, length, flags) in enumerate(placed):
                more = DESC_F_NEXT if i + 1 < len(placed) else 0
                self.descriptor(i, address, length, flags | more, i + 1 if more else 0, table=table)
            head = self._take(1)[0]
            self.descriptor(head, table, 16 * len(placed), DESC_F_INDIRECT)
        else:
            slots = self._take(len(placed))
            head = slots[0]
            for i, (address, length, flags) in enumerate(placed):
                more = DESC_F_NEXT if i + 1 < len(placed) else 0
                self.descriptor(slots[i], address, length, flags | more, slots[i + 1] if more else 0)
        self.buffers[head] = [(address, length) for address, length, _ in placed]
        self.publish(head)
        return head

    def _take(self, count: int) -> list[int]:
        slots = [(self._free + i) % self.size for i in range(count)]
        self._free = (self._free + count) % self.size
        return slots

    def notify(self) -> None:
        self.driver.write(QUEUE_NOTIFY, self.index)

    def used(self) -> list[tuple[int, int]]:
        """The used elements (head, bytes written) the device added since the last call."""
        index = self.memory.read_int(self.used_ring + 2, 2)
        out = []
        while self._used_seen != index:
            slot = self.used_ring + 4 + 8 * (self._used_seen % self.size)
            out.append(struct.unpack("<II", self.memory.read(slot, 8)))
            self._used_seen = (self._used_seen + 1) & 0xFFFF
        return out

    def data(self, head: int, part: int = -1) -> bytes:
        """The bytes of buffer ``part`` (default: the last) of the chain at ``head``, as they are now."""
        address, length = self.buffers[head][part]
        return self.memory.read(address, length)
