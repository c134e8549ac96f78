"""vmcore/accel/idt.py: interrupts and exceptions delivered as the SDM says, on a scripted CPU.

A CPU of registers in a dict and a guest memory with the tables each case needs (GDT, IDT,
TSS, page tables); each case checks the frame the handler finds and the registers it runs
with. The software CPU delivers through this code (kvm-unit-tests' eventinj exercises it
end to end: tests/test_kvm_unit_tests.py).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from unicorn import x86_const as X

from vmcore.accel.core import CpuStop
from vmcore.accel.idt import BP, DF, GP, NP, PF, UD, IdtDelivery, double_faults
from vmcore.memory import GuestMemory
from vmcore.stop import StopReason

GDT, IDT, TSS, STACK, HANDLER = 0x1000, 0x2000, 0x3000, 0x8000, 0x5000
PML4 = 0x10000  # long mode: identity-mapped 2M pages over the first 1G, then PDPT and PD
CODE0, DATA0, CODE3, DATA3, TSS_SEL, CODE64 = 0x08, 0x10, 0x1B, 0x23, 0x28, 0x38
IF, TF, RF = 1 << 9, 1 << 8, 1 << 16
EFER_LMA = 1 << 10


class Regs:
    """reg_read/reg_write/msr_read over a dict, as the software CPU's _WideRegisters."""

    def __init__(self, values: dict[int, Any], efer: int = 0) -> None:
        self.values = values
        self.efer = efer

    def reg_read(self, register: int) -> Any:
        if register == X.UC_X86_REG_SP:
            return self.values[X.UC_X86_REG_RSP] & 0xFFFF
        if register == X.UC_X86_REG_ESP:
            return self.values[X.UC_X86_REG_RSP] & 0xFFFFFFFF
        if register == X.UC_X86_REG_EIP:
            return self.values[X.UC_X86_REG_RIP] & 0xFFFFFFFF
        if register == X.UC_X86_REG_FLAGS:
            return self.values[X.UC_X86_REG_EFLAGS] & 0xFFFF
        return self.values[register]

    def reg_write(self, register: int, value: Any) -> None:
        aliases = {X.UC_X86_REG_SP: X.UC_X86_REG_RSP, X.UC_X86_REG_ESP: X.UC_X86_REG_RSP,
                   X.UC_X86_REG_EIP: X.UC_X86_REG_RIP, X.UC_X86_REG_FLAGS: X.UC_X86_REG_EFLAGS}
        self.values[aliases.get(register, register)] = value

    def msr_read(self, msr: int) -> int:
        assert msr == 0xC0000080
        return self.efer


def descriptor(base: int, limit: int, access: int, flags: int) -> bytes:
    low = (limit & 0xFFFF) | (base & 0xFFFF) << 16
    high = (base >> 16) & 0xFF | access << 8 | ((limit >> 16) & 0xF) << 16 | flags << 20 | (base >> 24) << 24
    return struct.pack("<II", low, high)


def gate(offset: int, selector: int, attributes: int, long_mode: bool, ist: int = 0) -> bytes:
    entry = struct.pack("<HHBBH", offset & 0xFFFF, selector, ist, attributes, (offset >> 16) & 0xFFFF)
    return entry + struct.pack("<II", offset >> 32, 0) if long_mode else entry


def machine(long_mode: bool, cpl: int = 0, flags: int = IF | 0x2) -> tuple[IdtDelivery, Regs, GuestMemory]:
    memory = GuestMemory()
    memory.add_slot("ram", 0, 0x400000)
    gdt = [bytes(8),
           descriptor(0, 0xFFFFF, 0x9A, 0xC), descriptor(0, 0xFFFFF, 0x92, 0xC),   # ring 0 code, data
           descriptor(0, 0xFFFFF, 0xFA, 0xC), descriptor(0, 0xFFFFF, 0xF2, 0xC),   # ring 3 code, data
           descriptor(TSS, 0x67, 0x89, 0x0), bytes(8),                             # TSS (16 bytes in long mode)
           descriptor(0, 0xFFFFF, 0x9A, 0xA)]                                      # 64-bit ring 0 code
    memory.write(GDT, b"".join(gdt))
    code = CODE64 if long_mode else CODE0
    for vector in range(48):
        memory.write(IDT + vector * (16 if long_mode else 8), gate(HANDLER + vector, code, 0x8E, long_mode))
    regs = Regs({
        X.UC_X86_REG_CR0: 0x80000011 if long_mode else 0x11, X.UC_X86_REG_CR3: PML4, X.UC_X86_REG_CR4: 0x20,
        X.UC_X86_REG_GDTR: (0, GDT, len(gdt) * 8 - 1, 0), X.UC_X86_REG_IDTR: (0, IDT, 48 * (16 if long_mode else 8) - 1, 0),
        X.UC_X86_REG_TR: (TSS_SEL, TSS, 0x67, 0), X.UC_X86_REG_CR2: 0,
        X.UC_X86_REG_CS: CODE3 if cpl == 3 else code, X.UC_X86_REG_SS: DATA3 if cpl == 3 else DATA0,
        X.UC_X86_REG_RSP: STACK, X.UC_X86_REG_RIP: 0x4242, X.UC_X86_REG_EFLAGS: flags,
    }, efer=EFER_LMA | 0x500 if long_mode else 0)
    if long_mode:
        memory.write(PML4, struct.pack("<Q", (PML4 + 0x1000) | 3))
        memory.write(PML4 + 0x1000, struct.pack("<Q", (PML4 + 0x2000) | 3))
        memory.write(PML4 + 0x2000, b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(2)))
    stops: list[tuple[str, str]] = []

    def stop_reason(kind: str, message: str) -> StopReason:
        stops.append((kind, message))
        return StopReason.of(kind, message)

    return IdtDelivery(regs, memory, stop_reason), regs, memory


