"""The split virtqueue (virtio 1.x, section 2.7), as a device sees it: checked chains only.

A driver hands a device buffers through three rings in guest RAM: the descriptor table
(where each buffer is, chained by ``next``), the available ring (the chains' heads, in
order) and the used ring (what the device gives back). Every field of them is the
guest's to write, so every one is checked before it is used; the checks are the fixes of
the worst virtio bugs in VMMs (descriptor loops, indexes out of range, lengths that wrap,
an available index that runs ahead, buffers over the device's own registers: QEMU's
CVE-2021-3416 and CVE-2024-3446, rust-vmm's virtio-queue and crosvm's chain checks):

* the queue size is a power of two, at most the device's maximum; each ring is aligned
  (16, 2 and 4 bytes) and wholly in guest RAM, the used ring in writable RAM;
* ``avail.idx`` is at most the queue size ahead of the used ring's index;
* a head, and every ``next``, is an index below the table's size, and a chain with more
  descriptors than the table has entries is a loop;
* an indirect table is only where a chain starts, one level deep (no indirect descriptor
  in it), with the feature negotiated, a non-zero multiple of 16 bytes long, in RAM;
* every buffer is in guest RAM, through slots that follow each other without a gap (no
  device register: a device never DMAs into MMIO through a queue), a device-writable one
  in writable RAM, and the chain's total length is below 2**32;
* no device-readable buffer follows a device-writable one.

A broken rule raises :class:`VirtqueueError`; the transport then marks the device as
needing a reset (``vmcore.virtio.mmio``). Nothing here allocates more than one
descriptor table's worth per chain, whatever the guest wrote, and nothing loops longer
than the table is.
"""

from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

import attrs

from ..memory import GuestMemory, GuestMemoryError

#: Descriptor flags (virtio 1.x, 2.7.5).
DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT = 1, 2, 4
#: Available ring flag: the driver asks for no interrupt after used buffers (2.7.7).
AVAIL_F_NO_INTERRUPT = 1
_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")
#: The most bytes a chain may carry in all: its total must fit the used ring's 32-bit length.
CHAIN_LIMIT = 1 << 32
#: Copies between a chain and the host go in pieces of at most this many bytes.
PIECE = 1 << 20
#: The most views in one batch of :meth:`Chain.views` (Linux's UIO_MAXIOV, the iovecs of one preadv).
IOV_MAX = 1024


class VirtqueueError(Exception):
    """The driver broke a queue's rules: the device stops serving it until reset."""


class Buffer(NamedTuple):
    """One descriptor's buffer: guest-physical ``address``, ``length`` bytes."""

    address: int
    length: int


_buffer = tuple.__new__  # Buffer(address, length) without NamedTuple's Python-level __new__ (per descriptor)


def _total(buffers: tuple[Buffer, ...]) -> int:
    return sum(buffer.length for buffer in buffers)


@attrs.frozen
class Chain:
    """A checked descriptor chain: the device-readable buffers, then the device-writable ones."""

    head: int
    readable: tuple[Buffer, ...]
    writable: tuple[Buffer, ...]
    #: Bytes in all readable buffers, and in all writable ones.
    readable_length: int = attrs.field(default=attrs.Factory(lambda chain: _total(chain.readable), takes_self=True))
    writable_length: int = attrs.field(default=attrs.Factory(lambda chain: _total(chain.writable), takes_self=True))

    def read(self, memory: GuestMemory, start: int, length: int) -> bytes:
        """``length`` bytes of the readable part from byte ``start`` on (fewer where it ends)."""
        return b"".join(memory.read(address, count) for address, count in _pieces(self.readable, start, length))

    def read_pieces(self, memory: GuestMemory, start: int = 0) -> Iterator[bytes]:
        """The readable part from byte ``start`` on, in pieces of at most PIECE bytes."""
        for address, count in _pieces(self.readable, start, CHAIN_LIMIT):
            yield memory.read(address, count)

    def write(self, memory: GuestMemory, start: int, data: bytes | bytearray | memoryview) -> int:
        """Copy ``data`` into the writable part from byte ``start`` on; returns how many bytes fitted."""
        view = memoryview(data).cast("B")
        done = 0
        for address, count in _pieces(self.writable, start, len(view)):
            memory.write(address, view[done:done + count])
            done += count
        return done

    def views(self, memory: GuestMemory, start: int, length: int, writing: bool) -> Iterator[list[memoryview]]:
        """The writable part (``writing``) or the readable part, ``length`` bytes from byte ``start`` on,
        as views onto guest RAM (:meth:`GuestMemory.views`), in batches of at most PIECE bytes and
        IOV_MAX views: what ``os.preadv`` and ``os.pwritev`` take, so data moves without a copy.
        Use each batch at once; guest RAM is the guest's to change between them."""
        batch: list[memoryview] = []
        size = 0
        low = high = 0  # the window the last piece was in, and a view of it
        window = memoryview(b"")
        for address, count in _pieces(self.writable if writing else self.readable, start, length):
            if batch and (size + count > PIECE or len(batch) >= IOV_MAX):
                yield batch
                batch, size = [], 0
            if low <= address and address + count <= high:
                batch.append(window[address - low : address - low + count])
            else:
                slot = memory.slot_at(address)
                if slot is not None and address + count <= slot.end and not (writing and slot.readonly):
                    low, high = slot.base, slot.end
                    window = slot.view if writing else slot.view.toreadonly()
                    batch.append(window[address - low : address - low + count])
                else:
                    batch += memory.views(address, count, writing)  # across windows (or refused)
            size += count
        if batch:
            yield batch


