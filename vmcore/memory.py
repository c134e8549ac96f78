"""Guest-physical memory: host buffers (blocks) and the windows the guest sees of them.

A :class:`MemoryBlock` is an anonymous host mapping: a profile's RAM or ROM. The
guest-physical address space is a flat map of :class:`MemorySlot` windows onto
blocks, worked out from layers, as a chipset decodes addresses:

* layer 0 holds each block at its home address (:meth:`GuestMemory.add_slot`);
  these never overlap;
* devices lay :class:`Overlay` ranges over it with a higher priority (the
  i440FX's PAM and SMRAM decoding, say): each shows a block's bytes, read-only or
  not, or a hole, which is no memory at all, so accesses there go to the MMIO bus.

Devices may change overlays while the guest runs; changes made inside
:meth:`GuestMemory.transaction` land together. Every change of the flat map is
sent to the listeners (the accelerator: KVM slot updates, unicorn remaps) as the
windows that went away and the ones that came. Devices reach the bytes through
:class:`GuestMemory`'s bounds-checked methods (their DMA), which follow the same
map, so a device can never touch host memory outside a window.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import mmap
from typing import Callable, Iterator

PAGE_SIZE = 4096

#: A listener gets (removed, added) windows after each change of the flat map.
MapListener = Callable[[list["MemorySlot"], list["MemorySlot"]], None]


class GuestMemoryError(Exception):
    """A guest-physical access outside every slot, or a write to read-only memory."""


def _check_range(name: str, base: int, size: int) -> None:
    if size <= 0 or size % PAGE_SIZE or base % PAGE_SIZE or base < 0:
        raise GuestMemoryError(
            f"slot {name!r}: base {base:#x} and size {size:#x} must be positive multiples of 4K"
        )


class MemoryBlock:
    """A host buffer that guest memory windows show: anonymous, private, zero-filled."""

    __slots__ = ("name", "size", "readonly", "buffer", "view", "host_address")

    def __init__(self, name: str, size: int, readonly: bool = False) -> None:
        self.name = name
        self.size = size
        #: What windows of the block default to (a ROM's are read-only).
        self.readonly = readonly
        # What both KVM and a software CPU can map.
        try:
            self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as exc:  # ENOMEM: overcommit refused, RLIMIT_AS, a cgroup limit
            from .units import format_size

            raise GuestMemoryError(
                f"slot {name!r}: the host could not provide its {format_size(size)} of memory "
                f"({exc.strerror or exc}); make the slot smaller or free host memory"
            ) from None
        self.view = memoryview(self.buffer)
        #: Host virtual address of the buffer, for KVM_SET_USER_MEMORY_REGION.
        self.host_address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))

    def __repr__(self) -> str:
        return f"MemoryBlock({self.name!r}, {self.size:#x})"

    def close(self) -> None:
        self.view.release()
        self.buffer.close()


class MemorySlot:
    """A window of guest-physical memory: ``size`` bytes of a block from ``offset``, at ``base``.

    ``MemorySlot(name, base, size)`` on its own makes a window onto a new block of
    its size (what :meth:`GuestMemory.add_slot` does).
    """

    __slots__ = ("name", "base", "size", "readonly", "block", "offset", "view", "_owns_block")

    def __init__(self, name: str, base: int, size: int, readonly: bool = False,
                 block: MemoryBlock | None = None, offset: int = 0) -> None:
        _check_range(name, base, size)
        self._owns_block = block is None
        if block is None:
            block = MemoryBlock(name, size, readonly)
        if offset < 0 or offset % PAGE_SIZE or offset + size > block.size:
            raise GuestMemoryError(f"window {name!r}: {offset:#x}+{size:#x} is not a page-aligned part of "
                                   f"block {block.name!r} ({block.size:#x} bytes)")
        self.name = name
        self.base = base
        self.size = size
        self.readonly = readonly
        self.block = block
        self.offset = offset
        self.view = block.view[offset : offset + size]

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def host_address(self) -> int:
        """Host virtual address of the window's first byte."""
        return self.block.host_address + self.offset

    def same_mapping(self, other: "MemorySlot") -> bool:
        """The same bytes at the same place with the same access: nothing to tell an accelerator."""
        return (self.base, self.size, self.block, self.offset, self.readonly) == \
            (other.base, other.size, other.block, other.offset, other.readonly)

    def __repr__(self) -> str:
        kind = "rom" if self.readonly else "ram"
        return f"MemorySlot({self.name!r}, {self.base:#x}..{self.end - 1:#x}, {kind})"

    def close(self) -> None:
        self.view.release()
        if self._owns_block:
            self.block.close()


