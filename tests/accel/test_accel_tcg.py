"""The software CPU (``accel: tcg``, unicorn): what it models itself that KVM does in the kernel.

No KVM needed. Each guest is a few real-mode instructions (tests/tiny_guests.py), run in
a child process with a timeout (``in_process`` from tests/helpers.py).
tests/test_diff.py runs the same guests on KVM and compares.

- ROM: unicorn write-protects the page; the write reaches the bus (logged, dropped) and
  the instruction is replayed with the page briefly writable, so its other effects
  (DI, CX) happen and the ROM bytes do not change.
- Addresses with no slot are MMIO (unicorn maps the gaps between slots as MMIO windows):
  reads give all ones.
- Real-mode IVT delivery of exceptions is done by vmcore, not unicorn (and of ``int n`` too
  on a stock unicorn; vmcore's engine build delivers those itself).
- The run stops on time (timer thread), on an exit count, and on a device that raises.

This module is also a vmcore plugin (:func:`vmcore_device_types`): the child process
imports it for the ``broken-read`` device type.
"""

from __future__ import annotations

import struct

from pathlib import Path
from typing import Any, Sequence

import attrs
import pytest

from tests.helpers import DATA, in_process
from tests.tiny_guests import (
    CPUID_APIC,
    DIVIDE_ERROR,
    EXIT_THEN_OUT,
    F4_OPERANDS,
    INT_21,
    MMIO_READ,
    OUT_BURST,
    PIO_READ,
    ROM_BYTE,
    ROM_REP_STOSB,
    ROM_STOSB,
    SPIN,
    UNCLAIMED_READ,
    TinyGuest,
    profile_for,
)
from vmcore.bus import Region, Space
from vmcore.device import Device, in_range, prop
from vmcore.hookspecs import hookimpl

# --- a device that raises in read ---------------------------------------------------------


@attrs.frozen
class BrokenReadConfig:
    port: int = prop(0xF2, "I/O port.", validator=in_range(0, 0xFFFF))
    base: int = prop(0x2000, "MMIO address of its one byte.")


class BrokenRead(Device):
    """A port and an MMIO byte whose read raises: a device model with a bug."""

    type_name = "broken-read"
    Config = BrokenReadConfig

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 1, self.read, None, name="port"),
                Region(Space.MMIO, self.config.base, 1, self.read, None, name="byte")]

    def read(self, offset: int, size: int) -> int:
        raise RuntimeError(f"model bug reading {size} byte(s) at offset {offset}")


@hookimpl
def vmcore_device_types() -> list[type]:
    return [BrokenRead]


def run_tcg(guest: TinyGuest, folder: Path, devices: str = "", plugins: tuple[str, ...] = (),
            **options: Any) -> dict[str, Any]:
    plugins = (*plugins, "tests.accel.test_accel_tcg") if devices else plugins
    return in_process(profile_for(guest, folder, devices), accel="tcg", plugins=plugins, **options)


def console(result: dict[str, Any]) -> bytes:
    return result["console"].encode("latin-1")


# --- ROM ------------------------------------------------------------------------------------


def test_rom_store_is_dropped_and_logged_and_di_still_advances(tmp_path: Path) -> None:
    result = run_tcg(ROM_STOSB, tmp_path)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert console(result) == bytes([0x01, ROM_BYTE])
    assert result["trace"][0] == ["mmio", "write", 0x100, 1, 0xA5, "rom:rom"]
    assert result["roms"]["rom"] == ROM_STOSB.image().ljust(4096, b"\0").hex()
    warnings = [line for line in result["stderr"].splitlines() if "ROM slot" in line]
    assert warnings == ["guest write to ROM slot 'rom' at 0x100 (size 1) dropped"]


