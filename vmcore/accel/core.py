"""The run core: one vCPU loop for every accelerator.

An accelerator is a CPU backend: it runs the guest until something needs the
machine and says what, as an exit kind (a port or MMIO access, a pause, a
``hlt``) with the access in the :class:`ExitRecord`, or raises :class:`CpuStop`.
Everything else is written once, here, and is the same on every backend:

* the accessors: an access reaches its device through the bus's route tables,
  a device's exception is contained (or ends the run) in one place, a read's
  answer is checked, every access counts as an exit against ``max_exits`` and
  goes in the bus's history for fault reports when one is kept (``Bus.history``);
* the loop: due timers run, a pending interrupt is offered to the CPU, the CPU
  runs to its next exit, the exit is dispatched, the limits are checked, and the
  stop is reported with the exit count;
* waiting in ``hlt`` for an interrupt, the wall-clock limit, and waking the vCPU
  for timers and host input (a :class:`~vmcore.accel.wakeup.Waker`).

A backend whose CPU calls back for each access instead of exiting (unicorn's
hooks) registers the accessors as its callbacks: their signatures take the
callback's leading and trailing arguments for that reason (``port_in(cpu, port,
size, base)``: the engine, and the user data, which is the base the offset is
from: 0 for ports).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple

from ..bus import Bus, Direction
from ..clock import Clock
from ..device import GuestExit
from ..faults import DeviceFault, GuestReset
from ..irq import InterruptController, ModelSpecificRegisters, implements
from ..stop import StopReason
from ..stuck import CHECK_EVERY, PollWatch, describe
from .wakeup import Waker

log = logging.getLogger("vmcore.stuck")

if TYPE_CHECKING:
    from . import Accelerator, RunLimits

#: What a backend's ``enter`` returns: the exit kinds. The access ones carry the
#: record's address, size (and value, for writes); the core answers a read by
#: setting the record's value, which the backend hands the guest on the next ``enter``.
PIO_READ, PIO_WRITE, MMIO_READ, MMIO_WRITE, YIELD, HALT, STEPPED = range(1, 8)
#: YIELD: the CPU came back without an access (a slice ended, a kick, an interrupt
#: window opened): timers and interrupts are served and the limits checked.
#: HALT: the guest executed ``hlt``.
#: STEPPED: the one instruction :meth:`Accelerator.request_step` asked for ran (a ``hlt``
#: comes back as HALT, its step done too).

_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))
# The bits an answer of n bytes must not have: `value & _OVER[n]` non-zero is too wide or
# negative, a TypeError is no number at all.
_OVER = tuple(~((1 << (8 * n)) - 1) for n in range(9))
_ENDS_RUN = (GuestExit, DeviceFault, KeyboardInterrupt)


class CpuStop(Exception):
    """Raised by a backend to end the run with ``reason`` (a triple fault, an exit it cannot serve)."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason.message)
        self.reason = reason


class ExitRecord:
    """The access of the last exit, filled in by the backend (one per run: nothing per exit is allocated)."""

    __slots__ = ("address", "size", "value")

    def __init__(self) -> None:
        self.address = self.size = self.value = 0


class Diversion:
    """Where a backend diverts accesses while ``active``: it answers them, or lets them through.

    The software CPU needs this: once its run is decided it may execute a few more
    instructions, whose accesses must reach no device, and it re-executes an access it
    abandoned, which must be answered from what the device said the first time. The
    accessors ask :meth:`before` (a value, or True for a write: handled, the device is not
    called) and tell :meth:`after`, only while ``active``; the KVM backend never sets it.
    """

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = False  # an instance slot: read on every access, it must be a fast load

    def before(self, kind: str, address: int, size: int, value: int | None) -> int | bool | None:
        return None

    def after(self, kind: str, address: int, size: int, value: int) -> None:
        pass


class Accessors(NamedTuple):
    """The four ways an access reaches a device, for one run (see the module's docstring)."""

    port_in: Callable[..., int]
    port_out: Callable[..., None]
    mmio_read: Callable[..., int]
    mmio_write: Callable[..., None]


