"""SYSCALL and SYSENTER as the SDM defines them, for a CPU that makes them calls to a hook (unicorn).

unicorn turns both instructions into a call to its instruction hooks and then steps over
them (user-mode emulation's system call); SYSRET and SYSEXIT it runs as QEMU does. The
software CPU hooks both and does here what the processor does (Intel SDM volume 2B):

- SYSCALL, in 64-bit mode with IA32_EFER.SCE set: RCX = the next RIP, R11 = RFLAGS,
  RFLAGS &= ~IA32_FMASK (and RF), CS = IA32_STAR[47:32] & ~3 and SS = that + 8 at CPL 0,
  RIP = IA32_LSTAR. Elsewhere it is #UD, as on Intel processors (the vendor the software
  CPU's CPUID shows); AMD's compatibility and legacy mode forms (IA32_CSTAR, STAR[31:0])
  are taken when the CPUID says AuthenticAMD.
- SYSENTER, in protected mode with IA32_SYSENTER_CS set: IF, VM and RF cleared, CS =
  SYSENTER_CS & ~3 and SS = CS + 8 at CPL 0, (E/R)SP = IA32_SYSENTER_ESP, (E/R)IP =
  IA32_SYSENTER_EIP (all of them in IA-32e mode); #GP(0) otherwise.

Segment registers are loaded from the guest's GDT (unicorn's segment load), where an OS
keeps the flat descriptors these instructions assume.
"""

from __future__ import annotations

from typing import Any, Callable

try:
    from .engine import X
except ImportError:  # pragma: no cover - the software CPU says so
    X = None

MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
EFER_SCE, EFER_LMA = 1 << 0, 1 << 10
_FLAG_IF, _FLAG_RF, _FLAG_VM = 1 << 9, 1 << 16, 1 << 17
UD, GP = 6, 13


class FastCall:
    """The two instructions on a CPU reached through ``regs`` (reg_read/reg_write/msr_read, 64-bit wide).

    ``deliver(vector, error=...)`` raises an exception in the guest; ``long_code()`` says
    whether CS is a 64-bit code segment; ``amd`` whether the CPUID shows AuthenticAMD.
    Each method returns where execution goes on (the caller adjusts for unicorn's step).
    """

    def __init__(self, regs: Any, deliver: Callable[..., None], long_code: Callable[[], bool], amd: bool,
                 set_cpl: Callable[[int], None] | None = None) -> None:
        self.regs = regs
        self.deliver = deliver
        self.long_code = long_code
        self.amd = amd
        self.set_cpl = set_cpl  # see IdtDelivery.set_cpl

    def _ring0(self) -> None:
        if self.set_cpl is not None:
            self.set_cpl(0)

    def syscall(self, next_ip: int) -> None:
        regs = self.regs
        efer = regs.msr_read(MSR_EFER)
        in_64 = bool(efer & EFER_LMA) and self.long_code()
        if not efer & EFER_SCE or not regs.reg_read(X.UC_X86_REG_CR0) & 1 or (not in_64 and not self.amd):
            self.deliver(UD)
            return
        star = regs.msr_read(MSR_STAR)
        flags = regs.reg_read(X.UC_X86_REG_EFLAGS)
        selector = (star >> 32) & 0xFFFC
        if efer & EFER_LMA:
            regs.reg_write(X.UC_X86_REG_RCX, next_ip)
            regs.reg_write(X.UC_X86_REG_R11, flags & ~_FLAG_RF)
            regs.reg_write(X.UC_X86_REG_EFLAGS, flags & ~(regs.msr_read(MSR_FMASK) | _FLAG_RF) & 0xFFFFFFFF)
            target = regs.msr_read(MSR_LSTAR if in_64 else MSR_CSTAR)
        else:  # AMD's legacy-mode SYSCALL
            regs.reg_write(X.UC_X86_REG_ECX, next_ip & 0xFFFFFFFF)
            regs.reg_write(X.UC_X86_REG_EFLAGS, flags & ~(_FLAG_IF | _FLAG_VM | _FLAG_RF))
            target = star & 0xFFFFFFFF
        self._ring0()
        regs.reg_write(X.UC_X86_REG_CS, selector)
        regs.reg_write(X.UC_X86_REG_SS, selector + 8)
        regs.reg_write(X.UC_X86_REG_RIP, target)

    def sysenter(self) -> None:
        regs = self.regs
        cs = regs.msr_read(MSR_SYSENTER_CS) & 0xFFFF
        if not regs.reg_read(X.UC_X86_REG_CR0) & 1 or not cs & 0xFFFC:
            self.deliver(GP, error=0)
            return
        ia32e = bool(regs.msr_read(MSR_EFER) & EFER_LMA)
        flags = regs.reg_read(X.UC_X86_REG_EFLAGS)
        regs.reg_write(X.UC_X86_REG_EFLAGS, flags & ~(_FLAG_IF | _FLAG_VM | _FLAG_RF))
        self._ring0()
        regs.reg_write(X.UC_X86_REG_CS, cs & 0xFFFC)
        regs.reg_write(X.UC_X86_REG_SS, (cs & 0xFFFC) + 8)
        mask = (1 << 64) - 1 if ia32e else 0xFFFFFFFF
        regs.reg_write(X.UC_X86_REG_RSP, regs.msr_read(MSR_SYSENTER_ESP) & mask)
        regs.reg_write(X.UC_X86_REG_RIP, regs.msr_read(MSR_SYSENTER_EIP) & mask)
