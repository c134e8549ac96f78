"""Posted regions on KVM: coalesced MMIO/PIO, drained so that devices see exactly what they would without it.

Two tiers:

- the ring without /dev/kvm: a scripted vCPU (tests/helpers.py) queues entries
  in the ring page of its fake mapping, as the kernel does, before each scripted exit;
  the real exit loop must deliver them in order before that exit, count each as the
  exit it replaced, and deliver them at every kind of stop;
- guests on KVM (skipped with the reason where /dev/kvm cannot be opened): a real-mode
  program writes bytes to the posted debug console between synchronous port and MMIO
  accesses, then stops in one of four ways; the console bytes and the full ordered
  trace must be the same with coalescing, without it, and on the software CPU.

This module is also a vmcore plugin (the ``echo`` device) for the child processes.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import pytest

from tests.helpers import (
    Closeable,
    ACCEL_RUNS_CHILD,
    CHILD_TIMEOUT,
    REPO,
    ScriptedVcpu,
    accel_runs,
    child_env,
    hlt,
    io,
    real_mode_profile,
    reason,
    skip_without_kvm,
)
from vmcore.accel import RunLimits
from vmcore.accel.kvm import KvmAccelerator
from vmcore.bus import Bus, Region, Space
from vmcore.device import Device, GuestExit, in_range, prop
from vmcore.faults import DeviceFault
from vmcore.hookspecs import hookimpl
from vmcore.kvm import KvmError
from vmcore.kvm import ioctl as k

# --- the ring, scripted --------------------------------------------------------------------------

RING = k.KVM_COALESCED_MMIO_PAGE_OFFSET * 4096  # the ring page in the vCPU mapping
SLOTS = (4096 - 8) // 24  # KVM_COALESCED_MMIO_MAX for 4 KiB pages
CONSOLE, SYNC, EXIT, FAULTY, MMIO_LOG = 0xF1, 0x80, 0x501, 0x90, 0xD000_0000


def queue(buf: bytearray, address: int, data: bytes, pio: bool = True) -> None:
    """What the kernel does with a write to a coalesced zone: an entry at ``last``, then ``last`` moves on."""
    _first, last = struct.unpack_from("<II", buf, RING)
    struct.pack_into("<QII8s", buf, RING + 8 + 24 * last, address, len(data), int(pio), data.ljust(8, b"\0"))
    struct.pack_into("<I", buf, RING + 4, (last + 1) % SLOTS)


def posted(*writes: tuple[Any, ...], then: Callable[..., None] = hlt) -> Callable[..., None]:
    """A KVM_RUN in which the guest made the posted ``writes`` (queued, no exit) and then exited as ``then``."""
    def step(run: Any, buf: bytearray) -> None:
        for write in writes:
            queue(buf, *write)
        then(run, buf)
    return step


def raising(exc: BaseException) -> Callable[..., None]:
    """KVM_RUN failing: EINTR (timeout, Ctrl-C) or a host error."""
    def step(_run: Any, _buf: bytearray) -> None:
        raise exc
    return step


class FakeVm:
    """Stands in for vmcore.kvm.Vm: the capabilities given, and a log of zone (un)registrations."""

    def __init__(self, caps: dict[int, int] | None = None) -> None:
        self.caps = {k.KVM_CAP_COALESCED_MMIO: 2, k.KVM_CAP_COALESCED_PIO: 1} if caps is None else caps
        self.log: list[tuple[Any, ...]] = []

    def check_extension(self, cap: int) -> int:
        return self.caps.get(cap, 0)

    def register_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        self.log.append(("register", addr, size, pio))

    def unregister_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        self.log.append(("unregister", addr, size, pio))

    def close(self) -> None:
        pass


class Scripted:
    """A scripted vCPU with: a posted console port, a posted MMIO log, a synchronous port,
    debug-exit, and a posted port whose device raises. Every delivery goes to ``events``."""

    def __init__(self, vm: FakeVm | None = None, coalesce: bool = True) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.vcpu = ScriptedVcpu([])
        self.vm = vm or FakeVm()
        self.accel = KvmAccelerator(Closeable(), self.vm, self.vcpu)  # type: ignore[arg-type]
        self.accel.coalesce = coalesce
        self.pio, self.mmio = Bus(Space.PIO), Bus(Space.MMIO)
        self.pio.claim(Region(Space.PIO, CONSOLE, 1, lambda o, s: 0xE9, self.logger("console"), sizes=(1,),
                              posted=True), "console")
        self.pio.claim(Region(Space.PIO, SYNC, 1, self.sync_read, self.logger("sync")), "sync")
        self.pio.claim(Region(Space.PIO, EXIT, 2, None, self.exit), "exit")
        self.pio.claim(Region(Space.PIO, FAULTY, 1, None, self.faulty, posted=True), "faulty")
        self.mmio.claim(Region(Space.MMIO, MMIO_LOG, 16, None, self.logger("mmio"), posted=True), "mmio")

    def logger(self, name: str) -> Callable[[int, int, int], None]:
        def write(offset: int, size: int, value: int) -> None:
            self.events.append((name, offset, value))
        return write

    def sync_read(self, offset: int, size: int) -> int:
        self.events.append(("sync-read", offset, 0x5A))
        return 0x5A

    def exit(self, offset: int, size: int, value: int) -> None:
        self.events.append(("exit", offset, value))
        raise GuestExit((value << 1) | 1, "debug-exit")

    def faulty(self, offset: int, size: int, value: int) -> None:
        raise RuntimeError(f"model bug on {value:#x}")

    def run(self, script: list[Callable[..., None]], limits: RunLimits = RunLimits()) -> Any:
        self.vcpu.script = list(script)
        return self.accel.run(self.pio, self.mmio, limits)

    def console(self) -> bytes:
        return bytes(value for name, _, value in self.events if name == "console")

    def ring_empty(self) -> bool:
        first, last = struct.unpack_from("<II", self.vcpu.mmap, RING)
        return first == last


def out(port: int, data: bytes) -> Callable[..., None]:
    return io(k.KVM_EXIT_IO_OUT, port, len(data), data)


def test_posted_regions_are_registered_as_zones_for_the_run_only() -> None:
    m = Scripted()
    m.run([])
    assert m.vm.log == [
        ("register", FAULTY, 1, True), ("register", CONSOLE, 1, True), ("register", MMIO_LOG, 16, False),
        ("unregister", FAULTY, 1, True), ("unregister", CONSOLE, 1, True), ("unregister", MMIO_LOG, 16, False),
    ]


def test_queued_writes_reach_their_devices_in_order_before_the_next_exit_is_handled() -> None:
    m = Scripted()
    stop = m.run([
        posted((CONSOLE, b"A"), (CONSOLE, b"B"), then=out(SYNC, b"\x01")),
        posted((CONSOLE, b"C"), then=io(k.KVM_EXIT_IO_IN, SYNC, 1)),
        posted((CONSOLE, b"D")),
    ])
    assert m.events == [("console", 0, 0x41), ("console", 0, 0x42), ("sync", 0, 1),
                        ("console", 0, 0x43), ("sync-read", 0, 0x5A), ("console", 0, 0x44)]
    # Each queued write counts as the exit it replaced, so limits and reports do not change.
    assert (stop.kind, stop.exits) == ("halted", 6)
    assert m.ring_empty()


def test_mmio_entries_deliver_offset_width_and_little_endian_value() -> None:
    m = Scripted()
    m.run([posted((MMIO_LOG + 4, b"\x78\x56\x34\x12", False), (MMIO_LOG + 8, b"\x01\x02", False))])
    assert m.events == [("mmio", 4, 0x12345678), ("mmio", 8, 0x0201)]


def test_the_ring_wraps_around_its_last_slot() -> None:
    m = Scripted()
    struct.pack_into("<II", m.vcpu.mmap, RING, SLOTS - 2, SLOTS - 2)  # where a long run left it
    m.run([posted(*[(CONSOLE, bytes([c])) for c in b"wrap"])])
    assert m.console() == b"wrap"
    assert struct.unpack_from("<II", m.vcpu.mmap, RING) == (2, 2)


def test_tracing_sees_posted_writes_in_program_order() -> None:
    m = Scripted()
    trace: list[Any] = []
    m.pio.set_tracer(trace.append)
    m.run([posted((CONSOLE, b"x"), then=out(SYNC, b"\x07")), posted((CONSOLE, b"y"))])
    assert [(t.address, t.value) for t in trace] == [(CONSOLE, ord("x")), (SYNC, 7), (CONSOLE, ord("y"))]


def test_without_coalescing_no_zone_is_registered() -> None:
    m = Scripted(coalesce=False)
    m.run([out(CONSOLE, b"s")])
    assert m.vm.log == [] and m.console() == b"s"


def test_a_kvm_without_coalesced_pio_still_coalesces_mmio() -> None:
    m = Scripted(FakeVm({k.KVM_CAP_COALESCED_MMIO: 2}))
    m.run([])
    assert [entry for entry in m.vm.log if entry[0] == "register"] == [("register", MMIO_LOG, 16, False)]


def test_a_kvm_without_coalesced_mmio_keeps_every_region_synchronous() -> None:
    m = Scripted(FakeVm({}))
    stop = m.run([out(CONSOLE, b"s")])
    assert m.vm.log == [] and m.console() == b"s" and stop.exits == 1


# --- every stop delivers what was queued before it ---------------------------------------------


def test_drained_at_hlt() -> None:
    m = Scripted()
    stop = m.run([posted((CONSOLE, b"h"), (CONSOLE, b"i"))])
    assert (stop.kind, m.console()) == ("halted", b"hi")


def test_drained_before_debug_exit_ends_the_run() -> None:
    m = Scripted()
    stop = m.run([posted((CONSOLE, b"b"), (CONSOLE, b"y"), then=out(EXIT, b"\x2a"))])
    assert (stop.kind, stop.status, stop.exits) == ("exit", 85, 3)
    assert m.events[-1] == ("exit", 0, 0x2A) and m.console() == b"by"


@pytest.mark.parametrize("code", [k.KVM_EXIT_SHUTDOWN, k.KVM_EXIT_INTERNAL_ERROR, k.KVM_EXIT_FAIL_ENTRY],
                         ids=["shutdown", "internal-error", "fail-entry"])
def test_drained_before_a_guest_fault_is_reported(code: int) -> None:
    m = Scripted()
    stop = m.run([posted((CONSOLE, b"!"), then=reason(code))])
    assert stop.kind != "halted" and m.console() == b"!"


def test_drained_when_the_time_limit_interrupts_the_guest() -> None:
    m = Scripted()

    def expire(run: Any, buf: bytearray) -> None:
        queue(buf, CONSOLE, b"t")
        time.sleep(0.2)  # the time limit passes meanwhile: its kick interrupts KVM_RUN
        assert run.immediate_exit == 1
        raise InterruptedError

    stop = m.run([expire], RunLimits(timeout=0.05))
    assert (stop.kind, m.console()) == ("timeout", b"t")


def test_drained_when_kvm_run_fails() -> None:
    m = Scripted()

    def fail(run: Any, buf: bytearray) -> None:
        queue(buf, CONSOLE, b"e")
        raise KvmError("KVM_RUN failed: Bad address", 14)

    stop = m.run([fail])
    assert (stop.kind, m.console()) == ("host-error", b"e")


def test_drained_before_ctrl_c_stops_the_run() -> None:
    m = Scripted()

    def interrupt(run: Any, buf: bytearray) -> None:
        queue(buf, CONSOLE, b"c")
        raise KeyboardInterrupt  # what Python's SIGINT handler raises out of the ioctl

    with pytest.raises(KeyboardInterrupt):
        m.run([interrupt])
    assert m.console() == b"c"


def test_a_device_fault_in_a_queued_write_stops_there_as_it_would_have_synchronously() -> None:
    m = Scripted()
    with pytest.raises(DeviceFault, match="faulty"):
        m.run([posted((CONSOLE, b"1"), (FAULTY, b"\x66"), (CONSOLE, b"2"))])
    # The guest would have stopped at the faulting write: what it queued after it is never seen.
    assert m.console() == b"1"


def test_a_device_fault_under_continue_is_contained_and_the_rest_delivered() -> None:
    m = Scripted()
    m.pio.device_errors = "continue"
    stop = m.run([posted((CONSOLE, b"1"), (FAULTY, b"\x66"), (CONSOLE, b"2"))])
    assert (stop.kind, stop.exits, m.console()) == ("halted", 3, b"12")
    assert m.pio.device_faults == {("faulty", "RuntimeError"): 1}


def test_the_exit_limit_can_fall_inside_the_ring() -> None:
    m = Scripted()
    stop = m.run([posted(*[(CONSOLE, bytes([c])) for c in b"abcd"])], RunLimits(max_exits=2))
    assert (stop.kind, stop.exits, m.console()) == ("max-exits", 2, b"ab")


# --- guests on KVM, compared with the software CPU ---------------------------------------------------


@attrs.frozen
class EchoConfig:
    port: int = prop(0x80, "I/O port.", validator=in_range(0, 0xFFFF))


class Echo(Device):
    """A synchronous byte port: reads answer the last byte written plus one."""

    type_name = "echo"
    Config = EchoConfig
    last = 0

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 1, self.read, self.write, sizes=(1,), name="echo")]

    def read(self, offset: int, size: int) -> int:
        return (self.last + 1) & 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        self.last = value


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Echo]


# Real mode, CS = DS = 0. Every `out 0xF1` is posted (debugcon); the rest is synchronous.
INTERLEAVED = bytes([
    0xB0, 0x41,              # mov al, 'A'
    0xE6, 0xF1,              # out 0xF1, al        posted
    0xB0, 0x42,              # mov al, 'B'
    0xE6, 0xF1,              # out 0xF1, al        posted
    0xE4, 0xF1,              # in al, 0xF1         a read of the posted port still exits: 0xE9
    0xE6, 0x80,              # out 0x80, al        synchronous (echo): 0xE9
    0xB0, 0x43,              # mov al, 'C'
    0xE6, 0xF1,              # out 0xF1, al        posted
    0xA2, 0x00, 0x20,        # mov [0x2000], al    MMIO write (scratch registers): 'C'
    0xB0, 0x44,              # mov al, 'D'
    0xE6, 0xF1,              # out 0xF1, al        posted
    0xE4, 0x80,              # in al, 0x80         synchronous read: echo answers 0xEA
    0xE6, 0xF1,              # out 0xF1, al        posted: 0xEA
    0xA0, 0x00, 0x20,        # mov al, [0x2000]    MMIO read: 'C'
    0xE6, 0xF1,              # out 0xF1, al        posted: 'C'
    0xB0, 0x0A,              # mov al, '\n'
    0xE6, 0xF1,              # out 0xF1, al        posted
])
EXPECTED = b"ABCD\xeaC\n"
STOPS = {
    "hlt": (bytes([0xF4]), "halted"),                                    # hlt
    "debug-exit": (bytes([0xBA, 0x01, 0x05,                              # mov dx, 0x501
                          0xB0, 0x2A,                                    # mov al, 42
                          0xEE,                                          # out dx, al
                          0xF4]), "exit"),                               # hlt (not reached)
    "timeout": (bytes([0xEB, 0xFE]), "timeout"),                         # jmp $: never exits again
    "device-fault": (bytes([0xE6, 0x90,                                  # out 0x90, al: the faulty device
                            0xF4]), "device-error"),                     # hlt (not reached)
}
DEVICES = ("  echo: {type: echo, port: 0x80}\n"
           "  scratch: {type: scratch, base: 0x2000}\n"
           "  broken: {type: faulty, port: 0x90}\n")


PLUGINS = ("tests.helpers", "tests.accel.test_coalesced")  # scratch and faulty; echo


BOTH_WAYS = [{"accel": "kvm", "coalesce": True}, {"accel": "kvm", "coalesce": False}, {"accel": "tcg"}]


@pytest.mark.kvm
@pytest.mark.parametrize("stop", list(STOPS))
def test_coalescing_keeps_console_and_trace_exact_at_every_stop(stop: str, tmp_path: Path) -> None:
    skip_without_kvm()
    tail, kind = STOPS[stop]
    path = real_mode_profile(tmp_path, "interleaved", INTERLEAVED + tail, devices=DEVICES)
    coalesced, plain, tcg = accel_runs(path, BOTH_WAYS, PLUGINS, timeout=1.5 if stop == "timeout" else 20)
    for result in (coalesced, plain, tcg):
        assert result["kind"] == kind, result
        assert bytes.fromhex(result["console"]) == EXPECTED, result
    assert coalesced["trace"] == plain["trace"] == tcg["trace"]
    assert coalesced["exits"] == plain["exits"]  # a queued write counts as the exit it replaced
    if stop == "hlt":
        # Each of the 7 posted writes no longer leaves the guest (give or take a wake-up).
        assert plain["entries"] - coalesced["entries"] in (6, 7, 8), (plain["entries"], coalesced["entries"])


@pytest.mark.kvm
def test_ctrl_c_delivers_what_the_guest_posted(tmp_path: Path) -> None:
    skip_without_kvm()
    path = real_mode_profile(tmp_path, "spin", INTERLEAVED + STOPS["timeout"][0], devices=DEVICES)
    spec = {"profile": str(path), "runs": [{"accel": "kvm"}], "timeout": 30,
            "plugins": list(PLUGINS)}
    proc = subprocess.Popen([sys.executable, "-c", ACCEL_RUNS_CHILD, json.dumps(spec)], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().strip() == b"RUNNING"
        time.sleep(1.0)  # long enough for the guest to post its bytes and spin
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in stdout.decode().splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, stderr
    result = json.loads(lines[0][len("RESULT "):])
    assert result["kind"] == "interrupted"
    assert bytes.fromhex(result["console"]) == EXPECTED


def test_the_debug_console_declares_its_port_posted(fake_bus: Any) -> None:
    console = fake_bus.attach("debugcon", backend="memory")
    (region,) = console.regions()
    assert region.posted and region.read is not None  # reads (the 0xE9 probe) still exit


@pytest.mark.kvm
def test_posted_output_appears_while_the_guest_runs_on_without_exiting(tmp_path: Path) -> None:
    skip_without_kvm()
    path = real_mode_profile(tmp_path, "print_spin", bytes([
        0xB0, 0x58,          # mov al, 'X'
        0xE6, 0xF1,          # out 0xF1, al        posted
        0xB0, 0x0A,          # mov al, '\n'
        0xE6, 0xF1,          # out 0xF1, al        posted
        0xEB, 0xFE,          # jmp $               no exit for the ring to be drained at
    ]), devices="", console="stdio", timeout=20)
    proc = subprocess.Popen([sys.executable, "-m", "vmcore", "run", "--accel", "kvm", str(path)], cwd=REPO,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        start = time.monotonic()
        assert proc.stdout is not None
        line = proc.stdout.readline()
        waited = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    assert line == b"X\n"
    # The loop drains the ring every 50 ms; 20 s (the time limit) would mean only the stop drained it.
    assert waited < 10, waited
