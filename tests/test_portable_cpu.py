"""The vCPU's portable form (vmcore.accel.portable): KVM's structures and the software CPU's
segment caches read into it and written back from it without loss."""

from __future__ import annotations

import copy
import ctypes
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcore.accel import portable
from vmcore.kvm import structs as s

u8, u16, u32, u64 = (st.integers(0, (1 << bits) - 1) for bits in (8, 16, 32, 64))
bit = st.integers(0, 1)
attributes = st.fixed_dictionaries({"type": st.integers(0, 15), "s": bit, "dpl": st.integers(0, 3), "present": bit,
                                    "db": bit, "l": bit, "g": bit, "avl": bit})


def test_the_attribute_bits_are_where_the_descriptor_keeps_them() -> None:
    # A flat 32-bit ring-0 code segment's descriptor high word is 0x00CF9A00 (G, D, P, S, type 0xA).
    assert portable.attributes_of_flags(0x00CF9A00 & 0x00F0FF00) == {
        "type": 0xA, "s": 1, "dpl": 0, "present": 1, "db": 1, "l": 0, "g": 1, "avl": 0}
    # 64-bit code: L set, D clear; ring 3 (DPL in bits 14:13).
    assert portable.attributes_of_flags(0x0020FA00) == {
        "type": 0xA, "s": 1, "dpl": 3, "present": 1, "db": 0, "l": 1, "g": 0, "avl": 0}


@given(attributes)
def test_attributes_and_qemu_flags_convert_both_ways(fields: dict[str, int]) -> None:
    flags = portable.flags_of(fields)
    assert flags & ~0x00F0FF00 == 0  # only the bits QEMU keeps
    assert portable.attributes_of_flags(flags) == fields


@given(u8)
def test_the_abridged_tag_byte_and_the_full_tag_word_agree_on_what_is_empty(abridged: int) -> None:
    full = portable.full_tags(abridged)
    assert portable.abridged_tags(full) == abridged
    for i in range(8):
        assert (full >> (2 * i) & 3) == (0 if abridged >> i & 1 else 3)


def test_a_full_tag_of_zero_or_special_is_in_use_too() -> None:
    # Tags 1 (zero) and 2 (special) are registers holding a value: set in the abridged byte.
    assert portable.abridged_tags(0b11_11_11_11_11_10_01_00) == 0b0000_0111


def _random_kvm(draw: Any) -> tuple[Any, Any, Any, Any]:
    regs, sregs, fpu, events = s.kvm_regs(), s.kvm_sregs(), s.kvm_fpu(), s.kvm_vcpu_events()
    for name in portable.GPRS:
        setattr(regs, name, draw(u64))
    for name in portable.CONTROL:
        setattr(sregs, name, draw(u64))
    for name in portable.SEGMENTS:
        segment = getattr(sregs, name)
        segment.selector, segment.base, segment.limit = draw(u16), draw(u64), draw(u32)
        for field, value in draw(attributes).items():
            setattr(segment, field, value)
        segment.unusable = 0 if segment.present else 1
    for name in portable.TABLES:
        getattr(sregs, name).base, getattr(sregs, name).limit = draw(u64), draw(u16)
    for i in range(8):
        fpu.fpr[i][:] = list(draw(st.binary(min_size=10, max_size=10))) + [0] * 6
    for i in range(16):
        fpu.xmm[i][:] = list(draw(st.binary(min_size=16, max_size=16)))
    fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_opcode = draw(u16), draw(u16), draw(u8), draw(u16)
    fpu.last_ip, fpu.last_dp, fpu.mxcsr = draw(u64), draw(u64), draw(u32)
    events.interrupt.shadow, events.nmi.masked = draw(bit), draw(bit)
    return regs, sregs, fpu, events


@settings(max_examples=60)
@given(st.data())
def test_kvm_structures_go_through_the_portable_form_unchanged(data: Any) -> None:
    regs, sregs, fpu, events = _random_kvm(data.draw)
    sregs.cr0 |= 1  # protected mode: real mode's segments are adjusted for KVM (tested below)
    moved = portable.check(portable.from_kvm(regs, sregs, fpu, events))
    back = s.kvm_regs(), s.kvm_sregs(), s.kvm_fpu(), s.kvm_vcpu_events()
    portable.to_kvm(moved, *back)
    assert bytes(back[0]) == bytes(regs)
    assert bytes(back[1]) == bytes(sregs)
    assert bytes(back[2]) == bytes(fpu)
    assert (back[3].interrupt.shadow, back[3].nmi.masked) == (events.interrupt.shadow, events.nmi.masked)


