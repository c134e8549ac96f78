"""Address spaces: the port-IO bus and the MMIO bus.

One :class:`Bus` class serves both spaces (two instances). Devices claim
non-overlapping ranges; a lookup is a binary search over the sorted range
starts, and the device receives ``(offset, size[, value])`` relative to its own
region, never the absolute address.
"""

from __future__ import annotations

import bisect
import collections
import enum
import logging
import operator
from typing import Any, Callable, Iterable, Iterator

from .faults import BadAnswer, DeviceFault, GuestExit, obey
from .immutable import Immutable

log = logging.getLogger("vmcore.bus")

ReadHandler = Callable[[int, int], int]
WriteHandler = Callable[[int, int, int], None]

ACCESS_SIZES = (1, 2, 4, 8)


class Space(enum.Enum):
    """Which address space an access is in."""

    PIO = "pio"
    MMIO = "mmio"
    #: PCI configuration space (traced only: reached through a host bridge's ports, not a Bus).
    #: Addresses are bus << 16 | device << 11 | function << 8 | register.
    PCI = "pci"


SPACE_LIMITS = {Space.PIO: 1 << 16, Space.MMIO: 1 << 64, Space.PCI: 1 << 24}

#: Regions of at most this many addresses are also indexed address by address, so the
#: access path finds them with one dict lookup instead of a binary search.
SMALL_REGION = 64
#: Most routes a bus keeps per direction and access size: a guest sweeping a large or
#: unclaimed range must not grow the tables without end (beyond it, routes are not kept).
ROUTE_CACHE = 16384
#: Most distinct (direction, address) pairs ``Bus.unclaimed`` lists; accesses at further
#: addresses are only counted (``Bus.unclaimed_elsewhere``): a guest sweeping the address
#: space must not grow the bookkeeping without end.
UNCLAIMED_KEPT = 4096
#: Unclaimed or rejected addresses warned about one by one, per bus; past that one line says
#: that the rest are counted, and the run's end summarises them.
UNCLAIMED_WARNINGS = 32
_BITS = tuple(8 * n for n in range(9))


def _split_as_tcg(address: int, size: int) -> bool:
    """Whether an MMIO access reaches devices split, as the software CPU (unicorn) splits it.

    unicorn hands MMIO regions at most 4 bytes: an aligned 8-byte access arrives as its
    two 4-byte halves, low first. One that is not naturally aligned arrives as QEMU's TCG
    splits it: a write as single bytes, low address first; a read of n bytes as the two
    naturally aligned n-byte units around it, lower first (the guest gets its bytes out
    of them). An odd size, which only a KVM fragment of a page-crossing access has, is
    taken byte by byte. The bus applies this to what KVM hands it, so both agree.
    """
    return size > 4 or bool(address & (size - 1) or size & (size - 1))


class BusError(Exception):
    """A region that cannot be placed on a bus (overlap, out of the space, bad size)."""


class Doorbell(Immutable):
    """A register write that only says "look at me" (a virtqueue notify, a kick).

    The accelerator may turn it into an event instead of an exit (KVM: an
    ioeventfd), so the guest runs on while the device hears about it on the
    machine thread. ``offset`` and ``size`` are the write that rings it, exactly:
    that offset in the region, that width. ``value``, when set, is the only value
    that rings it (KVM's datamatch); any other write (another value, offset or
    width) is an ordinary synchronous write.

    What the device receives: one ``write(offset, size, value)`` per ring, through
    the bus (traced, counted as an exit, contained like any write), before the
    next synchronous exit is handled, when the guest runs on without exiting (the
    vCPU is woken for it), and when the run stops. With ``value`` set that is the
    guest's value, so only the moment differs from a synchronous write. Without
    it the eventfd does not carry what the guest wrote and the device receives
    **0**: leave ``value`` unset only for a register whose value means nothing.
    Where there is no ioeventfd (the software CPU, a KVM without the capability)
    a doorbell is a synchronous write with the guest's value.
    """

    offset: int
    size: int
    value: int | None = None


