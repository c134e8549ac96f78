"""The vCPU in a form both accelerators read and write: a snapshot's ``portable`` part.

Each accelerator saves its vCPU in its own words (KVM's kvm_regs/kvm_sregs/kvm_fpu/
kvm_vcpu_events, the software CPU's engine block) so that restoring on the same one loses
nothing, and also in this common form, so that a snapshot made on one can go on on the other:

- ``registers``: rax..r15, rip, rflags; ``control``: cr0, cr2, cr3, cr4, efer.
- ``segments``: es, cs, ss, ds, fs, gs, ldt, tr, each with its hidden part as the CPU loaded it
  (selector, base, limit and the descriptor's attributes: type, s, dpl, present, db, l, g, avl,
  KVM's kvm_segment fields); ``tables``: gdt and idt (base, limit).
- ``fpu``: the x87 registers by physical number (R0-R7, 80 bits each as 20 hex digits; ST(i) is
  R((TOP + i) mod 8), TOP in fsw bits 13:11), fcw, fsw, the abridged tag byte (FXSAVE's: bit i
  set when Ri holds a value), fop, fip, fdp, mxcsr and xmm0-15.
- ``events``: the interrupt shadow (the instruction after sti or mov ss) and NMI blocking.
- ``debug``: DR0-DR3, DR6, DR7; ``xcr0`` (in ``control``): the XSAVE components the OS turned on.
  Both where the accelerator gives them (older snapshots and engines without them leave them out).
- ``tsc`` (the software CPU's, on a host clock): where the time-stamp counter was, so that KVM
  goes on from there; the software CPU's TSC is the host's and cannot be set, so the other way
  it jumps ahead to the host's count.

What only one of them can hold is not carried: an event KVM was about to inject (an interrupt
taken from the PIC, an exception) makes the snapshot unportable, saying so (``refused``).
MSRs travel beside this part, in the snapshot's ``msrs``.

The attribute bits are QEMU's (``flags``, the descriptor's high word masked: type 11:8, S 12,
DPL 14:13, P 15, AVL 20, L 21, D/B 22, G 23), which is how the software CPU keeps them; the
conversions follow what QEMU's KVM glue does between the two (target/i386/kvm.c, set_seg and
get_seg).
"""

from __future__ import annotations

import ctypes
from typing import Any

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "efer")
#: Segment registers in the software CPU's order (QEMU's R_ES..R_GS, then LDT and TR).
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr")
TABLES = ("gdt", "idt")
DEBUG = ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")
ATTRIBUTES = ("type", "s", "dpl", "present", "db", "l", "g", "avl")

_TYPE_SHIFT, _S, _DPL_SHIFT, _P, _AVL, _L, _B, _G = 8, 1 << 12, 13, 1 << 15, 1 << 20, 1 << 21, 1 << 22, 1 << 23
_CR0_PE = 1
_VALUE_BITS = {"selector": 16, "base": 64, "limit": 32}


class Unportable(ValueError):
    """A saved vCPU without a portable part this accelerator can take (the reason says why)."""


def attributes_of_flags(flags: int) -> dict[str, int]:
    """kvm_segment's attribute fields from QEMU's ``flags``."""
    return {"type": flags >> _TYPE_SHIFT & 0xF, "s": int(bool(flags & _S)), "dpl": flags >> _DPL_SHIFT & 3,
            "present": int(bool(flags & _P)), "db": int(bool(flags & _B)), "l": int(bool(flags & _L)),
            "g": int(bool(flags & _G)), "avl": int(bool(flags & _AVL))}


def flags_of(segment: dict[str, int]) -> int:
    """QEMU's ``flags`` from a portable segment's attributes."""
    return ((segment["type"] & 0xF) << _TYPE_SHIFT | (_S if segment["s"] else 0) | (segment["dpl"] & 3) << _DPL_SHIFT
            | (_P if segment["present"] else 0) | (_AVL if segment["avl"] else 0) | (_L if segment["l"] else 0)
            | (_B if segment["db"] else 0) | (_G if segment["g"] else 0))


def segment_from_kvm(kvm_segment: Any) -> dict[str, int]:
    """A kvm_segment as a portable segment: an unusable one is not present (as QEMU reads it)."""
    segment = {name: int(getattr(kvm_segment, name)) for name in ("selector", "base", "limit", *ATTRIBUTES)}
    if kvm_segment.unusable:
        segment["present"] = 0
    return segment


