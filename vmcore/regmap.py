"""Register maps: a device's registers declared once, the bus handling derived from them.

A :class:`RegisterMap` lists a device's registers (:class:`Reg`: offset, width in bytes,
access, reset value, named :class:`Field` bit ranges, side effects as method names), as
QEMU's ``REG32``/``FIELD`` macros, Renode's register collections or a CMSIS-SVD file do.
From it come:

- the bus handling (:class:`RegisterFile`, one per device instance): an access that is
  exactly one register goes straight to it; any other access within the map (narrower,
  wider, unaligned, across registers) is taken byte lane by byte lane, each register it
  touches read or written once. Bytes no register covers read 0 and ignore writes;
- the access rules: ``rw``, ``ro`` (writes ignored), ``wo`` (reads 0), ``w1c`` (a 1
  written clears the bit); ``writable`` limits the bits software may change;
- reset (:meth:`RegisterFile.reset`), the table ``vmcore devices TYPE`` shows
  (:meth:`RegisterMap.describe`), and fuzz strategies (:meth:`RegisterMap.accesses`).

Side effects are the device's methods, named in the :class:`Reg`: ``on_read(value) -> value``
gives what a read returns (a counter, a live status) and ``on_write(value)`` runs after the
register took a written value; when it returns a number, the register holds that instead
(a bit that reads 0 once acted on).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import attrs

ACCESS = ("rw", "ro", "wo", "w1c")
_RW, _RO, _WO, _W1C = range(4)


@attrs.frozen
class Field:
    """A named bit range of a register: ``width`` bits from bit ``lsb``."""

    name: str
    lsb: int
    width: int = 1
    doc: str = ""

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb


def _access(_instance: Any, _attribute: Any, value: str) -> None:
    if value not in ACCESS:
        raise ValueError(f"access must be one of {', '.join(ACCESS)}, got {value!r}")


def _width(_instance: Any, _attribute: Any, value: int) -> None:
    if value not in (1, 2, 4, 8):
        raise ValueError(f"width must be 1, 2, 4 or 8 bytes, got {value!r}")


@attrs.frozen
class Reg:
    """One register: ``width`` bytes at ``offset`` from the map's start."""

    offset: int
    name: str
    width: int = attrs.field(default=4, validator=_width)
    access: str = attrs.field(default="rw", validator=_access)
    reset: int = 0
    fields: tuple[Field, ...] = ()
    doc: str = ""
    #: Name of the device method giving what a read returns, from the stored value.
    on_read: str | None = None
    #: Name of the device method called with the value after a write stored it; a number it
    #: returns is stored instead.
    on_write: str | None = None
    #: The bits a write may change (rw, wo, w1c); None: all of them.
    writable: int | None = None

    def __attrs_post_init__(self) -> None:
        bits = 8 * self.width
        if self.offset < 0:
            raise ValueError(f"register {self.name}: offset {self.offset} is negative")
        if not 0 <= self.reset < 1 << bits:
            raise ValueError(f"register {self.name}: reset {self.reset:#x} does not fit {self.width} bytes")
        for field in self.fields:
            if field.lsb < 0 or field.width < 1 or field.lsb + field.width > bits:
                raise ValueError(f"register {self.name}: field {field.name} (bits {field.lsb}+{field.width}) "
                                 f"is outside its {bits} bits")

    def field(self, name: str) -> Field:
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(f"register {self.name} has no field {name!r}")


