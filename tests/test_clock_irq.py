"""vmcore.clock (machine time and timers) and vmcore.irq (interrupt lines)."""

import time

import pytest

from vmcore.clock import HostClock, ManualClock
from vmcore.faults import DeviceFault, GuestExit
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
    clock.start()
    first = clock.now()
    samples = [clock.now() for _ in range(1_000)]
    assert 0 <= first < 1_000_000_000
    assert all(a <= b for a, b in zip([first, *samples], samples))


def test_host_clock_runs_due_timers():
    clock = HostClock()
    clock.start()
    fired = []
    clock.call_at(0, lambda: fired.append(True))
    clock.call_at(10**15, lambda: fired.append(False))
    assert clock.run_due() == 1
    assert fired == [True]


# --- t=0: the guest's first instruction ----------------------------------------------------------


def test_host_clock_reads_0_until_started():
    clock = HostClock()
    time.sleep(0.005)
    assert clock.now() == 0
    clock.start()
    time.sleep(0.005)
    assert clock.now() >= 5_000_000


def test_starting_again_keeps_the_first_origin():
    clock = HostClock()
    clock.start()
    time.sleep(0.005)
    clock.start()
    assert clock.now() >= 5_000_000


def test_a_timer_armed_before_start_fires_its_delay_after_start_not_before():
    delay = 200_000_000
    clock = HostClock()
    fired = []
    clock.call_later(delay, lambda: fired.append(clock.now()))
    assert clock.next_deadline() == delay
    time.sleep(1.5 * delay / 1e9)  # a start-up longer than the delay
    assert clock.run_due() == 0
    clock.start()
    assert clock.run_due() == 0
    time.sleep(delay / 1e9)
    while clock.now() < delay:
        time.sleep(0.001)
    assert clock.run_due() == 1
    assert fired[0] >= delay


# --- Timer.mod: re-arming one timer ------------------------------------------------------------------

FAR = 10**15  # a deadline neither clock reaches in a test


def started(make_clock):
    clock = make_clock()
    clock.start()
    return clock


@pytest.mark.parametrize("make_clock", [ManualClock, HostClock])
def test_mod_moves_an_armed_timer_earlier(make_clock):
    clock = started(make_clock)
    fired = []
    timer = clock.call_at(FAR, lambda: fired.append("moved"))
    timer.mod(0)
    assert timer.deadline == 0 and timer.armed
    assert clock.run_due() == 1
    assert fired == ["moved"]
    assert clock.next_deadline() is None and clock.pending() == 0


@pytest.mark.parametrize("make_clock", [ManualClock, HostClock])
def test_mod_moves_an_armed_timer_later(make_clock):
    clock = started(make_clock)
    fired = []
    timer = clock.call_at(0, lambda: fired.append("moved"))
    timer.mod(FAR)
    assert clock.run_due() == 0
    assert fired == []
    assert clock.next_deadline() == FAR and timer.armed


def test_a_moved_timer_fires_once_at_its_new_deadline():
    clock = ManualClock()
    fired = []
    timer = clock.call_at(100, lambda: fired.append(clock.now()))
    timer.mod(50)
    clock.step(200)
    assert fired == [50]
    timer.mod(300)
    timer.mod(250)
    clock.step(1_000)
    assert fired == [50, 250]


def test_mod_re_arms_a_fired_or_cancelled_timer_and_clears_cancelled():
    clock = ManualClock()
    fired = []
    timer = clock.call_at(10, lambda: fired.append(clock.now()))
    clock.step(10)
    assert not timer.armed
    timer.mod(20)
    timer.cancel()
    assert timer.cancelled and not timer.armed
    timer.mod(30)
    assert not timer.cancelled and timer.armed
    clock.step(100)
    assert fired == [10, 30]


def test_a_timer_from_clock_timer_is_unarmed_until_modded():
    clock = ManualClock()
    fired = []
    timer = clock.timer(lambda: fired.append(clock.now()))
    assert not timer.armed and clock.pending() == 0
    clock.step(100)
    assert fired == []
    timer.mod(150)
    clock.step(100)
    assert fired == [150]


def test_a_timer_re_armed_with_mod_from_its_callback_ticks_exactly_and_keeps_one_entry():
    clock = ManualClock()
    ticks = []

    def tick():
        ticks.append(clock.now())
        timer.mod(timer.deadline + 1_000)

    timer = clock.call_at(1_000, tick)
    clock.step(3_500)
    assert ticks == [1_000, 2_000, 3_000]
    assert clock.pending() == 1 and clock.next_deadline() == 4_000


def test_moving_a_timer_before_all_others_tells_the_run_loop_the_new_earliest_deadline():
    clock = ManualClock()
    told = []
    clock.deadline_changed = told.append
    clock.call_at(500, lambda: None)
    timer = clock.call_at(1_000, lambda: None)
    timer.mod(800)  # not the earliest: the loop's wake-up at 500 stands
    timer.mod(200)
    assert told == [500, 200]