def fill_kvm_segment(kvm_segment: Any, name: str, segment: dict[str, int], cr0: int) -> None:
    """Write a portable segment into a kvm_segment.

    In real mode the software CPU (QEMU's TCG) loads a segment's selector and base only,
    leaving its limit and attributes as they were (none at all for a segment reset never
    loaded), and checks no limit; a real CPU, and so KVM, checks both. So there a segment
    the software CPU left without attributes is given a real-mode load's (present, S,
    read/write data; CS code), and a limit under 64 KiB is raised to it: the guest keeps
    reaching what it reached. A larger limit (unreal mode) stays.
    """
    for field in ("selector", "base", "limit", *ATTRIBUTES):
        setattr(kvm_segment, field, segment[field])
    kvm_segment.unusable = 0 if segment["present"] else 1
    if not cr0 & _CR0_PE and name not in ("ldt", "tr"):
        if not segment["present"]:
            kvm_segment.present, kvm_segment.s, kvm_segment.unusable = 1, 1, 0
            kvm_segment.type = 0xB if name == "cs" else 3
        kvm_segment.limit = max(segment["limit"], 0xFFFF)


def abridged_tags(full: int) -> int:
    """FXSAVE's tag byte from the full x87 tag word (2 bits a register, 3 = empty)."""
    return sum(1 << i for i in range(8) if (full >> (2 * i)) & 3 != 3)


def full_tags(abridged: int) -> int:
    """The full tag word from FXSAVE's byte: a register in use is tagged valid (0), as QEMU keeps
    only "empty or not" (FNSTENV works out zero and special from the value)."""
    return sum(3 << (2 * i) for i in range(8) if not abridged >> i & 1)


def check(portable: Any) -> dict[str, Any]:
    """``portable`` if it is a whole portable vCPU, else a ValueError naming what is wrong: a file
    made to look like a snapshot must not half-restore a vCPU."""
    if not isinstance(portable, dict):
        raise ValueError("the portable vCPU is not an object")
    if "refused" in portable:
        raise Unportable(str(portable["refused"]))
    try:
        _numbers(portable["registers"], GPRS, 64)
        _numbers(portable["control"], CONTROL, 64)
        for name in SEGMENTS:
            segment = portable["segments"][name]
            _numbers(segment, tuple(_VALUE_BITS), None)
            for field, bits in _VALUE_BITS.items():
                _fits(segment[field], bits, f"{name}.{field}")
            _numbers(segment, ATTRIBUTES, 4)
        for name in TABLES:
            _numbers(portable["tables"][name], ("base", "limit"), 64)
        fpu = portable["fpu"]
        _numbers(fpu, ("fcw", "fsw", "ftw", "fop"), 16)
        _numbers(fpu, ("fip", "fdp", "mxcsr"), 64)
        if len(fpu["st"]) != 8 or any(len(bytes.fromhex(value)) != 10 for value in fpu["st"]):
            raise ValueError("fpu.st is not eight 80-bit registers")
        if len(fpu["xmm"]) != 16:
            raise ValueError("fpu.xmm is not sixteen registers")
        for value in fpu["xmm"]:
            _fits(value, 128, "fpu.xmm")
        _numbers(portable["events"], ("shadow", "nmi_masked"), 1)
        if "tsc" in portable:
            _fits(portable["tsc"], 64, "tsc")
        if "xcr0" in portable["control"]:
            _fits(portable["control"]["xcr0"], 64, "xcr0")
        if "debug" in portable:
            _numbers(portable["debug"], DEBUG, 64)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the portable vCPU lacks {exc}") from None
    return portable


def _numbers(values: Any, names: tuple[str, ...], bits: int | None) -> None:
    for name in names:
        if bits is not None:
            _fits(values[name], bits, name)
        elif not isinstance(values[name], int):
            raise ValueError(f"{name} is not a number")


