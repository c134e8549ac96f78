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


class Timer:
    """A scheduled callback; ``cancel()`` removes it."""

    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: int, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """Nanosecond machine time with a timer queue (monotonic, starts at 0)."""

    def __init__(self) -> None:
        self._queue: list[tuple[int, int, Timer]] = []
        self._order = itertools.count()
        # Callbacks posted from other threads (host input readers); deque appends are atomic.
        self._posted: collections.deque[Callable[[], None]] = collections.deque()
        #: Called (from any thread) when something was posted, to wake the vCPU loop.
        self.wakeup: Callable[[], None] | None = None
        #: Called with the new earliest deadline when a timer is scheduled before all others,
        #: so the run loop can re-arm its wake-up; nothing is polled per exit.
        self.deadline_changed: Callable[[int], None] | None = None

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
        timer = Timer(deadline, callback)
        queue = self._queue
        earliest = not queue or deadline < queue[0][0]
        heapq.heappush(queue, (deadline, next(self._order), timer))
        if earliest and self.deadline_changed is not None:
            self.deadline_changed(deadline)
        return timer

    def call_later(self, delay: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` after ``delay`` ns of machine time."""
        return self.call_at(self.now() + delay, callback)

    def next_deadline(self) -> int | None:
        """When the earliest pending timer is due, or None."""
        queue = self._queue
        while queue and queue[0][2].cancelled:
            heapq.heappop(queue)
        return queue[0][0] if queue else None

    def run_due(self) -> int:
        """Run posted callbacks, then fire every timer due by now, earliest first; return how many ran."""
        fired = 0
        posted = self._posted
        while posted:
            posted.popleft()()
            fired += 1
        now = self.now()
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, _, timer = heapq.heappop(queue)
            if not timer.cancelled:
                fired += 1
                timer.callback()
        return fired


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
            posted.popleft()()
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
