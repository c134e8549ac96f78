"""Machine time: the clock devices read and schedule callbacks on.

Devices never read wall-clock time; they ask the :class:`Clock` handed to them,
so a :class:`ManualClock` can drive them step by step in tests.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import time
from typing import Callable

from .faults import DeviceFault, GuestExit


class Timer:
    """A scheduled callback; ``cancel()`` removes it."""

    __slots__ = ("deadline", "callback", "cancelled", "_clock")

    def __init__(self, deadline: int, callback: Callable[[], None], clock: "Clock | None" = None) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        # The clock whose queue still holds this timer; None once it fired or was dropped.
        self._clock = clock

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        clock, self._clock = self._clock, None
        if clock is not None:
            clock._timer_cancelled()


#: Called with a callback that raised and what it raised (see :attr:`Clock.on_error`).
ErrorHandler = Callable[[Callable[[], None], BaseException], None]


class Clock:
    """Nanosecond machine time with a timer queue (monotonic, starts at 0).

    A cancelled timer stays queued until the queue is more than half cancelled
    entries, then they are all dropped at once: a device re-arming a timer on every
    guest kick keeps the queue at most about twice its live timers.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[int, int, Timer]] = []
        self._cancelled = 0  # cancelled timers still in the queue
        self._order = itertools.count()
        # Callbacks posted from other threads (host input readers); deque appends are atomic.
        self._posted: collections.deque[Callable[[], None]] = collections.deque()
        #: Called (from any thread) when something was posted, to wake the vCPU loop.
        self.wakeup: Callable[[], None] | None = None
        #: Called with the new earliest deadline when a timer is scheduled before all others,
        #: so the run loop can re-arm its wake-up; nothing is polled per exit.
        self.deadline_changed: Callable[[int], None] | None = None
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
        """Nanoseconds of machine time since the machine started."""
        raise NotImplementedError

    def call_at(self, deadline: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once machine time reaches ``deadline`` (ns)."""
        timer = Timer(deadline, callback, self)
        queue = self._queue
        earliest = not queue or deadline < queue[0][0]
        heapq.heappush(queue, (deadline, next(self._order), timer))
        if earliest and self.deadline_changed is not None:
            self.deadline_changed(deadline)
        return timer

    def call_later(self, delay: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` after ``delay`` ns of machine time."""
        return self.call_at(self.now() + delay, callback)

    def pending(self) -> int:
        """How many entries the timer queue holds (live timers and cancelled ones not yet dropped)."""
        return len(self._queue)

    def next_deadline(self) -> int | None:
        """When the earliest pending timer is due, or None."""
        queue = self._queue
        while queue and queue[0][2].cancelled:
            heapq.heappop(queue)
            self._cancelled -= 1
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
            _, _, timer = heapq.heappop(queue)
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer._clock = None  # fired: a later cancel() has nothing to drop
                fired += 1
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

    def _timer_cancelled(self) -> None:
        self._cancelled += 1
        queue = self._queue
        if 2 * self._cancelled > len(queue):
            # In place: run_due may be iterating over this very list (a callback cancelling).
            queue[:] = [entry for entry in queue if not entry[2].cancelled]
            heapq.heapify(queue)
            self._cancelled = 0


class HostClock(Clock):
    """Machine time that follows the host's monotonic clock from machine start."""

    def __init__(self) -> None:
        super().__init__()
        self._origin = time.monotonic_ns()

    def now(self) -> int:
        return time.monotonic_ns() - self._origin


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
