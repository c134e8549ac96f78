"""vmcore.clock (machine time and timers) and vmcore.irq (interrupt lines)."""

import pytest

from vmcore.clock import HostClock, ManualClock
from vmcore.irq import IrqLine

# --- ManualClock ------------------------------------------------------------------------------


def test_manual_clock_starts_at_zero_or_the_given_time_and_moves_only_when_stepped():
    assert ManualClock().now() == 0
    clock = ManualClock(start=1_000)
    assert clock.now() == 1_000
    clock.step(250)
    assert clock.now() == 1_250


def test_timers_fire_in_deadline_order_each_seeing_its_own_deadline_as_now():
    clock = ManualClock()
    fired = []
    for deadline in (300, 100, 200):
        clock.call_at(deadline, lambda d=deadline: fired.append((d, clock.now())))

    assert clock.step(1_000) == 3

    assert fired == [(100, 100), (200, 200), (300, 300)]
    assert clock.now() == 1_000


def test_timers_with_the_same_deadline_fire_in_scheduling_order():
    clock = ManualClock()
    fired = []
    for name in "abc":
        clock.call_at(50, lambda n=name: fired.append(n))
    clock.step(50)
    assert fired == ["a", "b", "c"]


def test_call_later_is_relative_to_now():
    clock = ManualClock(start=500)
    fired = []
    clock.call_later(100, lambda: fired.append(clock.now()))
    clock.step(99)
    assert fired == []
    clock.step(1)
    assert fired == [600]


def test_timer_beyond_the_step_waits_for_a_later_step():
    clock = ManualClock()
    fired = []
    clock.call_at(150, lambda: fired.append(clock.now()))
    assert clock.step(100) == 0
    assert fired == []
    assert clock.next_deadline() == 150
    assert clock.step(100) == 1
    assert fired == [150]
    assert clock.next_deadline() is None


def test_cancelled_timer_does_not_fire():
    clock = ManualClock()
    fired = []
    keep = clock.call_at(10, lambda: fired.append("keep"))
    drop = clock.call_at(5, lambda: fired.append("drop"))
    drop.cancel()

    assert clock.next_deadline() == 10
    assert clock.step(20) == 1
    assert fired == ["keep"]
    assert not keep.cancelled


def test_step_zero_fires_timers_due_now():
    clock = ManualClock(start=40)
    fired = []
    clock.call_at(40, lambda: fired.append("due"))
    clock.call_at(41, lambda: fired.append("later"))
    assert clock.step(0) == 1
    assert fired == ["due"]
    assert clock.now() == 40


def test_negative_step_is_rejected():
    clock = ManualClock(start=10)
    with pytest.raises(ValueError, match="backwards"):
        clock.step(-1)
    assert clock.now() == 10


def test_timer_scheduled_from_a_callback_within_the_same_step_fires_in_that_step():
    clock = ManualClock()
    fired = []

    def first():
        fired.append(("first", clock.now()))
        clock.call_later(30, lambda: fired.append(("second", clock.now())))

    clock.call_at(10, first)
    assert clock.step(100) == 2
    assert fired == [("first", 10), ("second", 40)]


def test_periodic_timer_rearming_from_its_callback_stays_exact():
    clock = ManualClock()
    ticks = []

    def tick():
        ticks.append(clock.now())
        clock.call_later(1_000, tick)

    clock.call_at(1_000, tick)
    clock.step(3_500)
    assert ticks == [1_000, 2_000, 3_000]
    assert clock.next_deadline() == 4_000


def test_host_clock_starts_near_zero_and_never_goes_backwards():
    clock = HostClock()
    first = clock.now()
    samples = [clock.now() for _ in range(1_000)]
    assert 0 <= first < 1_000_000_000
    assert all(a <= b for a, b in zip([first, *samples], samples))


def test_host_clock_runs_due_timers():
    clock = HostClock()
    fired = []
    clock.call_at(0, lambda: fired.append(True))
    clock.call_at(10**15, lambda: fired.append(False))
    assert clock.run_due() == 1
    assert fired == [True]


# --- IrqLine ------------------------------------------------------------------------------------


class Controller:
    """Records what reaches the interrupt controller."""

    def __init__(self):
        self.events = []

    def __call__(self, number, level):
        self.events.append((number, level))


def test_irq_line_starts_low():
    line = IrqLine(4)
    assert line.level is False


def test_raise_and_lower_reach_the_controller_and_set_the_level():
    pic = Controller()
    line = IrqLine(4, pic)
    line.raise_()
    assert line.level is True
    line.lower()
    assert line.level is False
    assert pic.events == [(4, True), (4, False)]


def test_only_level_changes_reach_the_controller():
    pic = Controller()
    line = IrqLine(7, pic)
    line.raise_()
    line.raise_()
    line.set_level(1)
    line.lower()
    line.lower()
    line.set_level(0)
    assert pic.events == [(7, True), (7, False)]


def test_pulse_is_a_raise_then_a_lower():
    pic = Controller()
    line = IrqLine(1, pic)
    line.pulse()
    line.pulse()
    assert pic.events == [(1, True), (1, False), (1, True), (1, False)]
    assert line.level is False


def test_line_without_a_controller_still_tracks_its_level():
    line = IrqLine(3)
    line.raise_()
    assert line.level is True
    assert repr(line) == "IrqLine(3, level=1)"
