"""Real-mode guests of a few instructions, given as bytes with their assembly beside them.

Shared by the software-CPU tests (tests/accel/test_accel_tcg.py), which check what unicorn
models itself, and the differential tests (tests/test_diff.py), which run the
:data:`DIFFERENTIAL` ones on KVM too and compare.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

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