class RegisterMap:
    """A device's registers (``regs`` in any order; none may overlap)."""

    def __init__(self, *regs: Reg) -> None:
        self.regs: tuple[Reg, ...] = tuple(sorted(regs, key=lambda reg: reg.offset))
        self.size = max((reg.offset + reg.width for reg in self.regs), default=0)
        self.index: dict[str, int] = {}
        #: Byte offset -> (register index, byte within it), None where no register is.
        self.bytes: list[tuple[int, int] | None] = [None] * self.size
        for i, reg in enumerate(self.regs):
            if reg.name in self.index:
                raise ValueError(f"register {reg.name} is declared twice")
            self.index[reg.name] = i
            for k in range(reg.width):
                taken = self.bytes[reg.offset + k]
                if taken is not None:
                    raise ValueError(f"register {reg.name} overlaps {self.regs[taken[0]].name} at "
                                     f"offset {reg.offset + k:#x}")
                self.bytes[reg.offset + k] = (i, k)
        #: (offset << 4 | size) -> register index, for accesses that are exactly one register.
        self.exact = {reg.offset << 4 | reg.width: i for i, reg in enumerate(self.regs)}

    def __getitem__(self, name: str) -> Reg:
        return self.regs[self.index[name]]

    def name_at(self, offset: int) -> str:
        """The register holding byte ``offset`` (``NAME`` or ``NAME+k`` inside it), or "" in a gap."""
        spot = self.bytes[offset] if 0 <= offset < self.size else None
        if spot is None:
            return ""
        return self.regs[spot[0]].name + (f"+{spot[1]}" if spot[1] else "")

    def bind(self, device: Any) -> "RegisterFile":
        """The registers of one device instance, its ``on_read``/``on_write`` methods resolved."""
        return RegisterFile(self, device)

    def runs(self) -> list[tuple[int, int]]:
        """(offset, length) of each stretch of registers without a gap: one bus region each."""
        out: list[tuple[int, int]] = []
        for reg in self.regs:
            if out and out[-1][0] + out[-1][1] == reg.offset:
                out[-1] = (out[-1][0], out[-1][1] + reg.width)
            else:
                out.append((reg.offset, reg.width))
        return out

    def describe(self) -> list[str]:
        """The register table, a line per register and per field (``vmcore devices TYPE``)."""
        lines = []
        for reg in self.regs:
            doc = f"  {reg.doc}" if reg.doc else ""
            lines.append(f"+{reg.offset:#04x} {reg.name:<12} {8 * reg.width:2}-bit {reg.access:<3} "
                         f"reset {reg.reset:#x}{doc}")
            for field in sorted(reg.fields, key=lambda f: f.lsb):
                bits = f"bit  {field.lsb}" if field.width == 1 else f"bits {field.lsb + field.width - 1}:{field.lsb}"
                lines.append(f"        {field.name:<12} {bits}{'  ' + field.doc if field.doc else ''}")
        return lines

    def accesses(self) -> Any:
        """A hypothesis strategy of bus accesses to the map: (offset, size, value or None for a read),
        mostly whole registers, also narrower, wider, unaligned and across registers."""
        from hypothesis import strategies as st

        whole = st.sampled_from([(reg.offset, reg.width) for reg in self.regs]) if self.regs else st.nothing()
        anywhere = st.tuples(st.integers(0, max(self.size - 1, 0)), st.sampled_from([1, 2, 4, 8]))
        where = st.one_of(whole, whole, anywhere)
        return where.flatmap(lambda spot: st.tuples(
            st.just(spot[0]), st.just(spot[1]),
            st.one_of(st.none(), st.integers(0, (1 << (8 * spot[1])) - 1))))


