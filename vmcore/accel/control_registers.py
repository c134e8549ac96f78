"""Which values a mov to CR0 or CR4 may load, for a CPU that takes any value (unicorn).

QEMU 5.0's TCG, unicorn's CPU, loads whatever a ``mov cr4, reg`` gives it, reserved bits
included, where a processor raises #GP(0) and leaves CR4 as it was (SDM volume 3, 2.5 and
the MOV CR reference); CR0 likewise. The software CPU traps those writes
(vmcore.accel.intercepts) and asks here first. Where it cannot trap them (another unicorn
build) it looks at CR4 whenever it gets control and stops the machine, naming the bits,
when CR4 holds what no processor with its CPUID would.

Reserved in CR4: the bits of features the CPUID does not offer (leaves 1 and 7), bit 15
and bits 25-63.
"""

from __future__ import annotations

# CR4 bit -> (CPUID leaf, register index in (eax, ebx, ecx, edx), bit) of the feature it needs;
# None: always there on a CPU that has CR4.
_NEEDS: dict[int, tuple[int, int, int] | None] = {
    0: (1, 3, 1), 1: (1, 3, 1),  # VME, PVI: VME
    2: (1, 3, 4),                # TSD: TSC
    3: (1, 3, 2),                # DE
    4: (1, 3, 3),                # PSE
    5: (1, 3, 6),                # PAE
    6: (1, 3, 7),                # MCE
    7: (1, 3, 13),               # PGE
    8: None,                     # PCE
    9: (1, 3, 24),               # OSFXSR: FXSR
    10: (1, 3, 25),              # OSXMMEXCPT: SSE
    11: (7, 2, 2),               # UMIP
    12: (7, 2, 16),              # LA57
    13: (1, 2, 5),               # VMXE: VMX
    14: (1, 2, 6),               # SMXE: SMX
    16: (7, 1, 0),               # FSGSBASE
    17: (1, 2, 17),              # PCIDE: PCID
    18: (1, 2, 26),              # OSXSAVE: XSAVE
    20: (7, 1, 7),               # SMEP
    21: (7, 1, 20),              # SMAP
    22: (7, 2, 3),               # PKE: PKU
    23: (7, 2, 7),               # CET
    24: (7, 2, 31),              # PKS
}


def allowed_cr4(cpuid: dict[tuple[int, int], tuple[int, int, int, int]]) -> int:
    """The CR4 bits a CPU with these CPUID leaves ((leaf, subleaf) -> eax..edx) takes."""
    allowed = 0
    for bit, need in _NEEDS.items():
        if need is None:
            allowed |= 1 << bit
            continue
        leaf, register, feature = need
        values = cpuid.get((leaf, 0))
        if values is not None and values[register] >> feature & 1:
            allowed |= 1 << bit
    return allowed


CR0_PE, CR0_ET, CR0_NW, CR0_CD, CR0_PG = 1 << 0, 1 << 4, 1 << 29, 1 << 30, 1 << 31
CR4_PAE, CR4_LA57, CR4_PCIDE = 1 << 5, 1 << 12, 1 << 17
EFER_LME, EFER_LMA = 1 << 8, 1 << 10


def cr0_fault(new: int, *, cr4: int, efer: int, code64: bool) -> str | None:
    """Why ``mov cr0`` with ``new`` raises #GP(0) (SDM, MOV to/from control registers), or None."""
    if new >> 32:
        return "bits 63:32 are reserved"
    if new & CR0_PG and not new & CR0_PE:
        return "paging without protection"
    if new & CR0_NW and not new & CR0_CD:
        return "not-write-through without cache disable"
    if new & CR0_PG and efer & EFER_LME and not cr4 & CR4_PAE:
        return "long mode paging without PAE"
    if code64 and not new & CR0_PG:
        return "paging cleared in 64-bit mode"
    return None


def cr4_fault(old: int, new: int, *, allowed: int, efer: int, cr3: int) -> str | None:
    """Why ``mov cr4`` with ``new`` raises #GP(0), or None; ``allowed``: from allowed_cr4."""
    if new & ~allowed:
        return f"bits {new & ~allowed:#x} are reserved with this CPUID"
    if efer & EFER_LMA:
        if not new & CR4_PAE:
            return "PAE cleared in IA-32e mode"
        if (old ^ new) & CR4_LA57:
            return "LA57 changed in IA-32e mode"
    if new & CR4_PCIDE and not old & CR4_PCIDE and (not efer & EFER_LMA or cr3 & 0xFFF):
        return "PCIDE set outside IA-32e mode or with CR3[11:0] not zero"
    return None
