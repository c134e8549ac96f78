"""Machine time: the clock devices read and schedule callbacks on.

Devices never read wall-clock time; they ask the :class:`Clock` handed to them,
so a :class:`ManualClock` can drive them step by step in tests.

t=0 is the guest's first instruction: a machine's :class:`HostClock` reads 0
while the machine is built and its devices start, and begins to move only when
the run starts the guest (:meth:`Clock.start`). A timer armed while building,
``call_later(20 ms)``, fires 20 ms into the guest's run, not during start-up.
"""

from __future__ import annotations

import collections
import datetime as dt
import heapq
import itertools
import threading
import time
from typing import Callable

from .faults import DeviceFault, GuestExit

#: ``Timer._seq`` of a timer with no live entry in its clock's queue (never armed, fired or cancelled).
_NOT_QUEUED = -1


class Timer:
    """A callback scheduled on a clock: ``mod()`` (re-)arms it, ``cancel()`` removes it.

    A timer is one object for its whole life, as QEMU's ``QEMUTimer``: a device re-arms
    the same timer rather than dropping it and asking for a new one.
    """

    __slots__ = ("deadline", "callback", "cancelled", "_clock", "_seq")

    def __init__(self, deadline: int, callback: Callable[[], None], clock: "Clock") -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self._clock = clock
        # The sequence number of this timer's live queue entry; an entry with another
        # number is a dead one (the timer was cancelled or moved since).
        self._seq = _NOT_QUEUED

    @property
    def armed(self) -> bool:
        """Queued: neither fired nor cancelled since it was last (re-)armed."""
        return self._seq != _NOT_QUEUED

    def mod(self, deadline: int) -> None:
        """Fire at ``deadline`` (ns of machine time) instead, whether armed, fired or cancelled.

        As QEMU's ``timer_mod``: the timer keeps its callback and identity, and an entry
        it still had in the queue is dead from now on (dropped with the cancelled ones).
        """
        clock = self._clock
        if self._seq != _NOT_QUEUED:
            self._seq = _NOT_QUEUED
            clock._entry_died()
        self.cancelled = False
        self.deadline = deadline
        clock._push(self)

    def cancel(self) -> None:
        """Do not fire (until re-armed with ``mod()``); nothing happens if it already fired."""
        self.cancelled = True
        if self._seq != _NOT_QUEUED:
            self._seq = _NOT_QUEUED
            self._clock._entry_died()


#: Called with a callback that raised and what it raised (see :attr:`Clock.on_error`).
ErrorHandler = Callable[[Callable[[], None], BaseException], None]


