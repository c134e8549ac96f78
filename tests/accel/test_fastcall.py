"""SYSCALL and SYSENTER on the software CPU (vmcore/accel/fastcall.py): where they go, what they save.

unicorn alone steps over both; here a long-mode guest sets the MSRs, makes each call and
reports what the handler finds: the return address in RCX and the flags in R11 (SYSCALL),
IF masked by IA32_FMASK, CS and SS from IA32_STAR or IA32_SYSENTER_CS, the stack from
IA32_SYSENTER_ESP. This host's KVM stops on these instructions in protected mode, so the
software CPU is checked against the SDM's description, not against KVM.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.helpers import in_process

GUEST = r"""
        .code64
        .globl _start
_start:
        mov     $0xC0000080, %ecx       # EFER.SCE
        rdmsr
        or      $1, %eax
        wrmsr
        mov     $0xC0000081, %ecx       # STAR: kernel CS 0x08 (SS 0x10)
        xor     %eax, %eax
        mov     $0x0008, %edx
        wrmsr
        mov     $0xC0000082, %ecx       # LSTAR
        lea     syscall_target(%rip), %rax
        xor     %edx, %edx
        wrmsr
        mov     $0xC0000084, %ecx       # FMASK: IF and DF
        mov     $0x600, %eax
        wrmsr
        sti
        std
        mov     $0x1234, %r11
        syscall
after_syscall:
        hlt                             # not reached: the handler exits

syscall_target:
        lea     after_syscall(%rip), %rax
        cmp     %rax, %rcx              # RCX: the instruction after syscall
        jne     fail
        test    $0x600, %r11            # R11: RFLAGS before, IF and DF set
        jz      fail
        pushfq
        pop     %rax
        test    $0x600, %rax            # masked now
        jnz     fail
        mov     %cs, %ax
        cmp     $0x08, %ax
        jne     fail
        mov     %ss, %ax
        cmp     $0x10, %ax
        jne     fail
        mov     $'S', %al
        out     %al, $0xF1

        mov     $0x174, %ecx            # SYSENTER_CS, _ESP, _EIP
        mov     $0x08, %eax
        xor     %edx, %edx
        wrmsr
        mov     $0x175, %ecx
        mov     $0x7000, %eax
        wrmsr
        mov     $0x176, %ecx
        lea     sysenter_target(%rip), %rax
        wrmsr
        sti
        sysenter
        hlt

sysenter_target:
        cmp     $0x7000, %rsp
        jne     fail
        pushfq
        pop     %rax
        test    $0x200, %rax            # IF cleared
        jnz     fail
        mov     $'E', %al
        out     %al, $0xF1
        mov     $0, %al
        jmp     done
fail:
        mov     $'!', %al
        out     %al, $0xF1
        mov     $1, %al
done:
        mov     $0x501, %dx
        out     %al, %dx
        hlt
"""

PROFILE = """\
name: fastcall
cpu: {mode: long, entry: 0x1000, registers: {rsp: 0x8000}, tables: 0x100000}
memory:
  ram: {base: 0x0, size: 2M, image: fastcall.bin, offset: 0x1000}
devices:
  console: {type: debugcon, port: 0xF1, backend: memory}
  exit: {type: debug-exit, port: 0x501}
limits: {timeout: 20}
"""


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) missing, needed to build the guest (as root: scripts/test-host-setup)")
    (tmp_path / "fastcall.S").write_text(GUEST)
    subprocess.run(["as", "--64", "-o", str(tmp_path / "fastcall.o"), str(tmp_path / "fastcall.S")], check=True)
    subprocess.run(["ld", "-Ttext", "0x1000", "--oformat", "binary", "-o", str(tmp_path / "fastcall.bin"),
                    str(tmp_path / "fastcall.o")], check=True)
    (tmp_path / "fastcall.yaml").write_text(PROFILE)
    return tmp_path / "fastcall.yaml"


def test_syscall_and_sysenter_go_where_the_msrs_say_with_what_the_sdm_saves(profile: Path) -> None:
    result = in_process(profile, accel="tcg")
    assert result["console"] == "SE", result["stderr"][-2000:]
    assert (result["kind"], result["status"]) == ("exit", 1)
