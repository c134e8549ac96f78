"""The software CPU (``accel: tcg``, unicorn): what it models itself that KVM does in the kernel.

No KVM needed. Each guest is a few real-mode instructions, given as bytes with their
assembly beside them, run in a child process with a timeout (``in_process`` from
tests/test_boot.py). tests/test_diff.py runs the same guests on KVM and compares.

- ROM: unicorn write-protects the page; the write reaches the bus (logged, dropped) and
  the instruction is replayed with the page briefly writable, so its other effects
  (DI, CX) happen and the ROM bytes do not change.
- Addresses with no slot are MMIO (unicorn maps the gaps between slots as MMIO windows):
  reads give all ones.
- Real-mode IVT delivery of ``int n`` and of exceptions is done by vmcore, not unicorn.
- The run stops on time (timer thread), on an exit count, and on a device that raises.

This module is also a vmcore plugin (:func:`vmcore_device_types`): the child process
imports it for the ``broken-read`` device type.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Sequence

import attrs
import pytest

from tests.test_boot import DATA, in_process
from vmcore.bus import Region, Space
from vmcore.device import Device, in_range, prop
from vmcore.hookspecs import hookimpl

ROM_BYTE = 0x5A  # what the ROM holds where the guests store 0xA5


class TinyGuest(typing.NamedTuple):
    """A real-mode guest given as bytes: code at 0, then data at fixed offsets."""

    name: str
    code: bytes
    data: Mapping[int, bytes] = MappingProxyType({})
    rom: bool = False  # run from a 4 KiB ROM at 0 (RAM at 0x1000), else from 4 KiB RAM at 0

    def image(self) -> bytes:
        out = bytearray(self.code)
        for offset, chunk in sorted(self.data.items()):
            assert offset >= len(out), f"{self.name}: data at {offset:#x} overlaps what comes before"
            out += bytes(offset - len(out)) + chunk
        return bytes(out)


def profile_for(guest: TinyGuest, folder: Path, devices: str = "") -> Path:
    """Write ``guest``'s image and a profile for it into ``folder``; the profile's path."""
    (folder / f"{guest.name}.bin").write_bytes(guest.image())
    if guest.rom:
        memory = (f"  rom: {{base: 0x0, size: 4K, kind: rom, image: {guest.name}.bin}}\n"
                  "  data: {base: 0x1000, size: 4K, kind: ram}\n")
    else:
        memory = f"  ram: {{base: 0x0, size: 4K, kind: ram, image: {guest.name}.bin}}\n"
    profile = folder / f"{guest.name}.yaml"
    profile.write_text(
        f"name: {guest.name}\n"
        "cpu: {mode: real, entry: 0x0}\n"
        f"memory:\n{memory}"
        "devices:\n"
        "  console: {type: debugcon, port: 0xF1, backend: memory}\n"
        "  exit: {type: debug-exit, port: 0x501}\n"
        f"{devices}"
        "limits: {timeout: 20}\n"
    )
    return profile


# Real mode starts with CS = DS = ES = SS = 0, so offsets below are addresses.

ROM_STOSB = TinyGuest("rom_stosb", rom=True, code=bytes([
    0xBF, 0x00, 0x01,        # mov di, 0x100       ES:DI -> the ROM byte at 0x100
    0xB0, 0xA5,              # mov al, 0xA5
    0xFC,                    # cld
    0xAA,                    # stosb               1-byte store into ROM: dropped; DI += 1
    0x89, 0xF8,              # mov ax, di
    0xE6, 0xF1,              # out 0xF1, al        DI's low byte: 0x01
    0xA0, 0x00, 0x01,        # mov al, [0x100]     the ROM byte, read back
    0xE6, 0xF1,              # out 0xF1, al        still 0x5A
    0xF4,                    # hlt
]), data={0x100: bytes([ROM_BYTE] * 4)})

ROM_REP_STOSB = TinyGuest("rom_rep_stosb", rom=True, code=bytes([
    0xBF, 0x00, 0x01,        # mov di, 0x100
    0xB9, 0x03, 0x00,        # mov cx, 3
    0xB0, 0xA5,              # mov al, 0xA5
    0xFC,                    # cld
    0xF3, 0xAA,              # rep stosb           3 stores into ROM: 3 dropped writes
    0xA0, 0x00, 0x01,        # mov al, [0x100]     read back at once (same translation block)
    0xE6, 0xF1,              # out 0xF1, al        0x5A
    0x89, 0xC8,              # mov ax, cx
    0xE6, 0xF1,              # out 0xF1, al        CX: 0
    0x89, 0xF8,              # mov ax, di
    0xE6, 0xF1,              # out 0xF1, al        DI's low byte: 0x03
    0xA0, 0x02, 0x01,        # mov al, [0x102]     the last byte stored to
    0xE6, 0xF1,              # out 0xF1, al        0x5A
    0xF4,                    # hlt
]), data={0x100: bytes([ROM_BYTE] * 4)})

UNCLAIMED_READ = TinyGuest("unclaimed_read", code=bytes([
    0x66, 0xA1, 0x00, 0x20,  # mov eax, [0x2000]   past the 4 KiB of RAM: no slot, no device
    0xE6, 0xF1,              # out 0xF1, al        byte 0
    0x66, 0xC1, 0xE8, 0x08,  # shr eax, 8
    0xE6, 0xF1,              # out 0xF1, al        byte 1
    0x66, 0xC1, 0xE8, 0x08,  # shr eax, 8
    0xE6, 0xF1,              # out 0xF1, al        byte 2
    0x66, 0xC1, 0xE8, 0x08,  # shr eax, 8
    0xE6, 0xF1,              # out 0xF1, al        byte 3
    0xF4,                    # hlt
]))

# The image starts at 0, where the IVT normally is, so these guests point IDTR at a
# table at 0x200 (in real mode IDTR.base/limit locate the IVT; Intel SDM vol. 3,
# 20.1.4). An IVT entry is offset, segment.
_IDTR = {0x40: bytes([0xFF, 0x03, 0x00, 0x02, 0x00, 0x00])}  # limit 0x3FF, base 0x200

INT_21 = TinyGuest("int_21", code=bytes([
    0x0F, 0x01, 0x1E, 0x40, 0x00,  # lidt [0x40]
    0xBC, 0x00, 0x10,        # mov sp, 0x1000      the top of RAM (SS = 0)
    0xCD, 0x21,              # int 0x21            -> 0000:0100
    0xB0, 0x42,              # mov al, 'B'         after the iret
    0xE6, 0xF1,              # out 0xF1, al
    0xF4,                    # hlt
]), data={
    **_IDTR,
    0x100: bytes([
        0xB0, 0x41,          # mov al, 'A'         the handler
        0xE6, 0xF1,          # out 0xF1, al
        0xCF,                # iret
    ]),
    0x200 + 0x21 * 4: bytes([0x00, 0x01, 0x00, 0x00]),  # vector 0x21: 0000:0100
})

DIVIDE_ERROR = TinyGuest("divide_error", code=bytes([
    0x0F, 0x01, 0x1E, 0x40, 0x00,  # lidt [0x40]
    0xBC, 0x00, 0x10,        # mov sp, 0x1000
    0x31, 0xC0,              # xor ax, ax
    0xF6, 0xF0,              # div al              AX / 0: #DE, a fault: the saved IP is this div
    0xB0, 0x42,              # mov al, 'B'         where the handler returns to
    0xE6, 0xF1,              # out 0xF1, al
    0xF4,                    # hlt
]), data={
    **_IDTR,
    0x100: bytes([
        0xB0, 0x44,          # mov al, 'D'         the #DE handler
        0xE6, 0xF1,          # out 0xF1, al
        0x89, 0xE5,          # mov bp, sp
        0x83, 0x46, 0x00, 0x02,  # add word [bp+0], 2  the saved IP: past the 2-byte div
        0xCF,                # iret
    ]),
    0x200: bytes([0x00, 0x01, 0x00, 0x00]),  # vector 0 (#DE): 0000:0100
})

PIO_READ = TinyGuest("pio_read", code=bytes([
    0xE4, 0xF2,              # in al, 0xF2
    0xE6, 0xF1,              # out 0xF1, al
    0xF4,                    # hlt
]))

MMIO_READ = TinyGuest("mmio_read", code=bytes([
    0xA0, 0x00, 0x20,        # mov al, [0x2000]    the broken-read device's MMIO byte
    0xE6, 0xF1,              # out 0xF1, al
    0xF4,                    # hlt
]))

SPIN = TinyGuest("spin", code=bytes([0xEB, 0xFE]))  # jmp $: never exits

# Straight-line code: one translation block, which unicorn finishes after emu_stop.
OUT_BURST = TinyGuest("out_burst", code=bytes([
    0xB0, 0x31, 0xE6, 0xF1,  # mov al, '1'; out 0xF1, al
    0xB0, 0x32, 0xE6, 0xF1,  # mov al, '2'; out 0xF1, al
    0xB0, 0x33, 0xE6, 0xF1,  # mov al, '3'; out 0xF1, al
    0xB0, 0x34, 0xE6, 0xF1,  # mov al, '4'; out 0xF1, al
    0xF4,                    # hlt
]))

# Instructions whose last byte is hlt's opcode: at the end of a slice EIP follows a
# 0xF4 byte exactly as after a hlt. With IF clear, a slice end mistaken for a hlt
# would end the run with nothing printed.
F4_OPERANDS = TinyGuest("f4_operands", code=bytes([
    0xB9, 0x20, 0x00,        # mov cx, 32
    0xB0, 0xF4,              # mov al, 0xF4        (loop)
    0x66, 0xBB, 0xF4, 0xF4, 0xF4, 0xF4,  # mov ebx, 0xF4F4F4F4
    0x49,                    # dec cx
    0x75, 0xF5,              # jnz loop
    0xB0, 0x2A,              # mov al, '*'
    0xE6, 0xF1,              # out 0xF1, al
    0xF4,                    # hlt                 IF is clear: the run stops here
    0xB0, 0x21,              # mov al, '!'         never reached
    0xE6, 0xF1,              # out 0xF1, al
]))

EXIT_THEN_OUT = TinyGuest("exit_then_out", code=bytes([
    0xB0, 0x2A,              # mov al, 42
    0xBA, 0x01, 0x05,        # mov dx, 0x501
    0xEE,                    # out dx, al          debug-exit: status (42 << 1) | 1
    0xB0, 0x58,              # mov al, 'X'         must never reach the console
    0xE6, 0xF1,              # out 0xF1, al
    0xF4,                    # hlt
]))

#: Guests whose transactions and stop must be the same on KVM (tests/test_diff.py).
# CPUID leaf 1's local-APIC bits (APIC, x2APIC, TSC-deadline), one console byte each.
# No APIC is modelled: both accelerators must clear them, or firmware drives a page
# nobody answers (SeaBIOS's SMP set-up did, on both).
CPUID_APIC = TinyGuest("cpuid_apic", code=bytes([
    0x66, 0xB8, 0x01, 0x00, 0x00, 0x00,  # mov eax, 1
    0x0F, 0xA2,                          # cpuid
    0x66, 0x89, 0xD0,                    # mov eax, edx
    0x66, 0xC1, 0xE8, 0x09,              # shr eax, 9        EDX bit 9: APIC
    0x24, 0x01, 0xE6, 0xF1,              # and al, 1; out 0xF1, al
    0x66, 0x89, 0xC8,                    # mov eax, ecx
    0x66, 0xC1, 0xE8, 0x15,              # shr eax, 21       ECX bit 21: x2APIC
    0x24, 0x01, 0xE6, 0xF1,              # and al, 1; out 0xF1, al
    0x66, 0x89, 0xC8,                    # mov eax, ecx
    0x66, 0xC1, 0xE8, 0x18,              # shr eax, 24       ECX bit 24: TSC-deadline
    0x24, 0x01, 0xE6, 0xF1,              # and al, 1; out 0xF1, al
    0xF4,                                # hlt
]))

DIFFERENTIAL = (ROM_STOSB, ROM_REP_STOSB, UNCLAIMED_READ, INT_21, DIVIDE_ERROR, EXIT_THEN_OUT, CPUID_APIC)

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


def run_tcg(guest: TinyGuest, folder: Path, devices: str = "", **options: Any) -> dict[str, Any]:
    plugins = ("tests.test_accel_tcg",) if devices else ()
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


# --- instruction slices ------------------------------------------------------------------
# unicorn runs the guest in slices of _SLICE instructions (never emu_stop from another
# thread: a stop landing mid-block corrupts it). A slice's end and a hlt both leave EIP
# after the last instruction; the loop tells them apart by unicorn's stop-request flag.


@pytest.mark.parametrize("slices", ["default", "one instruction"])
def test_a_slice_ending_after_an_f4_byte_is_not_taken_for_hlt(tmp_path: Path, slices: str) -> None:
    plugins = ("tests.tcg_one_instruction_slices",) if slices == "one instruction" else ()
    result = in_process(profile_for(F4_OPERANDS, tmp_path), accel="tcg", plugins=plugins)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert result["console"] == "*"
    assert result["exits"] == 1


def test_unicorn_exposes_the_stop_request_flag_the_loop_reads() -> None:
    # Found by experiment on a scratch engine; a unicorn build that moves it would make
    # every slice end after an F4 byte look like a hlt (the fallback), so fail loudly here.
    from vmcore.accel.unicorn import _stop_request_offset

    assert _stop_request_offset() is not None


# --- CPUID ---------------------------------------------------------------------------------


def test_cpuid_shows_no_local_apic(tmp_path: Path) -> None:
    result = run_tcg(CPUID_APIC, tmp_path)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert console(result) == b"\0\0\0"


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


def test_divide_error_is_delivered_to_its_ivt_handler(tmp_path: Path) -> None:
    # With an IVT that covers vector 0, #DE runs the handler instead of a triple fault.
    result = run_tcg(DIVIDE_ERROR, tmp_path)
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert result["console"] == "DB"
