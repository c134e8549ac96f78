"""The guest CPU's time-stamp counter, as the devices of the CPU see it.

The local APIC's TSC-deadline timer (SDM 11.5.4.1) fires when the TSC reaches the value
the guest wrote into IA32_TSC_DEADLINE: the model turns that value into machine time,
for which it needs the TSC now and its rate. Only the accelerator knows them (on KVM
and on the software CPU alike the guest's TSC is the host's plus an offset the guest
may change), so the machine hands devices a :class:`TimeStampCounter` that the run
binds to its accelerator (:meth:`TimeStampCounter.bind`). Until then, and on the fake
bus, it counts machine time at :data:`DEFAULT_HZ`.
"""

from __future__ import annotations

from typing import Callable

from .clock import Clock

#: The rate of a TSC that no accelerator gives: 1 GHz, one count per ns of machine time.
DEFAULT_HZ = 1_000_000_000


class TimeStampCounter:
    """The guest's TSC: :meth:`read` it now, its rate :attr:`hz`, and when it reaches a value."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._read: Callable[[], int] = lambda: clock.now() * DEFAULT_HZ // 1_000_000_000
        self._hz: Callable[[], int] = lambda: DEFAULT_HZ

    def bind(self, read: Callable[[], int], hz: Callable[[], int]) -> None:
        """The accelerator's TSC from now on: ``read()`` gives the guest's TSC, ``hz()`` its rate
        (asked for only when needed: finding it may take a measurement)."""
        self._read, self._hz = read, hz

    def read(self) -> int:
        return self._read()

    @property
    def hz(self) -> int:
        return self._hz()

    def when(self, value: int) -> int:
        """The machine time (ns) at which the TSC reaches ``value``: now, if it has already."""
        hz = self.hz  # first: finding the rate may take a measurement, which must not age the sample
        now, tsc = self.clock.now(), self.read()
        if value <= tsc:
            return now
        return now + -(-(value - tsc) * 1_000_000_000 // hz)  # rounded up: never early
