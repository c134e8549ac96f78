"""Waking a running vCPU: at a machine-time deadline, or at once from any thread.

The accelerator gives the :class:`Waker` an ``action`` that makes its run loop
return to Python soon (KVM: ``immediate_exit`` plus a signal to the vCPU thread;
unicorn, whose loop serves timers between instruction slices anyway: wake a halted
loop). One helper thread sleeps until the earliest armed deadline, so device timers
cost nothing on the exit path.
"""

from __future__ import annotations

import threading
from typing import Callable


#: A wake-up the vCPU has not answered (its loop calls rearm) is repeated this often (ns):
#: a signal can land just before KVM_RUN begins, and a halted unicorn loop may have just looked.
RETRY_NS = 1_000_000


class Waker:
    """A thread that calls ``action`` when the armed deadline passes or on :meth:`kick`.

    Until the vCPU loop answers with :meth:`rearm`, the action is repeated every
    ``RETRY_NS``, so a wake-up the backend lost costs a millisecond, not the run.
    """

    def __init__(self, action: Callable[[], None], now: Callable[[], int]) -> None:
        self._action = action
        self._now = now  # machine time in ns (the clock's own now)
        self._cond = threading.Condition()
        self._deadline: int | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="vmcore-waker", daemon=True)
        self._thread.start()

    def arm(self, deadline: int | None) -> None:
        """Wake at machine time ``deadline`` (ns), replacing any later one; None disarms."""
        with self._cond:
            if deadline is None or self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
                self._cond.notify()

    def rearm(self, deadline: int | None) -> None:
        """Set the deadline, later or earlier than the armed one (after the due timers ran)."""
        with self._cond:
            if deadline == self._deadline:
                return  # the loop calls this often (unicorn: every slice); waking the thread for nothing costs
            self._deadline = deadline
            self._cond.notify()

    def kick(self) -> None:
        """Wake the vCPU now (from any thread)."""
        self._action()
        self.arm(self._now() + RETRY_NS)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=1)

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                delay = (self._deadline - self._now()) / 1e9
                if delay > 0:
                    self._cond.wait(timeout=delay)
                    continue
                self._deadline = self._now() + RETRY_NS
                self._action()

