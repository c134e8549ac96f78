"""The bus against hostile guests and broken devices (issue 13, classes 2, 4, 5 and 6).

- unclaimed-access bookkeeping and warnings stay bounded however many addresses a guest sweeps;
- a device's answer is checked once, at the bus: anything but an int of the access's width is a
  DeviceFault naming the device, the access and the value (or all ones under ``continue``), the
  same on both accelerators; every exception but KeyboardInterrupt is contained;
- an MMIO access that is not naturally aligned reaches devices split as the software CPU splits it
  (writes into bytes, reads into the two aligned units around them) on both accelerators;
- a device's DMA never re-enters a device that is in the middle of a DMA (the re-entrancy guard).
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest

from vmcore.bus import UNCLAIMED_KEPT, UNCLAIMED_WARNINGS, Bus, BusError, Direction, Region, Space
from vmcore.device import Device, prop
from vmcore.dma import DmaError, DmaSpace
from vmcore.faults import DeviceFault
from vmcore.hookspecs import hookimpl
from vmcore.machine import Machine
from vmcore.memory import GuestMemory, GuestMemoryError
from vmcore.plugins import DeviceRegistry
from vmcore.profile import Profile
from vmcore.testing import FakeBus

REPO = Path(__file__).resolve().parent.parent


# --- unclaimed accesses: bounded bookkeeping, summarised warnings --------------------------------


def test_unclaimed_sweep_keeps_a_bounded_list_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    bus = Bus(Space.MMIO)
    sweep = 3 * UNCLAIMED_KEPT
    with caplog.at_level(logging.WARNING, logger="vmcore.bus"):
        for i in range(sweep):
            assert bus.read(0x2000_0000 + i * 0x1000, 4) == 0xFFFF_FFFF
    assert len(bus.unclaimed) == UNCLAIMED_KEPT
    assert bus.unclaimed_elsewhere == sweep - UNCLAIMED_KEPT
    warnings = [r for r in caplog.records if r.name == "vmcore.bus"]
    assert len(warnings) == UNCLAIMED_WARNINGS + 1
    assert "no longer logged one by one" in warnings[-1].getMessage()
    summary = bus.unclaimed_summary()
    assert summary is not None
    assert f"{sweep} unclaimed or rejected mmio accesses" in summary
    assert f"{sweep - UNCLAIMED_KEPT} more" in summary


def test_a_listed_address_keeps_counting_after_the_list_is_full() -> None:
    bus = Bus(Space.PIO)
    bus.write(0x80, 1, 0)
    for port in range(0x1000, 0x1000 + UNCLAIMED_KEPT + 10):
        bus.write(port, 1, 0)
    bus.write(0x80, 1, 0)
    assert bus.unclaimed[(Direction.WRITE, 0x80)] == 2
    assert len(bus.unclaimed) == UNCLAIMED_KEPT


def test_few_unclaimed_addresses_need_no_summary() -> None:
    bus = Bus(Space.PIO)
    bus.read(0x80, 1)
    assert bus.unclaimed_summary() is None


def test_rejected_accesses_share_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    bus = Bus(Space.PIO)
    bus.claim(Region(Space.PIO, 0, 0x10000, None, lambda o, s, v: None, sizes=(4,)), "wide")
    with caplog.at_level(logging.WARNING, logger="vmcore.bus"):
        for port in range(0, 0x10000, 2):
            bus.write(port + 1, 1, 0)  # narrower than the device takes: dropped
    assert len(bus.unclaimed) == UNCLAIMED_KEPT
    assert len([r for r in caplog.records if r.name == "vmcore.bus"]) == UNCLAIMED_WARNINGS + 1


# --- a device's answer is checked at the bus ------------------------------------------------------


class Answers:
    """A register block whose read answers whatever the test put in ``answer``."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def read(self, offset: int, size: int) -> Any:
        return self.answer

    def write(self, offset: int, size: int, value: int) -> None:
        pass


class Flag(enum.IntFlag):
    A = 1
    B = 2


