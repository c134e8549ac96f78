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

import bisect
import ctypes
import errno
import functools
import operator
import os
import struct
import sys
from itertools import accumulate, repeat
from itertools import chain as chain_from
from typing import Any, Iterator, NamedTuple

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


class Chain:
    """A checked descriptor chain: the device-readable buffers, then the device-writable ones.

    ``readable`` and ``writable`` are tuples of :class:`Buffer`, ``readable_length`` and
    ``writable_length`` their bytes. The methods move data between the chain and guest RAM
    (:meth:`read`, :meth:`write`), or a host file and guest RAM with no copy in between
    (:meth:`pread`, :meth:`pwrite`). Offsets (``start``) count from the part's first byte.
    """

    __slots__ = ("head", "readable_length", "writable_length", "_addresses", "_lengths", "_split",
                 "_readable", "_writable", "_ends")

    def __init__(self, head: int, readable: tuple[Buffer, ...], writable: tuple[Buffer, ...],
                 readable_length: int | None = None, writable_length: int | None = None) -> None:
        readable, writable = tuple(readable), tuple(writable)
        buffers = readable + writable
        self._set(head, tuple(b[0] for b in buffers), tuple(b[1] for b in buffers), len(readable),
                  sum(b[1] for b in readable) if readable_length is None else readable_length,
                  sum(b[1] for b in writable) if writable_length is None else writable_length)
        self._readable, self._writable = readable, writable

    @classmethod
    def _of(cls, head: int, addresses: tuple[int, ...], lengths: tuple[int, ...], split: int,
            readable_length: int, writable_length: int) -> "Chain":
        """A chain from checked fields: buffers ``[:split]`` readable, the rest writable."""
        chain = cls.__new__(cls)
        chain._set(head, addresses, lengths, split, readable_length, writable_length)
        return chain

    def _set(self, head: int, addresses: tuple[int, ...], lengths: tuple[int, ...], split: int,
             readable_length: int, writable_length: int) -> None:
        self.head = head
        self.readable_length, self.writable_length = readable_length, writable_length
        self._addresses, self._lengths, self._split = addresses, lengths, split
        self._readable = self._writable = None  # made when asked for: most devices never look
        self._ends: dict[bool, list[int]] = {}

    @property
    def readable(self) -> tuple[Buffer, ...]:
        if self._readable is None:
            split = self._split
            self._readable = tuple(map(_buffer, repeat(Buffer), zip(self._addresses[:split], self._lengths[:split])))
        return self._readable

    @property
    def writable(self) -> tuple[Buffer, ...]:
        if self._writable is None:
            split = self._split
            self._writable = tuple(map(_buffer, repeat(Buffer), zip(self._addresses[split:], self._lengths[split:])))
        return self._writable

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chain):
            return NotImplemented
        return (self.head, self._addresses, self._lengths, self._split) == \
            (other.head, other._addresses, other._lengths, other._split)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Chain(head={self.head}, readable={self.readable!r}, writable={self.writable!r})"

    # --- where bytes are ------------------------------------------------------------------

    def _part(self, writing: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
        split = self._split
        if writing:
            return self._addresses[split:], self._lengths[split:]
        return self._addresses[:split], self._lengths[:split]

    def _ends_of(self, writing: bool, lengths: tuple[int, ...]) -> list[int]:
        """Where each buffer of the part ends, in bytes from its start (computed once per part)."""
        ends = self._ends.get(writing)
        if ends is None:
            ends = self._ends[writing] = list(accumulate(lengths))
        return ends

    def _pieces(self, writing: bool, start: int, length: int) -> Iterator[tuple[int, int]]:
        """(address, count) pieces of the part, ``length`` bytes from byte ``start`` on, each at most
        PIECE bytes. The buffer holding ``start`` is found by bisection, not by walking to it (a
        status byte at the end of a 256-buffer request)."""
        addresses, lengths = self._part(writing)
        ends = self._ends_of(writing, lengths)
        index = bisect.bisect_right(ends, start)
        if index >= len(lengths) or length <= 0:
            return
        offset = start - (ends[index - 1] if index else 0)
        for address, size in zip(addresses[index:], lengths[index:]):
            address, size, offset = address + offset, size - offset, 0
            if size > length:
                size = length
            length -= size
            while size > PIECE:
                yield address, PIECE
                address, size = address + PIECE, size - PIECE
            if size:
                yield address, size
            if length <= 0:
                return

    # --- guest RAM ------------------------------------------------------------------------

    def read(self, memory: GuestMemory, start: int, length: int) -> bytes:
        """``length`` bytes of the readable part from byte ``start`` on (fewer where it ends)."""
        return b"".join(memory.read(address, count) for address, count in self._pieces(False, start, length))

    def read_pieces(self, memory: GuestMemory, start: int = 0) -> Iterator[bytes]:
        """The readable part from byte ``start`` on, in pieces of at most PIECE bytes."""
        for address, count in self._pieces(False, start, CHAIN_LIMIT):
            yield memory.read(address, count)

    def write(self, memory: GuestMemory, start: int, data: bytes | bytearray | memoryview) -> int:
        """Copy ``data`` into the writable part from byte ``start`` on; returns how many bytes fitted."""
        view = memoryview(data).cast("B")
        done = 0
        for address, count in self._pieces(True, start, len(view)):
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
        for address, count in self._pieces(writing, start, length):
            if batch and (size + count > PIECE or len(batch) >= IOV_MAX):
                yield batch
                batch, size = [], 0
            batch += memory.views(address, count, writing)
            size += count
        if batch:
            yield batch

    # --- host files -----------------------------------------------------------------------

    def pread(self, memory: GuestMemory, fd: int, offset: int, start: int, length: int) -> int:
        """Read ``length`` bytes of file ``fd`` at ``offset`` straight into the writable part from byte
        ``start`` on; how many bytes came (fewer at the file's end). Raises OSError as ``os.preadv``."""
        return self._file_io(memory, fd, offset, start, length, True)

    def pwrite(self, memory: GuestMemory, fd: int, offset: int, start: int, length: int) -> int:
        """Write ``length`` bytes of the readable part from byte ``start`` on to file ``fd`` at
        ``offset``, straight from guest RAM; how many bytes went. Raises OSError as ``os.pwritev``."""
        return self._file_io(memory, fd, offset, start, length, False)

    def _file_io(self, memory: GuestMemory, fd: int, offset: int, start: int, length: int, reading: bool) -> int:
        done = 0
        batches = _host_vectors(self, memory, start, length, reading)
        if batches is None:  # no one window holds it: views, a batch at a time
            for batch in self.views(memory, start, length, writing=reading):
                size = sum(map(len, batch))
                moved = os.preadv(fd, batch, offset + done) if reading else os.pwritev(fd, batch, offset + done)
                done += moved
                if moved < size:
                    break
            return done
        for vectors, count, size in batches:
            moved = _vectored_io(reading, fd, vectors, count, offset + done)
            done += moved
            if moved < size:
                break
        return done


def _host_vectors(chain: Chain, memory: GuestMemory, start: int, length: int,
                  writing: bool) -> list[tuple[bytes, int, int]] | None:
    """The part's bytes as host iovec arrays (packed ``struct iovec``), at most IOV_MAX each, with
    their counts and sizes, made without a Python step per buffer; None where no one window of
    RAM holds them all (writable, if ``writing``), or where the C library is not to be had."""
    if _libc_io is None or length <= 0:
        return None
    addresses, lengths = chain._part(writing)
    ends = chain._ends_of(writing, lengths)
    first = bisect.bisect_right(ends, start)
    last = bisect.bisect_left(ends, start + length)
    if last >= len(lengths) or first > last:
        return None
    addresses, sizes = list(addresses[first:last + 1]), list(lengths[first:last + 1])
    head = start - (ends[first - 1] if first else 0)
    addresses[0] += head
    sizes[0] -= head
    sizes[-1] -= ends[last] - (start + length)
    slot = memory.slot_at(min(addresses))
    if slot is None or (writing and slot.readonly) or max(map(operator.add, addresses, sizes)) > slot.end:
        return None
    hosts = list(map(operator.add, addresses, repeat(slot.host_address - slot.base)))
    out = []
    for at in range(0, len(sizes), IOV_MAX):
        part_hosts, part_sizes = hosts[at:at + IOV_MAX], sizes[at:at + IOV_MAX]
        count = len(part_sizes)
        out.append((_iovecs(count).pack(*chain_from.from_iterable(zip(part_hosts, part_sizes))), count, sum(part_sizes)))
    return out


@functools.lru_cache(maxsize=64)
def _iovecs(count: int) -> struct.Struct:
    return struct.Struct(f"={2 * count}Q")  # struct iovec: a pointer and a size_t, on a 64-bit host


def _load_libc_io() -> tuple[Any, Any] | None:
    """libc's preadv and pwritev, for I/O on host iovec arrays; None off 64-bit Linux."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        functions = libc.preadv, libc.pwritev
    except (OSError, AttributeError):
        return None
    for function in functions:
        function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int64)
        function.restype = ctypes.c_ssize_t
    return functions


_libc_io = _load_libc_io()


def _vectored_io(reading: bool, fd: int, vectors: bytes, count: int, offset: int) -> int:
    assert _libc_io is not None
    function = _libc_io[0] if reading else _libc_io[1]
    while True:
        moved = function(fd, vectors, count, offset)
        if moved >= 0:
            return int(moved)
        error = ctypes.get_errno()
        if error != errno.EINTR:
            raise OSError(error, os.strerror(error))


#: Indirect tables up to this many entries are checked in bulk (Virtqueue._in_table_order).
BULK_ENTRIES = 1024
_FOLLOWING = tuple(range(1, BULK_ENTRIES))  # the next fields of a table in order
_LINKED = {DESC_F_NEXT, DESC_F_NEXT | DESC_F_WRITE}  # what every entry but the last may carry
_ENDS = (0, DESC_F_WRITE)  # and the last


@functools.lru_cache(maxsize=64)
def _descriptor_table(entries: int) -> struct.Struct:
    return struct.Struct("<" + "QIHH" * entries)


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
    class State:
        """What a snapshot keeps of a queue (vmcore.snapshot): its configuration and ring positions
        (chains a device holds popped are its own to keep)."""

        size: int
        desc: int
        avail: int
        used: int
        ready: bool
        indirect: bool
        _next_avail: int
        _next_used: int

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
        addresses: list[int] = []
        lengths: list[int] = []
        readable_count = -1  # the buffers before the first writable one, once there is one
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
                chain = self._in_table_order(head, descriptors, entries)
                if chain is not None:
                    return chain
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
                if readable_count < 0:
                    readable_count = len(addresses)
                writable_length += length
            elif readable_count >= 0:
                raise VirtqueueError(f"descriptor {index}{' (indirect)' if nested else ''}: device-readable "
                                     f"after a device-writable descriptor")
            else:
                readable_length += length
            addresses.append(address)
            lengths.append(length)
            if readable_length + writable_length >= CHAIN_LIMIT:
                raise VirtqueueError(f"the chain from {head} carries 2**32 bytes or more")
            if not flags & DESC_F_NEXT:
                return Chain._of(head, tuple(addresses), tuple(lengths),
                                 len(addresses) if readable_count < 0 else readable_count,
                                 readable_length, writable_length)
            if following >= entries:
                raise VirtqueueError(f"descriptor {index}{' (indirect)' if nested else ''}: next {following} "
                                     f"is not below {entries}")
            index = following

    def _in_table_order(self, head: int, descriptors: memoryview | bytes, entries: int) -> Chain | None:
        """An indirect table that is one chain in table order (as Linux lays them out: each entry's
        next the one after it), checked in bulk, without a Python step per descriptor; None when it
        is laid out otherwise, or may break a rule: the descriptor loop then checks it one by one."""
        if entries > BULK_ENTRIES:
            return None
        fields = _descriptor_table(entries).unpack_from(descriptors)
        last = entries - 1
        flags = fields[2::4]
        if fields[3:4 * last:4] != _FOLLOWING[:last] or not set(flags[:last]) <= _LINKED or flags[last] not in _ENDS:
            return None  # not linked in order, or flags the loop must look at (indirect, unknown bits)
        first_writable = flags.index(DESC_F_NEXT | DESC_F_WRITE, 0, last) if DESC_F_NEXT | DESC_F_WRITE in flags[:last] \
            else last if flags[last] & DESC_F_WRITE else entries
        if DESC_F_NEXT in flags[first_writable:last] or (first_writable < last and not flags[last] & DESC_F_WRITE):
            return None  # a readable buffer after a writable one
        addresses, lengths = fields[0::4], fields[1::4]
        total = sum(lengths)
        if total >= CHAIN_LIMIT:
            return None
        slot = self.memory.slot_at(min(addresses))
        if slot is None or max(map(operator.add, addresses, lengths)) > slot.end or \
                (first_writable < entries and slot.readonly):
            return None  # not all in one window (zero-length buffers anywhere, say): one by one
        readable_length = sum(lengths[:first_writable])
        return Chain._of(head, addresses, lengths, min(first_writable, entries), readable_length,
                         total - readable_length)

    def _check_ram(self, address: int, length: int, writing: bool, what: str) -> None:
        try:
            self.memory.check_range(address, length, writing)
        except GuestMemoryError as exc:
            raise VirtqueueError(f"{what} ({address:#x}+{length:#x}) is not in {'writable ' if writing else ''}"
                                 f"guest RAM: {exc}") from None
