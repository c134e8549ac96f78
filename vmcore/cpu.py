"""vCPU start states, independent of the accelerator.

:func:`start_state` turns a profile's ``cpu`` section into a :class:`CpuState`:
register values, segment descriptors and control registers for real mode,
32-bit flat protected mode, or 64-bit long mode. For the last two the VMM builds
a GDT (and for long mode identity-mapped page tables) in guest RAM it reserves.
Each accelerator translates a CpuState into its own register set.
"""

from __future__ import annotations

import struct
from typing import Any

from .cpu_model import ModelSpec
from .immutable import Immutable
from .memory import GuestMemory, GuestMemoryError

CR0_PE = 1 << 0
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED = 1 << 1  # bit 1 always reads as 1

CPUID1_ECX_TSC_DEADLINE = 1 << 24  # the APIC timer's TSC-deadline mode


PAGE = 4096
#: Page-table entry bits: present, writable, page size (2 MiB in a PD entry).
PTE_P, PTE_W, PTE_PS = 1 << 0, 1 << 1, 1 << 7

# GDT layout the VMM builds: null, code, data (selectors 0x08 and 0x10).
CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10
IDENTITY_MAPPED = 4 << 30  # long mode maps the first 4 GiB
#: IA32_APIC_BASE with a local APIC: the default base, enabled (bit 11), this CPU the BSP (bit 8).
APIC_BASE_MSR = 0xFEE0_0000 | 1 << 11 | 1 << 8


class CpuSetupError(Exception):
    """The start state cannot be built (e.g. no room for the tables)."""


class Segment(Immutable):
    """A loaded segment register (the hidden part as the CPU holds it)."""

    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    type: int = 3  # data read/write, accessed
    s: int = 1  # code/data (not system)
    dpl: int = 0
    present: int = 1
    db: int = 0  # 32-bit default operand size
    l: int = 0  # 64-bit code
    g: int = 0  # 4K granularity

    @classmethod
    def from_descriptor(cls, selector: int, descriptor: int) -> "Segment":
        """The segment an 8-byte GDT descriptor describes (the inverse of :meth:`descriptor`)."""
        access, flags = (descriptor >> 40) & 0xFF, (descriptor >> 52) & 0xF
        limit = (descriptor & 0xFFFF) | ((descriptor >> 48) & 0xF) << 16
        g = flags >> 3 & 1
        return cls(selector=selector, base=(descriptor >> 16) & 0xFFFFFF | ((descriptor >> 56) & 0xFF) << 24,
                   limit=(limit << 12 | 0xFFF) if g else limit, type=access & 0xF, s=access >> 4 & 1,
                   dpl=access >> 5 & 3, present=access >> 7, db=flags >> 2 & 1, l=flags >> 1 & 1, g=g)

    def descriptor(self) -> int:
        """The 8-byte GDT descriptor for this segment."""
        limit = self.limit >> 12 if self.g else self.limit
        access = self.type | (self.s << 4) | (self.dpl << 5) | (self.present << 7)
        flags = (self.l << 1) | (self.db << 2) | (self.g << 3)
        return (
            (limit & 0xFFFF)
            | (self.base & 0xFFFFFF) << 16
            | access << 40
            | ((limit >> 16) & 0xF) << 48
            | flags << 52
            | ((self.base >> 24) & 0xFF) << 56
        )


class CpuState(Immutable):
    """Everything an accelerator needs to start the vCPU."""

    mode: str
    registers: dict[str, int]  # rax.., rsp, rip, rflags
    cs: Segment
    data: Segment  # ds, es, fs, gs, ss
    cr0: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    gdt: tuple[int, int] = (0, 0xFFFF)  # base, limit
    idt: tuple[int, int] = (0, 0xFFFF)
    #: A local APIC device answers at APIC_BASE (0xFEE00000): CPUID shows one and IA32_APIC_BASE
    #: is enabled; without one both are off (unless KVM's in-kernel irqchip models it).
    local_apic: bool = False
    #: The CPU model the guest's CPUID shows (the profile's cpu.model/features/vendor).
    model: ModelSpec = ModelSpec()