BAD_ANSWERS = [None, "x", 1.5, -1, 0x100, 1 << 64, b"\x01"]  # for a 1-byte read
BAD_WORDS = [None, "x", 1.5, -1, 0x10000, 1 << 64, b"\x01"]  # for a 2-byte read


@pytest.mark.parametrize("answer", BAD_ANSWERS, ids=repr)
def test_a_read_answered_with_anything_but_an_int_of_its_width_is_a_device_fault(answer: Any) -> None:
    bus = Bus(Space.PIO)
    bus.claim(Region(Space.PIO, 0xF2, 1, Answers(answer).read, None), "liar")
    with pytest.raises(DeviceFault) as info:
        bus.read(0xF2, 1)
    text = str(info.value)
    assert "device 'liar' answered a pio read of 1 byte at 0xf2 wrongly" in text
    assert repr(answer)[:20] in text
    assert "must return an int in 0..0xff" in text


@pytest.mark.parametrize("answer", BAD_WORDS, ids=repr)
def test_a_wrong_answer_reads_all_ones_under_continue_and_is_logged_once(
        answer: Any, caplog: pytest.LogCaptureFixture) -> None:
    bus = Bus(Space.MMIO)
    bus.device_errors = "continue"
    bus.claim(Region(Space.MMIO, 0x1000, 4, Answers(answer).read, None, sizes=(2,)), "liar")
    with caplog.at_level(logging.ERROR, logger="vmcore.bus"):
        assert bus.read(0x1000, 2) == 0xFFFF
        assert bus.read(0x1002, 2) == 0xFFFF
        assert bus.read(0x1001, 1) == 0xFF  # widened to the device's unit: checked there too
    assert bus.device_faults == {("liar", "BadAnswer"): 3}
    assert len(caplog.records) == 1


def test_the_fast_route_checks_answers_through_bad_answer() -> None:
    bus = Bus(Space.PIO)
    bus.claim(Region(Space.PIO, 0xF2, 1, Answers(None).read, None), "liar")
    handler, where = bus.read_route(0xF2, 1)
    value = handler(where, 1)  # what an accelerator calls straight
    with pytest.raises(DeviceFault, match="liar"):
        bus.bad_answer(0xF2, 1, value)


@pytest.mark.parametrize("answer, taken", [(True, 1), (Flag.A | Flag.B, 3), (0xFF, 0xFF)], ids=repr)
def test_what_python_takes_as_an_int_is_a_good_answer(answer: Any, taken: int) -> None:
    bus = Bus(Space.PIO)
    bus.claim(Region(Space.PIO, 0xF2, 1, Answers(answer).read, None), "dev")
    assert bus.read(0xF2, 1) == taken
    assert bus.bad_answer(0xF2, 1, answer) == taken


class Raises:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def read(self, offset: int, size: int) -> int:
        raise self.exc

    def write(self, offset: int, size: int, value: int) -> None:
        raise self.exc


@pytest.mark.parametrize("exc", [SystemExit(0), GeneratorExit(), ValueError("x")], ids=lambda e: type(e).__name__)
def test_every_exception_but_keyboard_interrupt_is_contained(exc: BaseException) -> None:
    bus = Bus(Space.PIO)
    dev = Raises(exc)
    bus.claim(Region(Space.PIO, 0xF2, 1, dev.read, dev.write), "bad")
    with pytest.raises(DeviceFault, match=f"device 'bad' raised {type(exc).__name__}"):
        bus.read(0xF2, 1)
    bus.device_errors = "continue"
    assert bus.read(0xF2, 1) == 0xFF
    bus.write(0xF2, 1, 0)
    assert bus.device_faults == {("bad", type(exc).__name__): 2}


def test_keyboard_interrupt_still_reaches_the_user() -> None:
    bus = Bus(Space.PIO)
    dev = Raises(KeyboardInterrupt())
    bus.claim(Region(Space.PIO, 0xF2, 1, dev.read, dev.write), "bad")
    bus.device_errors = "continue"
    with pytest.raises(KeyboardInterrupt):
        bus.read(0xF2, 1)