class _SignalKick:
    """Signals reach a vCPU running guest code in C. Python runs a signal's handler only between
    bytecodes, on the main thread, so on the software CPU a guest looping without exits kept
    Ctrl-C (and SIGUSR1's pause) waiting until something else stopped emu_start: the run's time
    limit. CPython's C-level handler writes the signal's number to the wakeup fd; a thread
    reading it kicks the vCPU, whose loop then runs the handler. (KVM_RUN returns EINTR anyway.)"""

    def __init__(self, kick: Callable[[], None], signals: frozenset[int]) -> None:
        self._signals = signals
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._closing = False
        self._thread = threading.Thread(target=self._loop, args=(kick,), name="vmcore-signals", daemon=True)
        self._thread.start()

    @classmethod
    def install(cls, kick: Callable[[], None], signals: Iterable[int]) -> "_SignalKick | None":
        """On the main thread (where signals are handled): the kicker for ``signals``; elsewhere None."""
        try:
            return cls(kick, frozenset(signals))
        except ValueError:  # not the main thread
            return None

    def _loop(self, kick: Callable[[], None]) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if self._closing or not data:
                return
            # Only the signals the run handles: every signal with a Python handler comes through
            # here, the KVM backend's own kick signal too, which a kick would only send again.
            if not self._signals.isdisjoint(data):
                kick()

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        self._closing = True
        try:
            os.write(self._write, b"\0")
        except OSError:
            pass
        self._thread.join(timeout=1)
        os.close(self._read)
        os.close(self._write)


