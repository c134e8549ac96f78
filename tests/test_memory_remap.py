"""Memory the guest sees changes under it: the i440fx's PAM decoding on both accelerators.

tests/data/pam_remap.S runs from RAM and, through configuration mechanism #1, turns
the 0xF0000 segment from the ROM alias into read/write DRAM, read-only DRAM and back
to the ROM, reading a byte and calling code at the same addresses after each change.
KVM must delete and re-add memory slots, unicorn unmap and map pages and drop code it
translated from the old bytes; both must show the guest what the chipset decodes
before its next instruction.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
ROM_BYTE, ROM_CALL_RESULT = 0xA5, 0x43
PROFILE = """\
name: pam-remap
cpu: {mode: real, entry: 0x1000}
memory:
  ram: {base: 0, size: 2M, image: pam_remap.bin, offset: 0x1000}
  bios: {base: 0xFFFE0000, size: 128K, kind: rom, image: rom.bin}
devices:
  chipset: {type: i440fx, ram: ram, bios: bios}
  console: {type: debugcon, port: 0xF1}
  exit: {type: debug-exit, port: 0x501, width: 1}
limits: {timeout: 20}
"""


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) missing, needed to build the guest (as root: scripts/test-host-setup)")
    obj, image = tmp_path / "pam_remap.o", tmp_path / "pam_remap.bin"
    subprocess.run(["as", "--32", "-o", str(obj), str(DATA / "pam_remap.S")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x1000", "--oformat", "binary", "-o", str(image), str(obj)],
                   check=True)
    rom = bytearray([0x99]) * 0x20000
    rom[0x10000] = ROM_BYTE  # F000:0000 through the alias of the ROM's top 128K
    rom[0x10100:0x10103] = bytes([0xB0, ROM_CALL_RESULT, 0xCB])  # F000:0100: mov al, 0x43; retf
    (tmp_path / "rom.bin").write_bytes(rom)
    profile = tmp_path / "pam-remap.yaml"
    profile.write_text(PROFILE)
    return profile


def test_guest_sees_each_pam_setting_at_once(machine: Path, accel: str) -> None:
    result = subprocess.run([sys.executable, "-m", "vmcore", "run", str(machine), "--accel", accel],
                            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == (0x21 << 1) | 1, result.stderr.decode(errors="replace")[-2000:]
    assert list(result.stdout) == [
        ROM_BYTE,         # PAM0 = 0: reads go to PCI, where the ROM's top shows
        0x00,             # 0x30: DRAM, zero-filled
        0x5A,             # the guest's write to DRAM reads back
        0x42,             # code the guest wrote to DRAM runs from there
        0x5A,             # 0x10: read-only DRAM, the guest's write of 0x77 dropped
        ROM_BYTE,         # 0: the ROM again
        ROM_CALL_RESULT,  # and the ROM's code at the address the DRAM code ran from
    ]


# cli; PAM0 := 0x30 through 0xCF8/0xCFD; hlt. The remap stops unicorn right after the OUT
# to drop stale translated code; the hlt that follows must still be seen as a hlt (with IF
# clear, the end of the run), not skipped as if the stop had landed after some other
# instruction. Past it, a debug-exit with status 0x43 would show the guest ran on.
REMAP_THEN_HLT = bytes([
    0xFA,                                # cli
    0x66, 0xB8, 0x58, 0x00, 0x00, 0x80,  # mov eax, 0x80000058
    0xBA, 0xF8, 0x0C,                    # mov dx, 0xCF8
    0x66, 0xEF,                          # out dx, eax
    0xBA, 0xFD, 0x0C,                    # mov dx, 0xCFD
    0xB0, 0x30,                          # mov al, 0x30
    0xEE,                                # out dx, al      the remap
    0xF4,                                # hlt
    0xBA, 0x01, 0x05,                    # mov dx, 0x501
    0xB0, 0x21,                          # mov al, 0x21
    0xEE,                                # out dx, al      ran past the hlt
])


def test_a_hlt_right_after_a_remap_halts(machine: Path, accel: str) -> None:
    (machine.parent / "pam_remap.bin").write_bytes(REMAP_THEN_HLT)
    result = subprocess.run([sys.executable, "-m", "vmcore", "-v", "run", str(machine), "--accel", accel],
                            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr[-2000:]
    assert "halted: the guest executed hlt" in stderr
