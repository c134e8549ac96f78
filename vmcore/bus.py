"""Address spaces: the port-IO bus and the MMIO bus.

One :class:`Bus` class serves both spaces (two instances). Devices claim
non-overlapping ranges; a lookup is a binary search over the sorted range
starts, and the device receives ``(offset, size[, value])`` relative to its own
region, never the absolute address.
"""

from __future__ import annotations

import bisect
import enum
import logging
from typing import Callable, Iterable, Iterator

import attrs

from .faults import DeviceFault, GuestExit

log = logging.getLogger("vmcore.bus")

ReadHandler = Callable[[int, int], int]
WriteHandler = Callable[[int, int, int], None]

ACCESS_SIZES = (1, 2, 4, 8)


class Space(enum.Enum):
    """Which address space an access is in."""

    PIO = "pio"
    MMIO = "mmio"


SPACE_LIMITS = {Space.PIO: 1 << 16, Space.MMIO: 1 << 64}


class BusError(Exception):
    """A region that cannot be placed on a bus (overlap, out of the space, bad size)."""


@attrs.frozen
class Region:
    """A range a device claims on a bus, with the handlers that serve it.

    ``read(offset, size) -> value`` and ``write(offset, size, value)`` get the
    offset inside the region. A ``None`` handler makes the region write-only
    (reads return all ones) or read-only (writes are dropped). ``sizes`` lists the
    access sizes the device accepts (QEMU's ``MemoryRegionOps.valid``); the bus
    splits wider accesses and widens narrower reads for it.
    """

    space: Space
    base: int
    size: int
    read: ReadHandler | None = None
    write: WriteHandler | None = None
    sizes: tuple[int, ...] = ACCESS_SIZES
    name: str = ""

    def __attrs_post_init__(self) -> None:
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

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.base + self.size


class Direction(enum.Enum):
    READ = "read"
    WRITE = "write"


@attrs.frozen
class Transaction:
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
        #: (direction, address) -> number of unclaimed accesses seen there.
        self.unclaimed: dict[tuple[Direction, int], int] = {}
        #: What a device exception does: "stop" (raise DeviceFault) or "continue" (log, all ones).
        self.device_errors = "stop"
        #: (device, exception type name) -> faults contained under "continue".
        self.device_faults: dict[tuple[str, str], int] = {}
        self._tracer: Callable[[Transaction], None] | None = None

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
        self._starts.insert(i, region.base)
        self._entries.insert(i, _Entry(region, owner))

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

    def _read_traced(self, address: int, size: int) -> int:
        value = Bus.read(self, address, size)
        entry = self._lookup(address)
        assert self._tracer is not None
        self._tracer(Transaction(self.space, address, size, Direction.READ, value, entry.owner if entry else None))
        return value

    def _write_traced(self, address: int, size: int, value: int) -> None:
        entry = self._lookup(address)
        assert self._tracer is not None
        self._tracer(Transaction(self.space, address, size, Direction.WRITE, value, entry.owner if entry else None))
        Bus.write(self, address, size, value)

    # --- the access path -------------------------------------------------------------

    def read(self, address: int, size: int) -> int:
        """Read ``size`` bytes (1, 2, 4 or 8) at ``address``; unclaimed reads give all ones."""
        # The try costs nothing until a device raises (zero-cost exceptions, Python 3.11).
        try:
            starts = self._starts
            i = bisect.bisect_right(starts, address) - 1
            if i >= 0:
                entry = self._entries[i]
                if address + size <= entry.end and size & entry.size_mask and entry.read is not None:
                    return entry.read(address - entry.start, size)
                if address < entry.end:
                    return self._read_adjusted(entry, address, size)
            if i + 1 < len(starts) and starts[i + 1] < address + size:
                # Starts in a gap but runs into the next region: byte pieces, each looked up again.
                return self._read_bytes(address, size)
            return self._unclaimed(Direction.READ, address, size)
        except (GuestExit, DeviceFault):
            raise
        except Exception as exc:
            self._fault(Direction.READ, address, size, None, exc)
            return (1 << (8 * size)) - 1

    def write(self, address: int, size: int, value: int) -> None:
        """Write ``size`` bytes at ``address``; unclaimed writes are dropped and logged."""
        try:
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
        except (GuestExit, DeviceFault):
            raise
        except Exception as exc:
            self._fault(Direction.WRITE, address, size, value, exc)

    def _fault(self, direction: Direction, address: int, size: int, value: int | None, exc: Exception) -> None:
        """A device raised: stop the machine (raise DeviceFault) or, under ``continue``, log and go on."""
        entry = self._lookup(address)
        owner = entry.owner if entry is not None else "?"
        fault = DeviceFault(owner, self.space.value, direction.value, address, size, value, exc)
        if self.device_errors == "stop":
            raise fault from exc
        key = (owner, type(exc).__name__)
        count = self.device_faults.get(key, 0)
        self.device_faults[key] = count + 1
        if count == 0:
            # Logged once per device and kind of error, with the device's traceback.
            log.error("%s; continuing (reads give all ones)\n%s", fault, fault.traceback.rstrip())

    def _unclaimed(self, direction: Direction, address: int, size: int) -> int:
        key = (direction, address)
        count = self.unclaimed.get(key, 0)
        self.unclaimed[key] = count + 1
        if count == 0:
            log.warning("unclaimed %s %s at %#x (size %d)", self.space.value, direction.value, address, size)
        return (1 << (8 * size)) - 1

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
        key = (direction, address)
        count = self.unclaimed.get(key, 0)
        self.unclaimed[key] = count + 1
        if count == 0:
            log.warning(
                "%s %s of size %d at %#x not accepted by %s (sizes %s); dropped",
                self.space.value, direction.value, size, address, entry.owner, entry.region.sizes,
            )
        return (1 << (8 * size)) - 1