class RegisterFile:
    """One device's register values, and the bus handlers :meth:`read` and :meth:`write`."""

    __slots__ = ("map", "values", "_kind", "_on_read", "_on_write", "_writable", "_bytes", "_width", "read", "write")

    def __init__(self, regmap: RegisterMap, device: Any) -> None:
        self.map = regmap
        regs = regmap.regs
        self.values = [reg.reset for reg in regs]
        self._kind = [ACCESS.index(reg.access) for reg in regs]
        self._on_read: list[Callable[[int], int] | None] = [
            None if reg.on_read is None else getattr(device, reg.on_read) for reg in regs]
        self._on_write: list[Callable[[int], None] | None] = [
            None if reg.on_write is None else getattr(device, reg.on_write) for reg in regs]
        self._width = [reg.width for reg in regs]
        self._writable = [((1 << (8 * reg.width)) - 1) & (reg.writable if reg.writable is not None else -1)
                          for reg in regs]
        self._bytes = regmap.bytes
        #: The bus handlers for the whole map: ``read(offset, size)`` and ``write(offset, size, value)``.
        self.read, self.write = self._handlers(0)

    def __getitem__(self, name: str) -> int:
        return self.values[self.map.index[name]]

    def __setitem__(self, name: str, value: int) -> None:
        i = self.map.index[name]
        self.values[i] = value & ((1 << (8 * self._width[i])) - 1)

    def field(self, register: str, name: str) -> int:
        """A field's value."""
        field = self.map[register].field(name)
        return (self[register] & field.mask) >> field.lsb

    def reset(self) -> None:
        self.values[:] = [reg.reset for reg in self.map.regs]

    def save_state(self) -> dict[str, int]:
        """The registers by name, for a snapshot (vmcore.snapshot): a device's State can hold its file."""
        return {reg.name: value for reg, value in zip(self.map.regs, self.values)}

    def load_state(self, state: dict[str, int]) -> None:
        if set(state) != set(self.map.index):
            raise ValueError(f"the saved registers {sorted(state)} are not this map's {sorted(self.map.index)}")
        for name, value in state.items():
            self[name] = value  # in place: the bus handlers hold this list

    def regions(self, space: Any, base: int, sizes: Sequence[int] = (1, 2, 4, 8)) -> list[Any]:
        """Bus regions for the map at ``base``: one per stretch of registers (gaps stay unclaimed),
        named after the stretch's first register."""
        from .bus import Region

        out = []
        for offset, length in self.map.runs():
            name = self.map.regs[self.map.bytes[offset][0]].name  # type: ignore[index]
            read, write = self._handlers(offset)
            usable = tuple(size for size in sizes if size <= length) or (1,)
            out.append(Region(space, base + offset, length, read, write, sizes=usable, name=name,
                              label=lambda at, _offset=offset: self.map.name_at(_offset + at)))
        return out

    # --- the bus handlers -----------------------------------------------------------------

    def _handlers(self, start: int) -> tuple[Callable[[int, int], int], Callable[[int, int, int], None]]:
        """``read``/``write`` for offsets counted from map offset ``start``: an access that is exactly
        one register is served in the handler itself (one call, as a hand-written handler); any other
        goes by byte lanes."""
        exact = {(reg.offset - start) << 4 | reg.width: i for i, reg in enumerate(self.map.regs)
                 if reg.offset >= start}
        values, kinds, hooks_in, hooks_out, writable = (self.values, self._kind, self._on_read, self._on_write,
                                                        self._writable)
        lanes_in, lanes_out, store = self._read_lanes, self._write_lanes, self._store
        full = [(1 << (8 * width)) - 1 for width in self._width]
        RW = _RW

        def read(offset: int, size: int) -> int:
            i = exact.get(offset << 4 | size)
            if i is None:
                return lanes_in(start + offset, size)
            hook = hooks_in[i]
            if hook is None:
                return values[i] if kinds[i] != _WO else 0
            return hook(values[i]) if kinds[i] != _WO else 0

        def write(offset: int, size: int, value: int) -> None:
            i = exact.get(offset << 4 | size)
            if i is None:
                lanes_out(start + offset, size, value)
            elif kinds[i] == RW:
                mask = writable[i]
                new = values[i] = (values[i] & ~mask) | (value & mask)
                hook = hooks_out[i]
                if hook is not None and (kept := hook(new)) is not None:
                    values[i] = kept & full[i]
            else:
                store(i, writable[i], value)

        return read, write

    def _store(self, i: int, mask: int, value: int) -> None:
        """Write ``value`` into register ``i`` where ``mask`` (its lanes) says, by its access rule."""
        kind = self._kind[i]
        if kind == _RO:
            return
        old = self.values[i]
        mask &= self._writable[i]
        if kind == _W1C:
            new = old & ~(value & mask)
        else:
            new = (old & ~mask) | (value & mask)
        self.values[i] = new
        hook = self._on_write[i]
        if hook is not None and (kept := hook(new)) is not None:
            self.values[i] = kept & ((1 << (8 * self._width[i])) - 1)

    def _touched(self, offset: int, size: int) -> Iterator[tuple[int, int, int]]:
        """(register index, byte shift in the register, byte position in the access) of each byte."""
        for position in range(size):
            at = offset + position
            spot = self._bytes[at] if 0 <= at < len(self._bytes) else None
            if spot is not None:
                yield spot[0], spot[1], position

    def _read_lanes(self, offset: int, size: int) -> int:
        seen: dict[int, int] = {}
        value = 0
        for i, byte, position in self._touched(offset, size):
            if i not in seen:  # each register read once, its side effect once
                kind, hook = self._kind[i], self._on_read[i]
                seen[i] = 0 if kind == _WO else (self.values[i] if hook is None else hook(self.values[i]))
            value |= (seen[i] >> (8 * byte) & 0xFF) << (8 * position)
        return value

    def _write_lanes(self, offset: int, size: int, value: int) -> None:
        lanes: dict[int, list[int]] = {}  # register -> [mask, value] of the bytes written
        for i, byte, position in self._touched(offset, size):
            entry = lanes.setdefault(i, [0, 0])
            entry[0] |= 0xFF << (8 * byte)
            entry[1] |= (value >> (8 * position) & 0xFF) << (8 * byte)
        for i, (mask, bits) in lanes.items():
            self._store(i, mask, bits)


def registers_of(device_type: type) -> RegisterMap | None:
    """A device type's register map (its ``registers`` class attribute), if it declares one."""
    found = getattr(device_type, "registers", None)
    return found if isinstance(found, RegisterMap) else None