class RunCore:
    """One run of one vCPU: the loop, the limits and the accessors, for any backend."""

    def __init__(self, cpu: "Accelerator", pio: Bus, mmio: Bus, limits: "RunLimits", clock: Clock | None = None,
                 controller: InterruptController | None = None) -> None:
        self.cpu, self.pio, self.mmio = cpu, pio, mmio
        self.limits, self.clock, self.controller = limits, clock, controller
        self.exit = ExitRecord()
        #: Exits so far (a box: the accessors count in it).
        self.exits = [0]
        self.max_exits = limits.max_exits if limits.max_exits is not None else -1
        self.pause_after = limits.pause_after
        #: The exit count the accessors watch for (the earlier of the two limits; -1: none).
        self._first_limit = min((n for n in (limits.max_exits, limits.pause_after) if n is not None), default=-1)
        #: The stop decided inside an access (max-exits), with the registers of that moment.
        self.ending: list[StopReason | None] = [None]
        #: The interrupt controller's INTR output, kept by its callback.
        self.intr = [False]
        #: Set when the loop must look before the next exit: a stop was decided, or INTR is up.
        self.attention = [False]
        #: Set by whatever should wake a ``hlt`` wait: a timer, host input, INTR, the time limit.
        self.woken = threading.Event()
        self.expired = False
        self.diversion = cpu.diversion()
        #: The stuck-guest detector (vmcore.stuck): the current run of equal device reads.
        self.poll_watch = PollWatch(limits.stuck_after, clock) if limits.stuck_after and clock is not None else None
        self.accessors = self._accessors()
        self._waker: Waker | None = None
        self._take_nmi: Callable[[], bool] | None = None
        self._watching = False  # the controller's callbacks are installed (see _watch)
        self._deadline: float | None = None
        self._timer: threading.Timer | None = None  # ends the run at _deadline (the time limit)
        self._time_left: float | None = None  # of the limit, while the monitor holds the machine
        #: The MSRs devices answer (vmcore.irq.ModelSpecificRegisters), by index: the CPU's own
        #: interrupt controller's (a local APIC's IA32_APIC_BASE). Each accelerator that can trap
        #: rdmsr/wrmsr sends those here.
        self.msrs: dict[int, ModelSpecificRegisters] = {}
        if implements(controller, ModelSpecificRegisters):
            self.msrs = {index: controller for index in controller.msr_indices()}

    # --- model-specific registers devices answer -----------------------------------------------

    def read_msr(self, index: int) -> int | None:
        """An rdmsr the accelerator trapped, answered by the device behind it; None for #GP."""
        device = self.msrs.get(index)
        return None if device is None else device.read_msr(index)

    def write_msr(self, index: int, value: int) -> bool:
        """A wrmsr the accelerator trapped, taken by the device behind it; False for #GP."""
        device = self.msrs.get(index)
        return device is not None and device.write_msr(index, value)

    # --- the accessors --------------------------------------------------------------------

    def _accessors(self) -> Accessors:
        """Built once per run, as closures: every name the hot path uses is a local or a cell."""
        return Accessors(self._reader(self.pio, "in"), self._writer(self.pio, "out"),
                         self._reader(self.mmio, "r"), self._writer(self.mmio, "w"))

    def _reader(self, bus: Bus, kind: str) -> Callable[..., int]:
        """``read(cpu, offset, size, base=0)``: the device's answer to the read at ``base + offset``."""
        routes, route, bad = bus.read_routes, bus.read_route, bus.bad_answer
        box, max_exits, at_limit, failed = self.exits, self._first_limit, self._at_limit, self._failed
        divert = self.diversion  # its ``active`` is read per access: the backend flips it
        READ = Direction.READ
        watch, space, poll_stuck = self.poll_watch, "pio" if bus is self.pio else "mmio", self._poll_stuck
        keep = bus.history.append if bus.history is not None else None

        def read(_cpu: Any, offset: int, size: int, base: int = 0, over: tuple[int, ...] = _OVER,
                 masks: tuple[int, ...] = _MASKS) -> int:
            address = base + offset
            if divert.active and (kept := divert.before(kind, address, size, None)) is not None:
                return kept  # type: ignore[return-value]
            try:
                handler, where = routes[size][address]
            except KeyError:
                handler, where = route(address, size)
            try:
                value = handler(where, size)
                try:
                    if value & over[size]:
                        value = bad(address, size, value)
                except TypeError:  # the answer is no number (the device did answer: not its error)
                    value = bad(address, size, value)
            except BaseException as exc:
                if not failed(bus, READ, address, size, None, exc):
                    return masks[size]  # the run ends (the report names this read): no exit, no history
                value = masks[size]
            if keep is not None:
                keep((bus, READ, address, size, value))
            if divert.active:
                divert.after(kind, address, size, value)
            if watch is not None:  # the stuck-guest detector: a run of equal reads of one register
                if value == watch.value and address == watch.address and watch.space == space:
                    count = watch.count = watch.count + 1
                    if not count % CHECK_EVERY and watch.overdue():
                        poll_stuck()
                else:
                    watch.space, watch.address, watch.size, watch.value = space, address, size, value
                    watch.count, watch.since = 0, None
            n = box[0] = box[0] + 1
            if n == max_exits:
                at_limit()
            return value

        return read

    def _writer(self, bus: Bus, kind: str) -> Callable[..., None]:
        """``write(cpu, offset, size, value, base=0)``: the write at ``base + offset`` reaches its device.

        ``value`` must fit ``size`` bytes (the backends mask what their CPU hands over).
        """
        routes, route = bus.write_routes, bus.write_route
        box, max_exits, at_limit, failed = self.exits, self._first_limit, self._at_limit, self._failed
        divert = self.diversion
        WRITE = Direction.WRITE
        keep = bus.history.append if bus.history is not None else None

        def write(_cpu: Any, offset: int, size: int, value: int, base: int = 0) -> None:
            address = base + offset
            if divert.active and divert.before(kind, address, size, value) is not None:
                return
            if keep is not None:  # before the device sees it: a write that raises ends the history
                keep((bus, WRITE, address, size, value))
            try:
                handler, where = routes[size][address]
            except KeyError:
                handler, where = route(address, size)
            try:
                handler(where, size, value)
            except BaseException as exc:
                if not failed(bus, WRITE, address, size, value, exc):
                    return
            if divert.active:
                divert.after(kind, address, size, value)
            n = box[0] = box[0] + 1
            if n == max_exits:
                at_limit()

        return write

    def _failed(self, bus: Bus, direction: Direction, address: int, size: int, value: int | None,
                exc: BaseException) -> bool:
        """A device raised during an access: contain it as the bus does; True when the run goes on.

        The routes call device handlers straight (Bus.direct), so what they raise goes to
        Bus.fault here, which logs it under ``device_errors: continue`` (SystemExit too) or
        raises DeviceFault; that, GuestExit and KeyboardInterrupt end the run, through the
        backend's :meth:`~vmcore.accel.Accelerator.abort` (KVM raises at once; the software
        CPU, inside a callback, stops and raises after).
        """
        if not isinstance(exc, _ENDS_RUN):
            try:
                bus.fault(direction, address, size, value, exc)
                return True
            except BaseException as fault:
                exc = fault
        self.cpu.abort(exc)
        return False

    def _pause(self, message: str) -> None:
        """A pause point (RunLimits.pause_after or pause_at): the run stops where the CPU next can,
        every access served: the software CPU comes back at its next block; KVM is between exits."""
        if self.ending[0] is None:
            self.ending[0] = StopReason.of("paused", message)
            self.attention[0] = True
            self.cpu.kick()

    def _pause_now(self) -> None:
        """RunLimits.pause_at came (a timer, on the machine's thread)."""
        self._pause(f"paused at {self.limits.pause_at} ns of machine time or just after")

    def _at_limit(self) -> None:
        """The access just made was the last one allowed: the run stops, with the registers of now.
        Or the pause point was reached (see _pause)."""
        if self.pause_after is not None and self.exits[0] == self.pause_after:
            self._pause(f"paused after {self.pause_after} exits or a few more")
            return
        self.ending[0] = self.cpu.stop_reason("max-exits", f"reached the limit of {self.max_exits} exits")
        self.attention[0] = True
        self.cpu.end_run()

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> StopReason:
        """Run the guest until it stops; device exceptions other than GuestExit propagate."""
        cpu = self.cpu
        enter = cpu.begin(self)
        if cpu.timeline is not None:
            enter = cpu.timeline.wrap_enter(enter)
            self.wait_for_interrupt = cpu.timeline.wrap_wait(self.wait_for_interrupt)  # type: ignore[method-assign]
        sigint = self._catch_sigint()
        pause = None
        paused_by = self._catch_pause_signal()
        signals = (_SignalKick.install(self._kick, [signal.SIGINT] + ([paused_by[0]] if paused_by else []))
                   if sigint is not None else None)
        try:
            self._start_waking()
            self._arm_timeout()
            if self.limits.pause_at is not None and self.clock is not None:
                pause = self.clock.call_at(self.limits.pause_at, self._pause_now)
            if self.limits.pause_at_instruction is not None:
                at = self.limits.pause_at_instruction
                if self.clock is None or not self.clock.virtual:
                    return StopReason.of("config-error", "a pause after a number of instructions needs clock: "
                                         "virtual (instructions are counted only then)")
                self.clock.call_at_instruction(at, 0, lambda: self._pause(f"paused after {at} instructions"))
            return self._counted(self._loop(enter))
        except CpuStop as stop:
            self.drain()  # what the guest queued before it failed reaches its devices
            return self._counted(stop.reason)
        except GuestExit as exc:
            # A device ended the run (debug-exit) during an access, which counts too.
            return StopReason(kind="reset" if isinstance(exc, GuestReset) else "exit", message=exc.reason,
                              status=exc.status, exits=self.exits[0] + 1)
        except KeyboardInterrupt:
            self.drain()
            raise
        finally:
            if pause is not None:
                pause.cancel()
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
            if paused_by is not None:
                signal.signal(paused_by[0], paused_by[1])
            if signals is not None:
                signals.close()
            if self._timer is not None:
                self._timer.cancel()
            self._stop_waking()
            cpu.end()

    def _catch_sigint(self) -> Any:
        """On the main thread, SIGINT (Ctrl-C, the terminal's Ctrl-A x) ends the run as an
        "interrupted" stop, decided here rather than raised: Python runs the handler wherever
        the thread is, and in an accelerator's C callback a KeyboardInterrupt would be lost.
        The handler it replaced (to put back), or None."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def interrupted(_signum: int, _frame: Any) -> None:
            if self.ending[0] is None:
                self.ending[0] = StopReason.of("interrupted", "stopped by the user (SIGINT, or Ctrl-A x at the "
                                               "terminal)")
            self.attention[0] = True
            self.woken.set()
            self.cpu.end_run()

        return signal.signal(signal.SIGINT, interrupted)

    def _catch_pause_signal(self) -> tuple[int, Any] | None:
        """With RunLimits.pause_on_signal, on the main thread: that signal pauses the run where a
        snapshot can be saved (see _pause). The signal and the handler it replaced, or None."""
        number = self.limits.pause_on_signal
        if number is None or threading.current_thread() is not threading.main_thread():
            return None

        def paused(_signum: int, _frame: Any) -> None:
            self._pause(f"paused by signal {signal.Signals(number).name}")
            self.woken.set()  # a guest in hlt is waited for in the loop

        return number, signal.signal(number, paused)

    def _loop(self, enter: Callable[[], int]) -> StopReason:
        record = self.exit
        port_in, port_out, mmio_read, mmio_write = self.accessors
        attention = self.attention
        self.service()  # an interrupt may be pending before the first instruction
        while True:
            kind = enter()
            if kind == PIO_WRITE:
                port_out(None, record.address, record.size, record.value)
            elif kind == PIO_READ:
                record.value = port_in(None, record.address, record.size)
            elif kind == MMIO_WRITE:
                mmio_write(None, record.address, record.size, record.value)
            elif kind == MMIO_READ:
                record.value = mmio_read(None, record.address, record.size)
            else:
                stop = self._control(kind)
                if stop is not None:
                    return stop
                continue
            if attention[0]:
                ending = self.ending[0]
                if ending is not None:
                    if ending.kind != "paused" or self.cpu.between_instructions():
                        return ending
                    continue  # a pause point waits for the rest of the instruction (a `rep ins/outs`)
                self.service()  # the access raised an interrupt: offer it now
                attention[0] = self.intr[0]

    def _control(self, kind: int) -> StopReason | None:
        """A YIELD, HALT or STEPPED: serve timers and interrupts, check the limits; a stop, or None to go on."""
        if self.ending[0] is not None:
            return self.ending[0]
        if self.expired:
            return self._timeout()
        if kind == STEPPED or (kind == HALT and self.cpu.step_done is not None):
            # The instruction asked for (Accelerator.request_step) ran: its caller (the monitor)
            # takes the machine here, before anything else happens to it.
            done, self.cpu.step_done = self.cpu.step_done, None
            if done is not None:
                done()
            if kind == STEPPED:
                self.service()
                return None
        if kind == HALT:
            # Only an interrupt ends HLT: with IF clear, or nothing to raise one, it is a stop.
            if self.controller is None or not self.cpu.interrupts_enabled():
                return StopReason.of("halted", "the guest executed hlt")
            if not self.wait_for_interrupt():
                return self._timeout()
            return None
        if kind == YIELD:
            self.service()
            return None
        raise AssertionError(f"unknown exit kind {kind}")

    def _timeout(self) -> StopReason:
        assert self.limits.timeout is not None
        return self.cpu.stop_reason("timeout", f"no stop after {self.limits.timeout:g} s of wall-clock time")

    def _counted(self, stop: StopReason) -> StopReason:
        return stop.evolve(exits=self.exits[0])

    def drain(self) -> None:
        """The run is stopping: the writes the guest queued without exiting (posted, rung) reach their devices."""
        self.cpu.flush()

    # --- timers and interrupts -------------------------------------------------------------

    def _poll_stuck(self) -> None:
        """The detector's run of equal reads lasted long enough: report it where the CPU can be read."""
        self.attention[0] = True
        self.cpu.kick()  # the software CPU comes back out of its run; KVM is between exits already

    def _report_stuck(self) -> None:
        watch = self.poll_watch
        assert watch is not None
        watch.pending, watch.reported = False, True
        bus = self.pio if watch.space == "pio" else self.mmio
        found = bus.find(watch.address)
        register = ""
        if found is not None:
            offset = watch.address - found[0].base
            label = found[0].label
            register = label(offset) if label is not None else \
                f"{found[0].name or 'register'}{f'+{offset:#x}' if offset else ''}"
        try:
            snapshot = self.cpu.snapshot()
        except Exception:  # noqa: BLE001 - the report goes without the loop, the run goes on
            snapshot = ({}, {}, None, None)
        log.warning("%s", describe(watch, None if found is None else found[1], register, snapshot,
                                   getattr(self.cpu, "memory", None)))

    def service(self) -> bool:
        """Run due timers and posted input, then offer a pending interrupt; True when one was delivered."""
        if self.poll_watch is not None and self.poll_watch.pending:
            self._report_stuck()
        clock = self.clock
        if clock is not None:
            clock.run_due()
            waker = self._waker
            if waker is not None and not clock.virtual and not clock.replaying:  # virtual: slices end at timers
                waker.rearm(clock.next_deadline())
        controller = self.controller
        if controller is None:
            return False
        take_nmi = self._take_nmi
        if take_nmi is not None and take_nmi():
            self.cpu.inject_nmi()
            return True
        return self.cpu.offer_interrupt(controller)

    def wait_for_interrupt(self) -> bool:
        """The guest is in ``hlt`` with IF set: sleep until an interrupt was delivered (False: time limit)."""
        clock = self.clock
        while True:
            if self.service():
                return True
            if self.expired or clock is not None and clock.replaying and clock.exhausted:
                return False  # (a replay past its recording's time: nothing more will come)
            if clock is not None and clock.virtual and (deadline := clock.next_deadline()) is not None:
                clock.skip_to(deadline)  # nothing runs until then: machine time is there at once
                continue
            remaining = None if self._deadline is None else self._deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if clock is not None and not clock.virtual:
                clock.sleep_until(clock.next_deadline(), self.woken, remaining)
            else:  # no clock, or a virtual one with no timer left: only input or the time limit wakes it
                self.woken.wait(remaining)
                self.woken.clear()

    def wake_at(self, deadline: int) -> None:
        """Come back to the loop at machine time ``deadline`` (ns) at the latest (no clock: never)."""
        if self._waker is not None:
            self._waker.arm(deadline)

    def _start_waking(self) -> None:
        clock = self.clock
        self._watch(self.controller)
        if clock is not None:
            waker = self._waker = Waker(self._kick, clock.now)
            clock.wakeup = waker.kick
            clock.idle_wakeup = self.woken.set
            clock.paused_changed = self._pause_limit
            if clock.replaying:
                pass  # timers fire where the recording's time says, at the loop's checks: no kicks
            elif clock.virtual:
                # Timers are instructions away, not host time: the CPU's slice ends at the earliest
                # (a timer armed during a slice shortens it); the waker only passes host input on.
                clock.deadline_changed = self.cpu.deadline_changed
            else:
                clock.deadline_changed = waker.arm
                waker.arm(clock.next_deadline())

    def _stop_waking(self) -> None:
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        if self.clock is not None:
            self.clock.deadline_changed = self.clock.wakeup = self.clock.paused_changed = None
            self.clock.idle_wakeup = None
        self._unwatch(self.controller)

    def _watch(self, controller: InterruptController | None) -> None:
        """Follow ``controller``'s INTR (and NMIs, a local APIC's): the loop offers what it raises."""
        self._watching = True
        if controller is None:
            self.intr[0] = False
            return
        self.intr[0] = self.attention[0] = controller.pending()
        kicks = not self.cpu.returns_per_access

        def intr_changed(level: bool) -> None:
            self.intr[0] = level
            self.attention[0] = level or self.ending[0] is not None
            if level:
                # Raised by an access or a timer on this thread: the loop offers it next
                # (a CPU that runs on past accesses is stopped for it); only a hlt wait needs waking.
                self.woken.set()
                if kicks:
                    self.cpu.kick()

        controller.intr_changed = intr_changed
        self._take_nmi = getattr(controller, "take_nmi", None)
        if self._take_nmi is not None:

            def nmi_raised() -> None:
                self.attention[0] = True
                self.woken.set()
                if kicks:
                    self.cpu.kick()

            controller.nmi_raised = nmi_raised  # type: ignore[attr-defined]

    def _unwatch(self, controller: InterruptController | None) -> None:
        self._watching = False
        if controller is not None:
            controller.intr_changed = None
            if self._take_nmi is not None:
                controller.nmi_raised = None  # type: ignore[attr-defined]
        self._take_nmi = None

    def rebind(self, controller: InterruptController | None) -> None:
        """The CPU's interrupt controller is now ``controller`` (a device reloaded under the running
        guest, vmcore.reload): its INTR is followed from here on, its MSRs answered, and the
        accelerator told (what it keeps of the controller: a local APIC's TPR for CR8)."""
        old = self.controller
        if controller is old:
            return
        watching = self._watching
        if watching:
            self._unwatch(old)
        for index in [index for index, device in self.msrs.items() if device is old]:
            del self.msrs[index]  # in place: the accelerators hold this dict
        if implements(controller, ModelSpecificRegisters):
            self.msrs.update({index: controller for index in controller.msr_indices()})
        self.controller = controller
        if watching:
            self._watch(controller)
        self.cpu.controller_changed(controller)
        self.woken.set()  # a hlt wait looks at the new controller's INTR

    def _kick(self) -> None:
        """From any thread: the loop should look at timers, input and INTR soon."""
        self.woken.set()
        self.cpu.kick()

    def _arm_timeout(self) -> None:
        timeout = self.limits.timeout
        if timeout is None:
            return
        self._deadline = time.monotonic() + timeout
        self._start_timer(timeout)

    def _start_timer(self, seconds: float) -> None:
        def expire() -> None:
            self.expired = True
            self.woken.set()
            self.cpu.end_run()

        timer = self._timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()

    def _pause_limit(self, paused: bool) -> None:
        """The machine was paused (the monitor) or goes on: the wall-clock limit counts only
        the time the guest may run."""
        if self._deadline is None:
            return
        if paused:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._time_left = max(0.0, self._deadline - time.monotonic())
        elif self._time_left is not None:
            left, self._time_left = self._time_left, None
            self._deadline = time.monotonic() + left
            self._start_timer(left)