def frame(memory: GuestMemory, address: int, count: int, width: int) -> list[int]:
    return list(struct.unpack(f"<{count}{'Q' if width == 8 else 'I'}", memory.read(address, count * width)))


def test_real_mode_pushes_flags_cs_ip_and_jumps_through_the_ivt() -> None:
    idt, regs, memory = machine(long_mode=False)
    regs.values.update({X.UC_X86_REG_CR0: 0, X.UC_X86_REG_IDTR: (0, 0, 0x3FF, 0), X.UC_X86_REG_CS: 0x100,
                        X.UC_X86_REG_SS: 0, X.UC_X86_REG_RSP: 0x800, X.UC_X86_REG_RIP: 0x1234,
                        X.UC_X86_REG_EFLAGS: IF | TF | 0x2})
    memory.write(8 * 4, struct.pack("<HH", 0x5678, 0x9000))
    idt.deliver(8, external=True)
    assert struct.unpack("<HHH", memory.read(0x800 - 6, 6)) == (0x1234, 0x100, IF | TF | 0x2)
    assert (regs.values[X.UC_X86_REG_CS], regs.values[X.UC_X86_REG_RIP]) == (0x9000, 0x5678)
    assert regs.values[X.UC_X86_REG_EFLAGS] & (IF | TF) == 0


def test_protected_mode_fault_pushes_its_error_code_and_rf_and_clears_if() -> None:
    idt, regs, memory = machine(long_mode=False)
    idt.deliver(GP, error=0x1234)
    sp = regs.values[X.UC_X86_REG_RSP]
    assert sp == STACK - 16
    assert frame(memory, sp, 4, 4) == [0x1234, 0x4242, CODE0, IF | 0x2 | RF]
    assert regs.values[X.UC_X86_REG_RIP] == HANDLER + GP and regs.values[X.UC_X86_REG_EFLAGS] & IF == 0


def test_software_interrupt_and_external_ones_push_no_error_code_and_no_rf() -> None:
    idt, regs, memory = machine(long_mode=False)
    idt.deliver(13, software=True)  # int 13: the #GP vector, raised by the program
    assert frame(memory, STACK - 12, 3, 4) == [0x4242, CODE0, IF | 0x2]
    idt, regs, memory = machine(long_mode=False)
    idt.deliver(32, external=True)
    assert frame(memory, STACK - 12, 3, 4) == [0x4242, CODE0, IF | 0x2]


def test_protected_mode_privilege_change_takes_ss0_esp0_from_the_tss() -> None:
    idt, regs, memory = machine(long_mode=False, cpl=3)
    memory.write(TSS + 4, struct.pack("<II", 0x9000, DATA0))  # ESP0, SS0
    idt.deliver(UD)
    sp = regs.values[X.UC_X86_REG_RSP]
    assert sp == 0x9000 - 20
    assert frame(memory, sp, 5, 4) == [0x4242, CODE3, IF | 0x2 | RF, STACK, DATA3]
    assert regs.values[X.UC_X86_REG_SS] == DATA0 and regs.values[X.UC_X86_REG_CS] == CODE0


