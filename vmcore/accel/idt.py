"""Delivering an interrupt or exception through the guest's IDT, as an x86 does, for a CPU that leaves it to us.

unicorn reports exceptions and software interrupts to a hook instead of delivering them
(and external interrupts are ours to inject), so the software CPU delivers them here,
following the Intel SDM (volume 3, chapter 6, "Interrupt and Exception Handling"):

- real mode: the IVT entry, a FLAGS/CS/IP frame;
- protected and long mode: the IDT gate (interrupt or trap gate; 32-bit gates in
  protected mode, 64-bit ones in long mode), checked as hardware checks it: beyond the
  IDT's limit or not an interrupt/trap gate is #GP, not present is #NP, a software
  ``int n`` (``int3``, ``into``) through a gate whose DPL is below CPL is #GP, each with
  the IDT error code (vector * 8 + 2, plus EXT for an event the program did not ask for);
- a handler at a more privileged level runs on the stack the TSS names for it (long mode:
  RSP0-2, or the gate's IST stack whatever the level; protected mode: SS0:ESP0-SS2:ESP2),
  with the old SS:(E/R)SP pushed; long mode always pushes SS:RSP and aligns RSP to 16;
- the frame holds the error code of #DF, #TS, #NP, #SS, #GP, #PF and #AC raised by the
  CPU; the RFLAGS image of a fault has RF set, so the return does not fault again on a
  breakpoint; TF, NT, RF and VM are cleared and, for an interrupt gate, IF;
- a fault while delivering (a stack page not present: #PF with CR2; a bad gate or code
  segment) becomes the exception delivered instead, or #DF where the two are contributory
  (#DE, #TS, #NP, #SS, #GP) or a #PF meets a #PF or a contributory one; a fault while
  delivering #DF is a triple fault, which stops the machine (``shutdown``), as on a PC.

Not modelled (a stop that says so): task gates and hardware task switches, 16-bit gates,
virtual-8086 mode, handlers in the LDT.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from ..cpu import Segment, translate
from ..memory import GuestMemory
from ..stop import StopReason
from .core import CpuStop

try:
    from .engine import X
except ImportError:  # pragma: no cover - the software CPU says so
    X = None

PAGE = 0x1000
DE, DB, NMI, BP, OF, BR, UD, NM, DF, TS, NP, SS, GP, PF, MF, AC, MC, XM = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19)
#: The exceptions that push an error code (when the CPU raises them, not ``int n``).
ERROR_CODE_VECTORS = frozenset((DF, TS, NP, SS, GP, PF, AC))
#: Faults: the frame's RIP is the faulting instruction's, and RF is set in the RFLAGS image.
FAULT_VECTORS = frozenset((DE, BR, UD, NM, TS, NP, SS, GP, PF, MF, AC, XM, 20))
CONTRIBUTORY = frozenset((DE, TS, NP, SS, GP))

_FLAG_TF, _FLAG_IF, _FLAG_NT, _FLAG_RF, _FLAG_VM, _FLAG_AC = 1 << 8, 1 << 9, 1 << 14, 1 << 16, 1 << 17, 1 << 18
_GATE_INTERRUPT, _GATE_TRAP, _GATE_TASK = 0xE, 0xF, 0x5
_MSR_EFER, _EFER_LMA = 0xC0000080, 1 << 10
_PF_WRITE = 1 << 1


class Fault(Exception):
    """An exception the delivery itself raised (vector, error code)."""

    def __init__(self, vector: int, error: int = 0) -> None:
        super().__init__(vector, error)
        self.vector, self.error = vector, error


def double_faults(first: int, second: int) -> bool:
    """SDM table 6-5: a second exception while delivering the first makes #DF."""
    if first in CONTRIBUTORY and second in CONTRIBUTORY:
        return True
    return first == PF and (second == PF or second in CONTRIBUTORY)


