"""The KVM exit path without /dev/kvm: a scripted vCPU fills kvm_run, the real loop decodes it.

This covers exits this host's KVM never produces (e.g. ``rep outsb`` as one exit
with count > 1) and every stop reason, byte for byte.
"""

from __future__ import annotations

from tests.helpers import Closeable, ScriptedVcpu, io, mmio, reason
from vmcore.accel import RunLimits
from vmcore.accel.kvm import KvmAccelerator
from vmcore.bus import Bus, Region, Space
from vmcore.device import GuestExit
from vmcore.kvm import ioctl as k
from vmcore.kvm import structs as s
from vmcore.memory import GuestMemory

class Recorder:
    """A device region that logs accesses and answers reads from a counter."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, int, int]] = []
        self.next = 0x41

    def read(self, offset: int, size: int) -> int:
        value = self.next
        self.next += 1
        self.log.append(("r", offset, size, value))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


def run_script(script, limits: RunLimits = RunLimits()):  # type: ignore[no-untyped-def]
    vcpu = ScriptedVcpu(script)
    accel = KvmAccelerator(Closeable(), Closeable(), vcpu)  # type: ignore[arg-type]
    memory = GuestMemory()
    memory.add_slot("ram", 0, 4096)
    memory.load(0x10, bytes(range(0xA0, 0xB0)))
    accel.memory = memory
    pio, mmio_bus = Bus(Space.PIO), Bus(Space.MMIO)
    dev = Recorder()
    pio.claim(Region(Space.PIO, 0xF1, 2, dev.read, dev.write), "rec")
    mmio_bus.claim(Region(Space.MMIO, 0x10000000, 16, dev.read, dev.write), "rec")
    stop = accel.run(pio, mmio_bus, limits)
    return stop, dev, vcpu, pio


def test_port_write_reaches_device_with_offset_and_size() -> None:
    stop, dev, _, _ = run_script([io(k.KVM_EXIT_IO_OUT, 0xF2, 1, b"\x7f"), io(k.KVM_EXIT_IO_OUT, 0xF1, 2, b"\x34\x12")])
    assert dev.log == [("w", 1, 1, 0x7F), ("w", 0, 2, 0x1234)]
    assert stop.kind == "halted" and stop.status == 0 and stop.exits == 2  # IO/MMIO exits only


def test_port_read_value_is_written_back_for_the_guest() -> None:
    _, dev, vcpu, _ = run_script([io(k.KVM_EXIT_IO_IN, 0xF1, 1)])
    assert dev.log == [("r", 0, 1, 0x41)]
    assert vcpu.after[1][0] == 0x41  # what KVM hands the guest on the next KVM_RUN


def test_string_out_delivers_every_element_in_order() -> None:
    _, dev, _, _ = run_script([io(k.KVM_EXIT_IO_OUT, 0xF1, 1, b"Hello")])
    assert [v for (_, _, _, v) in dev.log] == list(b"Hello")


def test_string_out_of_words_splits_little_endian_elements() -> None:
    _, dev, _, _ = run_script([io(k.KVM_EXIT_IO_OUT, 0xF1, 2, b"\x01\x02\x03\x04")])
    assert dev.log == [("w", 0, 2, 0x0201), ("w", 0, 2, 0x0403)]


def test_string_in_fills_each_element_in_order() -> None:
    _, dev, vcpu, _ = run_script([io(k.KVM_EXIT_IO_IN, 0xF1, 1, count=4)])
    assert len(dev.log) == 4
    assert vcpu.after[1][:4] == b"ABCD"


def test_mmio_write_and_read() -> None:
    _, dev, vcpu, _ = run_script([mmio(0x10000004, 4, b"\x78\x56\x34\x12"), mmio(0x10000008, 2)])
    assert dev.log == [("w", 4, 4, 0x12345678), ("r", 8, 2, 0x41)]
    assert vcpu.run_struct.mmio.data[0] == 0x41


def test_unclaimed_port_read_gives_all_ones_to_the_guest() -> None:
    _, _, vcpu, pio = run_script([io(k.KVM_EXIT_IO_IN, 0x80, 2)])
    assert vcpu.after[1][:2] == b"\xff\xff"
    assert sum(pio.unclaimed.values()) == 1


def test_hlt_stops_with_halted() -> None:
    stop, *_ = run_script([])
    assert (stop.kind, stop.status, stop.message) == ("halted", 0, "the guest executed hlt")


def test_shutdown_stops_with_register_dump_and_code_bytes() -> None:
    stop, *_ = run_script([reason(k.KVM_EXIT_SHUTDOWN)])
    assert stop.kind == "shutdown" and stop.status == 4
    assert stop.registers is not None and stop.registers["rip"] == 0x10 and stop.registers["rax"] == 0x1234
    assert stop.code_address == 0x10 and stop.code == bytes(range(0xA0, 0xB0))
    assert "rip=0000000000000010" in stop.report() and "a0 a1 a2" in stop.report()


def test_internal_error_reports_suberror_and_data() -> None:
    def fill(run: s.kvm_run) -> None:
        run.internal.suberror = k.KVM_INTERNAL_ERROR_EMULATION
        run.internal.ndata = 2
        run.internal.data[0], run.internal.data[1] = 0x11, 0x22

    stop, *_ = run_script([reason(k.KVM_EXIT_INTERNAL_ERROR, fill)])
    assert stop.kind == "internal-error" and stop.status == 4
    assert stop.detail["suberror"] == 1 and stop.detail["data"] == "0x11 0x22"
    assert "emulation" in stop.message and stop.registers is not None


def test_fail_entry_reports_hardware_reason() -> None:
    def fill(run: s.kvm_run) -> None:
        run.fail_entry.hardware_entry_failure_reason = 0x80000021

    stop, *_ = run_script([reason(k.KVM_EXIT_FAIL_ENTRY, fill)])
    assert stop.kind == "fail-entry" and "0x80000021" in stop.message


def test_system_event_names_the_event() -> None:
    def fill(run: s.kvm_run) -> None:
        run.system_event.type = k.KVM_SYSTEM_EVENT_RESET

    stop, *_ = run_script([reason(k.KVM_EXIT_SYSTEM_EVENT, fill)])
    assert stop.kind == "system-event" and "reset" in stop.message.lower()


def test_unknown_exit_is_reported_not_ignored() -> None:
    stop, *_ = run_script([reason(k.KVM_EXIT_DEBUG)])
    assert stop.kind == "unknown-exit" and "debug" in stop.message


def test_max_exits_limit_stops_the_loop() -> None:
    stop, dev, _, _ = run_script([io(k.KVM_EXIT_IO_OUT, 0xF1, 1, b"x")] * 10, RunLimits(max_exits=3))
    assert stop.kind == "max-exits" and stop.status == 6 and len(dev.log) == 3


def test_guest_exit_from_a_device_ends_the_run_with_its_status() -> None:
    vcpu = ScriptedVcpu([io(k.KVM_EXIT_IO_OUT, 0xF1, 1, b"x"), io(k.KVM_EXIT_IO_OUT, 0x501, 1, b"\x2a")])
    accel = KvmAccelerator(Closeable(), Closeable(), vcpu)  # type: ignore[arg-type]
    pio = Bus(Space.PIO)

    def exit_write(offset: int, size: int, value: int) -> None:
        raise GuestExit((value << 1) | 1, "debug-exit")

    pio.claim(Region(Space.PIO, 0x501, 2, None, exit_write), "exit")
    stop = accel.run(pio, Bus(Space.MMIO), RunLimits())
    assert (stop.kind, stop.status, stop.message) == ("exit", 85, "debug-exit")
    assert stop.exits == 2  # the exit that ended the run counts
