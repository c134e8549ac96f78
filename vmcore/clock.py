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
import heapq
import itertools
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

    def now(self) -> int:
        """Nanoseconds of machine time since the guest's first instruction (0 before it)."""
        raise NotImplementedError

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

    def start(self, at: int = 0) -> None:
        """Machine time begins now, at ``at`` ns (a restored snapshot's time; 0 for a new machine)."""
        if self._origin is None:
            self._origin = time.monotonic_ns() - at

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
