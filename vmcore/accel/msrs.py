"""The MSRs the software CPU checks itself (rdmsr/wrmsr trapped through vmcore.accel.intercepts).

unicorn (QEMU 5.0's TCG) answers an MSR it does not know with 0 and ignores writes to it,
and takes any value for the ones it knows. A processor raises #GP(0) for both (SDM volume
4, and the RDMSR/WRMSR reference): an MSR that does not exist, a non-canonical address in
an MSR that holds one, reserved EFER bits, EFER.LME changed while paging is on. Here the
rules for the MSRs that are trapped; every other MSR in the permission map's ranges is left
to the engine, and every MSR outside them arrives here and does not exist.
"""

from __future__ import annotations

from typing import Any

from ..irq import ModelSpecificRegisters

try:
    from .engine import X
except ImportError:  # pragma: no cover - the accelerator says so
    X = None

APIC_BASE = 0x1B
SYSENTER_ESP, SYSENTER_EIP = 0x175, 0x176
TSC = 0x10
TSC_DEADLINE = 0x6E0
EFER = 0xC0000080
LSTAR, CSTAR = 0xC0000082, 0xC0000083
FS_BASE, GS_BASE, KERNEL_GS_BASE = 0xC0000100, 0xC0000101, 0xC0000102
TSC_AUX = 0xC0000103
X2APIC_FIRST, X2APIC_LAST = 0x800, 0x8FF

#: The MSRs a guest sets up that a snapshot keeps, on every accelerator (besides what each keeps
#: elsewhere or adds: EFER, the TSC): SYSCALL's STAR, LSTAR, CSTAR and SFMASK, the FS, GS and
#: swapped GS bases, TSC_AUX, SYSENTER's CS, ESP and EIP, and PAT.
SNAPSHOT_MSRS = (0xC0000081, LSTAR, CSTAR, 0xC0000084, FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX, 0x174,
                 SYSENTER_ESP, SYSENTER_EIP, 0x277)

#: MSRs that hold a linear address: a write must be canonical.
ADDRESS_MSRS = (SYSENTER_ESP, SYSENTER_EIP, LSTAR, CSTAR, FS_BASE, GS_BASE, KERNEL_GS_BASE)

EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE, EFER_FFXSR = 1 << 0, 1 << 8, 1 << 10, 1 << 11, 1 << 14
CR0_PG = 1 << 31
APIC_BASE_BSP, APIC_BASE_EXTD, APIC_BASE_EN = 1 << 8, 1 << 10, 1 << 11
APIC_DEFAULT_BASE = 0xFEE00000


def canonical(value: int, bits: int = 48) -> bool:
    """True when bits 63 down to ``bits - 1`` of ``value`` are all equal (SDM volume 1, 3.3.7.1)."""
    top = value >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def apic_base_refused(value: int, physical_bits: int, x2apic: bool) -> bool:
    """Whether a processor refuses this IA32_APIC_BASE write before its APIC sees it (#GP(0)):
    an address above MAXPHYADDR, or x2APIC mode (EXTD) where CPUID offers none (SDM 10.12.1)."""
    return bool(value >> physical_bits) or bool(value & APIC_BASE_EXTD) and not x2apic


class MsrRules:
    """Reads and writes of the trapped MSRs for a CPU whose CPUID offers ``features``.

    ``regs`` reaches the engine's own MSRs (what passes the checks is written there, where
    its effects live); ``local_apic`` whether an APIC is modelled (IA32_APIC_BASE enabled).
    ``read`` and ``write`` return None for a #GP.
    """

    def __init__(self, regs: Any, features: set[str], local_apic: bool, physical_bits: int = 40) -> None:
        self.regs = regs
        self.features = features
        #: The MSRs devices answer (RunCore.msrs, set for each run): IA32_APIC_BASE of a lapic.
        self.devices: dict[int, ModelSpecificRegisters] = {}
        self.apic_base = APIC_DEFAULT_BASE | APIC_BASE_BSP | (APIC_BASE_EN if local_apic else 0)
        self._physical_mask = (1 << physical_bits) - 1
        efer = 0
        for feature, bits in (("syscall", EFER_SCE), ("lm", EFER_LME | EFER_LMA), ("nx", EFER_NXE),
                              ("fxsr-opt", EFER_FFXSR)):
            if feature in features:
                efer |= bits
        self._efer_bits = efer

    def apic_enabled(self) -> bool | None:
        """IA32_APIC_BASE.EN where a device answers it (CPUID's APIC bit follows it), else None."""
        device = self.devices.get(APIC_BASE)
        value = None if device is None else device.read_msr(APIC_BASE)
        return None if value is None else bool(value & APIC_BASE_EN)

    def trapped(self) -> list[tuple[int, bool, bool]]:
        """(MSR, trap reads, trap writes) for the permission map."""
        trapped = [(index, False, True) for index in ADDRESS_MSRS]
        trapped += [(EFER, False, True), (APIC_BASE, True, True), (TSC_DEADLINE, True, True),
                    (TSC_AUX, True, True)]
        trapped += [(index, True, True) for index in range(X2APIC_FIRST, X2APIC_LAST + 1)]
        return trapped

    def _exists(self, index: int) -> bool:
        if X2APIC_FIRST <= index <= X2APIC_LAST:
            return False  # no APIC model answers them
        if index == TSC_DEADLINE:
            return "tsc-deadline" in self.features
        if index == TSC_AUX:
            return "rdtscp" in self.features or "rdpid" in self.features
        if index in (LSTAR, CSTAR, FS_BASE, GS_BASE, KERNEL_GS_BASE):
            return "lm" in self.features
        return index in (APIC_BASE, SYSENTER_ESP, SYSENTER_EIP, EFER)

    def read(self, index: int) -> int | None:
        device = self.devices.get(index)
        if index == TSC_DEADLINE and not self._exists(index):
            return None  # the lapic has the register, the CPU model does not
        if device is not None:
            return device.read_msr(index)
        if not self._exists(index):
            return None
        if index == APIC_BASE:
            return self.apic_base
        return int(self.regs.msr_read(index))

    def write(self, index: int, value: int) -> bool | None:
        device = self.devices.get(index)
        if index == TSC_DEADLINE and not self._exists(index):
            return None
        if device is not None:
            if index == APIC_BASE and apic_base_refused(value, self._physical_mask.bit_length(),
                                                        "x2apic" in self.features):
                return None
            return True if device.write_msr(index, value) else None
        if not self._exists(index):
            return None
        if index in ADDRESS_MSRS:
            if not canonical(value):
                return None
        elif index == EFER:
            if value & ~self._efer_bits:
                return None
            current = self.regs.msr_read(EFER)
            if (value ^ current) & EFER_LME and self.regs.reg_read(X.UC_X86_REG_CR0) & CR0_PG:
                return None
            value = (value & ~EFER_LMA) | (current & EFER_LMA)  # LMA is the CPU's to set
        elif index == APIC_BASE:
            if value & ~(APIC_BASE_BSP | APIC_BASE_EN | (self._physical_mask & ~0xFFF)):
                return None
            self.apic_base = value
            return True
        elif index == TSC_AUX and value >> 32:
            return None
        self.regs.msr_write(index, value)
        return True