# --- unaligned MMIO: split as TCG splits it ------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        value = int.from_bytes(bytes(0xA0 + offset + i & 0xFF for i in range(size)), "little")
        self.seen.append(("r", offset, size, value))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.seen.append(("w", offset, size, value))


def test_an_unaligned_mmio_write_reaches_the_device_as_bytes_low_address_first() -> None:
    bus = Bus(Space.MMIO)
    dev = Recorder()
    bus.claim(Region(Space.MMIO, 0x1000, 16, dev.read, dev.write), "rec")
    bus.write(0x1001, 4, 0x11223344)
    assert dev.seen == [("w", 1, 1, 0x44), ("w", 2, 1, 0x33), ("w", 3, 1, 0x22), ("w", 4, 1, 0x11)]


def test_an_unaligned_mmio_read_reads_the_two_aligned_units_around_it_each_traced() -> None:
    bus = Bus(Space.MMIO)
    dev = Recorder()
    traced: list[Any] = []
    bus.set_tracer(traced.append)
    bus.claim(Region(Space.MMIO, 0x1000, 16, dev.read, dev.write), "rec")
    assert bus.read(0x1003, 2) == 0xA4A3
    assert [(t.address, t.size) for t in traced] == [(0x1002, 2), (0x1004, 2)]
    assert bus.read(0x1001, 4) == 0xA4A3A2A1
    assert dev.seen[-2:] == [("r", 0, 4, 0xA3A2A1A0), ("r", 4, 4, 0xA7A6A5A4)]
    assert bus.direct(Direction.READ, 0x1003, 2) is None  # never routed around the rule


def test_aligned_mmio_and_unaligned_ports_stay_whole() -> None:
    mmio, pio = Bus(Space.MMIO), Bus(Space.PIO)
    dev_m, dev_p = Recorder(), Recorder()
    mmio.claim(Region(Space.MMIO, 0x1000, 16, dev_m.read, dev_m.write), "m")
    pio.claim(Region(Space.PIO, 0x1F0, 8, dev_p.read, dev_p.write), "p")
    mmio.write(0x1004, 4, 1)
    pio.write(0x1F1, 2, 2)  # port IO has no alignment rule: x86 ports are byte addresses
    assert dev_m.seen == [("w", 4, 4, 1)]
    assert dev_p.seen == [("w", 1, 2, 2)]


def test_an_odd_sized_mmio_access_is_taken_as_bytes() -> None:
    bus = Bus(Space.MMIO)
    dev = Recorder()
    bus.claim(Region(Space.MMIO, 0x1000, 16, dev.read, dev.write), "rec")
    bus.write(0x1000, 3, 0x030201)
    assert bus.read(0x1004, 3) == 0xA6A5A4
    assert dev.seen == [("w", 0, 1, 1), ("w", 1, 1, 2), ("w", 2, 1, 3),
                        ("r", 4, 1, 0xA4), ("r", 5, 1, 0xA5), ("r", 6, 1, 0xA6)]


def test_an_8_byte_mmio_access_reaches_devices_as_two_halves_low_first() -> None:
    bus = Bus(Space.MMIO)
    dev = Recorder()
    bus.claim(Region(Space.MMIO, 0x1000, 32, dev.read, dev.write), "rec")
    bus.write(0x1008, 8, 0x1122334455667788)
    assert bus.read(0x1010, 8) == 0xB7B6B5B4B3B2B1B0
    assert dev.seen == [("w", 8, 4, 0x55667788), ("w", 12, 4, 0x11223344),
                        ("r", 0x10, 4, 0xB3B2B1B0), ("r", 0x14, 4, 0xB7B6B5B4)]


def test_an_unaligned_8_byte_read_reads_the_four_halves_of_the_two_units_around_it() -> None:
    bus = Bus(Space.MMIO)
    dev = Recorder()
    bus.claim(Region(Space.MMIO, 0x1000, 32, dev.read, dev.write), "rec")
    assert bus.read(0x1004, 8) == 0xABAAA9A8A7A6A5A4
    assert [(off, size) for _, off, size, _ in dev.seen] == [(0, 4), (4, 4), (8, 4), (12, 4)]