class Overlay:
    """A range a device decodes over the blocks' home addresses (see :meth:`GuestMemory.overlay`).

    It shows one of: a block (:meth:`show`), a hole that no memory answers
    (:meth:`hide`), or whatever lies below it (:meth:`clear`, the state it starts in).
    """

    def __init__(self, memory: "GuestMemory", name: str, base: int, size: int, priority: int) -> None:
        self.memory = memory
        self.name = name
        self.base = base
        self.size = size
        self.priority = priority
        #: (block, offset, readonly), None for a hole, or the string "clear".
        self.target: tuple[MemoryBlock, int, bool] | None | str = "clear"

    @property
    def end(self) -> int:
        return self.base + self.size

    def show(self, block: MemoryBlock, offset: int = 0, readonly: bool = False) -> None:
        """Map ``block``'s bytes from ``offset`` here (read-only: guest writes go to the MMIO bus)."""
        if offset < 0 or offset % PAGE_SIZE or offset + self.size > block.size:
            raise GuestMemoryError(f"overlay {self.name!r}: {offset:#x}+{self.size:#x} is outside block "
                                   f"{block.name!r} ({block.size:#x} bytes)")
        self._set((block, offset, readonly))

    def hide(self) -> None:
        """No memory here: every access goes to the MMIO bus."""
        self._set(None)

    def clear(self) -> None:
        """Let the layers below show through."""
        self._set("clear")

    def _set(self, target: tuple[MemoryBlock, int, bool] | None | str) -> None:
        if target != self.target:
            self.target = target
            self.memory._changed()

    def __repr__(self) -> str:
        return f"Overlay({self.name!r}, {self.base:#x}..{self.end - 1:#x}, priority {self.priority})"