def test_the_x87_stack_is_kept_by_physical_register() -> None:
    # FXSAVE (kvm_fpu) holds ST(0)..ST(7); with TOP = 5, ST(0) is R5 and ST(3) is R0.
    regs, sregs, fpu, events = s.kvm_regs(), s.kvm_sregs(), s.kvm_fpu(), s.kvm_vcpu_events()
    fpu.fsw = 5 << 11
    for i in range(8):
        fpu.fpr[i][:] = [0x10 + i] * 10 + [0] * 6
    moved = portable.from_kvm(regs, sregs, fpu, events)
    assert moved["fpu"]["st"][5] == "10" * 10 and moved["fpu"]["st"][0] == "13" * 10


def test_real_mode_segments_the_software_cpu_left_bare_are_usable_on_kvm() -> None:
    """QEMU's TCG loads a real-mode segment's selector and base only (reset leaves SS with no limit
    nor attributes) and checks no limit; KVM checks both, so they are made those of a real-mode load."""
    bare = {"selector": 0, "base": 0, "limit": 0, "type": 0, "s": 0, "dpl": 0, "present": 0, "db": 0, "l": 0,
            "g": 0, "avl": 0}
    ss, cs, tr = s.kvm_segment(), s.kvm_segment(), s.kvm_segment()
    portable.fill_kvm_segment(ss, "ss", bare, cr0=0x10)
    portable.fill_kvm_segment(cs, "cs", bare, cr0=0x10)
    portable.fill_kvm_segment(tr, "tr", bare, cr0=0x10)
    assert (ss.present, ss.s, ss.type, ss.limit, ss.unusable) == (1, 1, 3, 0xFFFF, 0)
    assert (cs.type, cs.limit) == (0xB, 0xFFFF)
    assert (tr.present, tr.unusable, tr.limit) == (0, 1, 0)  # not a real-mode segment: as it was
    unreal = {**bare, "limit": 0xFFFFFFFF, "present": 1, "s": 1, "type": 3, "g": 1}
    ds = s.kvm_segment()
    portable.fill_kvm_segment(ds, "ds", unreal, cr0=0x10)
    assert ds.limit == 0xFFFFFFFF  # unreal mode keeps its big limit
    protected = s.kvm_segment()
    portable.fill_kvm_segment(protected, "ss", bare, cr0=0x11)
    assert (protected.present, protected.unusable, protected.limit) == (0, 1, 0)  # a null SS stays unusable


@pytest.mark.parametrize("event, said", [
    (lambda e, r: setattr(e.interrupt, "injected", 1), "an interrupt taken from the interrupt controller"),
    (lambda e, r: r.interrupt_bitmap.__setitem__(0, 1 << 8), "an interrupt taken from the interrupt controller"),
    (lambda e, r: setattr(e.exception, "pending", 1), "exception"),
    (lambda e, r: setattr(e.nmi, "pending", 1), "an NMI"),
])
def test_an_event_kvm_holds_in_flight_makes_the_vcpu_unportable(event: Any, said: str) -> None:
    regs, sregs, fpu, events = s.kvm_regs(), s.kvm_sregs(), s.kvm_fpu(), s.kvm_vcpu_events()
    event(events, sregs)
    moved = portable.from_kvm(regs, sregs, fpu, events)
    assert set(moved) == {"refused"} and said in moved["refused"] and "restores on KVM only" in moved["refused"]
    with pytest.raises(portable.Unportable, match="restores on KVM only"):
        portable.check(moved)


def _valid() -> dict[str, Any]:
    regs, sregs, fpu, events = s.kvm_regs(), s.kvm_sregs(), s.kvm_fpu(), s.kvm_vcpu_events()
    return portable.from_kvm(regs, sregs, fpu, events)