def test_rom_rep_stosb_reaches_the_bus_once_per_byte_and_completes(tmp_path: Path) -> None:
    # The replay of a store used to run on in a block translated without unicorn's
    # instruction counter: the second replay did the last two stores (and the next
    # instruction) with the ROM writable, so the third never reached the bus.
    result = run_tcg(ROM_REP_STOSB, tmp_path)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert console(result) == bytes([ROM_BYTE, 0x00, 0x03, ROM_BYTE])
    writes = [t for t in result["trace"] if t[0] == "mmio"]
    assert writes == [["mmio", "write", 0x100 + i, 1, 0xA5, "rom:rom"] for i in range(3)]
    assert result["exits"] == 3 + 4
    assert result["roms"]["rom"] == ROM_REP_STOSB.image().ljust(4096, b"\0").hex()
    assert result["stderr"].count("ROM slot") == 1  # logged once per slot


# --- unclaimed MMIO -------------------------------------------------------------------------


def test_unclaimed_mmio_read_returns_all_ones(tmp_path: Path) -> None:
    result = run_tcg(UNCLAIMED_READ, tmp_path)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert console(result) == b"\xff\xff\xff\xff"
    assert result["trace"][0] == ["mmio", "read", 0x2000, 4, 0xFFFFFFFF, None]
    assert "unclaimed mmio read at 0x2000 (size 4)" in result["stderr"]


# --- limits ---------------------------------------------------------------------------------


def test_timeout_stops_a_spinning_guest(tmp_path: Path) -> None:
    result = run_tcg(SPIN, tmp_path, timeout=0.5)
    assert (result["kind"], result["status"]) == ("timeout", 6)
    assert result["message"] == "no stop after 0.5 s of wall-clock time"
    assert result["exits"] == 0


# Runs from the ROM at 0 and writes into it forever: every write is dropped and the
# instruction replayed, a path that once skipped the time-limit check and hung.
ROM_WRITE_LOOP = TinyGuest("rom_write_loop", rom=True, code=bytes([
    0xFF, 0x06, 0x00, 0x01,  # inc word [0x100] (ROM)
    0xEB, 0xFA,              # jmp back
]))


def test_timeout_stops_a_guest_that_keeps_writing_to_rom(tmp_path: Path) -> None:
    result = run_tcg(ROM_WRITE_LOOP, tmp_path, timeout=0.5)
    assert (result["kind"], result["status"]) == ("timeout", 6)
    assert result["exits"] > 0  # the dropped writes reached the bus before the limit


def test_max_exits_stops_after_that_many_port_writes() -> None:
    result = in_process(DATA.parent.parent / "machines" / "hello.yaml", "devices.console.backend=memory",
                        accel="tcg", max_exits=3)
    assert (result["kind"], result["status"]) == ("max-exits", 6)
    assert result["message"] == "reached the limit of 3 exits"
    assert result["exits"] == 3
    assert result["console"] == "Hel"


def test_max_exits_stops_at_the_limit_inside_a_translation_block(tmp_path: Path) -> None:
    # emu_stop waits for the end of the block; the ports written after the limit must
    # not reach the device (KVM stops at the exit itself).
    result = run_tcg(OUT_BURST, tmp_path, max_exits=2)
    assert (result["kind"], result["status"], result["exits"]) == ("max-exits", 6, 2)
    assert result["console"] == "12"
    assert len(result["trace"]) == 2


def test_debug_exit_ends_the_run_before_the_next_instruction_reaches_a_device(tmp_path: Path) -> None:
    result = run_tcg(EXIT_THEN_OUT, tmp_path)
    assert (result["kind"], result["status"], result["exits"]) == ("exit", 85, 1)
    assert result["console"] == ""
    assert result["trace"] == [["pio", "write", 0x501, 1, 42, "exit"]]


# --- stops and slices --------------------------------------------------------------------
# unicorn runs the guest until a kick stops it at a block's start or, where no kick can be
# installed, in slices of _SLICE instructions. A stop and a hlt can both leave EIP after an
# F4 byte; the loop tells them apart by the engine's halted flag.


