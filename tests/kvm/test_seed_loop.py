"""The smallest VMM, written against vmcore.kvm alone: real-mode guests that print through port 0xF1.

Each run is bounded by a SIGALRM watchdog: a guest that spins without exiting
makes KVM_RUN fail with EINTR, which Vcpu.run() passes through as
InterruptedError, so a broken guest fails the test instead of hanging it.
"""

from __future__ import annotations

import ctypes
import mmap
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from vmcore.kvm import Kvm, Vcpu, ioctl as K

pytestmark = pytest.mark.kvm

DEBUG_PORT = 0xF1
MEM_SIZE = 0x1000
WATCHDOG_SECONDS = 5.0
MAX_EXITS = 1000

# mov al, 'H'  ; out 0xF1, al
# mov al, 'i'  ; out 0xF1, al
# mov al, 0x0A ; out 0xF1, al
# hlt
HELLO = bytes([
    0xB0, 0x48, 0xE6, DEBUG_PORT,
    0xB0, 0x69, 0xE6, DEBUG_PORT,
    0xB0, 0x0A, 0xE6, DEBUG_PORT,
    0xF4,
])

# 0x00: mov si, 0x000C   ; message follows the code
# 0x03: mov cx, 16
# 0x06: mov dx, 0xF1
# 0x09: rep outsb         ; DS:SI -> port DX, CX times
# 0x0B: hlt
# 0x0C: "0123456789abcdef"
REP_MESSAGE = b"0123456789abcdef"
REP_OUTSB = bytes([
    0xBE, 0x0C, 0x00,
    0xB9, len(REP_MESSAGE), 0x00,
    0xBA, DEBUG_PORT, 0x00,
    0xF3, 0x6E,
    0xF4,
]) + REP_MESSAGE

# 0x00: jmp $  ; never exits on its own
SPIN = bytes([0xEB, 0xFE])


@dataclass
class Transcript:
    output: bytearray = field(default_factory=bytearray)
    io_counts: list[int] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)


@pytest.fixture
def real_mode_vcpu(kvm: Kvm) -> Iterator[tuple[Vcpu, mmap.mmap]]:
    """A vcpu at 0000:0000 in real mode over 4 KiB of guest RAM at physical 0."""
    mem = mmap.mmap(-1, MEM_SIZE)
    anchor = ctypes.c_char.from_buffer(mem)  # pins the mapping; its address is the host address
    try:
        with kvm.create_vm() as vm:
            vm.set_user_memory_region(0, 0, MEM_SIZE, ctypes.addressof(anchor))
            with vm.create_vcpu() as vcpu:
                sregs = vcpu.get_sregs()
                # Reset state runs at CS.base 0xFFFF0000; move CS (and DS for
                # outsb) to segment 0 so IP 0 is guest-physical 0.
                for seg in (sregs.cs, sregs.ds):
                    seg.base, seg.selector = 0, 0
                vcpu.set_sregs(sregs)
                regs = vcpu.get_regs()
                regs.rip, regs.rflags = 0, 0x2  # bit 1 of RFLAGS is reserved-as-1
                vcpu.set_regs(regs)
                yield vcpu, mem
    finally:
        del anchor
        mem.close()


@pytest.fixture
def watchdog() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_until_hlt(vcpu: Vcpu) -> Transcript:
    run = vcpu.run_struct
    seen = Transcript()
    for _ in range(MAX_EXITS):
        try:
            vcpu.run()
        except InterruptedError:
            pytest.fail(f"guest did not reach hlt within {WATCHDOG_SECONDS}s")
        reason = run.exit_reason
        seen.exits.append(K.EXIT_REASON_NAMES.get(reason, str(reason)))
        if reason == K.KVM_EXIT_HLT:
            return seen
        if reason != K.KVM_EXIT_IO:
            pytest.fail(f"unexpected exit {seen.exits[-1]}")
        io = run.io
        assert (io.direction, io.port, io.size) == (K.KVM_EXIT_IO_OUT, DEBUG_PORT, 1)
        # The bytes of all `count` repetitions sit back to back at data_offset.
        start = io.data_offset
        seen.output += vcpu.mmap[start : start + io.size * io.count]
        seen.io_counts.append(io.count)
    pytest.fail(f"no hlt after {MAX_EXITS} exits")


def test_out_then_hlt_prints_hi(real_mode_vcpu: tuple[Vcpu, mmap.mmap], watchdog: None) -> None:
    vcpu, mem = real_mode_vcpu
    mem[: len(HELLO)] = HELLO
    seen = run_until_hlt(vcpu)
    assert bytes(seen.output) == b"Hi\n"
    assert seen.exits == ["io", "io", "io", "hlt"]


def test_rep_outsb_delivers_the_whole_string(
    real_mode_vcpu: tuple[Vcpu, mmap.mmap], watchdog: None
) -> None:
    vcpu, mem = real_mode_vcpu
    mem[: len(REP_OUTSB)] = REP_OUTSB
    seen = run_until_hlt(vcpu)
    assert bytes(seen.output) == REP_MESSAGE
    # Mainline KVM may batch string IO into one exit with count > 1; this PVM
    # host splits rep outsb into one exit per byte (count == 1 each). Either way
    # the counts add up, and a caller must honour io.count.
    assert sum(seen.io_counts) == len(REP_MESSAGE)


def test_a_signal_interrupts_run_with_interrupted_error(
    real_mode_vcpu: tuple[Vcpu, mmap.mmap],
) -> None:
    vcpu, mem = real_mode_vcpu
    mem[: len(SPIN)] = SPIN
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        with pytest.raises(InterruptedError):
            vcpu.run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert vcpu.run_struct.exit_reason == K.KVM_EXIT_INTR


def test_immediate_exit_returns_without_entering_the_guest(
    kvm: Kvm, real_mode_vcpu: tuple[Vcpu, mmap.mmap]
) -> None:
    # KVM_CAP_IMMEDIATE_EXIT: how a VMM kicks a vcpu thread without a race.
    if not kvm.check_extension(K.KVM_CAP_IMMEDIATE_EXIT):
        pytest.skip("this KVM lacks KVM_CAP_IMMEDIATE_EXIT")
    vcpu, mem = real_mode_vcpu
    mem[: len(HELLO)] = HELLO  # would exit with "io" at once if it were entered
    vcpu.run_struct.immediate_exit = 1
    with pytest.raises(InterruptedError):
        vcpu.run()
    # exit_reason is not set on this path (the API only promises EINTR); the
    # guest not having run is what shows the request was honoured.
    assert vcpu.get_regs().rip == 0