def _pieces(buffers: tuple[Buffer, ...], start: int, length: int) -> Iterator[tuple[int, int]]:
    """(address, count) pieces of ``buffers`` from byte ``start``, ``length`` bytes at most."""
    for address, size in buffers:
        if start:
            if start >= size:
                start -= size
                continue
            address, size, start = address + start, size - start, 0
        if size > length:
            size = length
        length -= size
        while size > PIECE:
            yield address, PIECE
            address += PIECE
            size -= PIECE
        if size:
            yield address, size
        if length <= 0:
            return


def _table(memory: GuestMemory, address: int, length: int) -> memoryview | bytes:
    """A descriptor table, checked in RAM: a view onto it where one window holds it, else a copy."""
    views = memory.views(address, length)
    return views[0] if len(views) == 1 else b"".join(views)


class Virtqueue:
    """One split virtqueue: its configuration, as the driver sets it, and its rings.

    The transport sets ``size`` and the three ring addresses while the queue is not ready,
    then :meth:`enable` checks them. :meth:`pop` takes the next available chain (or None),
    :meth:`push` gives one back as used, :meth:`wants_interrupt` says whether the driver
    asked to be told.
    """

    def __init__(self, memory: GuestMemory, max_size: int, indirect: bool = False) -> None:
        self.memory = memory
        self.max_size = max_size
        #: Whether VIRTIO_F_INDIRECT_DESC was negotiated (indirect tables allowed).
        self.indirect = indirect
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc = self.avail = self.used = 0
        self.ready = False
        self._next_avail = 0
        self._next_used = 0

    # --- configuration --------------------------------------------------------------------

    def enable(self) -> None:
        """The driver set the queue ready: check its size and rings (VirtqueueError if broken)."""
        size = self.size
        if not 0 < size <= self.max_size or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two up to {self.max_size}")
        for name, address, align, length, writing in (("descriptor table", self.desc, 16, 16 * size, False),
                                                      ("available ring", self.avail, 2, 6 + 2 * size, False),
                                                      ("used ring", self.used, 4, 6 + 8 * size, True)):
            if address % align:
                raise VirtqueueError(f"the {name} at {address:#x} is not {align}-byte aligned")
            self._check_ram(address, length, writing, f"the {name}")
        self._next_avail = self._next_used = self.memory.read_int(self.used + 2, 2)
        self.ready = True

    # --- the device's side ----------------------------------------------------------------

    def pending(self) -> int:
        """How many chains the driver made available that the device has not taken."""
        index = self.memory.read_int(self.avail + 2, 2)
        ahead = (index - self._next_used) & 0xFFFF
        if ahead > self.size:
            raise VirtqueueError(f"avail.idx {index} is {ahead} ahead of the used index, more than the queue "
                                 f"size {self.size}")
        return (index - self._next_avail) & 0xFFFF

    def pop(self) -> Chain | None:
        """The next available chain, checked; None when there is none (or the queue is not ready)."""
        if not self.ready or not self.pending():
            return None
        slot = self._next_avail % self.size
        head = self.memory.read_int(self.avail + 4 + 2 * slot, 2)
        chain = self._chain(head)
        self._next_avail = (self._next_avail + 1) & 0xFFFF
        return chain

    def push(self, chain: Chain, written: int) -> None:
        """Give ``chain`` back as used, ``written`` bytes of it written by the device."""
        slot = self._next_used % self.size
        self.memory.write(self.used + 4 + 8 * slot, _USED_ELEM.pack(chain.head, written))
        self._next_used = (self._next_used + 1) & 0xFFFF
        self.memory.write_int(self.used + 2, 2, self._next_used)  # after the element: the driver reads it next

    def wants_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for used buffers (it may suppress them)."""
        return not self.memory.read_int(self.avail, 2) & AVAIL_F_NO_INTERRUPT

    # --- chains ---------------------------------------------------------------------------

    def _chain(self, head: int) -> Chain:
        if head >= self.size:
            raise VirtqueueError(f"chain head {head} is not below the queue size {self.size}")
        memory = self.memory
        table, entries = self.desc, self.size
        # The table read in place (checked in RAM by enable() or below), each descriptor once:
        # no copy of it, and a guest that changes it meanwhile changes nothing already checked.
        descriptors = _table(memory, table, 16 * entries)
        readable: list[Buffer] = []
        writable: list[Buffer] = []
        readable_length = writable_length = 0
        low = high = 0  # the RAM window the last buffer was in: the next is most often there too
        high_writable = False
        index, count, nested = head, 0, False
        while True:
            address, length, flags, following = _DESC.unpack_from(descriptors, 16 * index)
            if flags & DESC_F_INDIRECT:
                if nested or index != head or count:
                    raise VirtqueueError(f"descriptor {index}: an indirect table only where a chain starts, "
                                         f"one level deep")
                if not self.indirect:
                    raise VirtqueueError(f"descriptor {index}: an indirect table, not negotiated")
                if flags & DESC_F_NEXT:
                    raise VirtqueueError(f"descriptor {index}: indirect and next both set")
                if length == 0 or length % 16:
                    raise VirtqueueError(f"descriptor {index}: an indirect table of {length} bytes "
                                         f"(a non-zero multiple of 16)")
                self._check_ram(address, length, False, f"descriptor {index}'s indirect table")
                table, entries, index, nested = address, length // 16, 0, True
                descriptors = _table(memory, table, length)
                continue
            count += 1
            if count > entries:
                raise VirtqueueError(f"the chain from {head} is longer than its table ({entries}): a loop")
            writing = flags & DESC_F_WRITE
            if length and not (low <= address and address + length <= high and (high_writable or not writing)):
                where = f"descriptor {index}{' (indirect)' if nested else ''}"
                if address + length > 1 << 64:
                    raise VirtqueueError(f"{where}: {address:#x}+{length:#x} wraps past 2**64")
                slot = memory.slot_at(address)
                if slot is not None and address + length <= slot.end and not (writing and slot.readonly):
                    low, high, high_writable = slot.base, slot.end, not slot.readonly
                else:
                    self._check_ram(address, length, bool(writing), where)  # across windows, or refused
            if writing:
                writable.append(_buffer(Buffer, (address, length)))
                writable_length += length
            elif writable:
                raise VirtqueueError(f"descriptor {index}{' (indirect)' if nested else ''}: device-readable "
                                     f"after a device-writable descriptor")
            else:
                readable.append(_buffer(Buffer, (address, length)))
                readable_length += length
            if readable_length + writable_length >= CHAIN_LIMIT:
                raise VirtqueueError(f"the chain from {head} carries 2**32 bytes or more")
            if not flags & DESC_F_NEXT:
                return Chain(head, tuple(readable), tuple(writable), readable_length, writable_length)
            if following >= entries:
                raise VirtqueueError(f"descriptor {index}{' (indirect)' if nested else ''}: next {following} "
                                     f"is not below {entries}")
            index = following

    def _check_ram(self, address: int, length: int, writing: bool, what: str) -> None:
        try:
            self.memory.check_range(address, length, writing)
        except GuestMemoryError as exc:
            raise VirtqueueError(f"{what} ({address:#x}+{length:#x}) is not in {'writable ' if writing else ''}"
                                 f"guest RAM: {exc}") from None
