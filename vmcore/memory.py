"""Guest-physical memory: slots backed by anonymous host mappings.

The accelerator maps each slot into the guest; devices reach the same bytes
through :class:`GuestMemory`'s bounds-checked methods (their DMA), so a device
can never touch host memory outside a slot.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
from typing import Iterator

PAGE_SIZE = 4096


class GuestMemoryError(Exception):
    """A guest-physical access outside every slot, or a write to read-only memory."""


class MemorySlot:
    """One contiguous range of guest-physical memory with its host backing."""

    __slots__ = ("name", "base", "size", "readonly", "buffer", "view")

    def __init__(self, name: str, base: int, size: int, readonly: bool = False) -> None:
        if size <= 0 or size % PAGE_SIZE or base % PAGE_SIZE:
            raise GuestMemoryError(
                f"slot {name!r}: base {base:#x} and size {size:#x} must be positive multiples of 4K"
            )
        self.name = name
        self.base = base
        self.size = size
        self.readonly = readonly
        # Anonymous, private, zero-filled: what both KVM and a software CPU can map.
        try:
            self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as exc:  # ENOMEM: overcommit refused, RLIMIT_AS, a cgroup limit
            from .units import format_size

            raise GuestMemoryError(
                f"slot {name!r}: the host could not provide its {format_size(size)} of memory "
                f"({exc.strerror or exc}); make the slot smaller or free host memory"
            ) from None
        self.view = memoryview(self.buffer)

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def host_address(self) -> int:
        """Host virtual address of the backing, for KVM_SET_USER_MEMORY_REGION."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))

    def __repr__(self) -> str:
        kind = "rom" if self.readonly else "ram"
        return f"MemorySlot({self.name!r}, {self.base:#x}..{self.end - 1:#x}, {kind})"

    def close(self) -> None:
        self.view.release()
        self.buffer.close()


class GuestMemory:
    """The guest-physical address space as devices and loaders see it."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._slots: list[MemorySlot] = []

    def add_slot(self, name: str, base: int, size: int, readonly: bool = False) -> MemorySlot:
        """Create and add a slot; overlapping another slot is an error naming both."""
        slot = MemorySlot(name, base, size, readonly)
        i = bisect.bisect_left(self._bases, base)
        for j in (i - 1, i):
            if 0 <= j < len(self._slots):
                other = self._slots[j]
                if other.base < slot.end and slot.base < other.end:
                    slot.close()
                    raise GuestMemoryError(
                        f"memory slot {name!r} ({base:#x}..{base + size - 1:#x}) overlaps "
                        f"slot {other.name!r} ({other.base:#x}..{other.end - 1:#x})"
                    )
        self._bases.insert(i, base)
        self._slots.insert(i, slot)
        return slot

    def __iter__(self) -> Iterator[MemorySlot]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def slot_at(self, address: int) -> MemorySlot | None:
        """The slot holding ``address``, or None."""
        i = bisect.bisect_right(self._bases, address) - 1
        if i >= 0 and address < self._slots[i].end:
            return self._slots[i]
        return None

    def _spans(self, address: int, length: int, writing: bool) -> Iterator[tuple[MemorySlot, int, int]]:
        """(slot, offset, count) pieces covering the range; raise if any byte is unbacked."""
        if address < 0 or length < 0:
            raise GuestMemoryError(f"bad guest range {address:#x}+{length:#x}")
        done = 0
        while done < length:
            here = address + done
            slot = self.slot_at(here)
            if slot is None:
                raise GuestMemoryError(
                    f"guest-physical {here:#x} is outside every memory slot "
                    f"(access {address:#x}..{address + length - 1:#x})"
                )
            if writing and slot.readonly:
                raise GuestMemoryError(f"guest-physical {here:#x} is in read-only slot {slot.name!r}")
            count = min(length - done, slot.end - here)
            yield slot, here - slot.base, count
            done += count

    def read(self, address: int, length: int) -> bytes:
        """Copy ``length`` bytes from guest-physical ``address``."""
        parts = [slot.view[off : off + n] for slot, off, n in self._spans(address, length, False)]
        return b"".join(parts) if len(parts) != 1 else bytes(parts[0])

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to guest-physical ``address`` (read-only slots refuse)."""
        self._copy_in(address, data, writing=True)

    def load(self, address: int, data: bytes | bytearray | memoryview) -> None:
        """Place an image, read-only slots included (what a loader or firmware flash does)."""
        self._copy_in(address, data, writing=False)

    def _copy_in(self, address: int, data: bytes | bytearray | memoryview, writing: bool) -> None:
        src = memoryview(data).cast("B")
        done = 0
        # Check every span before copying any, so a refused write leaves memory untouched.
        for slot, off, n in list(self._spans(address, len(src), writing)):
            slot.view[off : off + n] = src[done : done + n]
            done += n

    def read_int(self, address: int, size: int) -> int:
        """A little-endian integer of ``size`` bytes."""
        return int.from_bytes(self.read(address, size), "little")

    def write_int(self, address: int, size: int, value: int) -> None:
        self.write(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots.clear()
        self._bases.clear()
