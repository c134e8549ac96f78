"""The instructions the software CPU traps through QEMU's SVM intercepts (vmcore.accel.intercepts).

Each guest is a few real-mode instructions whose #GP handler (IVT at 0x100, vector 13 at
0x40) prints 'G', steps over the 2-byte instruction that faulted and returns; what a
processor would give is printed on the console.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.accel.test_accel_tcg import console, run_tcg
from tests.tiny_guests import TinyGuest, profile_for
from vmcore.accel.control_registers import cr0_fault, cr4_fault
from vmcore.accel.msrs import canonical

SETUP = bytes([0xBC, 0x00, 0x08,              # mov sp, 0x800
               0x0F, 0x01, 0x1E, 0x30, 0x00])  # lidt [0x30]: the IVT at 0x100
GP_HANDLER = bytes([0xB0, 0x47, 0xE6, 0xF1,   # mov al, 'G'; out 0xF1, al
                    0x89, 0xE5,               # mov bp, sp
                    0x83, 0x46, 0x00, 0x02,   # add word [bp], 2: past the 2-byte wrmsr/rdmsr
                    0xCF])                    # iret
IVT = {0x30: struct.pack("<HI", 0x3FF, 0x100), 0x40: GP_HANDLER, 0x134: struct.pack("<HH", 0x40, 0)}


def guest(name: str, code: bytes) -> TinyGuest:
    assert len(SETUP + code) <= 0x30
    return TinyGuest(name, code=SETUP + code, data=IVT)


def test_reserved_cr4_bits_raise_gp_and_leave_cr4_as_it_was(tmp_path: Path) -> None:
    handler = bytes([0xB0, 0x47, 0xE6, 0xF1,  # mov al, 'G'; out
                     0x0F, 0x20, 0xE0,        # mov eax, cr4
                     0xE6, 0xF1, 0xF4])       # out 0xF1, al (CR4's low byte); hlt
    result = run_tcg(TinyGuest("cr4_gp", code=SETUP + bytes([
        0x66, 0xB8, 0x10, 0x80, 0x00, 0x00,   # mov eax, 0x8010: PSE and bit 15 (reserved everywhere)
        0x0F, 0x22, 0xE0,                     # mov cr4, eax: #GP(0), nothing loaded
        0xF4]), data={**IVT, 0x40: handler}), tmp_path)
    assert (result["kind"], console(result)) == ("halted", b"G\x00"), result["message"]


def test_paging_without_protection_raises_gp(tmp_path: Path) -> None:
    handler = bytes([0xB0, 0x47, 0xE6, 0xF1,  # mov al, 'G'; out
                     0x0F, 0x20, 0xC0,        # mov eax, cr0
                     0x66, 0xC1, 0xE8, 0x18,  # shr eax, 24
                     0xE6, 0xF1, 0xF4])       # out 0xF1, al (CR0.PG is bit 31: clear); hlt
    result = run_tcg(TinyGuest("cr0_gp", code=SETUP + bytes([
        0x66, 0xB8, 0x10, 0x00, 0x00, 0x80,   # mov eax, 0x80000010: PG without PE
        0x0F, 0x22, 0xC0,                     # mov cr0, eax: #GP(0), nothing loaded
        0xF4]), data={**IVT, 0x40: handler}), tmp_path)
    assert result["kind"] == "halted", result["message"]
    assert console(result)[:1] == b"G" and not console(result)[1] & 0x80


# A #GP handler that prints 'G', then CR0's top byte (NW is bit 29, PG bit 31), and halts.
CR0_TOP_HANDLER = bytes([0xB0, 0x47, 0xE6, 0xF1,  # mov al, 'G'; out
                         0x0F, 0x20, 0xC0,        # mov eax, cr0
                         0x66, 0xC1, 0xE8, 0x18,  # shr eax, 24
                         0xE6, 0xF1, 0xF4])       # out 0xF1, al; hlt
# PE set and cleared three times (as firmware switching modes does), then NW without CD: #GP(0).
PE_TOGGLES_THEN_NW = bytes([0x0F, 0x20, 0xC0]) + bytes([  # mov eax, cr0
    0x66, 0x83, 0xC8, 0x01,                   # or eax, 1 (PE)
    0x0F, 0x22, 0xC0,                         # mov cr0, eax
    0x66, 0x83, 0xE0, 0xFE,                   # and eax, ~1
    0x0F, 0x22, 0xC0]) * 3 + bytes([          # mov cr0, eax
    0xB0, 0x50, 0xE6, 0xF1,                   # mov al, 'P'; out: the toggles ran
    0x66, 0xB8, 0x10, 0x00, 0x00, 0x20,       # mov eax, 0x20000010: NW (and ET), CD clear
    0x0F, 0x22, 0xC0,                         # mov cr0, eax: #GP(0), nothing loaded
    0xF4])


def cr0_guest(name: str) -> TinyGuest:
    """PE_TOGGLES_THEN_NW at 0x20B (past the IVT's data), CR0_TOP_HANDLER for #GP."""
    return TinyGuest(name, code=SETUP + bytes([0xE9, 0x00, 0x02]),  # jmp 0x20B
                     data={**IVT, 0x40: CR0_TOP_HANDLER, 0x20B: PE_TOGGLES_THEN_NW})


def test_not_write_through_without_cache_disable_raises_gp(tmp_path: Path) -> None:
    result = run_tcg(cr0_guest("cr0_nw"), tmp_path)
    # CR0 as at reset (CD and NW set: 0x60 on top), not the 0x20 the faulting write held.
    assert (result["kind"], console(result)) == ("halted", b"PG\x60"), result["message"]


def test_cr0_writes_that_keep_paging_as_it_was_are_checked_and_run_by_vmcore_s_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vmcore's engine raises the faults of mov to CR0 itself (engine/unicorn, 0013-cr0-checks): the
    intercept sees only writes that change PG, where the software CPU follows the guest's mode (a
    SeaBIOS boot's mode switches were some 190 intercepts); on a stock engine it sees every one."""
    from unicorn.unicorn_py3.unicorn import uclib

    from vmcore.accel import RunLimits
    from vmcore.accel.intercepts import WRITE_CR0, InterceptHandler
    from vmcore.accel.unicorn import UnicornAccelerator
    from vmcore.machine import Machine
    from vmcore.profile import Profile

    seen: list[int] = []
    handle = InterceptHandler.handle

    def spy(self: InterceptHandler, code: int, info: int) -> None:
        seen.append(code)
        handle(self, code, info)

    monkeypatch.setattr(InterceptHandler, "handle", spy)
    with Machine.build(Profile.load(profile_for(cr0_guest("cr0_engine"), tmp_path))) as machine:
        stop = machine.run(UnicornAccelerator(), RunLimits(timeout=20))
        assert (stop.kind, machine.devices["console"].output) == ("halted", b"PG\x60"), stop.report()
    intercepted = seen.count(WRITE_CR0)
    assert intercepted == (0 if hasattr(uclib, "vmcore_set_cr0_checks") else 7)


def test_smsw_into_a_32_bit_register_stores_all_of_cr0(tmp_path: Path) -> None:
    result = run_tcg(guest("smsw32", bytes([
        0x0F, 0x20, 0xC0,                     # mov eax, cr0
        0x66, 0x0D, 0x00, 0x00, 0x00, 0x40,   # or eax, 0x40000000 (CD)
        0x0F, 0x22, 0xC0,                     # mov cr0, eax
        0x66, 0x31, 0xC0,                     # xor eax, eax
        0x66, 0x0F, 0x01, 0xE0,               # smsw eax: unicorn wrote the low 16 bits only
        0x66, 0xC1, 0xE8, 0x18,               # shr eax, 24
        0xE6, 0xF1, 0xF4])), tmp_path)        # out 0xF1, al; hlt
    assert result["kind"] == "halted", result["message"]
    assert console(result)[0] & 0x40  # CR0.CD, bit 30


def test_a_real_mode_int_clears_if_and_ac_and_an_intercept_after_it_resumes_in_place(tmp_path: Path) -> None:
    """SDM, INT n in real-address mode: FLAGS, CS and IP pushed, then IF, TF and AC cleared. A
    CR0 write after the handler's iret is intercepted and must go on from the next instruction:
    vmcore's engine delivers the int itself (0010-native-real-mode-ints), and the engine's
    "last exception was an int" flag, left set, once sent such an intercept back to the int's
    return address (here: 'R' twice; SeaBIOS ran its int 10h return again and crashed)."""
    handler = bytes([0xB0, 0x49, 0xE6, 0xF1,  # mov al, 'I'; out
                     0x66, 0x9C, 0x66, 0x58,  # pushfd; pop eax
                     0x66, 0x89, 0xC3,        # mov ebx, eax
                     0x66, 0xC1, 0xE8, 0x09, 0x24, 0x01, 0x04, 0x30, 0xE6, 0xF1,  # IF now: '0'
                     0x66, 0x89, 0xD8,        # mov eax, ebx
                     0x66, 0xC1, 0xE8, 0x12, 0x24, 0x01, 0x04, 0x30, 0xE6, 0xF1,  # AC now: '0'
                     0x89, 0xE5,              # mov bp, sp
                     0x8B, 0x46, 0x04,        # mov ax, [bp + 4]: the FLAGS image
                     0xC1, 0xE8, 0x09, 0x24, 0x01, 0x04, 0x30, 0xE6, 0xF1,  # IF in the image: '1'
                     0xCF])                   # iret
    code = bytes([0xFB,                       # sti
                  0x66, 0x9C, 0x66, 0x58,     # pushfd; pop eax
                  0x66, 0x0D, 0x00, 0x00, 0x04, 0x00,  # or eax, AC
                  0x66, 0x50, 0x66, 0x9D,     # push eax; popfd
                  0xCD, 0x21,                 # int 0x21 -> 0000:0040
                  0xB0, 0x52, 0xE6, 0xF1,     # mov al, 'R'; out: back from the handler
                  0x0F, 0x20, 0xC0,           # mov eax, cr0
                  0x0F, 0x22, 0xC0,           # mov cr0, eax: intercepted
                  0xB0, 0x45, 0xE6, 0xF1,     # mov al, 'E'; out
                  0xF4])                      # hlt
    result = run_tcg(TinyGuest("int_flags", code=SETUP + code,
                               data={**IVT, 0x40: handler, 0x184: struct.pack("<HH", 0x40, 0)}), tmp_path)
    assert (result["kind"], console(result)) == ("halted", b"I001RE"), result["message"]


def test_real_mode_iret_leaves_rf_clear_after_the_next_instruction(tmp_path: Path) -> None:
    target = 0x26
    code = SETUP + bytes([
        0x66, 0x9C, 0x66, 0x58,               # pushfd; pop eax
        0x66, 0x0D, 0x00, 0x00, 0x01, 0x00,   # or eax, RF
        0x66, 0x50, 0x66, 0x0E,               # push eax; push cs (32-bit)
        0x66, 0x68, target, 0, 0, 0,          # push dword target
        0x66, 0xCF])                          # iretd: RF set in the image
    code += bytes(target - len(code)) + bytes([
        0x66, 0x9C, 0x66, 0x58,               # pushfd; pop eax
        0x66, 0xC1, 0xE8, 0x10,               # shr eax, 16
        0x24, 0x01, 0x04, 0x30,               # and al, 1; add al, '0'
        0xE6, 0xF1, 0xF4])                    # out 0xF1, al; hlt
    result = run_tcg(TinyGuest("iret_rf", code=code, data={0x40: bytes([0xF4]), 0x134: b"\0\0\0\0"}), tmp_path)
    assert (result["kind"], console(result)) == ("halted", b"0"), result["message"]


def test_msrs_that_do_not_exist_or_take_no_such_value_raise_gp(tmp_path: Path) -> None:
    code = SETUP + bytes([0xE9, 0x00, 0x02])  # jmp 0x30b (past the IVT's data, to 0x20b + 3)
    main = bytes([
        0x66, 0xB9, 0xEF, 0xBE, 0xAD, 0xDE,   # mov ecx, 0xDEADBEEF: no such MSR
        0x0F, 0x32,                           # rdmsr: #GP
        0x66, 0xB9, 0x00, 0x01, 0x00, 0xC0,   # mov ecx, IA32_FS_BASE
        0x66, 0xBA, 0x00, 0x00, 0x00, 0x80,   # mov edx, 0x80000000: not canonical
        0x0F, 0x30,                           # wrmsr: #GP
        0x66, 0xBA, 0x34, 0x12, 0x00, 0x00,   # mov edx, 0x1234: canonical
        0x0F, 0x30,                           # wrmsr
        0x66, 0x31, 0xD2, 0x0F, 0x32,         # xor edx, edx; rdmsr
        0x88, 0xD0, 0xE6, 0xF1,               # mov al, dl; out: 0x34
        0x66, 0xB9, 0x1B, 0x00, 0x00, 0x00,   # mov ecx, IA32_APIC_BASE
        0x0F, 0x32,                           # rdmsr
        0x88, 0xE0, 0xE6, 0xF1,               # mov al, ah; out: BSP, no EN (no APIC modelled)
        0xF4])
    result = run_tcg(TinyGuest("msr_gp", code=code, data={**IVT, 0x20B: main}), tmp_path)
    assert (result["kind"], console(result)) == ("halted", b"GG\x34\x01"), result["message"]


@pytest.mark.parametrize("new, fault", [
    (0x80000011, None), (0x80000010, "paging without protection"), (0x20000011, "not-write-through"),
    (1 << 32 | 0x11, "bits 63:32"),
])
def test_cr0_rules(new: int, fault: str | None) -> None:
    why = cr0_fault(new, cr4=0x20, efer=0, code64=False)
    assert (why is None) if fault is None else (why is not None and fault in why)


def test_cr0_rules_of_long_mode() -> None:
    assert "without PAE" in (cr0_fault(0x80000011, cr4=0, efer=1 << 8, code64=False) or "")
    assert "64-bit mode" in (cr0_fault(0x11, cr4=0x20, efer=(1 << 8) | (1 << 10), code64=True) or "")


def test_cr4_rules() -> None:
    allowed = 0x3FFFFF
    lma = (1 << 8) | (1 << 10)
    assert cr4_fault(0x20, 0x8020, allowed=0x20, efer=0, cr3=0) is not None
    assert cr4_fault(0x20, 0x20 | 1 << 12, allowed=allowed, efer=lma, cr3=0) == "LA57 changed in IA-32e mode"
    assert cr4_fault(0x20, 0x0, allowed=allowed, efer=lma, cr3=0) == "PAE cleared in IA-32e mode"
    assert cr4_fault(0x20, 0x20 | 1 << 17, allowed=allowed, efer=lma, cr3=0x5) is not None
    assert cr4_fault(0x20, 0x20 | 1 << 17, allowed=allowed, efer=lma, cr3=0x1000) is None


def test_canonical_addresses() -> None:
    assert canonical(0x0000_7FFF_FFFF_FFFF) and canonical(0xFFFF_8000_0000_0000)
    assert not canonical(0x0000_8000_0000_0000) and not canonical(0xAAAA_AAAA_AAAA_AAAA)
    assert canonical(0x00FF_FFFF_FFFF_FFFF, bits=57) and not canonical(0x0100_0000_0000_0000, bits=57)


# --- the mov-to/from-CR decoder (no disassembler on the intercepts' common path) ------------------

X = pytest.importorskip("unicorn").x86_const


@pytest.mark.parametrize("code, bits, expected", [
    (b"\x0f\x22\xc0", 32, (True, 0, "EAX", 3)),          # mov cr0, eax
    (b"\x0f\x20\xc0", 16, (False, 0, "EAX", 3)),         # mov eax, cr0 (in 16-bit code too)
    (b"\x66\x0f\x22\xdb", 16, (True, 3, "EBX", 4)),      # 66: ignored, the operand is 32 bits
    (b"\x0f\x22\x27", 32, (True, 4, "EDI", 3)),          # mod bits ignored: a register all the same
    (b"\x0f\x20\xe4", 64, (False, 4, "RSP", 3)),         # 64-bit code: 64-bit registers
    (b"\x44\x0f\x22\xc0", 64, (True, 8, "RAX", 4)),      # REX.R: CR8
    (b"\x41\x0f\x20\xd9", 64, (False, 3, "R9", 4)),      # REX.B: R9
    (b"\x2e\x48\x0f\x22\xd8", 64, (True, 3, "RAX", 5)),  # a segment prefix, then REX.W
])
def test_mov_cr_decodes_as_the_sdm_says(code: bytes, bits: int, expected: tuple) -> None:
    from vmcore.accel.intercepts import decode_mov_cr
    to_cr, cr, register, size = expected
    assert decode_mov_cr(code + b"\x90" * 12, bits) == (to_cr, cr, getattr(X, f"UC_X86_REG_{register}"), size)


@pytest.mark.parametrize("code, bits", [
    (b"\x0f\x01\xe0", 16),        # smsw ax: for the disassembler
    (b"\x0f\x06", 32),            # clts
    (b"\xf0\x0f\x22\xc0", 32),    # lock mov cr0: AMD's CR8, for the disassembler
    (b"\x48\x66\x0f\x22\xc0", 64),  # a REX not just before the opcode is ignored by the CPU: not ours to guess
    (b"\x44\x0f\x22", 64),        # cut short
])
def test_anything_else_is_left_to_the_disassembler(code: bytes, bits: int) -> None:
    from vmcore.accel.intercepts import decode_mov_cr
    assert decode_mov_cr(code, bits) is None


def test_the_decoder_agrees_with_capstone_on_every_modrm_byte() -> None:
    capstone = pytest.importorskip("capstone")
    from vmcore.accel.intercepts import decode_mov_cr
    for bits, mode in ((32, capstone.CS_MODE_32), (64, capstone.CS_MODE_64)):
        engine = capstone.Cs(capstone.CS_ARCH_X86, mode)
        engine.detail = True
        for rex in ((b"",) if bits == 32 else (b"", b"\x41", b"\x44", b"\x45")):
            for opcode in (0x20, 0x22):
                for modrm in range(0xC0, 0x100):
                    code = rex + bytes([0x0F, opcode, modrm])
                    mine = decode_mov_cr(code, bits)
                    theirs = next(engine.disasm(code, 0, 1), None)
                    if theirs is None:  # capstone refuses CRs that do not exist (CR1, CR5-7, CR9+)
                        continue
                    assert mine is not None and theirs.mnemonic == "mov" and theirs.size == mine.size
                    gpr = theirs.operands[1 if mine.to_cr else 0]
                    crn = theirs.operands[0 if mine.to_cr else 1]
                    assert theirs.reg_name(crn.reg) == f"cr{mine.cr}"
                    assert getattr(X, f"UC_X86_REG_{theirs.reg_name(gpr.reg).upper()}") == mine.register
