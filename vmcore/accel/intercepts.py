"""Instructions the software CPU takes control at, through QEMU's own SVM intercept checks.

unicorn (QEMU 5.0's TCG) runs a few privileged instructions other than a processor does
and has no hook for them: a mov to CR0 or CR4 loads reserved bits where a processor raises
#GP(0); ``smsw`` into a 32-bit register writes 16 bits; sgdt, sidt, sldt, str and smsw ignore
CR4.UMIP; a real-mode ``iret`` leaves RFLAGS.RF set; rdmsr and wrmsr take any MSR and any
value. QEMU's translator, though, checks SVM intercepts before each of these when the CPU
runs as an SVM guest. So the software CPU sets that state, and nothing else of SVM: the
hflags bit that says "guest", the intercept words, and a VMCB pointer whose MSR permission
map says which MSRs to trap. An intercepted instruction then comes back from the engine as
exception ``EXCP_VMEXIT + exit code`` (RIP at the instruction, the exit information in the
error code) to the interrupt hook, where :class:`InterceptHandler` decides: a #GP, the
instruction done right here (emulated), or the instruction run once by the engine with the
intercept off (a step). vmcore's engine build raises the faults of a mov to CR0 itself
(engine/unicorn, 0013-cr0-checks): there only a write that changes PG comes here.

The engine's fields are found by experiment (``unicorn_layout._probe_svm``). The VMCB and
the permission map live in guest-physical pages above every MMIO window (``SCRATCH``), which
the engine reads itself; a guest that mapped them could change its own intercepts, which
would hurt only its own fidelity.
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable, Iterable, NamedTuple

from .control_registers import CR0_ET, CR0_PE, CR0_PG, EFER_LMA, cr0_fault, cr4_fault
from .msrs import EFER, canonical

try:
    from .engine import X
except ImportError:  # pragma: no cover - the accelerator says so
    X = None

#: The exception number an intercept arrives as: EXCP_VMEXIT + the SVM exit code.
EXCP_VMEXIT = 0x100
READ_CR0, READ_CR8, WRITE_CR0, WRITE_CR4, WRITE_CR8 = 0x00, 0x08, 0x10, 0x14, 0x18
IDTR_READ, GDTR_READ, LDTR_READ, TR_READ = 0x66, 0x67, 0x68, 0x69
IDTR_WRITE, GDTR_WRITE, LDTR_WRITE, TR_WRITE = 0x6A, 0x6B, 0x6C, 0x6D
_TABLE_LOADS = (IDTR_WRITE, GDTR_WRITE, LDTR_WRITE, TR_WRITE)
VINTR, IRET, MSR = 0x64, 0x74, 0x7C
#: Exit codes 0x60 and up are bits of the intercept word.
_INTERCEPT_BASE = 0x60
_UMIP_READS = (IDTR_READ, GDTR_READ, LDTR_READ, TR_READ)

#: Where the VMCB (first page) and the MSR permission map (the next two) are, guest-physical.
SCRATCH_SIZE = 0x4000
_MSRPM_OFFSET = 0x1000
_MSRPM_SIZE = 0x2000
_VMCB_MSRPM_BASE = 0x48  # control.msrpm_base_pa
#: The MSR ranges a permission map covers, and where each range's bits start (2 per MSR: read, write).
_MSRPM_RANGES = ((0x0000_0000, 0), (0xC000_0000, 0x800), (0xC001_0000, 0x1000))

CR4_UMIP = 1 << 11
#: The flags a real-mode IRET loads from its image (QEMU's helper_iret_real, SDM IRET):
#: TF, IF, IOPL, NT, RF, AC, ID; the arithmetic flags and DF are always loaded.
_IRET_REAL_MASK = (1 << 8) | (1 << 9) | (3 << 12) | (1 << 14) | (1 << 16) | (1 << 18) | (1 << 21)
_ARITHMETIC_AND_DF = 0x8D5 | (1 << 10)
#: CPU features the intercepts provide that the engine alone does not (vmcore.cpu_model names).
#: x2APIC and the TSC-deadline timer: their MSRs reach the lapic model (vmcore.accel.msrs).
EMULATED = ("umip", "x2apic", "tsc-deadline")
RFLAGS_RF = 1 << 16


class InterceptControls:
    """The engine's SVM intercept controls (see the module docstring)."""

    def __init__(self, uc: Any, env: int, fields: Any, hflags_offset: int, scratch: int) -> None:
        self.scratch = scratch
        uc.mem_map(scratch, SCRATCH_SIZE)
        uc.mem_write(scratch + _VMCB_MSRPM_BASE, (scratch + _MSRPM_OFFSET).to_bytes(8, "little"))
        self._uc = uc
        self._hflags = ctypes.c_uint32.from_address(env + hflags_offset)
        self._guest = fields.guest_flag
        self._vmcb = ctypes.c_uint64.from_address(env + fields.vmcb)
        self._intercept = ctypes.c_uint64.from_address(env + fields.intercept)
        self._cr_read = ctypes.c_uint16.from_address(env + fields.cr_read)
        self._cr_write = ctypes.c_uint16.from_address(env + fields.cr_write)
        self._msrpm = bytearray(_MSRPM_SIZE)
        #: vmcore's engine checking and running writes to CR0 itself (see cr0_writes_in_engine).
        self._engine_cr0: Callable[[bool, int], None] | None = None
        self._cr0_exits = 0
        self.assert_guest()

    def assert_guest(self) -> None:
        """Run as an SVM guest (again: a CPU reset in the engine clears the bit)."""
        self._vmcb.value = self.scratch
        self._hflags.value |= self._guest

    def set_cr(self, read: int, write: int) -> None:
        """Intercept reads of the CRs whose bits are set in ``read`` and writes likewise."""
        self._cr_read.value, self._cr_write.value = read, write

    def cr0_writes_in_engine(self, checks: Callable[[bool, int], None], exit_mask: int) -> None:
        """Have the engine raise the faults of ``mov`` to CR0 and run it (``checks(on, exit_mask)``,
        unicorn_layout.engine_cr0_checks) instead of intercepting every write: only a write that
        changes a bit of ``exit_mask`` still comes here as WRITE_CR0 (firmware writes CR0 at each
        mode switch, some 190 times in a SeaBIOS boot: about 10 ms of intercepts)."""
        self._engine_cr0, self._cr0_exits = checks, exit_mask
        checks(True, exit_mask)
        self._cr_write.value &= ~(1 << (WRITE_CR0 - 0x10))

    def set_cr_read(self, cr: int, on: bool) -> None:
        """Intercept (or not) reads of control register ``cr``."""
        bit = 1 << cr
        self._cr_read.value = self._cr_read.value | bit if on else self._cr_read.value & ~bit

    def set_exit(self, code: int, on: bool) -> None:
        """Intercept (or not) the instructions of exit ``code`` (0x60 and up: IRET, MSR, ...)."""
        bit = 1 << (code - _INTERCEPT_BASE)
        self._intercept.value = self._intercept.value | bit if on else self._intercept.value & ~bit

    def is_set(self, code: int) -> bool:
        if code < _INTERCEPT_BASE:
            return bool(self._cr_read.value >> code & 1) if code < 0x10 else bool(self._cr_write.value >> (code - 0x10) & 1)
        return bool(self._intercept.value >> (code - _INTERCEPT_BASE) & 1)

    def trap_msrs(self, msrs: Iterable[tuple[int, bool, bool]]) -> None:
        """Intercept rdmsr and/or wrmsr of each ``(index, read, write)`` (MSRs outside the map's ranges
        always are); the engine's copy of the map is written once, at the end."""
        for index, read, write in msrs:
            for base, start in _MSRPM_RANGES:
                if base <= index < base + 0x2000:
                    byte, shift = divmod(start * 8 + (index - base) * 2, 8)
                    self._msrpm[byte] |= (int(read) | int(write) << 1) << shift
                    break
            else:
                raise ValueError(f"MSR {index:#x} is outside the permission map: always intercepted")
        self._uc.mem_write(self.scratch + _MSRPM_OFFSET, bytes(self._msrpm))

    def suspend(self, code: int) -> Callable[[], None]:
        """Turn exit ``code``'s intercept off for a step; the returned call turns it back on."""
        if code < 0x10:
            saved = self._cr_read.value
            self._cr_read.value = saved & ~(1 << code)

            def restore() -> None:
                self._cr_read.value = saved
        elif code < 0x20:
            saved = self._cr_write.value
            self._cr_write.value = saved & ~(1 << (code - 0x10))
            # A CR0 write the engine sent here (it changes an exit_mask bit) steps unchecked, as
            # an intercepted one does: the engine would send it here again.
            engine = self._engine_cr0 if code == WRITE_CR0 else None
            if engine is not None:
                engine(False, 0)

            def restore() -> None:
                self._cr_write.value = saved
                if engine is not None:
                    engine(True, self._cr0_exits)
        else:
            was = self.is_set(code)
            self.set_exit(code, False)

            def restore() -> None:
                self.set_exit(code, was)
        return restore