def test_an_mmio_region_that_takes_only_8_byte_accesses_is_refused() -> None:
    with pytest.raises(BusError, match="at most 4 bytes wide"):
        Region(Space.MMIO, 0x1000, 16, None, lambda o, s, v: None, sizes=(8,))
    Region(Space.PIO, 0x10, 16, None, lambda o, s, v: None, sizes=(4,))  # ports are not concerned


def test_unaligned_bytes_to_a_dword_only_device_are_rejected_as_narrow_writes() -> None:
    bus = Bus(Space.MMIO)
    dev = Recorder()
    bus.claim(Region(Space.MMIO, 0x1000, 16, dev.read, dev.write, sizes=(4,)), "strict")
    bus.write(0x1002, 4, 0x01020304)
    assert dev.seen == []
    assert sorted(a for (d, a) in bus.unclaimed if d is Direction.WRITE) == [0x1002, 0x1003, 0x1004, 0x1005]


# --- DMA and the re-entrancy guard -----------------------------------------------------------------


class DmaDevice(Device):
    """A test device: a write to register 0 makes it DMA 4 bytes from the address in register 4 to the
    address in register 8; its timer does the same when armed through register 12."""

    type_name = "dma-test"

    @attrs.frozen
    class Config:
        base: int = prop(0x1000_0000, hex=True)

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.src = self.dst = 0
        self.errors: list[str] = []
        self.reads = 0

    def regions(self) -> list[Region]:
        return [Region(Space.MMIO, self.config.base, 16, self.read, self.write, sizes=(4,))]

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        return 0x11223344

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.copy()
        elif offset == 4:
            self.src = value
        elif offset == 8:
            self.dst = value
        elif offset == 12:
            self.ctx.clock.call_later(10, self.copy)

    def copy(self) -> None:
        try:
            self.ctx.dma.write(self.dst, self.ctx.dma.read(self.src, 4))
        except DmaError as exc:
            self.errors.append(str(exc))


@pytest.fixture
def dma_bus() -> FakeBus:
    bus = FakeBus(trace=False)
    yield bus
    bus.close()


def test_dma_between_ram_and_another_devices_registers(dma_bus: FakeBus) -> None:
    a = dma_bus.attach(DmaDevice, "a", base=0x1000_0000)
    b = dma_bus.attach(DmaDevice, "b", base=0x2000_0000)
    dma_bus.writel(0x1000_0004, 0x2000_0000)  # from b's registers
    dma_bus.writel(0x1000_0008, 0x100)  # to RAM
    dma_bus.writel(0x1000_0000, 1)
    assert a.errors == []
    assert b.reads == 1
    assert dma_bus.memory.read_int(0x100, 4) == 0x11223344


def test_dma_into_its_own_registers_is_refused(dma_bus: FakeBus) -> None:
    a = dma_bus.attach(DmaDevice, "a")
    dma_bus.memory.write_int(0x100, 4, 0)
    dma_bus.writel(0x1000_0004, 0x100)
    dma_bus.writel(0x1000_0008, 0x1000_0000)  # its own "go" register: would recurse
    dma_bus.writel(0x1000_0000, 1)
    assert len(a.errors) == 1
    assert "would re-enter its own registers" in a.errors[0]


def test_a_dma_chain_back_into_the_first_device_is_refused(dma_bus: FakeBus) -> None:
    a = dma_bus.attach(DmaDevice, "a", base=0x1000_0000)
    b = dma_bus.attach(DmaDevice, "b", base=0x2000_0000)
    dma_bus.memory.write_int(0x100, 4, 0)
    # a's DMA writes b's "go" register; b's DMA then writes a's "go" register.
    dma_bus.writel(0x1000_0004, 0x100)
    dma_bus.writel(0x1000_0008, 0x2000_0000)
    dma_bus.writel(0x2000_0004, 0x100)
    dma_bus.writel(0x2000_0008, 0x1000_0000)
    dma_bus.writel(0x1000_0000, 1)
    assert a.errors == []
    assert len(b.errors) == 1 and "re-enter 'a''s registers" in b.errors[0]


