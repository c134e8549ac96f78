"""A device's DMA: guest RAM and ROM directly, anything else through the MMIO bus, guarded.

On a PC, a bus master that writes to an address no memory decodes reaches whatever
device decodes it (peer-to-peer), and a device can be made to DMA into its own
registers. That is how the worst device bugs in VMMs were reached (QEMU's
CVE-2021-3416 and CVE-2021-20255: a device's handler re-entered through its own
DMA). :class:`DmaSpace` lets a device's DMA reach other devices' registers, but
never a device that is itself in the middle of a DMA: such an access raises
:class:`DmaError` to the device that made it (QEMU's MemReentrancyGuard), so a
guest can make no device recurse.
"""

from __future__ import annotations

import bisect
from typing import Iterator

from .bus import Bus
from .memory import GuestMemory, GuestMemoryError, MemorySlot

_LIMIT = 1 << 64


class DmaError(GuestMemoryError):
    """A DMA that cannot be done: it would re-enter a device that is in the middle of a DMA."""


class DmaSpace:
    """Guest-physical memory as one device's DMA sees it.

    ``read``/``write`` (and the ``_int`` forms) copy from and to guest RAM and ROM as
    :class:`GuestMemory` does; where no memory is mapped, the bytes go to the MMIO bus
    in naturally aligned accesses of up to 8 bytes (unclaimed addresses read all ones
    and drop writes, as for the CPU). Without an MMIO bus (a device built with memory
    alone) such an access raises :class:`GuestMemoryError`, as GuestMemory does.
    """

    def __init__(self, owner: str, memory: GuestMemory, mmio: Bus | None = None) -> None:
        self.owner = owner
        self.memory = memory
        self.mmio = mmio

    def read(self, address: int, length: int) -> bytes:
        """Copy ``length`` bytes from guest-physical ``address``."""
        out = bytearray()
        with self._engaged():
            for here, count, in_memory in self._spans(address, length):
                if in_memory:
                    out += self.memory.read(here, count)
                    continue
                for piece, size in _aligned(here, count):
                    self._check_target(piece, "read")
                    assert self.mmio is not None
                    out += self.mmio.read(piece, size).to_bytes(size, "little")
        return bytes(out)

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to guest-physical ``address`` (a read-only slot refuses, as GuestMemory does)."""
        src = memoryview(data).cast("B")
        spans = list(self._spans(address, len(src)))
        for here, count, in_memory in spans:  # refused before any byte is written
            if in_memory and any(slot.readonly for slot in self._slots(here, count)):
                raise GuestMemoryError(f"guest-physical {here:#x} is in a read-only slot")
        done = 0
        with self._engaged():
            for here, count, in_memory in spans:
                if in_memory:
                    self.memory.write(here, src[done : done + count])
                else:
                    for piece, size in _aligned(here, count):
                        self._check_target(piece, "write")
                        offset = done + piece - here
                        assert self.mmio is not None
                        self.mmio.write(piece, size, int.from_bytes(src[offset : offset + size], "little"))
                done += count

    def read_int(self, address: int, size: int) -> int:
        """A little-endian integer of ``size`` bytes."""
        return int.from_bytes(self.read(address, size), "little")

    def write_int(self, address: int, size: int, value: int) -> None:
        self.write(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    # --- where the bytes are -------------------------------------------------------------

    def _spans(self, address: int, length: int) -> list[tuple[int, int, bool]]:
        """(address, count, in memory) pieces covering the range, checked before anything moves."""
        if address < 0 or length < 0 or address + length > _LIMIT:
            raise GuestMemoryError(f"bad guest range {address:#x}+{length:#x}")
        slots = sorted(self.memory, key=lambda slot: slot.base)
        bases = [slot.base for slot in slots]
        spans: list[tuple[int, int, bool]] = []
        done = 0
        while done < length:
            here = address + done
            slot = self.memory.slot_at(here)
            if slot is not None:
                count = min(length - done, slot.end - here)
                spans.append((here, count, True))
            else:
                if self.mmio is None:
                    raise GuestMemoryError(f"guest-physical {here:#x} is outside every memory slot "
                                           f"(access {address:#x}..{address + length - 1:#x})")
                i = bisect.bisect_right(bases, here)
                gap_end = bases[i] if i < len(bases) else _LIMIT
                count = min(length - done, gap_end - here)
                spans.append((here, count, False))
            done += count
        return spans

    def _slots(self, address: int, count: int) -> list[MemorySlot]:
        found = []
        here = address
        while here < address + count:
            slot = self.memory.slot_at(here)
            assert slot is not None
            found.append(slot)
            here = slot.end
        return found

    # --- the re-entrancy guard ------------------------------------------------------------

    def _check_target(self, address: int, what: str) -> None:
        assert self.mmio is not None
        found = self.mmio.find(address)
        if found is not None and found[1] in self.mmio.engaged:
            target = found[1]
            whose = "its own" if target == self.owner else f"{target!r}'s"
            raise DmaError(f"DMA {what} by {self.owner!r} at {address:#x} would re-enter {whose} registers "
                           f"while {target!r} is in the middle of a DMA; refused")

    def _engaged(self) -> "_Engaged":
        return _Engaged(self.mmio.engaged if self.mmio is not None else None, self.owner)


class _Engaged:
    """Marks the owner as in the middle of a DMA for as long as the block runs."""

    __slots__ = ("engaged", "owner", "added")

    def __init__(self, engaged: set[str] | None, owner: str) -> None:
        self.engaged = engaged
        self.owner = owner
        self.added = False

    def __enter__(self) -> None:
        if self.engaged is not None and self.owner not in self.engaged:
            self.engaged.add(self.owner)
            self.added = True

    def __exit__(self, *_exc: object) -> None:
        if self.added and self.engaged is not None:
            self.engaged.discard(self.owner)


def _aligned(address: int, count: int) -> Iterator[tuple[int, int]]:
    """[address, address+count) as naturally aligned pieces of 8, 4, 2 or 1 bytes."""
    end = address + count
    while address < end:
        size = 8
        while address % size or address + size > end:
            size //= 2
        yield address, size
        address += size