class Step(Exception):
    """Raised by a handler: run the instruction once in the engine, its intercept off;
    ``after`` runs once it has (with the engine's registers at the next instruction)."""

    def __init__(self, code: int, after: Callable[[], None] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.after = after


class InterceptHandler:
    """What the software CPU does at each intercepted instruction.

    ``cpu`` is the software CPU as ``unicorn._InterceptedCpu`` shows it (``regs``, ``decode``,
    ``advance``, ``deliver``, ``cpl``, ``segment``, ``read_linear``, ...); ``allowed_cr4`` the
    CR4 bits its CPUID allows; ``msrs`` the MSR rules (vmcore.accel.msrs). ``real_mode_iret``:
    whether to do real-mode ``iret`` here (an engine whose pushf shows the RF it leaves set).
    ``smsw_operand_size``: the engine's ``smsw r32`` stores all of CR0's low half (vmcore's
    build), so reads of CR0 need intercepting only for UMIP (firmware reads CR0 at every mode
    switch: about 235 intercepts in a SeaBIOS boot, ~11 ms); a stock engine stores 16 bits.
    """

    def __init__(self, controls: InterceptControls, cpu: Any, allowed_cr4: int, msrs: Any,
                 real_mode_iret: bool = True, smsw_operand_size: bool = False,
                 engine_cr0: Callable[[bool, int], None] | None = None) -> None:
        self.controls = controls
        self.cpu = cpu
        self.allowed_cr4 = allowed_cr4
        self.msrs = msrs
        self.real_mode_iret = real_mode_iret
        #: The CR0 bits whose change follow_state looks at: PG (EFER.LMA) and, where real-mode iret
        #: is done here, PE.
        self.follow_cr0 = CR0_PG | (CR0_PE if real_mode_iret else 0)
        #: Whether reads of CR0 are intercepted only while CR4.UMIP is set (see follow_state).
        self.cr0_reads_for_umip_only = smsw_operand_size
        #: The local APIC whose TPR CR8 is (set for each run where one is modelled), else None.
        self.apic: Any = None
        controls.set_cr(read=(1 << 0) | (1 << 8), write=(1 << 0) | (1 << 4) | (1 << 8))
        if engine_cr0 is not None:
            controls.cr0_writes_in_engine(engine_cr0, self.follow_cr0)
        controls.set_exit(MSR, True)
        controls.trap_msrs(msrs.trapped())
        self.follow_state()

    def follow_state(self) -> None:
        """Intercept what the guest's current state needs: UMIP's reads while CR4.UMIP is set,
        ``iret`` in real mode (where a stock unicorn leaves RF set after it, for pushf to see)."""
        regs = self.cpu.regs
        umip = bool(regs.reg_read(X.UC_X86_REG_CR4) & CR4_UMIP)
        for code in _UMIP_READS:
            self.controls.set_exit(code, umip)
        if self.cr0_reads_for_umip_only:  # smsw is a UMIP instruction; mov from CR0 is privileged anyway
            self.controls.set_cr_read(0, umip)
        self.controls.set_exit(IRET, self.real_mode_iret and not regs.reg_read(X.UC_X86_REG_CR0) & CR0_PE)
        # Descriptor-table loads take 64-bit bases only in IA-32e mode (firmware that switches
        # modes often loads them in the others, where there is nothing to check).
        long_mode = bool(regs.msr_read(EFER) & EFER_LMA)
        for code in _TABLE_LOADS:
            self.controls.set_exit(code, long_mode)

    def handle(self, code: int, info: int) -> None:
        """The instruction at RIP was intercepted with exit ``code``; deliver, emulate or raise Step."""
        if code == WRITE_CR0 or code == WRITE_CR4:
            self._write_cr(code)
        elif code == READ_CR0:
            self._read_cr0()
        elif code in (READ_CR8, WRITE_CR8):
            self._cr8(write=code == WRITE_CR8)
        elif code in _UMIP_READS:
            self._umip_read(code)
        elif code == IRET:
            self._iret_real()
        elif code == MSR:
            self._msr(write=bool(info & 1))
        elif code in _TABLE_LOADS:
            self._table_load(code)
        else:
            raise Step(code)

    # --- control registers --------------------------------------------------------------------

    def _mov_cr(self) -> MovCr | None:
        """The mov to or from a control register at RIP, or None for another instruction there."""
        fetched = self.cpu.fetch()
        return None if fetched is None else decode_mov_cr(*fetched)

    def _write_cr(self, code: int) -> None:
        mov = self._mov_cr()
        if mov is None or not mov.to_cr:
            raise Step(code, self.follow_state)  # lmsw, clts: no #GP for their values
        regs = self.cpu.regs
        value = regs.reg_read(mov.register)
        efer = regs.msr_read(EFER)
        if code == WRITE_CR0:
            value |= CR0_ET  # hardwired to 1 since the i486, whatever is written (QEMU sets it too)
            cs = self.cpu.segment("cs")
            why = cr0_fault(value, cr4=regs.reg_read(X.UC_X86_REG_CR4), efer=efer,
                            code64=bool(cs["l"]) and bool(efer & EFER_LMA))
            register = X.UC_X86_REG_CR0
            # Firmware switching modes without paging (SeaBIOS, about 150 times) skips follow_state.
            changed = (value ^ regs.reg_read(register)) & self.follow_cr0
        else:
            why = cr4_fault(regs.reg_read(X.UC_X86_REG_CR4), value, allowed=self.allowed_cr4, efer=efer,
                            cr3=regs.reg_read(X.UC_X86_REG_CR3))
            register = X.UC_X86_REG_CR4
            changed = True
        if why is not None:
            self.cpu.deliver(13, error=0)
            return
        regs.reg_write(register, value)
        self.cpu.advance(mov.size)
        if changed:
            self.follow_state()

    def _read_cr0(self) -> None:
        mov = self._mov_cr()
        if mov is not None and not mov.to_cr:
            # mov from CR0: done here (cheaper than a step; firmware does it at every mode switch).
            self.cpu.regs.reg_write(mov.register, self.cpu.regs.reg_read(X.UC_X86_REG_CR0))
            self.cpu.advance(mov.size)
            return
        insn = self.cpu.decode()  # smsw: its operand (register or memory, and its width) decides
        if insn is None or insn.mnemonic != "smsw":
            raise Step(READ_CR0)
        if self._umip_fault():
            return
        operand = insn.operands[0]
        if operand.type != _OP_REG or operand.size == 2:
            raise Step(READ_CR0)  # a 16-bit register or memory: 16 bits stored, as the engine does
        # SMSW r32/r64: CR0's bits, zero-extended into the whole register (the engine wrote 16).
        name = insn.reg_name(operand.reg)
        self.cpu.regs.reg_write(getattr(X, f"UC_X86_REG_{_WIDE.get(name, name).upper()}"),
                                self.cpu.regs.reg_read(X.UC_X86_REG_CR0) & 0xFFFFFFFF)
        self.cpu.advance(insn.size)

    def _cr8(self, write: bool) -> None:
        """CR8 is the local APIC's TPR bits 7:4 (SDM 10.8.6.1); QEMU's own APIC, which unicorn
        does not have, would hold it. Without an APIC model the engine's CR8 stays."""
        apic = self.apic
        mov = None if apic is None else self._mov_cr()
        if apic is None or mov is None or mov.to_cr != write:
            raise Step(WRITE_CR8 if write else READ_CR8)
        regs = self.cpu.regs
        if write:
            value = regs.reg_read(mov.register)
            if value >> 4:
                self.cpu.deliver(13, error=0)  # bits 63:4 are reserved
                return
            apic.set_task_priority(value << 4)
        else:
            regs.reg_write(mov.register, apic.task_priority() >> 4)
        self.cpu.advance(mov.size)

    def _umip_fault(self) -> bool:
        """#GP(0) for a UMIP instruction at CPL > 0 with CR4.UMIP set (SDM, 2.5); True if given."""
        if self.cpu.cpl() and self.cpu.regs.reg_read(X.UC_X86_REG_CR4) & CR4_UMIP:
            self.cpu.deliver(13, error=0)
            return True
        return False

    def _umip_read(self, code: int) -> None:
        if not self._umip_fault():
            raise Step(code)

    # --- real-mode iret -----------------------------------------------------------------------

    def _iret_real(self) -> None:
        """IRET in real mode, done here as QEMU's helper does it (SP 16 bits wide, NMIs unblocked)
        but for RF: a processor clears RF once the instruction after the iret completes, and
        unicorn keeps it (its pushf then shows it). It is cleared at once here, unless a debug
        register could match that next instruction, the only place the difference shows."""
        regs = self.cpu.regs
        # Real-mode code is 16-bit: 66 CF is IRETD (no other prefix changes what iret does).
        wide = self.cpu.read_linear(self.cpu.linear_pc(), 1) == b"\x66"
        esp = regs.reg_read(X.UC_X86_REG_ESP)
        sp = esp & 0xFFFF
        stack = regs.reg_read(X.UC_X86_REG_SS) << 4
        size = 4 if wide else 2
        if sp + 3 * size <= 0x10000:
            data = self.cpu.read_linear(stack + sp, 3 * size)
            words = [int.from_bytes(data[k * size:(k + 1) * size], "little") for k in range(3)]
        else:  # the frame wraps around the 64 KiB segment
            words = [int.from_bytes(self.cpu.read_linear(stack + ((sp + k * size) & 0xFFFF), size), "little")
                     for k in range(3)]
        ip, cs, image = words
        mask = _IRET_REAL_MASK if wide else _IRET_REAL_MASK & 0xFFFF
        mask |= _ARITHMETIC_AND_DF  # always loaded
        flags = (regs.reg_read(X.UC_X86_REG_EFLAGS) & ~mask) | (image & mask) | 0x2
        if not regs.reg_read(X.UC_X86_REG_DR7) & 0xFF:
            flags &= ~RFLAGS_RF
        regs.reg_write(X.UC_X86_REG_ESP, (esp & ~0xFFFF) | ((sp + 3 * size) & 0xFFFF))
        regs.reg_write(X.UC_X86_REG_CS, cs & 0xFFFF)
        regs.reg_write(X.UC_X86_REG_RIP, ip if wide else ip & 0xFFFF)
        regs.reg_write(X.UC_X86_REG_EFLAGS, flags)
        self.cpu.unblock_nmi()

    # --- descriptor-table loads ---------------------------------------------------------------

    def _table_load(self, code: int) -> None:
        """lgdt, lidt, lldt and ltr in 64-bit mode load a 64-bit base, which must be canonical
        (#GP(0) for lgdt/lidt, #GP(selector) for the descriptor of lldt/ltr; SDM instruction
        reference); unicorn loads any. Elsewhere, and for canonical bases, the engine runs it."""
        cpu = self.cpu
        cs = cpu.segment("cs")
        if not cs["l"] or not cpu.regs.msr_read(EFER) & EFER_LMA:
            raise Step(code)
        insn = cpu.decode()
        if insn is None or not insn.operands:
            raise Step(code)
        operand = insn.operands[0]
        if code in (GDTR_WRITE, IDTR_WRITE):
            if operand.type != _OP_MEM:
                raise Step(code)
            base = int.from_bytes(cpu.read_linear(cpu.effective_address(insn, operand) + 2, 8), "little")
            if not canonical(base):
                cpu.deliver(13, error=0)
                return
            raise Step(code)
        if operand.type == _OP_REG:
            selector = cpu.regs.reg_read(_register(insn, operand.reg)) & 0xFFFF
        else:
            selector = int.from_bytes(cpu.read_linear(cpu.effective_address(insn, operand), 2), "little")
        index = selector & ~7
        _, gdt, limit, _ = cpu.regs.reg_read(X.UC_X86_REG_GDTR)
        if selector & 4 or index == 0 or index + 15 > limit:
            raise Step(code)  # the LDT, a null selector, past the GDT: the engine's faults
        raw = cpu.read_linear(gdt + index, 16)
        base = (int.from_bytes(raw[2:5], "little") | raw[7] << 24 | int.from_bytes(raw[8:12], "little") << 32)
        if not canonical(base):
            cpu.deliver(13, error=selector & 0xFFFC)
            return
        raise Step(code)

    # --- MSRs ---------------------------------------------------------------------------------

    def _msr(self, write: bool) -> None:
        regs = self.cpu.regs
        index = regs.reg_read(X.UC_X86_REG_ECX) & 0xFFFFFFFF
        if write:
            value = (regs.reg_read(X.UC_X86_REG_EDX) & 0xFFFFFFFF) << 32 | regs.reg_read(X.UC_X86_REG_EAX) & 0xFFFFFFFF
            outcome = self.msrs.write(index, value)
        else:
            outcome = self.msrs.read(index)
        if outcome is None:
            self.cpu.deliver(13, error=0)
            return
        if not write:
            regs.reg_write(X.UC_X86_REG_RAX, outcome & 0xFFFFFFFF)
            regs.reg_write(X.UC_X86_REG_RDX, outcome >> 32)
        self.cpu.advance(2)  # rdmsr and wrmsr are 0F 32 and 0F 30 (prefixes do not apply)
        if write and index == EFER:
            self.follow_state()


class MovCr(NamedTuple):
    """A decoded ``mov`` to (0F 22 /r) or from (0F 20 /r) a control register."""

    to_cr: bool
    cr: int
    register: int  # unicorn's number of the general register: 64-bit in 64-bit code, else 32-bit
    size: int  # the instruction's length in bytes


#: Prefixes that do not change a mov to or from a CR: the operand is 32 bits outside 64-bit
#: code and 64 bits in it whatever 66/67 say, and it is a register, so no segment applies.
_IGNORED_PREFIXES = frozenset((0x66, 0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65))


def decode_mov_cr(code: bytes, bits: int) -> MovCr | None:
    """``code`` (at least the instruction's bytes) as a mov to or from a CR, else None.

    The common case of every CR intercept, decoded here so it needs no disassembler: the
    ModRM byte's reg field is the CR (REX.R adds 8) and its r/m field the register (REX.B
    adds 8), whatever its mod bits say (SDM, MOV—Move to/from Control Registers). A LOCK
    prefix (AMD's other encoding of CR8) or any other prefix is left to the disassembler.
    """
    at, rex = 0, 0
    while at < len(code) and code[at] in _IGNORED_PREFIXES:
        at += 1
    if bits == 64 and at < len(code) and code[at] & 0xF0 == 0x40:
        rex = code[at]
        at += 1
    if at + 3 > len(code) or code[at] != 0x0F or code[at + 1] not in (0x20, 0x22):
        return None
    modrm = code[at + 2]
    cr = (modrm >> 3 & 7) | (rex & 4) << 1
    number = (modrm & 7) | (rex & 1) << 3
    register = (_GPR64 if bits == 64 else _GPR32)[number]  # no REX outside 64-bit code: below 8
    return MovCr(to_cr=code[at + 1] == 0x22, cr=cr, register=register, size=at + 3)


_OP_REG, _OP_MEM = 1, 3  # capstone's X86_OP_REG and X86_OP_MEM


def _register(insn: Any, reg: int) -> int:
    """unicorn's number for capstone's register ``reg`` of ``insn``."""
    return int(getattr(X, f"UC_X86_REG_{insn.reg_name(reg).upper()}"))
#: A 32-bit register's 64-bit whole: a 32-bit result is zero-extended into it in 64-bit mode,
#: and outside it the upper half is not visible.
_WIDE = {f"e{r}": f"r{r}" for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")}
_WIDE.update({f"r{n}d": f"r{n}" for n in range(8, 16)})
#: unicorn's numbers of the general registers in encoding order (ModRM r/m, plus REX.B).
_ORDER = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
_GPR32 = tuple(getattr(X, f"UC_X86_REG_E{r.upper()}") for r in _ORDER) if X is not None else ()
_GPR64 = (tuple(getattr(X, f"UC_X86_REG_R{r.upper()}") for r in _ORDER)
          + tuple(getattr(X, f"UC_X86_REG_R{n}") for n in range(8, 16))) if X is not None else ()