@pytest.mark.parametrize("slices", ["default", "one instruction"])
def test_a_slice_ending_after_an_f4_byte_is_not_taken_for_hlt(tmp_path: Path, slices: str) -> None:
    plugins = ("tests.accel.tcg_one_instruction_slices",) if slices == "one instruction" else ()
    result = in_process(profile_for(F4_OPERANDS, tmp_path), accel="tcg", plugins=plugins)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert result["console"] == "*"
    assert result["exits"] == 1


def test_guests_run_the_same_in_counted_slices_where_no_kick_can_be_installed(tmp_path: Path) -> None:
    for guest in (F4_OPERANDS, OUT_BURST, ICEBP):
        quick = in_process(profile_for(guest, tmp_path), accel="tcg")
        sliced = in_process(profile_for(guest, tmp_path), accel="tcg", plugins=("tests.accel.tcg_one_instruction_slices",))
        for key in ("kind", "status", "console", "trace", "registers"):
            assert sliced[key] == quick[key], (guest.name, key)


def test_unicorn_shows_the_engine_fields_the_software_cpu_reads() -> None:
    # Found by experiment on a scratch engine (vmcore/accel/unicorn_layout.py). A unicorn
    # build that moves them makes the software CPU fall back: a stop after an F4 byte taken
    # for a hlt, exceptions delivered without their error codes, the guest run in counted
    # slices (many times slower), a CPU model's left-out features still run; so fail loudly here.
    from vmcore.accel.unicorn_layout import cpu_layout, hook_bounds_offset

    layout = cpu_layout()
    assert layout is not None and layout.error_code is not None and layout.old_exception is not None
    assert layout.hflags is not None and layout.features is not None and layout.svm is not None
    assert hook_bounds_offset() is not None
    # The layout holds for engines made for every mode (read through the wide registers).
    import unicorn

    from vmcore.accel.unicorn import _WideRegisters
    from vmcore.accel.unicorn_layout import registers_match

    for mode in (unicorn.UC_MODE_16, unicorn.UC_MODE_32, unicorn.UC_MODE_64):
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, mode)
        regs = _WideRegisters(uc)
        regs.reg_write(unicorn.x86_const.UC_X86_REG_RBX, 0x1234_5678_9ABC_DEF0)
        assert registers_match(uc, layout, regs.reg_read)
        regs.reg_write(unicorn.x86_const.UC_X86_REG_RBX, 0x0FED_CBA9_8765_4321)
        assert registers_match(uc, layout, regs.reg_read)


# --- CPUID ---------------------------------------------------------------------------------


def test_cpuid_shows_no_local_apic(tmp_path: Path) -> None:
    result = run_tcg(CPUID_APIC, tmp_path)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert console(result) == b"\0\0\0"


HLT_ONLY = TinyGuest("hlt_only", code=bytes([0xF4]))