class Region(Immutable):
    """A range a device claims on a bus, with the handlers that serve it.

    ``read(offset, size) -> value`` and ``write(offset, size, value)`` get the
    offset inside the region. A ``None`` handler makes the region write-only
    (reads return all ones) or read-only (writes are dropped). ``sizes`` lists the
    access sizes the device accepts (QEMU's ``MemoryRegionOps.valid``); the bus
    splits wider accesses and widens narrower reads for it.

    ``posted``: the device only needs its writes in order, not at once (a debug
    console, a log port). An accelerator may queue them (KVM: coalesced MMIO/PIO,
    a ring the kernel fills without leaving the guest) and deliver them later: in
    order, all of them before the next synchronous exit is handled and when the
    run stops (KVM also empties the ring every 50 ms while the guest runs on
    without exiting). What the device receives is exactly what it would have
    received without queueing, only later; each queued write still counts as an
    exit. So a posted write must not need an immediate effect on the guest (an
    interrupt, a register the guest reads back at once through another path).
    Reads of a posted region still exit normally: KVM queues writes only. The
    software CPU treats posted regions as ordinary ones.

    ``doorbells``: writes to be delivered as events (see :class:`Doorbell`), any iterable of them.
    """

    _not_compared = ("label",)

    space: Space
    base: int
    size: int
    read: ReadHandler | None = None
    write: WriteHandler | None = None
    sizes: tuple[int, ...] = ACCESS_SIZES
    name: str = ""
    posted: bool = False
    doorbells: tuple[Doorbell, ...] = ()
    #: The register's name at an offset in the region, for reports (a register map's; else the
    #: region's name). Not part of the region's equality.
    label: Callable[[int], str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "doorbells", tuple(self.doorbells))
        limit = SPACE_LIMITS[self.space]
        if self.size <= 0:
            raise BusError(f"region {self.name or hex(self.base)}: size must be positive, got {self.size}")
        if self.base < 0 or self.base + self.size > limit:
            raise BusError(
                f"region {self.name or hex(self.base)}: {self.space.value} range "
                f"{self.base:#x}..{self.base + self.size - 1:#x} is outside the space (0..{limit - 1:#x})"
            )
        bad = [s for s in self.sizes if s not in ACCESS_SIZES]
        if bad or not self.sizes:
            raise BusError(f"region {self.name or hex(self.base)}: access sizes must be among {ACCESS_SIZES}, got {self.sizes}")
        if self.space is Space.MMIO and min(self.sizes) > 4:
            raise BusError(f"region {self.name or hex(self.base)}: MMIO accesses reach devices at most 4 bytes wide "
                           f"(an 8-byte one as two halves), so the sizes {self.sizes} would take no write")
        for bell in self.doorbells:
            self._check_doorbell(bell)

    def _check_doorbell(self, bell: Doorbell) -> None:
        where = f"region {self.name or hex(self.base)}: doorbell at offset {bell.offset:#x}"
        if self.write is None:
            raise BusError(f"{where}: the region has no write handler to ring")
        widths = (1, 2, 4)  # port IO has no wider access; MMIO reaches devices at most 4 bytes wide
        if bell.size not in widths:
            raise BusError(f"{where}: size must be one of {widths} for {self.space.value}, got {bell.size}")
        if bell.size not in self.sizes:
            # A synchronous write of that width would be split; a rung one could not be.
            raise BusError(f"{where}: size {bell.size} is not among the region's access sizes {self.sizes}")
        if bell.offset < 0 or bell.offset + bell.size > self.size:
            raise BusError(f"{where}: {bell.size} bytes do not fit in the region's {self.size}")
        if self.space is Space.MMIO and (self.base + bell.offset) % bell.size:
            # An unaligned MMIO access reaches devices byte by byte (see Bus), never as this write.
            raise BusError(f"{where}: {bell.size} bytes at {self.base + bell.offset:#x} are not naturally aligned")
        if bell.value is not None and not 0 <= bell.value < 1 << (8 * bell.size):
            raise BusError(f"{where}: value {bell.value:#x} does not fit in {bell.size} bytes")

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.base + self.size