def test_long_mode_frame_is_aligned_and_always_holds_ss_rsp() -> None:
    idt, regs, memory = machine(long_mode=True)
    regs.values[X.UC_X86_REG_RSP] = STACK - 8  # not 16-byte aligned: the CPU aligns first
    idt.deliver(PF, error=0x2)
    sp = regs.values[X.UC_X86_REG_RSP]
    assert sp == (STACK - 8 & ~0xF) - 48
    assert frame(memory, sp, 6, 8) == [0x2, 0x4242, CODE64, IF | 0x2 | RF, STACK - 8, DATA0]
    assert regs.values[X.UC_X86_REG_RIP] == HANDLER + PF


def test_long_mode_ist_and_ring3_to_ring0_stacks() -> None:
    idt, regs, memory = machine(long_mode=True, cpl=3)
    memory.write(TSS + 4, struct.pack("<Q", 0xA000))        # RSP0
    memory.write(TSS + 36 + 8 * 1, struct.pack("<Q", 0xB000))  # IST2
    memory.write(IDT + BP * 16, gate(HANDLER + BP, CODE64, 0xEE, True))  # DPL 3: int3 allowed from ring 3
    idt.deliver(BP, software=True)
    assert regs.values[X.UC_X86_REG_RSP] == 0xA000 - 40
    assert regs.values[X.UC_X86_REG_SS] == 0  # a privilege change loads a null SS
    assert frame(memory, 0xA000 - 40, 5, 8) == [0x4242, CODE3, IF | 0x2, STACK, DATA3]
    idt, regs, memory = machine(long_mode=True)
    memory.write(TSS + 36 + 8 * 1, struct.pack("<Q", 0xB000))
    memory.write(IDT + 40 * 16, gate(HANDLER, CODE64, 0x8E, True, ist=2))
    idt.deliver(40, external=True)
    assert regs.values[X.UC_X86_REG_RSP] == 0xB000 - 40  # the IST stack, without a privilege change too


def test_int_n_through_a_gate_below_cpl_is_gp_with_the_idt_error_code() -> None:
    idt, regs, memory = machine(long_mode=True, cpl=3)
    memory.write(TSS + 4, struct.pack("<Q", 0xA000))
    idt.deliver(0x21, software=True)  # the gate's DPL is 0
    assert regs.values[X.UC_X86_REG_RIP] == HANDLER + GP
    assert frame(memory, regs.values[X.UC_X86_REG_RSP], 1, 8) == [0x21 * 8 + 2]


def test_a_gate_not_present_is_np_with_ext_for_an_external_interrupt() -> None:
    idt, regs, memory = machine(long_mode=True)
    memory.write(IDT + 33 * 16, gate(HANDLER, CODE64, 0x0E, True))  # P clear
    idt.deliver(33, external=True)
    assert regs.values[X.UC_X86_REG_RIP] == HANDLER + NP
    assert frame(memory, regs.values[X.UC_X86_REG_RSP], 1, 8) == [33 * 8 + 2 + 1]


def test_a_stack_not_mapped_while_delivering_gp_is_a_double_fault_and_sets_cr2() -> None:
    idt, regs, memory = machine(long_mode=True)
    regs.values[X.UC_X86_REG_RSP] = 0x40001000  # beyond the 2M pages mapped
    memory.write(TSS + 36, struct.pack("<Q", 0xC000))  # IST1 for #DF
    memory.write(IDT + DF * 16, gate(HANDLER + DF, CODE64, 0x8E, True, ist=1))
    idt.deliver(GP, error=0)
    assert regs.values[X.UC_X86_REG_RIP] == HANDLER + DF
    assert regs.values[X.UC_X86_REG_CR2] == 0x40001000 - 48
    assert frame(memory, 0xC000 - 48, 1, 8) == [0]  # #DF's error code is 0


def test_a_fault_while_delivering_df_stops_the_machine_with_a_triple_fault() -> None:
    idt, regs, memory = machine(long_mode=True)
    regs.values[X.UC_X86_REG_RSP] = 0x40001000
    with pytest.raises(CpuStop) as stop:
        idt.deliver(GP, error=0)
    assert stop.value.reason.kind == "shutdown" and "triple fault" in stop.value.reason.message


def test_a_benign_first_exception_is_replaced_not_doubled() -> None:
    idt, regs, memory = machine(long_mode=True)
    memory.write(IDT + UD * 16, gate(HANDLER, CODE64, 0x0E, True))  # #UD's gate not present
    idt.deliver(UD)
    assert regs.values[X.UC_X86_REG_RIP] == HANDLER + NP


def test_double_fault_classes() -> None:
    assert double_faults(GP, NP) and double_faults(PF, PF) and double_faults(PF, GP)
    assert not double_faults(GP, PF) and not double_faults(UD, GP) and not double_faults(BP, GP)


# --- vmcore.cpu.translate: the paging modes the delivery reads tables through -------------------