def test_cpuid_is_asked_of_the_run_engine_which_starts_as_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the engine supports is asked of the engine the guest runs in (one run of a loop of
    # cpuid), before it is set up
    # (no second engine made for it), with the answers kept for later engines; either way
    # the guest starts with the registers its profile gives (here all clear) and page 0 free.
    from vmcore.accel import RunLimits
    from vmcore.accel import engine
    from vmcore.accel import unicorn as unicorn_accel
    from vmcore.machine import Machine
    from vmcore.profile import Profile

    made: list[int] = []
    real_uc = engine.Uc

    def counting_uc(arch: int, mode: int) -> Any:
        made.append(mode)
        return real_uc(arch, mode)

    monkeypatch.setattr(engine, "Uc", counting_uc)
    monkeypatch.setattr(unicorn_accel, "_ENGINE_CPUID", {})
    profile = profile_for(HLT_ONLY, tmp_path)
    for run in (1, 2):
        with Machine.build(Profile.load(profile)) as machine:
            stop = machine.run("tcg", RunLimits(timeout=20))
            assert stop.kind == "halted", stop.report()
            registers = machine.accelerator.snapshot()[0]  # type: ignore[union-attr]
        assert {name: registers[name] for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rip", "rflags")} == {
            "rax": 0, "rbx": 0, "rcx": 0, "rdx": 0, "rsi": 0, "rdi": 0, "rbp": 0, "rip": 1, "rflags": 2}
        assert len(made) == run  # one engine a run
    answers = unicorn_accel._ENGINE_CPUID[engine.UC_MODE_32]  # real mode runs in a 32-bit engine
    leaves = dict(answers)
    assert leaves[(0, 0)][0] >= 7 and (leaves[(0, 0)][1:]) == (0x756E6547, 0x6C65746E, 0x49656E69)  # GenuineIntel
    assert (0x80000000, 0) in leaves
    # A new engine asked with nothing kept answers the same.
    monkeypatch.setattr(unicorn_accel, "_ENGINE_CPUID", {})
    assert unicorn_accel.engine_cpuid(real_uc(engine.UC_ARCH_X86, engine.UC_MODE_32), engine.UC_MODE_32) == answers


# --- a device that raises -------------------------------------------------------------------


@pytest.mark.parametrize("guest", [PIO_READ, MMIO_READ], ids=["pio", "mmio"])
def test_device_raising_in_read_is_a_device_error_naming_it(tmp_path: Path, guest: TinyGuest) -> None:
    result = run_tcg(guest, tmp_path, devices="  broken: {type: broken-read}\n")
    assert (result["kind"], result["status"]) == ("device-error", 10)
    size_offset = "1 byte(s) at offset 0"
    space = "pio" if guest is PIO_READ else "mmio"
    assert result["message"].startswith(f"device 'broken' raised RuntimeError: model bug reading {size_offset}")
    # The report names the transaction the device was serving.
    assert f" during a {space} read of 1 byte at 0x" in result["message"]
    assert "in read" in result["traceback"]
    # The guest's next instruction (out 0xF1) is in the same block: it must not print.
    assert result["console"] == ""
    assert result["trace"] == []
    assert "Exception ignored" not in result["stderr"]  # ctypes' complaint when a hook returns None


# --- real-mode interrupts through the IVT ---------------------------------------------------


def test_int_n_goes_through_the_ivt_and_iret_returns(tmp_path: Path) -> None:
    result = run_tcg(INT_21, tmp_path)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert result["console"] == "AB"


ICEBP = TinyGuest("icebp", code=bytes([
    0xBC, 0x00, 0x08,              # mov sp, 0x800
    0x0F, 0x01, 0x1E, 0x30, 0x00,  # lidt [0x30]        the IVT at 0x100
    0xF1,                          # int1 (ICEBP)       #DB, a trap: the handler returns after it
    0xB0, 0x41,                    # mov al, 'A'
    0xE6, 0xF1,                    # out 0xF1, al
    0xF4,                          # hlt
]), data={
    0x20: bytes([0xB0, 0x44, 0xE6, 0xF1, 0xCF]),  # vector 1: mov al, 'D'; out 0xF1, al; iret
    0x30: struct.pack("<HI", 0x3FF, 0x100),
    0x104: struct.pack("<HH", 0x20, 0),
})


def test_icebp_raises_a_debug_trap_not_an_invalid_opcode(tmp_path: Path) -> None:
    # unicorn reports F1 as an invalid opcode (QEMU 5.0 hands it to its own debugger).
    result = run_tcg(ICEBP, tmp_path)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert result["console"] == "DA"


def test_divide_error_is_delivered_to_its_ivt_handler(tmp_path: Path) -> None:
    # With an IVT that covers vector 0, #DE runs the handler instead of a triple fault.
    result = run_tcg(DIVIDE_ERROR, tmp_path)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert result["console"] == "DB"