class GuestMemory:
    """The guest-physical address space as devices, loaders and accelerators see it."""

    def __init__(self) -> None:
        self._home: list[MemorySlot] = []  # layer 0, sorted by base
        self._blocks: dict[str, MemoryBlock] = {}
        self._overlays: list[Overlay] = []
        self._bases: list[int] = []
        self._slots: list[MemorySlot] = []  # the flat map, sorted by base
        self._listeners: list[MapListener] = []
        self._batch = 0
        self._dirty = False

    # --- building -----------------------------------------------------------------------

    def add_slot(self, name: str, base: int, size: int, readonly: bool = False) -> MemorySlot:
        """Create a block and map it at ``base``; overlapping another slot is an error naming both."""
        _check_range(name, base, size)
        for other in self._home:
            if other.base < base + size and base < other.end:
                raise GuestMemoryError(
                    f"memory slot {name!r} ({base:#x}..{base + size - 1:#x}) overlaps "
                    f"slot {other.name!r} ({other.base:#x}..{other.end - 1:#x})"
                )
        slot = MemorySlot(name, base, size, readonly)
        bisect.insort(self._home, slot, key=lambda s: s.base)
        self._blocks[name] = slot.block
        self._changed()
        return slot

    def block(self, name: str) -> MemoryBlock:
        """The block made for slot ``name`` (KeyError naming the known ones if there is none)."""
        try:
            return self._blocks[name]
        except KeyError:
            known = ", ".join(sorted(self._blocks)) or "none"
            raise KeyError(f"no memory slot named {name!r} (slots: {known})") from None

    def home_slots(self) -> list[MemorySlot]:
        """Every slot as :meth:`add_slot` placed it, by address (the flat map may differ: see ``iter``)."""
        return list(self._home)

    def home(self, name: str) -> MemorySlot:
        """Slot ``name`` as :meth:`add_slot` placed it (its home address, whatever overlays it)."""
        for slot in self._home:
            if slot.name == name:
                return slot
        self.block(name)  # raises naming the known ones
        raise AssertionError("unreachable")

    def overlay(self, name: str, base: int, size: int, priority: int = 1) -> Overlay:
        """A range a device decodes itself, above the home layer; it starts clear (see :class:`Overlay`)."""
        _check_range(name, base, size)
        if priority < 1:
            raise GuestMemoryError(f"overlay {name!r}: priority must be 1 or more (0 is the slots' home layer)")
        overlay = Overlay(self, name, base, size, priority)
        self._overlays.append(overlay)
        return overlay

    def remove_overlay(self, overlay: Overlay) -> None:
        self._overlays.remove(overlay)
        self._changed()

    def overlays(self) -> list[Overlay]:
        """Every overlay, in the order made: the ranges devices decode themselves."""
        return list(self._overlays)

    # --- the flat map and its listeners ---------------------------------------------------------

    def add_listener(self, listener: MapListener) -> None:
        """Call ``listener(removed, added)`` after every change of the flat map."""
        self._listeners.append(listener)

    def remove_listener(self, listener: MapListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Changes made inside land together, as one update of the flat map."""
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            if self._batch == 0 and self._dirty:
                self._commit()

    def _changed(self) -> None:
        self._dirty = True
        if self._batch == 0:
            self._commit()

    def _commit(self) -> None:
        self._dirty = False
        old = self._slots
        # Reuse window objects that did not change (and the home slots themselves where
        # nothing covers them), so listeners and callers can tell by identity.
        reusable = {(s.base, s.size, id(s.block), s.offset, s.readonly): s for s in (*self._home, *old)}
        new: list[MemorySlot] = []
        for base, end, name, block, offset, readonly in self._flatten():
            slot = reusable.get((base, end - base, id(block), offset, readonly))
            if slot is None:
                slot = MemorySlot(name, base, end - base, readonly, block, offset)
            new.append(slot)
        new_ids = {id(slot) for slot in new}
        old_ids = {id(slot) for slot in old}
        added = [slot for slot in new if id(slot) not in old_ids]
        removed = [slot for slot in old if id(slot) not in new_ids]
        self._slots = new
        self._bases = [slot.base for slot in new]
        for listener in list(self._listeners):
            listener(removed, added)
        home_ids = {id(slot) for slot in self._home}
        for slot in removed:
            if id(slot) not in home_ids:
                slot.view.release()

    def _flatten(self) -> list[tuple[int, int, str, MemoryBlock, int, bool]]:
        """The flat map as (base, end, name, block, offset, readonly): the highest layer at each address.

        Among overlays of equal priority the one made last wins.
        """
        layers: list[tuple[int, int, int, int, object]] = [(0, 0, s.base, s.end, s) for s in self._home]
        layers += [(o.priority, i + 1, o.base, o.end, o) for i, o in enumerate(self._overlays) if o.target != "clear"]
        points = sorted({p for layer in layers for p in (layer[2], layer[3])})
        pieces: list[tuple[int, int, str, MemoryBlock, int, bool]] = []
        for start, end in zip(points, points[1:]):
            top = max((layer for layer in layers if layer[2] <= start and end <= layer[3]),
                      key=lambda layer: (layer[0], layer[1]), default=None)
            if top is None:
                continue
            source = top[4]
            if isinstance(source, MemorySlot):
                piece = (start, end, source.name, source.block, source.offset + start - source.base, source.readonly)
            else:
                assert isinstance(source, Overlay)
                if source.target is None:
                    continue  # a hole
                block, offset, readonly = source.target  # type: ignore[misc]
                piece = (start, end, source.name, block, offset + start - source.base, readonly)
            last = pieces[-1] if pieces else None
            # Adjacent pieces from the same layer, block and access make one window. Pieces from
            # different layers stay apart even when they could merge: a change to one overlay
            # then never remaps memory the guest may be running from elsewhere (firmware moves
            # PAM from code in high RAM).
            if (last is not None and last[1] == start and last[2] == piece[2] and last[3] is piece[3]
                    and last[5] == piece[5] and last[4] + (last[1] - last[0]) == piece[4]):
                pieces[-1] = (last[0], end, *last[2:])
            else:
                pieces.append(piece)
        return pieces

    # --- lookups and DMA -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[MemorySlot]:
        """The windows of the flat map, by address."""
        return iter(list(self._slots))

    def __len__(self) -> int:
        return len(self._slots)

    def blocks(self) -> list[MemoryBlock]:
        """Every block, in the order their slots were added."""
        return list(self._blocks.values())

    def slot_at(self, address: int) -> MemorySlot | None:
        """The window holding ``address``, or None."""
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

    def check_range(self, address: int, length: int, writing: bool = False) -> None:
        """Raise GuestMemoryError unless every byte of the range is backed (and writable, if
        ``writing``): what a device checks before it trusts an address the guest gave it."""
        slot = self.slot_at(address)
        if slot is not None and length >= 0 and address + length <= slot.end and not (writing and slot.readonly):
            return  # within one window: the common case, without the walk below
        for _ in self._spans(address, length, writing):
            pass

    def views(self, address: int, length: int, writing: bool = False) -> list[memoryview]:
        """The range as views onto guest memory itself, one per window it crosses, checked as
        :meth:`check_range` checks it (writable views only where ``writing``; read-only ones
        otherwise): DMA without a copy, e.g. ``os.preadv`` straight into guest RAM. Use them at
        once and keep none: a map change (a window removed, a slot closed) invalidates them."""
        slot = self.slot_at(address)
        if slot is not None and 0 <= length and address + length <= slot.end and not (writing and slot.readonly):
            start = address - slot.base  # within one window: no walk
            view = slot.view[start : start + length]
            return [view if writing else view.toreadonly()]
        spans = list(self._spans(address, length, writing))
        return [slot.view[off : off + n] if writing else slot.view[off : off + n].toreadonly()
                for slot, off, n in spans]

    def read(self, address: int, length: int) -> bytes:
        """Copy ``length`` bytes from guest-physical ``address``."""
        slot = self.slot_at(address)
        if slot is not None and 0 <= length and address + length <= slot.end:
            start = address - slot.base  # within one window (nearly every access): no walk
            return bytes(slot.view[start : start + length])
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
        slot = self.slot_at(address)
        if slot is not None and address + len(src) <= slot.end and not (writing and slot.readonly):
            start = address - slot.base  # within one window: no walk
            slot.view[start : start + len(src)] = src
            return
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
            if slot not in self._home:
                slot.view.release()
        for slot in self._home:
            slot.close()
        self._home.clear()
        self._slots.clear()
        self._bases.clear()
        self._blocks.clear()
        self._overlays.clear()
        self._listeners.clear()