@pytest.mark.parametrize("make_clock", [ManualClock, HostClock])
def test_100k_mods_keep_the_queue_within_twice_the_live_timers_and_count_only_those_live(make_clock):
    clock = started(make_clock)
    fired = []
    timers = [clock.call_at(FAR, lambda: fired.append(True)) for _ in range(3)]
    largest = 0
    for n in range(100_000):
        timers[n % 3].mod(FAR + n)
        largest = max(largest, clock.pending())
        assert clock.live() == 3
    assert largest <= 2 * len(timers) + 1
    assert clock.next_deadline() == FAR + 100_000 - 3
    assert clock.run_due() == 0 and fired == []


# --- cancelled timers leave the queue ------------------------------------------------------------


class Watchdog:
    """Re-arms its one timer on every kick, as a watchdog device does."""

    def __init__(self, clock):
        self.clock = clock
        self.timer = clock.call_later(10**9, self.expire)
        self.expired = 0

    def kick(self):
        self.timer.cancel()
        self.timer = self.clock.call_later(10**9, self.expire)

    def expire(self):
        self.expired += 1


@pytest.mark.parametrize("make_clock", [ManualClock, HostClock])
def test_100k_re_arms_keep_the_queue_within_twice_the_live_timers(make_clock):
    clock = make_clock()
    dogs = [Watchdog(clock) for _ in range(3)]
    largest = 0
    for kick in range(100_000):
        dogs[kick % 3].kick()
        largest = max(largest, clock.pending())
    assert largest <= 2 * len(dogs) + 1
    assert clock.next_deadline() is not None and all(dog.expired == 0 for dog in dogs)


def test_a_re_armed_timer_still_fires_once_at_its_new_deadline():
    clock = ManualClock()
    dog = Watchdog(clock)
    for _ in range(1_000):
        clock.step(1_000)
        dog.kick()
    clock.step(10**9 - 1)
    assert dog.expired == 0
    clock.step(1)
    assert dog.expired == 1


def test_cancelled_timers_leave_the_queue_once_they_are_more_than_half_of_it():
    clock = ManualClock()
    timers = [clock.call_at(10 + n, lambda: None) for n in range(4)]
    timers[0].cancel()
    timers[1].cancel()
    assert (clock.pending(), clock.live()) == (4, 2)  # half dead: kept
    timers[2].cancel()
    assert (clock.pending(), clock.live()) == (1, 1)  # more than half: all dead ones dropped
    timers[3].cancel()
    assert clock.pending() == 0


def test_cancelling_a_timer_that_already_fired_drops_no_live_timer():
    clock = ManualClock()
    fired = []
    done = clock.call_at(1, lambda: fired.append("done"))
    clock.step(1)
    for _ in range(3):
        done.cancel()  # counted once, if at all: it is no longer queued
    clock.call_at(5, lambda: fired.append("live"))
    clock.step(10)
    assert fired == ["done", "live"]


def test_a_callback_cancelling_many_due_timers_mid_run_leaves_the_rest_in_order():
    clock = ManualClock()
    fired = []
    later: list = []

    def cancel_most():
        fired.append("cancel")
        for timer in later[:8]:
            timer.cancel()  # the queue is compacted while run_due is walking it

    clock.call_at(10, cancel_most)
    later.extend(clock.call_at(10, lambda n=n: fired.append(n)) for n in range(10))
    clock.step(100)
    assert fired == ["cancel", 8, 9]
    assert clock.pending() == 0


# --- a raising callback ------------------------------------------------------------------------


def raising(error):
    def callback():
        raise error
    return callback


def test_without_an_error_hook_a_raising_timer_propagates():
    clock = ManualClock()
    clock.call_at(1, raising(RuntimeError("model bug")))
    with pytest.raises(RuntimeError, match="model bug"):
        clock.step(1)


@pytest.mark.parametrize("error", [RuntimeError("bug"), SystemExit(3), OverflowError("big")])
def test_the_error_hook_gets_the_callback_and_the_exception_and_later_timers_still_fire(error):
    clock = ManualClock()
    seen, fired = [], []
    clock.on_error = lambda callback, exc: seen.append((callback, exc))
    bad = raising(error)
    clock.call_at(1, bad)
    clock.call_at(2, lambda: fired.append(clock.now()))
    assert clock.step(5) == 2
    assert seen == [(bad, error)]
    assert fired == [2]


def test_the_error_hook_also_contains_posted_callbacks():
    clock = HostClock()
    seen = []
    clock.on_error = lambda callback, exc: seen.append(type(exc))
    clock.call_soon_threadsafe(raising(ValueError("bad input")))
    assert clock.run_due() == 1
    assert seen == [ValueError]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), GuestExit(3, "done"),
                                   DeviceFault("dev", "pio", "read", 0x60, 1, None, KeyError("x"))])
def test_ctrl_c_a_guest_exit_and_a_device_fault_pass_the_error_hook(error):
    clock = ManualClock()
    seen = []
    clock.on_error = lambda callback, exc: seen.append(exc)
    clock.call_at(1, raising(error))
    with pytest.raises(type(error)):
        clock.step(1)
    assert seen == []


def test_what_the_error_hook_raises_ends_the_step():
    clock = ManualClock()
    fired = []

    def stop(callback, exc):
        raise DeviceFault("dev", "timer", "callback", 0, 0, None, exc) from exc

    clock.on_error = stop
    clock.call_at(1, raising(RuntimeError("bug")))
    clock.call_at(2, lambda: fired.append(2))
    with pytest.raises(DeviceFault, match="during a timer callback"):
        clock.step(5)
    assert fired == []


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
