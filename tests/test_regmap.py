"""vmcore.regmap: registers declared once; accesses of every width and alignment, access rules, hooks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcore.bus import Space
from vmcore.regmap import Field, Reg, RegisterMap, registers_of


class Widget:
    """A device with a counter read on the fly and a control register whose write acts."""

    registers = RegisterMap(
        Reg(0x0, "CTRL", 4, "rw", reset=0x10, on_write="_control", writable=0xFF,
            fields=(Field("GO", 0), Field("MODE", 4, 3, doc="speed"))),
        Reg(0x4, "STATUS", 2, "w1c", reset=0x0003),
        Reg(0x6, "ID", 1, "ro", reset=0x5A),
        Reg(0x8, "DOOR", 4, "wo", on_write="_ring"),
        Reg(0xC, "COUNT", 4, "ro", on_read="_count"),
        Reg(0x14, "LATE", 2, "rw"),  # after a gap of 4 bytes
    )

    def __init__(self) -> None:
        self.regs = self.registers.bind(self)
        self.reads = 0
        self.rung: list[int] = []
        self.started = 0

    def _control(self, value: int) -> int | None:
        if value & 1:
            self.started += 1
            return value & ~1  # GO reads 0 once taken
        return None

    def _ring(self, value: int) -> None:
        self.rung.append(value)

    def _count(self, _stored: int) -> int:
        self.reads += 1
        return 0x11223344


def test_whole_registers_follow_their_access_rules() -> None:
    w = Widget()
    regs = w.regs
    assert regs.read(0x0, 4) == 0x10 and regs.read(0x6, 1) == 0x5A
    regs.write(0x0, 4, 0xFFFF_FF21)  # writable: the low byte only; GO acts and clears
    assert (regs.read(0x0, 4), w.started) == (0x20, 1)
    regs.write(0x4, 2, 0x0001)  # write 1 to clear
    assert regs.read(0x4, 2) == 0x0002
    regs.write(0x6, 1, 0xFF)  # read-only
    assert regs.read(0x6, 1) == 0x5A
    regs.write(0x8, 4, 0xCAFE)
    assert (w.rung, regs.read(0x8, 4)) == ([0xCAFE], 0)  # write-only: reads 0
    assert regs.read(0xC, 4) == 0x11223344 and w.reads == 1
    assert regs.field("CTRL", "MODE") == 2


def test_narrower_wider_and_unaligned_accesses_go_by_byte_lanes() -> None:
    w = Widget()
    regs = w.regs
    assert regs.read(0xD, 2) == 0x2233 and w.reads == 1  # inside one register: its hook once
    assert regs.read(0x4, 4) == 0x005A_0003  # STATUS, ID and the byte after ID (none: 0)
    assert regs.read(0xE, 4) == 0x1122 and w.reads == 2  # runs past COUNT into the gap: 0
    regs.write(0x14, 1, 0xAB)
    regs.write(0x15, 1, 0xCD)
    assert regs.read(0x14, 2) == 0xCDAB
    regs.write(0x3, 4, 0x0000_01FF)  # CTRL's top byte (not writable) and STATUS's low byte (w1c)
    assert regs.read(0x4, 2) == 0x0002 and regs.read(0x0, 4) == 0x10
    regs.write(0x10, 4, 0x1234)  # the gap: ignored
    assert regs.read(0x10, 4) == 0


def test_reset_gives_every_register_its_reset_value() -> None:
    w = Widget()
    w.regs.write(0x14, 2, 0x7777)
    w.regs["STATUS"] = 0
    w.regs.reset()
    assert (w.regs["LATE"], w.regs["STATUS"], w.regs["CTRL"]) == (0, 3, 0x10)


def test_regions_are_one_per_stretch_named_after_its_first_register() -> None:
    regions = Widget().regs.regions(Space.PIO, 0x300, sizes=(1, 2, 4))
    # ID ends at 7 and DOOR starts at 8: three stretches, the gaps left unclaimed.
    assert [(r.base, r.size, r.name) for r in regions] == [(0x300, 7, "CTRL"), (0x308, 8, "DOOR"), (0x314, 2, "LATE")]
    assert regions[2].sizes == (1, 2)
    assert regions[1].read(4, 4) == 0x11223344  # handlers take offsets within their region
    assert [regions[0].label(k) for k in (0, 2, 5, 6)] == ["CTRL", "CTRL+2", "STATUS+1", "ID"]  # for reports
    assert Widget.registers.name_at(0x10) == ""  # a gap


def test_the_table_shows_registers_and_fields() -> None:
    lines = Widget.registers.describe()
    assert lines[0] == "+0x00 CTRL         32-bit rw  reset 0x10"
    assert lines[1].split() == ["GO", "bit", "0"] and lines[2].split() == ["MODE", "bits", "6:4", "speed"]
    assert registers_of(Widget) is Widget.registers and registers_of(object) is None


@pytest.mark.parametrize(("regs", "error"), [
    ((Reg(0, "A", 4), Reg(2, "B", 2)), "B overlaps A at offset 0x2"),
    ((Reg(0, "A", 4), Reg(4, "A", 4)), "A is declared twice"),
])
def test_a_map_that_cannot_be_is_refused(regs: tuple[Reg, ...], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RegisterMap(*regs)


@pytest.mark.parametrize(("make", "error"), [
    (lambda: Reg(0, "A", 3), "width must be 1, 2, 4 or 8"),
    (lambda: Reg(0, "A", 4, "rx"), "access must be one of"),
    (lambda: Reg(0, "A", 1, reset=0x100), "does not fit 1 bytes"),
    (lambda: Reg(0, "A", 2, fields=(Field("F", 12, 8),)), "outside its 16 bits"),
])
def test_a_register_that_cannot_be_is_refused(make, error: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=error):
        make()


PLAIN = RegisterMap(Reg(0x0, "A", 4), Reg(0x4, "B", 2), Reg(0x6, "C", 1), Reg(0x8, "D", 8), Reg(0x12, "E", 2))


@settings(max_examples=300, deadline=None)
@given(st.lists(PLAIN.accesses(), max_size=40))
def test_read_write_registers_behave_as_bytes(accesses: list[tuple[int, int, int | None]]) -> None:
    """Any mix of accesses, against a byte model: registers hold what was written, gaps read 0."""
    regs = PLAIN.bind(object())
    model = bytearray(PLAIN.size + 8)
    covered = [spot is not None for spot in PLAIN.bytes] + [False] * 8
    for offset, size, value in accesses:
        if value is None:
            assert regs.read(offset, size) == int.from_bytes(model[offset:offset + size], "little")
        else:
            regs.write(offset, size, value)
            for k, byte in enumerate(value.to_bytes(size, "little")):
                if covered[offset + k]:
                    model[offset + k] = byte
