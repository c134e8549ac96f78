"""The run core without a CPU: a scripted backend feeds it exits, as Firecracker's tests feed fake KVM exits.

What is checked here holds on every accelerator, because it is written once in
vmcore.accel.core: how an exit reaches its device, how a device's exception is
contained, how answers are checked, how limits stop the run, how ``hlt`` waits
for an interrupt, and what a stop reports.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

from vmcore.accel import Accelerator, RunLimits
from vmcore.accel.core import HALT, MMIO_READ, MMIO_WRITE, PIO_READ, PIO_WRITE, YIELD, CpuStop, RunCore
from vmcore.bus import Bus, Region, Space
from vmcore.clock import HostClock
from vmcore.device import GuestExit
from vmcore.faults import DeviceFault
from vmcore.stop import StopReason

Step = tuple[Any, ...]  # ("out", port, size, value), ("in", port, size), ("w"/"r", address, size[, value]), ...


class ScriptedCpu(Accelerator):
    """A CPU backend whose exits come from a script; it records what the core did with them."""

    name = "scripted"

    def __init__(self, script: list[Step | Callable[[], int]], if_flag: bool = True) -> None:
        self.script = list(script)
        self.answers: list[int] = []  # what each read handed back to the "guest"
        self.delivered: list[int] = []  # the vectors of interrupts the core had delivered
        self.flushed = 0
        self.ended = False
        self.if_flag = if_flag
        self.began = self.finished = False

    def setup(self, memory: Any, state: Any) -> None:
        pass

    def begin(self, core: RunCore) -> Callable[[], int]:
        self.began = True
        record = core.exit
        reading = [False]

        def enter() -> int:
            if reading[0]:
                self.answers.append(record.value)
                reading[0] = False
            if self.ended:
                return YIELD  # a real CPU comes back at once once the run is over
            if not self.script:
                return HALT
            step = self.script.pop(0)
            if callable(step):
                return step()
            kind, address, size, *value = step
            record.address, record.size = address, size
            if value:
                record.value = value[0]
            reading[0] = kind in ("in", "r")
            return {"out": PIO_WRITE, "in": PIO_READ, "w": MMIO_WRITE, "r": MMIO_READ}[kind]

        return enter

    def end(self) -> None:
        self.finished = True

    def offer_interrupt(self, controller: Any) -> bool:
        if controller.pending() and self.if_flag:
            self.delivered.append(controller.acknowledge())
            return True
        return False

    def interrupts_enabled(self) -> bool:
        return self.if_flag

    def kick(self) -> None:
        pass

    def end_run(self) -> None:
        self.ended = True

    def flush(self) -> None:
        self.flushed += 1

    def snapshot(self) -> Any:
        return {"rip": 0x1234}, {}, None, None

    def close(self) -> None:
        pass


_COUNT = object()  # Recorder.answer: answer from the counter


class Recorder:
    """A device region: logs every access, answers reads from a counter, or what ``answer`` says."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, int, int]] = []
        self.next = 0x41
        self.answer: Any = _COUNT
        self.error: BaseException | None = None

    def read(self, offset: int, size: int) -> Any:
        if self.error is not None:
            raise self.error
        value = self.next if self.answer is _COUNT else self.answer
        self.next += 1
        self.log.append(("r", offset, size, value))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if self.error is not None:
            raise self.error
        self.log.append(("w", offset, size, value))
        if value == 0xEE:
            raise GuestExit(7, "scripted exit")


class Controller:
    """An interrupt controller with one vector; ``raise_`` asserts INTR as a PIC would."""

    def __init__(self) -> None:
        self.level = False
        self.intr_changed: Callable[[bool], None] | None = None

    def set_irq(self, line: int, level: bool) -> None:
        self.level = level
        if self.intr_changed is not None:
            self.intr_changed(level)

    def pending(self) -> bool:
        return self.level

    def acknowledge(self) -> int:
        self.set_irq(0, False)
        return 0x20


def buses(errors: str = "stop") -> tuple[Bus, Bus, Recorder]:
    pio, mmio = Bus(Space.PIO), Bus(Space.MMIO)
    pio.device_errors = mmio.device_errors = errors
    dev = Recorder()
    pio.claim(Region(Space.PIO, 0xF0, 4, dev.read, dev.write), "rec")
    mmio.claim(Region(Space.MMIO, 0x1000, 16, dev.read, dev.write), "rec")
    return pio, mmio, dev