@pytest.mark.parametrize("damage, said", [
    (lambda p: p["registers"].pop("rip"), "lacks 'rip'"),
    (lambda p: p["segments"]["cs"].__setitem__("limit", -1), "cs.limit is not a number of 32 bits"),
    (lambda p: p["segments"]["ss"].__setitem__("selector", 1 << 16), "ss.selector is not a number of 16 bits"),
    (lambda p: p["control"].__setitem__("cr0", "0x11"), "cr0 is not a number"),
    (lambda p: p["fpu"]["st"].pop(), "fpu.st is not eight 80-bit registers"),
    (lambda p: p["fpu"]["xmm"].__setitem__(0, 1 << 128), "fpu.xmm is not a number of 128 bits"),
    (lambda p: p["events"].__setitem__("shadow", True), "shadow is not a number"),
    (lambda p: p.__setitem__("tsc", -5), "tsc is not a number"),
])
def test_a_damaged_portable_vcpu_is_refused_naming_what_is_wrong(damage: Any, said: str) -> None:
    state = copy.deepcopy(_valid())
    portable.check(state)
    damage(state)
    with pytest.raises(ValueError, match=said.replace("(", r"\(")):
        portable.check(state)


# --- live: x87 and SSE state through the portable form ---------------------------------------------

_HELLO = ("devices.console.backend=memory",)
#: A stack of three values pushed (TOP = 5: R5, R6, R7 hold ST(0)..ST(2)), the rest empty, and
#: registers of every other kind set to values a reset never has.
_X87 = {5: (0xC90FDAA22168C235, 0x4000), 6: (0x8000000000000000, 0xBFFF), 7: (0xFFFFFFFFFFFFFFFF, 0x7FFE)}
#: Breakpoint addresses and a DR6 with B0 set; DR7 with none enabled (the guest runs on).
_DEBUG = {"dr0": 0x12340, "dr1": 0x23450, "dr2": 0x34560, "dr3": 0x45670, "dr6": 0xFFFF0FF1, "dr7": 0x400}
_FPU = {"FPCW": 0x027F, "FPSW": 5 << 11 | 0x0041, "MXCSR": 0x1F80 | 0x20, "FOP": 0x0159, "FIP": 0x7C12,
        "FDP": 0x9000}


def _set_fpu(machine: Any) -> None:
    from unicorn import x86_const as X

    regs = machine.accelerator.regs
    for name, value in _FPU.items():
        regs.reg_write(getattr(X, f"UC_X86_REG_{name}"), value)
    regs.reg_write(X.UC_X86_REG_FPTAG, portable.full_tags(0b1110_0000))
    for index, value in _X87.items():
        regs.reg_write(getattr(X, f"UC_X86_REG_FP{index}"), value)
    for i in range(16):
        regs.reg_write(getattr(X, f"UC_X86_REG_XMM{i}"), (0x0123456789ABCDEF << 64 | 0xFEDCBA9876543210) ^ i)
    for name, value in _DEBUG.items():
        regs.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)
    xcr0 = machine.accelerator._xcr0()  # as an OS's xsetbv leaves it: x87 and SSE state on
    assert xcr0 is not None, "XCR0 not found in this engine"
    xcr0.value = 3


def _saved_after_setting_the_fpu(tmp_path: Any) -> tuple[Any, dict[str, Any]]:
    from vmcore.accel import RunLimits
    from vmcore.machine import Machine
    from vmcore.profile import Profile
    from tests.helpers import REPO

    snap = tmp_path / "fpu.snap"
    with Machine.build(Profile.load(REPO / "machines" / "hello.yaml", _HELLO)) as machine:
        assert machine.run("tcg", RunLimits(timeout=30, pause_after=1)).kind == "paused"
        _set_fpu(machine)
        machine.save_snapshot(snap)
        moved = machine.accelerator.save_cpu()["portable"]
        return snap, {"fpu": moved["fpu"], "debug": moved["debug"], "xcr0": moved["control"]["xcr0"]}


def _fpu_after_restoring(snap: Any, accel: str, save_to: Any = None) -> dict[str, Any]:
    from vmcore.accel import RunLimits
    from vmcore.machine import Machine
    from vmcore.profile import Profile
    from tests.helpers import REPO

    with Machine.build(Profile.load(REPO / "machines" / "hello.yaml", _HELLO)) as machine:
        machine.restore_snapshot(snap)
        stop = machine.run(accel, RunLimits(timeout=30, pause_after=1))  # hello's next byte or its hlt: no x87 or SSE
        assert stop.kind in ("paused", "halted"), stop
        if save_to is not None:
            machine.save_snapshot(save_to)
        moved = machine.accelerator.save_cpu()["portable"]
        return {"fpu": moved["fpu"], "debug": moved.get("debug"), "xcr0": moved["control"].get("xcr0")}