class Direction(enum.Enum):
    READ = "read"
    WRITE = "write"


class Transaction(Immutable):
    """One access as it crossed the bus (recorded when tracing is on)."""

    space: Space
    address: int
    size: int
    direction: Direction
    value: int
    device: str | None  # None: nobody claimed the address

    def __str__(self) -> str:
        arrow = "<-" if self.direction is Direction.READ else "->"
        who = self.device if self.device is not None else "(unclaimed)"
        width = self.size * 2
        if self.space is Space.PCI:
            a = self.address
            where = f"{a >> 16:02x}:{(a >> 11) & 0x1F:02x}.{(a >> 8) & 7}+{a & 0xFF:#04x}"
            return f"pci  {self.direction.value:5} {where}/{self.size} {arrow} {self.value:#0{width + 2}x} {who}"
        return f"{self.space.value:4} {self.direction.value:5} {self.address:#010x}/{self.size} {arrow} {self.value:#0{width + 2}x} {who}"


class _Entry:
    """A claimed range as the bus stores it: plain slots, read on every access."""

    __slots__ = ("start", "end", "read", "write", "size_mask", "owner", "region")

    def __init__(self, region: Region, owner: str) -> None:
        self.start = region.base
        self.end = region.end
        self.read = region.read
        self.write = region.write
        # Sizes are distinct powers of two, so "size & mask" tests membership.
        self.size_mask = sum(set(region.sizes))
        self.owner = owner
        self.region = region