class IdtDelivery:
    """Delivers events into a CPU reached through ``regs`` (reg_read/reg_write/msr_read, 64-bit wide).

    ``stop_reason(kind, message)`` builds the report of a stop (a triple fault).
    """

    def __init__(self, regs: Any, memory: GuestMemory, stop_reason: Callable[[str, str], StopReason],
                 set_cpl: Callable[[int], None] | None = None) -> None:
        self.regs = regs
        self.memory = memory
        self.stop_reason = stop_reason
        #: Makes the CPU's privilege level the handler's before its segments are loaded (a CPU
        #: whose segment loads are checked against the current CPL, as unicorn's are).
        self.set_cpl = set_cpl

    # --- the entry point ------------------------------------------------------------------

    def deliver(self, vector: int, *, error: int | None = None, software: bool = False, external: bool = False) -> None:
        """Deliver ``vector``: an exception the CPU raised (with ``error`` if it has one), a
        software interrupt (``software``: ``int n``, ``int3``, ``into``) or an external one."""
        while True:
            try:
                if not self.regs.reg_read(X.UC_X86_REG_CR0) & 1:
                    self._real_mode(vector)
                else:
                    self._protected(vector, error, software, external)
                return
            except Fault as fault:
                if software:
                    self._rewind_software_interrupt()
                if vector == DF:
                    raise self._shutdown(f"triple fault: {_name(fault.vector)} while delivering #DF") from None
                if not software and not external and double_faults(vector, fault.vector):
                    vector, error = DF, 0
                else:
                    vector, error = fault.vector, fault.error
                software = external = False

    def _rewind_software_interrupt(self) -> None:
        """A fault while delivering ``int n``, ``int3`` or ``into`` is raised at that instruction, so
        the handler's iret runs it again: RIP goes back from the next instruction to it."""
        regs = self.regs
        ip = regs.reg_read(X.UC_X86_REG_RIP)
        try:
            before = self._read(self._segment_base(regs.reg_read(X.UC_X86_REG_CS)) + ip - 2, 2)
        except Fault:
            return
        if before[0] == 0xCD:  # int imm8
            regs.reg_write(X.UC_X86_REG_RIP, ip - 2)
        elif before[1] in (0xCC, 0xCE):  # int3, into
            regs.reg_write(X.UC_X86_REG_RIP, ip - 1)

    def _shutdown(self, message: str) -> CpuStop:
        return CpuStop(self.stop_reason("shutdown", message))

    # --- real mode --------------------------------------------------------------------------

    def _real_mode(self, vector: int) -> None:
        regs = self.regs
        _, base, limit, _ = regs.reg_read(X.UC_X86_REG_IDTR)
        if vector * 4 + 3 > limit:
            raise self._shutdown(f"triple fault: vector {vector} is beyond the real-mode IVT limit {limit:#x}")
        offset, segment = struct.unpack("<HH", self.memory.read(base + vector * 4, 4))
        sp = regs.reg_read(X.UC_X86_REG_SP)
        ss_base = regs.reg_read(X.UC_X86_REG_SS) << 4
        flags = regs.reg_read(X.UC_X86_REG_EFLAGS)
        frame = struct.pack("<HHH", regs.reg_read(X.UC_X86_REG_EIP) & 0xFFFF, regs.reg_read(X.UC_X86_REG_CS),
                            flags & 0xFFFF)
        sp = (sp - 6) & 0xFFFF
        self._push_real(ss_base + sp, frame)
        regs.reg_write(X.UC_X86_REG_SP, sp)
        # SDM, INT n (real-address mode): IF, TF and AC cleared; RF too, as for any interrupt.
        regs.reg_write(X.UC_X86_REG_EFLAGS, flags & ~(_FLAG_IF | _FLAG_TF | _FLAG_AC | _FLAG_RF))
        regs.reg_write(X.UC_X86_REG_CS, segment)
        regs.reg_write(X.UC_X86_REG_EIP, offset)  # all of EIP: writing IP keeps bits 31:16

    def _push_real(self, address: int, frame: bytes) -> None:
        """Write a real-mode frame; bytes landing in ROM are dropped, as the CPU's would be."""
        for i, byte in enumerate(frame):
            slot = self.memory.slot_at(address + i)
            if slot is None:
                raise self._shutdown(f"triple fault: stack at {address + i:#x} is not memory")
            if not slot.readonly:
                slot.view[address + i - slot.base] = byte

    # --- protected and long mode ------------------------------------------------------------

    def _protected(self, vector: int, error: int | None, software: bool, external: bool) -> None:
        regs = self.regs
        long_mode = bool(regs.msr_read(_MSR_EFER) & _EFER_LMA)
        ext = 0 if software else 1
        idt_error = vector * 8 + 2 + ext
        _, base, limit, _ = regs.reg_read(X.UC_X86_REG_IDTR)
        size = 16 if long_mode else 8
        if vector * size + size - 1 > limit:
            raise Fault(GP, idt_error)
        gate = self._read(base + vector * size, size)
        offset_low, selector, ist, attributes, offset_mid = struct.unpack_from("<HHBBH", gate)
        offset = offset_low | offset_mid << 16
        if long_mode:
            offset |= struct.unpack_from("<I", gate, 8)[0] << 32
        kind, dpl, present = attributes & 0xF, (attributes >> 5) & 3, attributes & 0x80
        if kind == _GATE_TASK and present:
            raise self._shutdown(f"{_name(vector)} through a task gate: hardware task switches are not modelled")
        if kind not in (_GATE_INTERRUPT, _GATE_TRAP):
            raise Fault(GP, idt_error)
        cs = regs.reg_read(X.UC_X86_REG_CS)
        cpl = cs & 3
        if software and dpl < cpl:
            raise Fault(GP, vector * 8 + 2)
        if not present:
            raise Fault(NP, idt_error)
        code = self._descriptor(selector, ext)
        if code is None or not code.type & 0x8:  # not a code segment
            raise Fault(GP, (selector & 0xFFFC) + ext)
        if not code.present:
            raise Fault(NP, (selector & 0xFFFC) + ext)
        new_cpl = cpl if code.type & 0x4 else code.dpl  # conforming code keeps CPL
        if new_cpl > cpl:
            raise Fault(GP, (selector & 0xFFFC) + ext)

        flags = regs.reg_read(X.UC_X86_REG_EFLAGS)
        image = flags | _FLAG_RF if vector in FAULT_VECTORS and not software and not external else flags & ~_FLAG_RF
        pushes_error = vector in ERROR_CODE_VECTORS and not software and not external
        ip = regs.reg_read(X.UC_X86_REG_RIP if long_mode else X.UC_X86_REG_EIP)
        ss = regs.reg_read(X.UC_X86_REG_SS)
        old_sp = regs.reg_read(X.UC_X86_REG_RSP if long_mode else X.UC_X86_REG_ESP)
        if long_mode:
            if ist:
                sp = self._tss64(36 + 8 * (ist - 1))
            elif new_cpl < cpl:
                sp = self._tss64(4 + 8 * new_cpl)
            else:
                sp = old_sp
            new_ss = new_cpl if new_cpl < cpl else ss  # a privilege change loads a null SS with RPL = CPL
            frame = [ss, old_sp, image, cs, ip] + ([error or 0] if pushes_error else [])
            sp = (sp & ~0xF) - 8 * len(frame)
            self._write(sp, struct.pack(f"<{len(frame)}Q", *reversed(frame)))
        else:
            if new_cpl < cpl:
                sp, new_ss = self._tss32(new_cpl)
                frame = [ss, old_sp]
            else:
                sp, new_ss, frame = old_sp, ss, []
            frame += [image, cs, ip] + ([error or 0] if pushes_error else [])
            stack_base = self._segment_base(new_ss)
            sp = (sp - 4 * len(frame)) & 0xFFFFFFFF
            words = [value & 0xFFFFFFFF for value in reversed(frame)]
            self._write(stack_base + sp, struct.pack(f"<{len(words)}I", *words))
        cleared = _FLAG_TF | _FLAG_NT | _FLAG_RF | _FLAG_VM | (_FLAG_IF if kind == _GATE_INTERRUPT else 0)
        regs.reg_write(X.UC_X86_REG_EFLAGS, flags & ~cleared)
        if new_cpl != cpl and self.set_cpl is not None:
            self.set_cpl(new_cpl)
        if new_ss != ss:
            regs.reg_write(X.UC_X86_REG_SS, new_ss)
        regs.reg_write(X.UC_X86_REG_CS, (selector & 0xFFFC) | new_cpl)
        if long_mode:
            regs.reg_write(X.UC_X86_REG_RSP, sp)
            regs.reg_write(X.UC_X86_REG_RIP, offset)
        else:
            regs.reg_write(X.UC_X86_REG_ESP, sp)
            regs.reg_write(X.UC_X86_REG_EIP, offset & 0xFFFFFFFF)

    # --- descriptors and the TSS ------------------------------------------------------------

    def _descriptor(self, selector: int, ext: int) -> Segment | None:
        """The segment a GDT selector names; None for the null selector."""
        if selector & 4:
            raise self._shutdown(f"a handler's code segment {selector:#x} is in the LDT, which is not modelled")
        index = selector & ~7
        if index == 0:
            return None
        _, base, limit, _ = self.regs.reg_read(X.UC_X86_REG_GDTR)
        if index + 7 > limit:
            raise Fault(GP, (selector & 0xFFFC) + ext)
        return Segment.from_descriptor(selector, int.from_bytes(self._read(base + index, 8), "little"))

    def _segment_base(self, selector: int) -> int:
        described = self._descriptor(selector, 1) if selector & ~7 else None
        return 0 if described is None else described.base

    def _tss_base(self) -> int:
        tr = self.regs.reg_read(X.UC_X86_REG_TR)
        selector, base = tr[0], tr[1]
        if not selector & ~7:
            raise Fault(TS, 0)
        return base

    def _tss64(self, offset: int) -> int:
        return int(struct.unpack("<Q", self._read(self._tss_base() + offset, 8))[0])

    def _tss32(self, cpl: int) -> tuple[int, int]:
        esp, ss = struct.unpack("<IH", self._read(self._tss_base() + 4 + 8 * cpl, 6))
        return esp, ss | cpl

    # --- memory through the guest's page tables ---------------------------------------------

    def _physical(self, linear: int, write: bool) -> int:
        regs = self.regs
        physical = translate(self.memory, regs.reg_read(X.UC_X86_REG_CR0), regs.reg_read(X.UC_X86_REG_CR3),
                             regs.reg_read(X.UC_X86_REG_CR4), regs.msr_read(_MSR_EFER), linear)
        if physical is None:
            regs.reg_write(X.UC_X86_REG_CR2, linear)
            raise Fault(PF, _PF_WRITE if write else 0)
        return physical

    def _read(self, linear: int, length: int) -> bytes:
        data = b""
        while len(data) < length:
            here = linear + len(data)
            chunk = min(length - len(data), PAGE - (here & (PAGE - 1)))
            physical = self._physical(here, write=False)
            if self.memory.slot_at(physical) is None:
                raise self._shutdown(f"the CPU read its tables at {here:#x}, which is not RAM or ROM")
            data += self.memory.read(physical, chunk)
        return data

    def _write(self, linear: int, data: bytes) -> None:
        """Write a stack frame page by page; a page not present is #PF, memory that is not RAM a stop."""
        done = 0
        while done < len(data):
            here = linear + done
            physical = self._physical(here, write=True)
            slot = self.memory.slot_at(physical)
            if slot is None or slot.readonly:
                raise self._shutdown(f"triple fault: stack at {here:#x} is not writable RAM")
            chunk = min(len(data) - done, PAGE - (here & (PAGE - 1)))
            self.memory.write(physical, data[done:done + chunk])
            done += chunk


_NAMES = {DE: "#DE", DB: "#DB", NMI: "NMI", BP: "#BP", OF: "#OF", BR: "#BR", UD: "#UD", NM: "#NM", DF: "#DF",
          TS: "#TS", NP: "#NP", SS: "#SS", GP: "#GP", PF: "#PF", MF: "#MF", AC: "#AC", MC: "#MC", XM: "#XM"}


def _name(vector: int) -> str:
    return _NAMES.get(vector, f"vector {vector}")