def test_the_software_cpus_x87_sse_debug_and_xcr0_state_comes_back_through_the_portable_form(tmp_path: Any) -> None:
    from tests.helpers import as_if_from_kvm, rewrite_snapshot

    snap, before = _saved_after_setting_the_fpu(tmp_path)
    assert before["fpu"]["ftw"] == 0b1110_0000 and before["fpu"]["fsw"] >> 11 == 5
    assert before["fpu"]["st"][5] == (0xC90FDAA22168C235).to_bytes(8, "little").hex() + "0040"
    assert before["debug"] == _DEBUG and before["xcr0"] == 3
    assert _fpu_after_restoring(snap, "tcg") == before  # the software CPU's own record
    rewrite_snapshot(snap, as_if_from_kvm)
    assert _fpu_after_restoring(snap, "tcg") == before


@pytest.mark.kvm
def test_x87_sse_debug_and_xcr0_state_moves_to_kvm_and_back(tmp_path: Any) -> None:
    """KVM keeps the x87 stack as FXSAVE does, ST(0) first; the software CPU and the portable form by
    physical register: moved to KVM and read back from it, every register is where it was."""
    from tests.helpers import skip_without_kvm

    skip_without_kvm()
    snap, before = _saved_after_setting_the_fpu(tmp_path)
    assert _fpu_after_restoring(snap, "kvm") == before


@pytest.mark.kvm
def test_a_kvm_snapshot_keeps_the_x87_and_sse_state_mxcsr_included(tmp_path: Any) -> None:
    """Saved on KVM and restored on KVM: through the XSAVE area where KVM has it (the KVM these
    tests run on reports MXCSR as 0 through KVM_GET_FPU and ignores it in KVM_SET_FPU)."""
    from tests.helpers import skip_without_kvm
    from vmcore.kvm import Kvm
    from vmcore.kvm import ioctl as k
    from vmcore.snapshot import read_snapshot

    skip_without_kvm()
    snap, before = _saved_after_setting_the_fpu(tmp_path)
    on_kvm = tmp_path / "kvm.snap"
    assert _fpu_after_restoring(snap, "kvm", save_to=on_kvm) == before
    header, _data = read_snapshot(on_kvm, limit=1 << 30)
    with Kvm.open() as kvm:
        assert ("xsave" in header["cpu"]["kvm"]) == (kvm.check_extension(k.KVM_CAP_XSAVE) > 0)
    assert _fpu_after_restoring(on_kvm, "kvm") == before


@settings(max_examples=40)
@given(st.data())
def test_the_xsave_areas_legacy_region_holds_what_kvm_fpu_holds(data: Any) -> None:
    _regs, _sregs, fpu, _events = _random_kvm(data.draw)
    xsave = s.kvm_xsave()
    xsave.region[600 // 4] = 0xDEADBEEF  # an extended component's bytes: left alone
    portable.fpu_into_xsave(fpu, xsave)
    assert bytes(portable.fpu_from_xsave(xsave)) == bytes(fpu)
    assert xsave.region[512 // 4] & 3 == 3 and xsave.region[600 // 4] == 0xDEADBEEF


def test_an_xsave_component_marked_initial_reads_as_its_initial_state() -> None:
    xsave = s.kvm_xsave()
    raw = bytearray(4096)
    raw[0:2] = (0x0123).to_bytes(2, "little")  # stale bytes of components XSTATE_BV says are initial
    raw[24:28] = (0x1F80).to_bytes(4, "little")
    raw[160:176] = b"\xff" * 16
    ctypes.memmove(ctypes.addressof(xsave), bytes(raw), 4096)
    fpu = portable.fpu_from_xsave(xsave)
    assert (fpu.fcw, fpu.ftwx, fpu.mxcsr, bytes(fpu.xmm[0])) == (0x037F, 0, 0x1F80, bytes(16))