class Bus:
    """One address space: sorted, non-overlapping claims and the access path."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self._starts: list[int] = []
        self._entries: list[_Entry] = []
        # Small regions by every address they cover: the access path's first try.
        self._small: dict[int, _Entry] = {}
        #: Routes for accelerators, by access size then address: ``(handler, first)`` such that
        #: ``handler(first, size[, value])`` is the access (see read_route). Cleared in place
        #: whenever claims or the tracer change, so a table held by a running loop stays true.
        self.read_routes: list[dict[int, tuple[Callable[[int, int], int], int]]] = [{} for _ in range(9)]
        self.write_routes: list[dict[int, tuple[Callable[[int, int, int], None], int]]] = [{} for _ in range(9)]
        #: (direction, address) -> number of unclaimed (or rejected) accesses seen there; at most
        #: UNCLAIMED_KEPT addresses, the accesses at any others are counted in unclaimed_elsewhere.
        self.unclaimed: dict[tuple[Direction, int], int] = {}
        self.unclaimed_elsewhere = 0
        self._warnings = 0
        #: Devices in the middle of a DMA (see vmcore.dma): an access that would re-enter one of
        #: them is refused (QEMU's MemReentrancyGuard).
        self.engaged: set[str] = set()
        # MMIO accesses wider than 4 bytes or not naturally aligned are split the way the
        # software CPU splits them (see _split_as_tcg). KVM hands the bus the guest's own
        # access, so the bus applies the same rule and devices see the same accesses on both.
        self._mmio_rule = space is Space.MMIO
        #: What a device exception does: "stop" (raise DeviceFault) or "continue" (log, all ones).
        self.device_errors = "stop"
        #: (device, exception type name) -> faults contained under "continue".
        self.device_faults: dict[tuple[str, str], int] = {}
        self._tracer: Callable[[Transaction], None] | None = None
        #: Where the run core keeps the CPU's recent accesses on this bus for fault reports:
        #: ``(bus, direction, address, size, value)``, one tuple an access, appended by the
        #: accessors of the next run (vmcore.accel.core); None: none kept. Raw tuples rather
        #: than a tracer's Transactions: an access costs a tuple, not an attrs instance and the
        #: traced path (about 20 ms of a firmware boot's 5,000 exits). See :meth:`transaction`.
        self.history: collections.deque[tuple[Bus, Direction, int, int, int]] | None = None

    # --- building -----------------------------------------------------------------

    def claim(self, region: Region, owner: str) -> None:
        """Add a region owned by ``owner``; an overlap names both claimants."""
        if region.space is not self.space:
            raise BusError(f"{owner}: a {region.space.value} region cannot go on the {self.space.value} bus")
        i = bisect.bisect_left(self._starts, region.base)
        for j in (i - 1, i):
            if 0 <= j < len(self._entries):
                other = self._entries[j]
                if other.start < region.end and region.base < other.end:
                    raise BusError(
                        f"{self.space.value} range {region.base:#x}..{region.end - 1:#x} of {owner} overlaps "
                        f"{other.start:#x}..{other.end - 1:#x} of {other.owner}"
                    )
        entry = _Entry(region, owner)
        self._starts.insert(i, region.base)
        self._entries.insert(i, entry)
        if region.size <= SMALL_REGION:
            for address in range(region.base, region.end):
                self._small[address] = entry
        self._forget_routes()

    def unclaim(self, region: Region) -> None:
        """Remove a claim made with :meth:`claim` (a PCI BAR moving or turned off).

        ``region`` is the Region that was claimed (the same object, or an equal one).
        The route tables are cleared as :meth:`claim` clears them, so no accelerator
        keeps dispatching to a place the device has left. An unknown region is a BusError.
        """
        i = bisect.bisect_left(self._starts, region.base)
        while i < len(self._entries) and self._starts[i] == region.base:
            entry = self._entries[i]
            if entry.region is region or entry.region == region:
                del self._starts[i]
                del self._entries[i]
                if entry.end - entry.start <= SMALL_REGION:
                    for address in range(entry.start, entry.end):
                        if self._small.get(address) is entry:
                            del self._small[address]
                self._forget_routes()
                return
            i += 1
        raise BusError(f"{self.space.value} range {region.base:#x}..{region.end - 1:#x} is not claimed")

    def claims(self) -> Iterator[tuple[Region, str]]:
        """Every region on the bus with its owner, in address order."""
        for entry in self._entries:
            yield entry.region, entry.owner

    def find(self, address: int) -> tuple[Region, str] | None:
        """The region covering ``address`` and its owner, or None."""
        entry = self._lookup(address)
        return None if entry is None else (entry.region, entry.owner)

    def _lookup(self, address: int) -> _Entry | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            entry = self._entries[i]
            if address < entry.end:
                return entry
        return None

    # --- tracing --------------------------------------------------------------------

    def set_tracer(self, tracer: Callable[[Transaction], None] | None) -> None:
        """Call ``tracer`` with a :class:`Transaction` for every access (None: off).

        Tracing swaps in traced access methods, so the untraced path pays nothing.
        """
        self._tracer = tracer
        if tracer is None:
            self.__dict__.pop("read", None)
            self.__dict__.pop("write", None)
        else:
            self.read = self._read_traced  # type: ignore[method-assign]
            self.write = self._write_traced  # type: ignore[method-assign]
        self._forget_routes()

    def transaction(self, direction: Direction, address: int, size: int, value: int) -> Transaction:
        """The access as a :class:`Transaction`, named after the device claiming ``address`` now."""
        entry = self._lookup(address)
        return Transaction(self.space, address, size, direction, value, entry.owner if entry else None)

    def _read_traced(self, address: int, size: int) -> int:
        if self._mmio_rule and _split_as_tcg(address, size):
            return self._read_unaligned(address, size)
        value = Bus.read(self, address, size)
        assert self._tracer is not None
        self._tracer(self.transaction(Direction.READ, address, size, value))
        return value

    def _write_traced(self, address: int, size: int, value: int) -> None:
        if self._mmio_rule and _split_as_tcg(address, size):
            self._write_unaligned(address, size, value)
            return
        assert self._tracer is not None
        self._tracer(self.transaction(Direction.WRITE, address, size, value))
        Bus.write(self, address, size, value)

    # --- the access path -------------------------------------------------------------

    def read(self, address: int, size: int) -> int:
        """Read ``size`` bytes (1, 2, 4 or 8) at ``address``; unclaimed reads give all ones."""
        # The try costs nothing until a device raises (zero-cost exceptions, Python 3.11).
        try:
            if self._mmio_rule and _split_as_tcg(address, size):
                return self._read_unaligned(address, size)
            entry = self._small.get(address)
            if entry is None or address + size > entry.end or not size & entry.size_mask or entry.read is None:
                starts = self._starts
                i = bisect.bisect_right(starts, address) - 1
                entry = self._entries[i] if i >= 0 else None
                if entry is None or address + size > entry.end or not size & entry.size_mask or entry.read is None:
                    if entry is not None and address < entry.end:
                        return self._read_adjusted(entry, address, size)
                    if i + 1 < len(starts) and starts[i + 1] < address + size:
                        # Starts in a gap but runs into the next region: byte pieces, each looked up again.
                        return self._read_bytes(address, size)
                    return self._unclaimed(Direction.READ, address, size)
            value = entry.read(address - entry.start, size)
            if value.__class__ is not int or value >> _BITS[size]:
                return self.bad_answer(address, size, value)
            return value
        except (GuestExit, DeviceFault, KeyboardInterrupt):
            raise
        except BaseException as exc:  # SystemExit from a device is a device fault too
            self.fault(Direction.READ, address, size, None, exc)
            return (1 << (8 * size)) - 1

    def write(self, address: int, size: int, value: int) -> None:
        """Write ``size`` bytes at ``address``; unclaimed writes are dropped and logged."""
        try:
            if self._mmio_rule and _split_as_tcg(address, size):
                self._write_unaligned(address, size, value)
                return
            entry = self._small.get(address)
            if entry is not None and address + size <= entry.end and size & entry.size_mask and entry.write is not None:
                entry.write(address - entry.start, size, value)
                return
            i = bisect.bisect_right(self._starts, address) - 1
            if i >= 0:
                entry = self._entries[i]
                if address + size <= entry.end and size & entry.size_mask and entry.write is not None:
                    entry.write(address - entry.start, size, value)
                    return
                if address < entry.end:
                    self._write_adjusted(entry, address, size, value)
                    return
            if i + 1 < len(self._starts) and self._starts[i + 1] < address + size:
                # Starts in a gap but runs into the next region: byte pieces, each looked up again.
                self._write_bytes(address, size, value)
                return
            self._unclaimed(Direction.WRITE, address, size)
        except (GuestExit, DeviceFault, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fault(Direction.WRITE, address, size, value, exc)

    def bad_answer(self, address: int, size: int, value: Any) -> int:
        """A device's read gave ``value``, which is not an int of ``size`` bytes: a device fault.

        The bus checks every answer it hands on, and accelerators that call a device's
        handler straight (see :meth:`direct`) call this for an answer that is not a plain
        int in range. What Python takes as an int (a bool, an IntFlag), in range, is taken.
        Otherwise, under ``stop`` this raises :class:`DeviceFault` naming the device, the
        access and the value; under ``continue`` it logs once and the read gives all ones.
        """
        try:
            number = operator.index(value)  # an int, or what Python takes as one (bool, IntFlag)
        except TypeError:
            number = -1
        if 0 <= number and not number >> _BITS[size]:
            return number
        self.fault(Direction.READ, address, size, None, BadAnswer(value, size))
        return (1 << (8 * size)) - 1

    # --- direct dispatch, for accelerators ------------------------------------------------

    def direct(self, direction: Direction, address: int, size: int) -> tuple[Callable[..., Any], int] | None:
        """The device handler an access goes straight to, with the offset it gets.

        ``(handler, offset)`` when the access path would do nothing but call
        ``handler(offset, size[, value])``: the access lies inside one region, the
        device takes that width, has that handler, and tracing is off. ``None`` when
        the access needs the full path (unclaimed, split, widened, dropped, traced).

        Whoever calls the handler itself must hand what it raises, other than
        :class:`GuestExit` and :class:`DeviceFault`, to :meth:`fault`, as the
        access path does. Decided per (address, size) once, so a dispatch table
        built from it stays valid while the claims and the tracer stay the same.
        """
        if self._tracer is not None or self._mmio_rule and _split_as_tcg(address, size):
            return None
        entry = self._lookup(address)
        if entry is None or address + size > entry.end or not size & entry.size_mask:
            return None
        handler = entry.read if direction is Direction.READ else entry.write
        if handler is None:
            return None
        return handler, address - entry.start

    def read_route(self, address: int, size: int) -> tuple[Callable[[int, int], int], int]:
        """How to do this read fast: ``(handler, first)``, and ``handler(first, size)`` is the read.

        The device's handler and offset where :meth:`direct` allows, else this bus's
        :meth:`read` and the address (which logs, splits, widens, traces). The caller
        must contain what the handler raises as :meth:`direct` says. The route is kept
        in ``read_routes[size][address]``, so a hot loop looks it up there first.
        """
        return self._route(self.read_routes, Direction.READ, self.read, address, size)

    def write_route(self, address: int, size: int) -> tuple[Callable[[int, int, int], None], int]:
        """How to do this write fast: ``handler(first, size, value)`` (see :meth:`read_route`)."""
        return self._route(self.write_routes, Direction.WRITE, self.write, address, size)

    def _route(self, tables: list[dict[int, Any]], direction: Direction, full: Callable[..., Any],
               address: int, size: int) -> tuple[Callable[..., Any], int]:
        found = self.direct(direction, address, size)
        route = (full, address) if found is None else found
        # Addresses nobody claims are not kept: a guest sweeping them would only fill the
        # table with routes to the full path (which counts them anyway).
        if size < len(tables) and (found is not None or self._lookup(address) is not None):
            table = tables[size]
            if len(table) < ROUTE_CACHE:
                table[address] = route
        return route

    def _forget_routes(self) -> None:
        for table in (*self.read_routes, *self.write_routes):
            table.clear()

    def fault(self, direction: Direction, address: int, size: int, value: int | None, exc: BaseException) -> None:
        """A device raised: stop the machine (raise DeviceFault) or, under ``continue``, log and go on.

        The access path calls this itself; a caller of a :meth:`direct` handler calls it
        for what the handler raised (a read then gives all ones).
        """
        entry = self._lookup(address)
        owner = entry.owner if entry is not None else "?"
        fault = DeviceFault(owner, self.space.value, direction.value, address, size, value, exc)
        obey(self.device_errors, fault, self.device_faults, log, "continuing (reads give all ones)")

    def _unclaimed(self, direction: Direction, address: int, size: int) -> int:
        if self._count_unclaimed(direction, address):
            self._warn("unclaimed %s %s at %#x (size %d)", self.space.value, direction.value, address, size)
        return (1 << (8 * size)) - 1

    def _count_unclaimed(self, direction: Direction, address: int) -> bool:
        """Count an unclaimed or rejected access; True the first time at a listed address."""
        key = (direction, address)
        count = self.unclaimed.get(key)
        if count is not None:
            self.unclaimed[key] = count + 1
            return False
        if len(self.unclaimed) >= UNCLAIMED_KEPT:
            self.unclaimed_elsewhere += 1
            return False
        self.unclaimed[key] = 1
        return True

    def _warn(self, message: str, *args: Any) -> None:
        """One warning per new address, up to UNCLAIMED_WARNINGS; then one line, and a summary at the end."""
        self._warnings += 1
        if self._warnings <= UNCLAIMED_WARNINGS:
            log.warning(message, *args)
        elif self._warnings == UNCLAIMED_WARNINGS + 1:
            log.warning("more %s accesses that no device takes: counted, no longer logged one by one",
                        self.space.value)

    def unclaimed_summary(self) -> str | None:
        """One line on the unclaimed accesses that were not warned about one by one, or None."""
        if self._warnings <= UNCLAIMED_WARNINGS and not self.unclaimed_elsewhere:
            return None
        total = sum(self.unclaimed.values()) + self.unclaimed_elsewhere
        text = (f"{total} unclaimed or rejected {self.space.value} accesses at {len(self.unclaimed)} "
                f"listed addresses")
        if self.unclaimed_elsewhere:
            text += f" and {self.unclaimed_elsewhere} more at addresses past the list's {UNCLAIMED_KEPT}"
        return text

    # Accesses that do not fit the device's declared sizes or run past its end.

    def _pieces(self, entry: _Entry, address: int, size: int) -> Iterable[tuple[int, int]]:
        """Split [address, address+size) into (address, size) pieces the claimants accept."""
        if address + size > entry.end:
            # Crosses the region's end: byte pieces, each looked up again.
            return ((address + k, 1) for k in range(size))
        unit = max((s for s in ACCESS_SIZES if s < size and s & entry.size_mask), default=0)
        if unit == 0:
            return ()
        return ((address + k, unit) for k in range(0, size, unit))

    def _read_bytes(self, address: int, size: int) -> int:
        value = 0
        for k in range(size):
            value |= Bus.read(self, address + k, 1) << (8 * k)
        return value

    def _write_bytes(self, address: int, size: int, value: int) -> None:
        for k in range(size):
            Bus.write(self, address + k, 1, (value >> (8 * k)) & 0xFF)

    def _read_unaligned(self, address: int, size: int) -> int:
        """An MMIO read split as the software CPU splits it (see _split_as_tcg).

        Through self.read: with a tracer on, each piece is a transaction of its own, as the
        software CPU delivers them.
        """
        read = self.read
        if size == 8 and not address & 7:
            return read(address, 4) | read(address + 4, 4) << 32
        if size & (size - 1):
            value = 0
            for k in range(size):
                value |= read(address + k, 1) << (8 * k)
            return value
        first = address & ~(size - 1)
        both = read(first, size) | read(first + size, size) << (8 * size)
        return (both >> (8 * (address - first))) & ((1 << (8 * size)) - 1)

    def _write_unaligned(self, address: int, size: int, value: int) -> None:
        """An MMIO write split as the software CPU splits it (see _split_as_tcg)."""
        write = self.write
        if size == 8 and not address & 7:
            write(address, 4, value & 0xFFFF_FFFF)
            write(address + 4, 4, value >> 32)
            return
        for k in range(size):
            write(address + k, 1, (value >> (8 * k)) & 0xFF)

    def _read_adjusted(self, entry: _Entry, address: int, size: int) -> int:
        if entry.read is None:
            return (1 << (8 * size)) - 1
        pieces = list(self._pieces(entry, address, size))
        if not pieces:
            # The device only takes wider accesses: read the aligned unit around it.
            unit = min(s for s in ACCESS_SIZES if s & entry.size_mask)
            offset = address - entry.start
            aligned = offset - offset % unit
            if aligned + unit > entry.end - entry.start:
                return self._rejected(entry, Direction.READ, address, size)
            wide = entry.read(aligned, unit)
            if wide.__class__ is not int or wide >> _BITS[unit]:
                wide = self.bad_answer(entry.start + aligned, unit, wide)
            shift = 8 * (offset - aligned)
            return (wide >> shift) & ((1 << (8 * size)) - 1)
        value = 0
        for piece_address, piece_size in pieces:
            value |= Bus.read(self, piece_address, piece_size) << (8 * (piece_address - address))
        return value

    def _write_adjusted(self, entry: _Entry, address: int, size: int, value: int) -> None:
        if entry.write is None:
            return
        pieces = list(self._pieces(entry, address, size))
        if not pieces:
            self._rejected(entry, Direction.WRITE, address, size)
            return
        for piece_address, piece_size in pieces:
            shift = 8 * (piece_address - address)
            Bus.write(self, piece_address, piece_size, (value >> shift) & ((1 << (8 * piece_size)) - 1))

    def _rejected(self, entry: _Entry, direction: Direction, address: int, size: int) -> int:
        if self._count_unclaimed(direction, address):
            self._warn(
                "%s %s of size %d at %#x not accepted by %s (sizes %s); dropped",
                self.space.value, direction.value, size, address, entry.owner, entry.region.sizes,
            )
        return (1 << (8 * size)) - 1