def test_a_timer_callbacks_dma_into_its_own_registers_is_refused(dma_bus: FakeBus) -> None:
    a = dma_bus.attach(DmaDevice, "a")
    dma_bus.writel(0x1000_0004, 0x100)
    dma_bus.writel(0x1000_0008, 0x1000_000C)  # its own timer register: would re-arm for ever
    dma_bus.writel(0x1000_000C, 1)
    dma_bus.step(100)
    assert len(a.errors) == 1


def test_dma_reads_unclaimed_mmio_as_all_ones_and_refuses_rom_writes() -> None:
    memory = GuestMemory()
    memory.add_slot("ram", 0, 0x1000)
    memory.add_slot("rom", 0x1000, 0x1000, readonly=True)
    try:
        dma = DmaSpace("d", memory, Bus(Space.MMIO))
        assert dma.read(0xFFE, 4)[:2] == b"\0\0"
        assert dma.read(0x5000, 2) == b"\xff\xff"
        with pytest.raises(GuestMemoryError, match="read-only"):
            dma.write(0xFFF, b"\1\2")
        assert memory.read(0xFFF, 1) == b"\0"  # refused before any byte moved
        with pytest.raises(GuestMemoryError, match="outside every memory slot"):
            DmaSpace("d", memory).read(0x5000, 1)
    finally:
        memory.close()


# --- on both accelerators ------------------------------------------------------------------------


class Liar(Device):
    """Port 0xF2 answers ``answer`` (a property naming one of ANSWERS); port 0xF3 raises SystemExit."""

    type_name = "liar"

    ANSWERS: dict[str, Any] = {"none": None, "str": "x", "float": 1.5, "negative": -1, "wide": 0x1FF, "good": 0x41}

    @attrs.frozen
    class Config:
        answer: str = prop("none")

    def regions(self) -> list[Region]:
        return [Region(Space.PIO, 0xF2, 2, self.read, None, sizes=(1,))]

    def read(self, offset: int, size: int) -> Any:
        if offset == 1:
            raise SystemExit(3)
        return self.ANSWERS[self.config.answer]


class Recording(Device):
    """MMIO register blocks that record every access (for the unaligned-access guest)."""

    type_name = "recording"

    @attrs.frozen
    class Config:
        base: int = prop(0x1000_0000, hex=True)
        size: int = prop(0x2000)
        dword_only: bool = prop(False)

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.dev = Recorder()

    def regions(self) -> list[Region]:
        sizes = (4,) if self.config.dword_only else (1, 2, 4, 8)
        return [Region(Space.MMIO, self.config.base, self.config.size, self.dev.read, self.dev.write, sizes=sizes)]


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Liar, Recording]


def _machine(tmp_path: Path, text: str) -> Machine:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    import tests.test_bus_hostile as plugin

    return Machine.build(Profile.load(path), DeviceRegistry.default([plugin]))


def _real_mode(tmp_path: Path, code: bytes, answer: str, policy: str = "stop") -> Machine:
    image = tmp_path / "g.bin"
    image.write_bytes(code)
    return _machine(tmp_path, f"name: liar\ncpu: {{mode: real}}\nmemory: {{ram: {{size: 4K, image: {image}}}}}\n"
                              f"device_errors: {policy}\ndevices:\n  liar: {{type: liar, answer: {answer}}}\n"
                              "limits: {timeout: 20}\n")


IN_F2 = bytes([0xE4, 0xF2, 0xA2, 0x00, 0x08, 0xF4])  # in al, 0xF2; mov [0x800], al; hlt
REP_INSB = bytes([0xBF, 0x00, 0x08, 0xB9, 0x04, 0x00, 0xBA, 0xF2, 0x00, 0xF3, 0x6C, 0xF4])  # rep insb from 0xF2
IN_F3 = bytes([0xE4, 0xF3, 0xF4])