def run(script: list[Any], limits: RunLimits = RunLimits(), errors: str = "stop", **kwargs: Any
        ) -> tuple[StopReason, ScriptedCpu, Recorder]:
    pio, mmio, dev = buses(errors)
    cpu = ScriptedCpu(script)
    stop = cpu.run(pio, mmio, limits, **kwargs)
    return stop, cpu, dev


def test_each_exit_reaches_its_device_and_reads_are_answered_to_the_cpu() -> None:
    stop, cpu, dev = run([("out", 0xF1, 1, 0x7F), ("in", 0xF2, 2), ("w", 0x1004, 4, 0xDEADBEEF), ("r", 0x1008, 8)])
    # An 8-byte MMIO access reaches the device as its two halves, as the software CPU makes it.
    assert dev.log == [("w", 1, 1, 0x7F), ("r", 2, 2, 0x41), ("w", 4, 4, 0xDEADBEEF), ("r", 8, 4, 0x42),
                       ("r", 12, 4, 0x43)]
    assert cpu.answers == [0x41, 0x43_0000_0042]
    assert (stop.kind, stop.exits) == ("halted", 4)  # an access is one exit, however the bus splits it
    assert cpu.began and cpu.finished


def test_a_write_that_ends_the_run_counts_and_nothing_after_it_runs() -> None:
    stop, _, dev = run([("out", 0xF0, 1, 0xEE), ("out", 0xF0, 1, 0x01)])
    assert (stop.kind, stop.status, stop.exits) == ("exit", 7, 1)
    assert dev.log == [("w", 0, 1, 0xEE)]


def test_a_device_error_stops_the_run_with_the_access_named() -> None:
    pio, mmio, dev = buses()
    dev.error = RuntimeError("model bug")
    with pytest.raises(DeviceFault) as caught:
        ScriptedCpu([("r", 0x1000, 4)]).run(pio, mmio, RunLimits())
    assert "model bug" in str(caught.value) and caught.value.device == "rec"


def test_under_continue_a_failing_read_gives_all_ones_and_the_run_goes_on() -> None:
    pio, mmio, dev = buses("continue")
    dev.error = ValueError("bad register")
    cpu = ScriptedCpu([("in", 0xF0, 2), ("r", 0x1000, 4), ("out", 0xF0, 1, 5)])
    stop = cpu.run(pio, mmio, RunLimits())
    assert cpu.answers == [0xFFFF, 0xFFFFFFFF]
    assert (stop.kind, stop.exits) == ("halted", 3)  # a contained failure still counts as the exit it was
    assert mmio.device_faults and pio.device_faults


@pytest.mark.parametrize("answer", [0x1_0000, -1, "A", None, 1.5])
def test_an_answer_that_is_not_an_int_of_the_size_is_the_devices_fault(answer: Any) -> None:
    pio, mmio, dev = buses()
    dev.answer = answer
    with pytest.raises(DeviceFault) as caught:
        ScriptedCpu([("in", 0xF0, 2)]).run(pio, mmio, RunLimits())
    assert caught.value.device == "rec"
    pio, mmio, dev = buses("continue")
    dev.answer = answer
    cpu = ScriptedCpu([("in", 0xF0, 2), ("r", 0x1000, 1)])
    assert cpu.run(pio, mmio, RunLimits()).kind == "halted"
    assert cpu.answers == [0xFFFF, 0xFF]


def test_max_exits_stops_at_exactly_that_access_with_the_registers_of_then() -> None:
    stop, cpu, dev = run([("out", 0xF0, 1, n) for n in range(10)], RunLimits(max_exits=4))
    assert (stop.kind, stop.exits) == ("max-exits", 4)
    assert [value for *_, value in dev.log] == [0, 1, 2, 3]
    assert stop.registers == {"rip": 0x1234} and cpu.ended


def test_hlt_without_an_interrupt_source_or_with_if_clear_is_a_stop() -> None:
    stop, _, _ = run([])
    assert stop.kind == "halted"
    pio, mmio, _ = buses()
    controller = Controller()
    controller.level = True
    cpu = ScriptedCpu([], if_flag=False)
    assert cpu.run(pio, mmio, RunLimits(), controller=controller).kind == "halted"  # type: ignore[arg-type]
    assert cpu.delivered == []