def _fits(value: Any, bits: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise ValueError(f"{name} is not a number of {bits} bits: {value!r}")


# --- KVM's structures -----------------------------------------------------------------------------


def from_kvm(regs: Any, sregs: Any, fpu: Any, events: Any, debugregs: Any = None, xcrs: Any = None) -> dict[str, Any]:
    """The portable vCPU from KVM's kvm_regs, kvm_sregs, kvm_fpu and kvm_vcpu_events (and
    kvm_debugregs, kvm_xcrs where KVM gives them); a ``refused`` one when KVM holds an event in
    flight that the software CPU has no place for."""
    in_flight = []
    if any(sregs.interrupt_bitmap) or events.interrupt.injected:
        in_flight.append("an interrupt taken from the interrupt controller, not yet delivered")
    if events.exception.injected or events.exception.pending:
        in_flight.append(f"exception {events.exception.nr}")
    if events.nmi.injected or events.nmi.pending:
        in_flight.append("an NMI")
    if in_flight:
        return {"refused": f"KVM was delivering {' and '.join(in_flight)} when the snapshot was made: it "
                           "restores on KVM only (save at another point to move it)"}
    top = fpu.fsw >> 11 & 7
    physical = [b""] * 8
    for i in range(8):  # kvm_fpu (FXSAVE) keeps ST(0)..ST(7); the portable form keeps R0..R7
        physical[(top + i) & 7] = bytes(fpu.fpr[i])[:10]
    state = {
        "registers": {name: int(getattr(regs, name)) for name in GPRS},
        "control": {name: int(getattr(sregs, name)) for name in CONTROL},
        "segments": {name: segment_from_kvm(getattr(sregs, name)) for name in SEGMENTS},
        "tables": {name: {"base": int(getattr(sregs, name).base), "limit": int(getattr(sregs, name).limit)}
                   for name in TABLES},
        "fpu": {"fcw": int(fpu.fcw), "fsw": int(fpu.fsw), "ftw": int(fpu.ftwx), "fop": int(fpu.last_opcode),
                "fip": int(fpu.last_ip), "fdp": int(fpu.last_dp), "mxcsr": int(fpu.mxcsr),
                "st": [value.hex() for value in physical],
                "xmm": [int.from_bytes(bytes(value), "little") for value in fpu.xmm]},
        "events": {"shadow": int(bool(events.interrupt.shadow)), "nmi_masked": int(bool(events.nmi.masked))},
    }
    if debugregs is not None:
        state["debug"] = {**{f"dr{i}": int(debugregs.db[i]) for i in range(4)}, "dr6": int(debugregs.dr6),
                          "dr7": int(debugregs.dr7)}
    if xcrs is not None:
        xcr0 = [int(xcrs.xcrs[i].value) for i in range(min(xcrs.nr_xcrs, 16)) if xcrs.xcrs[i].xcr == 0]
        if xcr0:
            state["control"]["xcr0"] = xcr0[0]
    return state


def to_kvm(portable: dict[str, Any], regs: Any, sregs: Any, fpu: Any, events: Any, debugregs: Any = None,
           xcrs: Any = None) -> None:
    """Write a checked portable vCPU into KVM's structures (as got from the vCPU: what the portable
    form does not hold, the APIC base and CR8, stays KVM's)."""
    if debugregs is not None and "debug" in portable:
        for i in range(4):
            debugregs.db[i] = portable["debug"][f"dr{i}"]
        debugregs.dr6, debugregs.dr7 = portable["debug"]["dr6"], portable["debug"]["dr7"]
    if xcrs is not None and "xcr0" in portable["control"]:
        xcrs.nr_xcrs, xcrs.flags = 1, 0
        xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, portable["control"]["xcr0"]
    for name in GPRS:
        setattr(regs, name, portable["registers"][name])
    control = portable["control"]
    for name in CONTROL:
        setattr(sregs, name, control[name])
    for name in SEGMENTS:
        fill_kvm_segment(getattr(sregs, name), name, portable["segments"][name], control["cr0"])
    for name in TABLES:
        table = getattr(sregs, name)
        table.base, table.limit = portable["tables"][name]["base"], portable["tables"][name]["limit"] & 0xFFFF
    for i in range(len(sregs.interrupt_bitmap)):
        sregs.interrupt_bitmap[i] = 0
    saved = portable["fpu"]
    top = saved["fsw"] >> 11 & 7
    for i in range(8):
        value = bytes.fromhex(saved["st"][(top + i) & 7]) + bytes(6)
        fpu.fpr[i][:] = list(value)
    fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_opcode = saved["fcw"], saved["fsw"], saved["ftw"] & 0xFF, saved["fop"]
    fpu.last_ip, fpu.last_dp, fpu.mxcsr = saved["fip"], saved["fdp"], saved["mxcsr"] & 0xFFFFFFFF
    for i, value in enumerate(saved["xmm"]):
        fpu.xmm[i][:] = list(value.to_bytes(16, "little"))
    # KVM_X86_SHADOW_INT_MOV_SS: the software CPU does not say which instruction made the shadow,
    # and both block interrupts for one instruction (QEMU's choice too).
    events.interrupt.shadow = 1 if portable["events"]["shadow"] else 0
    events.nmi.masked = portable["events"]["nmi_masked"]
    events.interrupt.injected = events.exception.injected = events.exception.pending = 0
    events.nmi.injected = events.nmi.pending = 0


# --- KVM's XSAVE area: where KVM keeps the x87/SSE state whole ------------------------------------
#
# KVM_GET_FPU and KVM_SET_FPU carry the same registers as the XSAVE area's legacy region, but a
# KVM may not keep all of them through those calls: the paravirtualized KVM these tests run on
# reports MXCSR as 0 and ignores it when set, where KVM_GET/SET_XSAVE keep it (QEMU uses XSAVE
# wherever KVM has it). So where KVM_CAP_XSAVE is, the x87/SSE state is read from and written to
# the XSAVE area, seen through a kvm_fpu.

_XSTATE_X87, _XSTATE_SSE = 1, 2
_XSTATE_BV = 512  # the XSAVE header's XSTATE_BV: components not in their initial state
_FX_ST, _FX_XMM = 32, 160  # the legacy region's registers, 16 bytes apart
_X87_INITIAL_FCW = 0x037F


def fpu_from_xsave(xsave: Any) -> Any:
    """A kvm_fpu holding the x87/SSE state of a kvm_xsave (its legacy region, a component whose
    XSTATE_BV bit is clear read as its initial state, as XRSTOR would load it)."""
    from ..kvm import structs

    raw = bytes(xsave)
    fpu = structs.kvm_fpu()
    present = int.from_bytes(raw[_XSTATE_BV:_XSTATE_BV + 8], "little")
    if present & _XSTATE_X87:
        fpu.fcw, fpu.fsw = int.from_bytes(raw[0:2], "little"), int.from_bytes(raw[2:4], "little")
        fpu.ftwx, fpu.last_opcode = raw[4], int.from_bytes(raw[6:8], "little")
        fpu.last_ip, fpu.last_dp = int.from_bytes(raw[8:16], "little"), int.from_bytes(raw[16:24], "little")
        for i in range(8):
            fpu.fpr[i][:] = list(raw[_FX_ST + 16 * i:_FX_ST + 16 * (i + 1)])
    else:
        fpu.fcw = _X87_INITIAL_FCW
    fpu.mxcsr = int.from_bytes(raw[24:28], "little")
    if present & _XSTATE_SSE:
        for i in range(16):
            fpu.xmm[i][:] = list(raw[_FX_XMM + 16 * i:_FX_XMM + 16 * (i + 1)])
    return fpu


def fpu_into_xsave(fpu: Any, xsave: Any) -> None:
    """Write a kvm_fpu's registers into a kvm_xsave's legacy region, the x87 and SSE components
    marked as holding them; the other components stay as they were."""
    raw = bytearray(bytes(xsave))
    raw[0:8] = (fpu.fcw.to_bytes(2, "little") + fpu.fsw.to_bytes(2, "little") + bytes([fpu.ftwx, 0])
                + fpu.last_opcode.to_bytes(2, "little"))
    raw[8:28] = fpu.last_ip.to_bytes(8, "little") + fpu.last_dp.to_bytes(8, "little") + fpu.mxcsr.to_bytes(4, "little")
    for i in range(8):
        raw[_FX_ST + 16 * i:_FX_ST + 16 * (i + 1)] = bytes(fpu.fpr[i])
    for i in range(16):
        raw[_FX_XMM + 16 * i:_FX_XMM + 16 * (i + 1)] = bytes(fpu.xmm[i])
    present = int.from_bytes(raw[_XSTATE_BV:_XSTATE_BV + 8], "little") | _XSTATE_X87 | _XSTATE_SSE
    raw[_XSTATE_BV:_XSTATE_BV + 8] = present.to_bytes(8, "little")
    ctypes.memmove(ctypes.addressof(xsave), bytes(raw), len(raw))