@pytest.mark.parametrize("answer", ["none", "str", "float", "negative", "wide"])
@pytest.mark.parametrize("code", [IN_F2, REP_INSB], ids=["in", "rep-insb"])
def test_a_wrong_answer_stops_the_run_naming_the_device_on_both_accelerators(
        tmp_path: Path, accel: str, answer: str, code: bytes) -> None:
    with _real_mode(tmp_path, code, answer) as machine:
        stop = machine.run(accel)
    assert stop.kind == "device-error", stop.message
    assert "device 'liar' answered a pio read of 1 byte at 0xf2 wrongly" in stop.message
    assert repr(Liar.ANSWERS[answer]) in stop.message


@pytest.mark.parametrize("answer", ["none", "wide", "good"])
def test_under_continue_a_wrong_answer_reads_all_ones_on_both_accelerators(
        tmp_path: Path, accel: str, answer: str) -> None:
    with _real_mode(tmp_path, IN_F2, answer, policy="continue") as machine:
        stop = machine.run(accel)
        assert stop.kind == "halted", stop.message
        assert machine.memory.read(0x800, 1)[0] == (0x41 if answer == "good" else 0xFF)


def test_a_device_raising_system_exit_is_a_device_error(tmp_path: Path, accel: str) -> None:
    with _real_mode(tmp_path, IN_F3, "good") as machine:
        stop = machine.run(accel)
    assert stop.kind == "device-error"
    assert "device 'liar' raised SystemExit" in stop.message


def unaligned_profile(folder: Path) -> Path:
    """A profile for guest/mmio_unaligned.S with its two recording devices (this module's plugin)."""
    image = REPO / "guest" / "mmio_unaligned.bin"
    path = folder / "unaligned.yaml"
    path.write_text(f"name: unaligned\ncpu: {{mode: protected, entry: 0x1000, registers: {{rsp: 0x8000}}}}\n"
                    f"memory: {{ram: {{size: 64K, image: {image}, offset: 0x1000}}}}\n"
                    "devices:\n  console: {type: debugcon}\n"
                    "  rec: {type: recording}\n"
                    "  strict: {type: recording, base: 0x10002000, size: 16, dword_only: true}\n"
                    "limits: {timeout: 20}\n")
    return path


def _unaligned_machine(tmp_path: Path) -> Machine:
    import tests.test_bus_hostile as plugin

    return Machine.build(Profile.load(unaligned_profile(tmp_path)), DeviceRegistry.default([plugin]))


#: What the devices see of guest/mmio_unaligned.S: the same on both accelerators.
UNALIGNED_SEEN = [
    ("w", 1, 1, 0x44), ("w", 2, 1, 0x33), ("w", 3, 1, 0x22), ("w", 4, 1, 0x11),
    ("w", 7, 1, 0x66), ("w", 8, 1, 0x55),
    ("r", 0, 4, 0xA3A2A1A0), ("r", 4, 4, 0xA7A6A5A4),
    ("w", 8, 4, 0xA4A3A2A1),
    ("w", 0xFFE, 1, 0xDD), ("w", 0xFFF, 1, 0xCC), ("w", 0x1000, 1, 0xBB), ("w", 0x1001, 1, 0xAA),
    ("r", 0xFFE, 2, 0x9F9E), ("r", 0x1000, 2, 0xA1A0),
    ("w", 0x10, 2, 0xA09F),
]
STRICT_READS = [("r", 0, 4, 0xA3A2A1A0), ("r", 4, 4, 0xA7A6A5A4)]


def test_unaligned_mmio_reaches_devices_as_the_same_bytes_on_both_accelerators(tmp_path: Path, accel: str) -> None:
    with _unaligned_machine(tmp_path) as machine:
        stop = machine.run(accel)
        assert stop.kind == "halted", stop.message
        rec, strict = machine.devices["rec"].dev.seen, machine.devices["strict"].dev.seen
        assert rec == [*UNALIGNED_SEEN, ("w", 0x20, 4, 0xA4A3A2A1)]
        assert strict == STRICT_READS  # its four byte writes were rejected; the read took both dwords
        assert sorted(a for (d, a) in machine.mmio.unclaimed if d is Direction.WRITE) == [
            0x10002002, 0x10002003, 0x10002004, 0x10002005]