def test_an_interrupt_pending_at_the_start_is_delivered_before_the_first_instruction() -> None:
    pio, mmio, _ = buses()
    controller = Controller()
    controller.level = True
    seen: list[list[int]] = []
    cpu = ScriptedCpu([])

    def first() -> int:
        seen.append(list(cpu.delivered))
        return HALT

    cpu.script = [first]  # then HALT with IF set and nothing pending: the time limit ends it
    stop = cpu.run(pio, mmio, RunLimits(timeout=0.05), controller=controller)  # type: ignore[arg-type]
    assert seen == [[0x20]] and stop.kind == "timeout"


def test_hlt_waits_for_a_timer_interrupt_then_the_guest_goes_on() -> None:
    pio, mmio, dev = buses()
    controller = Controller()
    clock = HostClock()
    clock.start()
    clock.call_later(20_000_000, lambda: controller.set_irq(0, True))
    cpu = ScriptedCpu([])
    after: list[Any] = []

    def halt_then_go_on() -> int:
        cpu.script = [("out", 0xF0, 1, 9), lambda: (after.append(list(cpu.delivered)), setattr(cpu, "if_flag", False), HALT)[2]]
        return HALT

    cpu.script = [halt_then_go_on]
    began = time.monotonic()
    stop = cpu.run(pio, mmio, RunLimits(timeout=10), clock, controller)  # type: ignore[arg-type]
    assert stop.kind == "halted" and time.monotonic() - began >= 0.015
    assert after == [[0x20]] and dev.log == [("w", 0, 1, 9)]


def test_the_time_limit_stops_a_guest_that_never_exits_and_drains_its_queue() -> None:
    began = time.monotonic()
    stop, cpu, _ = run([lambda: YIELD] * 10**7, RunLimits(timeout=0.1))
    assert stop.kind == "timeout" and stop.registers == {"rip": 0x1234}
    assert time.monotonic() - began < 5 and cpu.ended


def test_the_time_limit_ends_a_hlt_wait() -> None:
    pio, mmio, _ = buses()
    cpu = ScriptedCpu([])
    stop = cpu.run(pio, mmio, RunLimits(timeout=0.1), controller=Controller())  # type: ignore[arg-type]
    assert stop.kind == "timeout"


def test_a_stop_of_the_backend_carries_the_exit_count_and_what_was_queued_is_delivered() -> None:
    def fail() -> int:
        raise CpuStop(StopReason.of("shutdown", "triple fault"))

    stop, cpu, _ = run([("out", 0xF0, 1, 1), fail])
    assert (stop.kind, stop.exits, cpu.flushed) == ("shutdown", 1, 1)


def test_ctrl_c_delivers_what_was_queued_then_propagates() -> None:
    def interrupt() -> int:
        raise KeyboardInterrupt

    pio, mmio, _ = buses()
    cpu = ScriptedCpu([interrupt])
    with pytest.raises(KeyboardInterrupt):
        cpu.run(pio, mmio, RunLimits())
    assert cpu.flushed == 1 and cpu.finished


def test_an_access_that_raises_an_interrupt_has_it_offered_before_the_next_exit() -> None:
    pio, mmio, dev = buses()
    controller = Controller()
    dev.write = lambda offset, size, value: controller.set_irq(0, True)  # type: ignore[method-assign]
    pio.claim(Region(Space.PIO, 0x60, 1, None, dev.write), "irq")
    cpu = ScriptedCpu([])
    seen: list[list[int]] = []
    cpu.script = [("out", 0x60, 1, 1), lambda: (seen.append(list(cpu.delivered)), setattr(cpu, "if_flag", False), HALT)[2]]
    cpu.run(pio, mmio, RunLimits(), controller=controller)  # type: ignore[arg-type]
    assert seen == [[0x20]]