class Clock:
    """Nanosecond machine time with a timer queue (monotonic; a machine's starts at :meth:`start`).

    Cancelling or moving a timer leaves its old entry in the queue, dead, until
    dead entries are more than half the queue; then they are all dropped at once:
    a device re-arming a timer on every guest kick keeps the queue at most about
    twice its live timers, at an amortised O(log n) per re-arm.
    """

    def __init__(self) -> None:
        # (deadline, seq, timer); an entry is live while seq == timer._seq.
        self._queue: list[tuple[int, int, Timer]] = []
        self._dead = 0  # dead entries still in the queue
        self._order = itertools.count()
        # Callbacks posted from other threads (host input readers); deque appends are atomic.
        self._posted: collections.deque[Callable[[], None]] = collections.deque()
        #: Called (from any thread) when something was posted, to wake the vCPU loop.
        self.wakeup: Callable[[], None] | None = None
        #: Called with the new earliest deadline when a timer is scheduled before all others,
        #: so the run loop can re-arm its wake-up; nothing is polled per exit.
        self.deadline_changed: Callable[[int], None] | None = None
        #: Called with True when machine time is paused (the monitor's pause) and False when it
        #: goes on, on the machine's thread: the run's wall-clock limit stops with it.
        self.paused_changed: Callable[[bool], None] | None = None
        #: Called with each timer's callback just before it runs (a timeline records it).
        self.timer_fired: Callable[[Callable[[], None]], None] | None = None
        #: Called with a timer or posted callback and the exception it raised (anything but
        #: KeyboardInterrupt, GuestExit and DeviceFault), on the machine's thread, instead of
        #: letting it propagate; it may raise to end the run. Unset: the exception propagates.
        self.on_error: ErrorHandler | None = None

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the machine's thread soon; safe from any thread.

        This is how a host-side reader (stdin, a socket) hands input to a device:
        device state is only ever touched from the machine's thread.
        """
        self._posted.append(callback)
        wakeup = self.wakeup
        if wakeup is not None:
            wakeup()

    #: Set during a run: wakes a halted guest's wait without stopping a running one (see post_quietly).
    idle_wakeup: Callable[[], None] | None = None

    def post_quietly(self, callback: Callable[[], None]) -> None:
        """As :meth:`call_soon_threadsafe`, but a running vCPU is not stopped for it: the callback
        runs at the run loop's next look (the next exit, or at once in a halted guest's wait).
        A recording on the host's clock takes host input this way, so that it lands where the
        guest's own course puts the loop, which a replay reaches again."""
        self._posted.append(callback)
        wake = self.idle_wakeup
        if wake is not None:
            wake()

    #: Whether machine time is read back from a recording (:class:`ReplayedHostClock`): the run
    #: then never waits for host time (a halted guest's wait is the recorded one, already over).
    replaying = False
    #: A replayed clock that has given every recorded reading (see :class:`ReplayedHostClock`).
    exhausted = False
    #: Whether the clock keeps its readings for a recording (see :class:`LoggedHostClock`).
    keeps_readings = False

    #: Whether machine time is made of the guest's instructions (:class:`VirtualClock`): the run
    #: then ends each slice of guest code at the next timer's instruction, and a ``hlt`` skips
    #: to that timer, instead of the host's time doing both.
    virtual = False

    def now(self) -> int:
        """Nanoseconds of machine time since the guest's first instruction (0 before it)."""
        raise NotImplementedError

    def note_yield(self, at_entry: bool) -> None:
        """The vCPU came back without an exit, stopped by a kick (a recording keeps where: see
        :class:`LoggedHostClock`); ``at_entry``: before the guest ran an instruction."""

    def yield_now(self) -> bool:
        """Whether the vCPU must come back here without running (a replay, where it did)."""
        return False

    def sleep_until(self, deadline: int | None, woken: "threading.Event", limit: float | None) -> None:
        """Block the machine's thread (a halted guest) until machine time ``deadline``, ``woken``
        or ``limit`` seconds of host time."""
        if deadline is None:
            timeout = limit
        else:
            timeout = max(0.0, (deadline - self.now()) / 1e9)
            if limit is not None:
                timeout = min(timeout, limit)
        woken.wait(timeout)
        woken.clear()

    def power_on_time(self) -> dt.datetime:
        """The date and time (UTC, naive) a battery-backed clock shows at power-on (an RTC whose
        ``start`` is "now"): the host's, here; a :class:`VirtualClock`'s own, fixed."""
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)

    def start(self, at: int = 0) -> None:
        """The guest runs from now on: a clock that follows the host takes t=``at`` here (0, or
        a restored snapshot's machine time).

        Later calls change nothing (a second run continues the machine's time); a
        :class:`ManualClock` moves only when stepped, so starting it changes nothing.
        """

    def pause(self) -> None:
        """Machine time stops until :meth:`resume` (the monitor's pause); a clock that moves only
        when told has nothing to stop."""

    def resume(self) -> None:
        """Machine time goes on from where :meth:`pause` stopped it."""

    def timer(self, callback: Callable[[], None]) -> Timer:
        """A timer not yet armed: arm it with :meth:`Timer.mod`, as QEMU's ``timer_new``."""
        return Timer(0, callback, self)

    def call_at(self, deadline: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once machine time reaches ``deadline`` (ns)."""
        timer = Timer(deadline, callback, self)
        self._push(timer)
        return timer

    def call_later(self, delay: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` after ``delay`` ns of machine time."""
        return self.call_at(self.now() + delay, callback)

    def pending(self) -> int:
        """How many entries the timer queue holds (live timers and dead entries not yet dropped)."""
        return len(self._queue)

    def live(self) -> int:
        """How many timers are armed (the queue's live entries)."""
        return len(self._queue) - self._dead

    def timers(self) -> list[Timer]:
        """The armed timers, earliest first."""
        return [timer for _deadline, seq, timer in sorted(self._queue) if seq == timer._seq]

    def next_deadline(self) -> int | None:
        """When the earliest pending timer is due, or None."""
        queue = self._queue
        while queue and queue[0][1] != queue[0][2]._seq:
            heapq.heappop(queue)
            self._dead -= 1
        return queue[0][0] if queue else None

    def run_due(self) -> int:
        """Run posted callbacks, then fire every timer due by now, earliest first; return how many ran."""
        fired = 0
        posted = self._posted
        while posted:
            self._call(posted.popleft())
            fired += 1
        now = self.now()
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, seq, timer = heapq.heappop(queue)
            if seq != timer._seq:
                self._dead -= 1
            else:
                timer._seq = _NOT_QUEUED  # fired: a later cancel() or mod() has no entry to kill
                fired += 1
                if self.timer_fired is not None:
                    self.timer_fired(timer.callback)
                self._call(timer.callback)
        return fired

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except (KeyboardInterrupt, GuestExit, DeviceFault):
            raise
        except BaseException as exc:  # SystemExit too: a device must not end the process
            if self.on_error is None:
                raise
            self.on_error(callback, exc)

    def _push(self, timer: Timer) -> None:
        """Queue ``timer`` at its deadline as its one live entry."""
        deadline = timer.deadline
        queue = self._queue
        earliest = not queue or deadline < queue[0][0]
        seq = timer._seq = next(self._order)
        heapq.heappush(queue, (deadline, seq, timer))
        if earliest and self.deadline_changed is not None:
            self.deadline_changed(deadline)

    def _entry_died(self) -> None:
        """A timer's queued entry was cancelled or moved: drop the dead ones once they are half the queue."""
        self._dead += 1
        queue = self._queue
        if 2 * self._dead > len(queue):
            # In place: run_due may be iterating over this very list (a callback cancelling).
            queue[:] = [entry for entry in queue if entry[1] == entry[2]._seq]
            heapq.heapify(queue)
            self._dead = 0


class HostClock(Clock):
    """Machine time that follows the host's monotonic clock from :meth:`start` (the guest's first instruction)."""

    def __init__(self) -> None:
        super().__init__()
        self._origin: int | None = None  # host monotonic ns at t=0; None: not started
        self._paused_at: int | None = None  # machine time when paused
        self._thread: int | None = None  # the machine's thread: the one that started the clock

    def start(self, at: int = 0) -> None:
        """Machine time begins now, at ``at`` ns (a restored snapshot's time; 0 for a new machine)."""
        if self._origin is None:
            self._origin = time.monotonic_ns() - at
            self._thread = threading.get_ident()

    def now(self) -> int:
        if self._paused_at is not None:
            return self._paused_at
        origin = self._origin
        return 0 if origin is None else time.monotonic_ns() - origin

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.now()
            if self.paused_changed is not None:
                self.paused_changed(True)

    def resume(self) -> None:
        paused_at, self._paused_at = self._paused_at, None
        if paused_at is not None and self._origin is not None:
            self._origin = time.monotonic_ns() - paused_at  # time goes on from where it stopped
        if paused_at is not None and self.paused_changed is not None:
            self.paused_changed(False)


#: Marks among a :class:`LoggedHostClock`'s readings (see ``note_yield``).
YIELD_AT_ENTRY, YIELD_WHILE_RUNNING = -1, -2


class LoggedHostClock(HostClock):
    """A :class:`HostClock` that keeps every reading made on the machine's thread (the thread that
    started it: the vCPU's), for a recording of a run on the host's time (vmcore.record). Read in
    the same order, the same values make the run again: every device's answer that depends on
    time, every timer that fired at a check of the run loop, each wait of a halted guest."""

    keeps_readings = True

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.readings: list[int] = []
        self.limit = limit  # most readings kept; past it the recording says it cannot be replayed
        self.overflow = False
        self.power_on: dt.datetime | None = None  # what an RTC was told (the host's date, once)

    def power_on_time(self) -> dt.datetime:
        if self.power_on is None:
            self.power_on = super().power_on_time()
        return self.power_on

    def now(self) -> int:
        value = super().now()
        if threading.get_ident() == self._thread:
            self._keep(value)
        return value

    def note_yield(self, at_entry: bool) -> None:
        # Kept among the readings: -1 where the vCPU was stopped before it ran (a kick between two
        # runs: a replay yields there too), -2 where the host's time stopped it while it ran.
        self._keep(YIELD_AT_ENTRY if at_entry else YIELD_WHILE_RUNNING)

    def _keep(self, value: int) -> None:
        if len(self.readings) < self.limit:
            self.readings.append(value)
        else:
            self.overflow = True


class ReplayedHostClock(HostClock):
    """Machine time read back from a :class:`LoggedHostClock`'s readings, in order, on the machine's
    thread (another thread reads the last one given). Past the last reading the replay has gone
    further than the recording: ``exhausted`` is set and time stands still (the replay's verdict
    says so). Waits of a halted guest take no host time."""

    replaying = True

    def __init__(self, readings: list[int], power_on: dt.datetime) -> None:
        super().__init__()
        self.readings = readings
        self.power_on = power_on
        self.position = 0  # readings given so far
        self.exhausted = False
        #: The recording's vCPU was stopped by the host's time while it ran somewhere here: a replay
        #: cannot stop it at that instruction.
        self.stopped_while_running = False
        self._last = 0
        #: (position, callback): run by :meth:`run_due` once that many readings were given, as the
        #: recording's host input was committed there.
        self._at_position: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()

    def now(self) -> int:
        if threading.get_ident() != self._thread:
            return self._last
        if self.position < len(self.readings) and self.readings[self.position] >= 0:
            self._last = self.readings[self.position]
            self.position += 1
        else:
            self.exhausted = True  # past the recording, or out of step with it (a yield there)
        return self._last

    def yield_now(self) -> bool:
        if self.position < len(self.readings) and self.readings[self.position] < 0:
            self.stopped_while_running |= self.readings[self.position] == YIELD_WHILE_RUNNING
            self.position += 1
            return True
        return False

    def power_on_time(self) -> dt.datetime:
        return self.power_on

    def call_at_position(self, position: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` (on the machine's thread) once ``position`` readings were given (in
        order of position: the recording's order)."""
        self._at_position.append((position, callback))

    def run_due(self) -> int:
        queue = self._at_position
        while queue and queue[0][0] <= self.position:
            self._posted.append(queue.popleft()[1])  # with the posted callbacks, as recorded
        return super().run_due()

    def sleep_until(self, deadline: int | None, woken: "threading.Event", limit: float | None) -> None:
        if deadline is not None:
            self.now()  # the recorded wait read the time once to compute its timeout
        woken.clear()


class ManualClock(Clock):
    """Time that moves only when told: for device tests on the fake bus."""

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self._now = start

    def now(self) -> int:
        return self._now

    def step(self, delta: int) -> int:
        """Advance ``delta`` ns, firing each due timer at its own deadline; return how many fired.

        Callbacks posted with :meth:`call_soon_threadsafe` run first.
        """
        if delta < 0:
            raise ValueError("machine time cannot go backwards")
        target = self._now + delta
        fired = 0
        posted = self._posted
        while posted:
            self._call(posted.popleft())
            fired += 1
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            # Timers see the time they were due at, so periodic re-arming stays exact.
            self._now = max(self._now, deadline)
            fired += self.run_due()
        self._now = target
        return fired


class VirtualClock(Clock):
    """Machine time made of the instructions the guest executed, as QEMU's ``-icount``: each is
    ``ns_per_instruction`` ns, and a device access ``ns_per_device_access`` more, so a run of a
    profile repeats exactly, timers included.

    The software CPU counts them (:meth:`slice`): it runs the guest in slices that end at the
    next timer's instruction, reports each slice's count as it ends, and a ``hlt`` with nothing
    else to do jumps machine time to the next timer (:meth:`skip_to`). Time stands still between
    slices, so the monitor's pause needs nothing here.
    """

    virtual = True
    #: What :meth:`power_on_time` gives: a fixed moment, not the host's.
    EPOCH = dt.datetime(2026, 1, 1)

    def __init__(self, ns_per_instruction: int = 1, ns_per_device_access: int = 1000) -> None:
        super().__init__()
        if ns_per_instruction < 1:
            raise ValueError("an instruction takes at least 1 ns of virtual time")
        if ns_per_device_access < 0:
            raise ValueError("a device access cannot take negative time")
        self.ns_per_instruction = ns_per_instruction
        #: What a device access (port or MMIO) costs besides its instruction, as an uncached access
        #: across a PC's buses does (about 1 us on ISA/LPC): a guest polling a device for a time to
        #: pass (SeaBIOS reads port 0x61 for the PIT's output; half a million reads at 1 ns each)
        #: polls as often as on hardware, not a thousand times more.
        self.ns_per_device_access = ns_per_device_access
        self._base = 0  # machine time when the running slice began (or now, between slices)
        self._counted: Callable[[], int] | None = None  # instructions of the running slice so far
        self._started = False
        #: Instructions executed in all (the slices' counts added up).
        self.instructions = 0
        # Callbacks posted at an instruction and a time (a replay's host input), earliest first:
        # (instructions, time ns, order, callback).
        self._at_instruction: list[tuple[int, int, int, Callable[[], None]]] = []

    def now(self) -> int:
        counted = self._counted
        return self._base if counted is None else self._base + counted() * self.ns_per_instruction

    def start(self, at: int = 0) -> None:
        if not self._started:
            self._started = True
            self._base = at

    def pause(self) -> None:
        if self.paused_changed is not None:
            self.paused_changed(True)  # the run's wall-clock limit stops; machine time stands anyway

    def resume(self) -> None:
        if self.paused_changed is not None:
            self.paused_changed(False)

    def power_on_time(self) -> dt.datetime:
        return self.EPOCH

    def budget(self, limit: int) -> int:
        """Instructions from now to the next timer or instruction callback (at least 1), at most ``limit``."""
        if self._at_instruction and self._at_instruction[0][0] > self.instructions:
            limit = min(limit, self._at_instruction[0][0] - self.instructions)
        deadline = self.next_deadline()
        if deadline is None:
            return limit
        step = self.ns_per_instruction
        return max(1, min(limit, -(-(deadline - self.now()) // step)))

    def call_at_instruction(self, instructions: int, time: int, callback: Callable[[], None]) -> None:
        """Post ``callback`` (it runs first among what is due, as host input does) once the guest has
        run ``instructions`` instructions and machine time is ``time``: where a recording saw host
        input arrive (a slice that ended there, or a ``hlt`` that waited there)."""
        heapq.heappush(self._at_instruction, (instructions, time, next(self._order), callback))

    def next_deadline(self) -> int | None:
        deadline = super().next_deadline()
        queue = self._at_instruction
        if queue and queue[0][0] <= self.instructions:  # reached: only its time is left to come
            return queue[0][1] if deadline is None else min(deadline, queue[0][1])
        return deadline

    def run_due(self) -> int:
        queue = self._at_instruction
        while queue and queue[0][0] <= self.instructions and queue[0][1] <= self.now():
            self._posted.append(heapq.heappop(queue)[3])
        return super().run_due()

    def slice(self, counted: Callable[[], int]) -> None:
        """A slice of guest code begins: ``counted()`` says how many of its instructions ran so far."""
        self._base = self.now()
        self._counted = counted

    def slice_done(self, executed: int) -> None:
        """The running slice ended after ``executed`` instructions."""
        self._counted = None
        self._base += executed * self.ns_per_instruction
        self.instructions += executed

    def charge(self, ns: int) -> int:
        """The running slice takes ``ns`` more than its instructions (a device access); returns
        the machine time its first instruction now stands for (the slice's count is added to it)."""
        self._base += ns
        return self._base

    def skip_to(self, deadline: int) -> None:
        """Nothing runs until ``deadline`` (a guest in ``hlt``): machine time is there at once."""
        if self._counted is None and deadline > self._base:
            self._base = deadline

