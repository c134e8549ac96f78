"""CR4 as the CPUID says it may be, for a CPU that takes any value (unicorn).

QEMU 5.0's TCG, unicorn's CPU, loads whatever a ``mov cr4, reg`` gives it, reserved bits
included, where a processor raises #GP(0) and leaves CR4 as it was (SDM volume 3, 2.5).
Nothing in unicorn reports the write, and the value CR4 had before it is gone, so the
#GP cannot be given late. The software CPU looks at CR4 whenever it gets control (an
exception, the end of a run) and stops the machine, naming the bits, when CR4 holds what
no processor with its CPUID would: the guest would otherwise run on in a mode that does
not exist (kvm-unit-tests' idt_test page-faulted on every fetch for a minute).

Reserved: the bits of features the CPUID does not offer (leaves 1 and 7), bit 15 and
bits 25-63.
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