def test_accessors_ask_the_backends_diversion_while_it_is_active() -> None:
    from vmcore.accel.core import Diversion

    class Replay(Diversion):
        def __init__(self) -> None:
            super().__init__()
            self.active = True

        def before(self, kind: str, address: int, size: int, value: int | None) -> int | bool | None:
            return 0x99 if kind == "in" else None

        def after(self, kind: str, address: int, size: int, value: int) -> None:
            seen.append((kind, address, value))

    seen: list[tuple[str, int, int]] = []
    pio, mmio, dev = buses()
    cpu = ScriptedCpu([("in", 0xF0, 1), ("r", 0x1000, 1)])
    cpu.diversion = Replay  # type: ignore[method-assign]
    cpu.run(pio, mmio, RunLimits())
    assert cpu.answers == [0x99, 0x41]  # the port read was answered by the diversion, the device never saw it
    assert dev.log == [("r", 0, 1, 0x41)] and seen == [("r", 0x1000, 0x41)]


def test_a_kick_from_another_thread_brings_the_loop_back_to_serve_posted_input() -> None:
    pio, mmio, dev = buses()
    clock = HostClock()
    clock.start()
    served = threading.Event()
    cpu = ScriptedCpu([])
    cpu.script = [lambda: YIELD] * 10**7
    clock.call_later(10_000_000, lambda: threading.Thread(
        target=lambda: clock.call_soon_threadsafe(lambda: (served.set(), setattr(cpu, "script", [])))).start())
    stop = cpu.run(pio, mmio, RunLimits(timeout=10), clock)
    assert served.is_set() and stop.kind == "halted"


class NmiController(Controller):
    """A local APIC's NMI latch besides its INTR (vmcore.irq: take_nmi, nmi_raised)."""

    def __init__(self) -> None:
        super().__init__()
        self.nmi = False
        self.nmi_raised: Callable[[], None] | None = None

    def raise_nmi(self) -> None:
        self.nmi = True
        if self.nmi_raised is not None:
            self.nmi_raised()

    def take_nmi(self) -> bool:
        nmi, self.nmi = self.nmi, False
        return nmi


def test_an_nmi_raised_by_an_access_is_injected_before_intr_and_whatever_if_says() -> None:
    pio, mmio, _ = buses()
    controller = NmiController()
    nmis: list[list[int]] = []
    cpu = ScriptedCpu([], if_flag=False)
    cpu.inject_nmi = lambda: nmis.append(list(cpu.delivered))  # type: ignore[method-assign]

    def access() -> int:
        controller.raise_nmi()
        controller.set_irq(0, True)  # an INTR too: with IF clear it waits
        return YIELD

    cpu.script = [access, lambda: HALT]
    stop = cpu.run(pio, mmio, RunLimits(timeout=0.5), controller=controller)  # type: ignore[arg-type]
    assert nmis == [[]] and cpu.delivered == []  # the NMI once, before any INTR; INTR held by IF
    assert stop.kind == "halted" and controller.nmi_raised is None  # the core unhooks itself


def test_ctrl_c_stops_a_software_cpu_guest_that_never_exits(tmp_path: Path) -> None:
    """Python runs a signal's handler between bytecodes only; a guest spinning in emu_start gave it
    none, so SIGINT waited for the run's time limit (19 s of 20). The wakeup fd kicks the vCPU."""
    import signal

    from tests.helpers import signal_a_spinning_guest
    from tests.tiny_guests import SPIN, profile_for

    status, err = signal_a_spinning_guest(profile_for(SPIN, tmp_path), signal.SIGINT)
    assert status == 130 and b"interrupted: stopped by the user" in err, err


def test_the_signal_kick_answers_only_the_signals_the_run_handles() -> None:
    """Every signal with a Python handler reaches the wakeup fd, the KVM backend's own kick signal
    too: kicking for it sent another, without end (SeaBIOS on KVM went from 4 s to past its 20 s limit)."""
    import os
    import signal

    from vmcore.accel.core import _SignalKick

    kicks: list[float] = []
    handlers = {number: signal.signal(number, lambda *_: None) for number in (signal.SIGUSR1, signal.SIGUSR2)}
    kicker = _SignalKick.install(lambda: kicks.append(time.monotonic()), [signal.SIGUSR1])
    assert kicker is not None
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.2)
        assert kicks == []
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not kicks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(kicks) == 1
    finally:
        kicker.close()
        for number, handler in handlers.items():
            signal.signal(number, handler)