def test_translate_walks_32_bit_pae_and_long_mode_tables() -> None:
    from vmcore.cpu import translate

    memory = GuestMemory()
    memory.add_slot("ram", 0, 0x400000)
    pg, pe = 0x80000000, 0x1
    # 32-bit paging: a 4K page (PDE 1 -> table at 0x20000) and a 4M page (PDE 2, PSE).
    memory.write(0x10000 + 1 * 4, struct.pack("<I", 0x20000 | 1))
    memory.write(0x20000 + 3 * 4, struct.pack("<I", 0x123000 | 1))
    memory.write(0x10000 + 2 * 4, struct.pack("<I", 0x00C00000 | 0x81))
    assert translate(memory, pg | pe, 0x10000, 0x10, 0, (1 << 22) | (3 << 12) | 0x45) == 0x123045
    assert translate(memory, pg | pe, 0x10000, 0x10, 0, (2 << 22) | 0x1234) == 0xC01234
    assert translate(memory, pg | pe, 0x10000, 0x00, 0, (2 << 22) | 0x1234) is None  # no PSE: 0xC00000 is no table
    assert translate(memory, pg | pe, 0x10000, 0x10, 0, 5 << 22) is None  # not present
    # PAE: PDPT entry 1 -> directory at 0x30000 with a 2M page and a 4K table.
    memory.write(0x11000 + 8, struct.pack("<Q", 0x30000 | 1))
    memory.write(0x30000, struct.pack("<Q", 0x200000 | 0x81))
    memory.write(0x30000 + 8, struct.pack("<Q", 0x31000 | 1))
    memory.write(0x31000 + 2 * 8, struct.pack("<Q", 0x345000 | 1))
    assert translate(memory, pg | pe, 0x11000, 0x20, 0, (1 << 30) | 0x1234) == 0x201234
    assert translate(memory, pg | pe, 0x11000, 0x20, 0, (1 << 30) | (1 << 21) | (2 << 12) | 0x7) == 0x345007
    # Long mode: the tables of the delivery tests above.
    _idt, _regs, paged = machine(long_mode=True)
    assert translate(paged, pg | pe, PML4, 0x20, EFER_LMA, 0x212345) == 0x212345
    assert translate(paged, pg | pe, PML4, 0x20, EFER_LMA, 0x40000000) is None


# --- vmcore.accel.control_registers: the bits a mov to CR4 may set --------------------------------------------


def test_allowed_cr4_follows_the_cpuid() -> None:
    from vmcore.accel.control_registers import allowed_cr4

    pae_pse = (1 << 6) | (1 << 3)  # leaf 1 EDX: PAE, PSE
    cpuid = {(1, 0): (0, 0, 1 << 26, pae_pse), (7, 0): (0, 1 << 7, 0, 0)}  # XSAVE; SMEP
    allowed = allowed_cr4(cpuid)
    assert allowed == (1 << 5) | (1 << 4) | (1 << 8) | (1 << 18) | (1 << 20)  # PAE PSE PCE OSXSAVE SMEP
    assert not allowed & (1 << 15) and not allowed >> 25  # reserved whatever the CPUID


def test_reserved_cr4_bits_stop_the_software_cpu_where_it_cannot_trap_the_mov(tmp_path) -> None:
    # Where the engine's intercept controls are not found, the mov loads the bits (QEMU 5.0):
    # the machine stops, naming them, instead of running on in a mode that does not exist.
    from tests.accel.test_accel_tcg import run_tcg
    from tests.tiny_guests import TinyGuest

    guest = TinyGuest("cr4_reserved", code=bytes([
        0x66, 0xB8, 0x00, 0x80, 0x00, 0x00,  # mov eax, 0x8000      bit 15: reserved on every CPU
        0x0F, 0x22, 0xE0,                    # mov cr4, eax          a processor: #GP(0); unicorn takes it
        0xF4,                                # hlt
    ]))
    result = run_tcg(guest, tmp_path, plugins=("tests.accel.tcg_no_intercepts",))
    assert result["kind"] == "internal-error"
    assert "CR4 is 0x8000, with bits 0x8000 this CPU does not have" in result["message"]


def test_segment_from_descriptor_inverts_descriptor() -> None:
    from vmcore.cpu import Segment

    for segment in (Segment(selector=0x08, base=0x1234_5678, limit=0xFFFF_FFFF, type=0xB, dpl=3, db=1, g=1),
                    Segment(selector=0x38, limit=0xFFFF_FFFF, type=0xA, l=1, g=1),
                    Segment(selector=0x10, base=0xABC, limit=0x1234, present=0)):
        assert Segment.from_descriptor(segment.selector, segment.descriptor()) == segment