def tables_size(mode: str) -> int:
    """Bytes of guest RAM the VMM reserves for the mode's tables."""
    if mode == "protected":
        return PAGE  # the GDT
    if mode == "long":
        return PAGE * (3 + IDENTITY_MAPPED // (1 << 30))  # GDT, PML4, PDPT, 4 page directories
    return 0


def start_state(mode: str, entry: int, registers: dict[str, int], memory: GuestMemory, tables: int | None) -> CpuState:
    """Build the start state; for protected/long mode write GDT/page tables at ``tables``."""
    regs = {"rip": entry, "rflags": RFLAGS_RESERVED}
    regs.update(registers)
    if mode == "reset":
        # An x86 CPU after RESET (SDM vol. 3, 9.1.1): real mode, CS selector F000 with base
        # FFFF0000, IP FFF0, so the first fetch is at FFFFFFF0, 16 bytes below 4G, where the
        # firmware ROM sits. EDX holds the CPU signature. The software CPU cannot load that
        # base and starts at F000:FFF0 = FFFF0 instead: on a PC both addresses show the same
        # firmware bytes (the chipset aliases the ROM's top below 1M), and the first far jump
        # reloads CS on either.
        regs = {"rip": 0xFFF0, "rflags": RFLAGS_RESERVED, "rdx": 0x600}
        regs.update(registers)
        return CpuState(mode, regs, cs=Segment(0xF000, 0xFFFF0000, type=0xB), data=Segment(),
                        cr0=CR0_ET | CR0_NW | CR0_CD)
    if mode == "real":
        # The seed's state: CS base 0 and IP = entry; every segment at 0.
        seg = Segment()
        return CpuState(mode, regs, cs=Segment(type=0xB), data=seg)
    if tables is None:
        raise CpuSetupError(f"{mode} mode needs cpu.tables: an address in RAM for the GDT and page tables")
    if mode == "protected":
        code = Segment(CODE_SELECTOR, 0, 0xFFFFFFFF, type=0xB, db=1, g=1)
        data = Segment(DATA_SELECTOR, 0, 0xFFFFFFFF, type=0x3, db=1, g=1)
        gdt = _write_gdt(memory, tables, code, data)
        return CpuState(mode, regs, code, data, cr0=CR0_PE | CR0_ET | CR0_NE, gdt=gdt, idt=(0, 0))
    if mode == "long":
        code = Segment(CODE_SELECTOR, 0, 0xFFFFFFFF, type=0xB, l=1, g=1)
        data = Segment(DATA_SELECTOR, 0, 0xFFFFFFFF, type=0x3, db=1, g=1)
        gdt = _write_gdt(memory, tables, code, data)
        pml4 = tables + PAGE
        _write_identity_tables(memory, pml4)
        return CpuState(
            mode, regs, code, data,
            cr0=CR0_PE | CR0_ET | CR0_NE | CR0_WP | CR0_PG, cr3=pml4, cr4=CR4_PAE,
            efer=EFER_LME | EFER_LMA, gdt=gdt, idt=(0, 0),
        )
    raise CpuSetupError(f"unknown cpu mode {mode!r}")


def _write_gdt(memory: GuestMemory, base: int, code: Segment, data: Segment) -> tuple[int, int]:
    table = struct.pack("<3Q", 0, code.descriptor(), data.descriptor())
    _place(memory, base, table)
    return base, len(table) - 1


def _write_identity_tables(memory: GuestMemory, pml4: int) -> None:
    """PML4 -> one PDPT -> 4 page directories of 2 MiB pages: virtual == physical below 4 GiB."""
    # Each table must start on a page: an entry keeps only address bits 12 and up.
    pdpt = pml4 + PAGE
    pds = pdpt + PAGE
    _place(memory, pml4, struct.pack("<Q", pdpt | PTE_P | PTE_W))
    gib = IDENTITY_MAPPED >> 30
    _place(memory, pdpt, struct.pack(f"<{gib}Q", *((pds + i * PAGE) | PTE_P | PTE_W for i in range(gib))))
    entries = [(i << 21) | PTE_P | PTE_W | PTE_PS for i in range(512 * gib)]
    _place(memory, pds, struct.pack(f"<{len(entries)}Q", *entries))


def _place(memory: GuestMemory, address: int, data: bytes) -> None:
    try:
        memory.write(address, data)
    except GuestMemoryError as exc:
        raise CpuSetupError(f"cannot place the CPU tables at {address:#x}: {exc}") from None


def translate(memory: GuestMemory, cr0: int, cr3: int, cr4: int, efer: int, linear: int) -> int | None:
    """Linear -> guest-physical through the guest's page tables (None if unmapped).

    Handles no paging, 32-bit paging (4K and 4M pages), PAE paging (4K, 2M) and 4-level
    long-mode paging (4K, 2M, 1G pages): for fault reports and for delivering interrupts
    through tables the guest keeps at linear addresses. Permissions are not checked.
    """
    if not cr0 & CR0_PG:
        return linear & 0xFFFFFFFF if not efer & EFER_LMA else linear
    if not cr4 & CR4_PAE:
        return _translate_32(memory, cr3, cr4, linear & 0xFFFFFFFF)
    if not efer & EFER_LMA:
        try:
            pdpte = memory.read_int((cr3 & 0xFFFFFFE0) + ((linear >> 30) & 3) * 8, 8)
        except GuestMemoryError:
            return None
        if not pdpte & PTE_P:
            return None
        return _walk(memory, pdpte & 0x000FFFFFFFFFF000, linear & 0xFFFFFFFF, (21, 12), first_level=2)
    return _walk(memory, cr3 & ~0xFFF & ((1 << 52) - 1), linear, (39, 30, 21, 12), first_level=0)


def _translate_32(memory: GuestMemory, cr3: int, cr4: int, linear: int) -> int | None:
    """32-bit paging: a page directory of 1024 entries, 4M pages where PSE allows them."""
    try:
        pde = memory.read_int((cr3 & 0xFFFFF000) + (linear >> 22) * 4, 4)
        if not pde & PTE_P:
            return None
        if pde & PTE_PS and cr4 & CR4_PSE:
            return (pde & 0xFFC00000) | (pde & 0x1FE000) << 19 | (linear & 0x3FFFFF)
        pte = memory.read_int((pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4, 4)
    except GuestMemoryError:
        return None
    if not pte & PTE_P:
        return None
    return (pte & 0xFFFFF000) | (linear & 0xFFF)


def _walk(memory: GuestMemory, table: int, linear: int, shifts: tuple[int, ...], first_level: int) -> int | None:
    """Walk 8-byte-entry tables (PAE and long mode); levels 1 and 2 may map large pages."""
    for level, shift in enumerate(shifts, start=first_level):
        try:
            entry = memory.read_int(table + ((linear >> shift) & 0x1FF) * 8, 8)
        except GuestMemoryError:
            return None
        if not entry & PTE_P:
            return None
        frame = entry & 0x000FFFFFFFFFF000
        if level in (1, 2) and entry & PTE_PS:
            mask = (1 << shift) - 1
            return (frame & ~mask) | (linear & mask)
        table = frame
    return table | (linear & 0xFFF)


_DISASSEMBLERS: dict[int, object] = {}


def decode_one(code: bytes, bits: int) -> Any:
    """The instruction at the start of ``code`` (capstone, with operand details), or None.

    ``bits`` is the code size (16, 32 or 64). None when capstone is not installed or the
    bytes do not decode.
    """
    engine = _DISASSEMBLERS.get(bits)
    if engine is None:
        try:
            import capstone
        except ImportError:
            return None
        mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
        engine = _DISASSEMBLERS[bits] = capstone.Cs(capstone.CS_ARCH_X86, mode)
        engine.detail = True  # type: ignore[attr-defined]
    for insn in engine.disasm(code, 0, 1):  # type: ignore[attr-defined]
        return insn
    return None


def memory_operand_size(code: bytes, bits: int) -> int | None:
    """How many bytes the instruction at the start of ``code`` reads or writes in memory, or None
    (capstone missing, bytes that do not decode, no memory operand); ``bits``: the code size."""
    insn = decode_one(code, bits)
    for operand in insn.operands if insn is not None else ():
        if operand.type == 3:  # X86_OP_MEM
            return int(operand.size)
    return None


def code_bits(cr0: int, cs_l: int, cs_db: int) -> int:
    """The default operand size of code running with this CR0 and CS descriptor."""
    if not cr0 & CR0_PE:
        return 16
    if cs_l:
        return 64
    return 32 if cs_db else 16
