"""devices/pit.py: the Intel 8254 PIT and port 0x61 on the fake bus, one test per behaviour.

Times are machine nanoseconds; ``tick(k)`` is the first nanosecond by which k
periods of the 1.193182 MHz input clock have passed since the count was written.
"""

import pytest

from vmcore.device import PropertyError

CH0, CH1, CH2, CONTROL = 0x40, 0x41, 0x42, 0x43
PORT_B = 0x61
HZ = 1_193_182

# Control word fields (8254 datasheet, "Control Word Format").
LATCH, LSB, MSB, LSB_MSB = 0, 1, 2, 3


def tick(k: int) -> int:
    return -(-k * 1_000_000_000 // HZ)


def at(bus, ns: int) -> None:
    bus.step(ns - bus.clock.now())


def program(bus, counter: int, mode: int, rw: int = LSB_MSB, bcd: int = 0) -> None:
    bus.outb(CONTROL, counter << 6 | rw << 4 | mode << 1 | bcd)


def load(bus, counter: int, count: int) -> None:
    bus.outb(CH0 + counter, count & 0xFF)
    bus.outb(CH0 + counter, count >> 8 & 0xFF)


def start(bus, counter: int, mode: int, count: int, bcd: int = 0) -> None:
    program(bus, counter, mode, bcd=bcd)
    load(bus, counter, count)


def latched(bus, counter: int) -> int:
    """Counter-latch command, then the two bytes (LSB, MSB)."""
    bus.outb(CONTROL, counter << 6 | LATCH << 4)
    return bus.inb(CH0 + counter) | bus.inb(CH0 + counter) << 8


def status(bus, counter: int) -> int:
    """Read-back command latching only the status of ``counter``, then that byte."""
    bus.outb(CONTROL, 0xC0 | 0x20 | 2 << counter)
    return bus.inb(CH0 + counter)


def out0(bus) -> bool:
    return bool(status(bus, 0) & 0x80)


def rises(bus, line: int = 0) -> list[int]:
    return [t for t, n, level in bus.irq_events if n == line and level]


@pytest.fixture
def pit(fake_bus):
    return fake_bus.attach("i8254")


# --- registration and properties ---------------------------------------------------------


def test_type_is_registered_with_port_irq_and_speaker_port(device_registry):
    dtype = device_registry.get("i8254")
    assert [p.name for p in dtype.properties] == ["port", "irq", "speaker_port"]
    assert [p.default_text() for p in dtype.properties] == ["0x40", "0", "0x61"]


def test_claims_four_counter_ports_and_port_61(fake_bus, pit):
    owners = {port: fake_bus.pio.find(port) for port in (0x3F, 0x40, 0x43, 0x44, 0x61)}
    assert owners[0x3F] is None and owners[0x44] is None
    assert all(owners[port] is not None for port in (0x40, 0x43, 0x61))


def test_speaker_port_0_leaves_port_61_unclaimed(fake_bus):
    fake_bus.attach("i8254", speaker_port=0)
    assert fake_bus.pio.find(PORT_B) is None
    assert fake_bus.inb(PORT_B) == 0xFF


def test_port_range_must_fit_in_the_port_space(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("i8254", port=0xFFFE)
    assert info.value.key == "port"


def test_irq_property_moves_the_line(fake_bus):
    fake_bus.attach("i8254", irq=2)
    start(fake_bus, 0, 0, 10)
    fake_bus.step(tick(10))
    assert rises(fake_bus, 2) == [tick(10)] and rises(fake_bus, 0) == []


def test_control_word_port_reads_all_ones(fake_bus, pit):
    assert fake_bus.inb(CONTROL) == 0xFF


def test_power_on_counters_are_idle_and_raise_no_interrupt(fake_bus, pit):
    fake_bus.step(10**9)
    assert fake_bus.irq_events == []


# --- mode 0: interrupt on terminal count ----------------------------------------------------


def test_mode0_irq_pulses_once_when_the_count_reaches_zero(fake_bus, pit):
    start(fake_bus, 0, 0, 1000)
    fake_bus.step(tick(1000) - 1)
    assert fake_bus.irq_events == []
    fake_bus.step(1)
    assert fake_bus.irq_events == [(tick(1000), 0, True), (tick(1000), 0, False)]
    fake_bus.step(10**9)
    assert len(fake_bus.irq_events) == 2


def test_mode0_out_is_low_until_terminal_count_then_stays_high(fake_bus, pit):
    program(fake_bus, 0, 0)
    assert not out0(fake_bus)
    load(fake_bus, 0, 100)
    at(fake_bus, tick(99))
    assert not out0(fake_bus)
    at(fake_bus, tick(100))
    assert out0(fake_bus)
    at(fake_bus, tick(5000))
    assert out0(fake_bus)


def test_mode0_counter_counts_down_from_the_loaded_value(fake_bus, pit):
    start(fake_bus, 0, 0, 1000)
    assert latched(fake_bus, 0) == 1000
    at(fake_bus, tick(1))
    assert latched(fake_bus, 0) == 999
    at(fake_bus, tick(300) + 500)  # part way through a period still counts 300
    assert latched(fake_bus, 0) == 700


def test_mode0_keeps_counting_down_past_zero_from_0xffff(fake_bus, pit):
    start(fake_bus, 0, 0, 10)
    at(fake_bus, tick(12))
    assert latched(fake_bus, 0) == 0xFFFE


def test_mode0_first_byte_of_a_new_count_stops_counting_and_drives_out_low(fake_bus, pit):
    start(fake_bus, 0, 0, 100)
    at(fake_bus, tick(150))
    assert out0(fake_bus)
    fake_bus.outb(CH0, 50)  # LSB of a new count
    assert not out0(fake_bus)
    assert latched(fake_bus, 0) == (100 - 150) & 0xFFFF  # held where it stopped
    fake_bus.step(tick(1000))
    assert latched(fake_bus, 0) == (100 - 150) & 0xFFFF
    assert len(rises(fake_bus)) == 1


def test_mode0_second_byte_loads_the_new_count_from_that_moment(fake_bus, pit):
    start(fake_bus, 0, 0, 100)
    at(fake_bus, tick(40))
    load(fake_bus, 0, 50)
    written = fake_bus.clock.now()
    fake_bus.step(tick(100))
    assert rises(fake_bus) == [written + tick(50)]


# --- mode 2: rate generator -------------------------------------------------------------------


def test_mode2_rate_generator_interrupts_every_count_ticks(fake_bus, pit):
    start(fake_bus, 0, 2, 1193)
    fake_bus.step(tick(5 * 1193))
    assert rises(fake_bus) == [tick(k * 1193) for k in range(1, 6)]
    assert [level for _, _, level in fake_bus.irq_events] == [True, False] * 5  # pulses: edges


def test_periodic_interrupts_do_not_drift(fake_bus, pit):
    # Each deadline is computed from the load time and the edge's period number: after a
    # second of 1 kHz the last edge is exactly 1000 * 1193 periods in, not 1000 rounded periods.
    start(fake_bus, 0, 2, 1193)
    fake_bus.step(10**9)
    times = rises(fake_bus)
    assert len(times) == 1000
    assert times[-1] == tick(1000 * 1193) == 999_847_467
    assert times[-1] != 1000 * tick(1193)


def test_mode2_counter_reads_n_down_to_1_then_reloads(fake_bus, pit):
    start(fake_bus, 0, 2, 100)
    readings = {}
    for k in (0, 1, 99, 100, 101):
        at(fake_bus, tick(k))
        readings[k] = latched(fake_bus, 0)
    assert readings == {0: 100, 1: 99, 99: 1, 100: 100, 101: 99}


def test_mode2_out_is_low_for_the_one_period_before_reload(fake_bus, pit):
    program(fake_bus, 0, 2)
    assert out0(fake_bus)  # mode 2 starts with OUT high
    load(fake_bus, 0, 100)
    seen = {}
    for k in (98, 99, 100, 199):
        at(fake_bus, tick(k))
        seen[k] = out0(fake_bus)
    assert seen == {98: True, 99: False, 100: True, 199: False}


def test_new_count_in_mode2_takes_effect_when_the_current_period_ends(fake_bus, pit):
    start(fake_bus, 0, 2, 1000)
    at(fake_bus, tick(300))
    load(fake_bus, 0, 500)
    assert latched(fake_bus, 0) == 700  # still counting the old period
    assert status(fake_bus, 0) & 0x40  # NULL COUNT: the new count is not in the counter yet
    fake_bus.step(tick(2000) - fake_bus.clock.now())
    assert rises(fake_bus) == [tick(1000), tick(1500), tick(2000)]
    assert not status(fake_bus, 0) & 0x40


def test_control_word_stops_the_running_counter(fake_bus, pit):
    start(fake_bus, 0, 2, 100)
    at(fake_bus, tick(250))
    program(fake_bus, 0, 2)
    fake_bus.step(10**8)
    assert rises(fake_bus) == [tick(100), tick(200)]


def test_count_0_means_65536(fake_bus, pit):
    start(fake_bus, 0, 2, 0)
    assert latched(fake_bus, 0) == 0  # 65536 reads as 0x0000
    at(fake_bus, tick(1))
    assert latched(fake_bus, 0) == 0xFFFF
    fake_bus.step(tick(2 * 65536) - fake_bus.clock.now())
    assert rises(fake_bus) == [tick(65536), tick(2 * 65536)]


def test_mode_bits_6_and_7_behave_as_modes_2_and_3_and_read_back_as_written(fake_bus, pit):
    start(fake_bus, 0, 6, 10)
    assert status(fake_bus, 0) & 0x0E == 6 << 1
    fake_bus.step(tick(30))
    assert rises(fake_bus) == [tick(10), tick(20), tick(30)]


# --- mode 3: square wave --------------------------------------------------------------------


def test_mode3_even_count_is_high_for_half_and_low_for_half(fake_bus, pit):
    start(fake_bus, 0, 3, 10)
    levels = []
    for k in range(20):
        at(fake_bus, tick(k))
        levels.append(out0(fake_bus))
    assert levels == ([True] * 5 + [False] * 5) * 2


def test_mode3_even_count_counts_down_by_two_each_half(fake_bus, pit):
    start(fake_bus, 0, 3, 10)
    values = []
    for k in range(10):
        at(fake_bus, tick(k))
        values.append(latched(fake_bus, 0))
    assert values == [10, 8, 6, 4, 2, 10, 8, 6, 4, 2]


def test_mode3_odd_count_is_high_one_period_longer_than_low(fake_bus, pit):
    start(fake_bus, 0, 3, 7)
    levels, values = [], []
    for k in range(7):
        at(fake_bus, tick(k))
        levels.append(out0(fake_bus))
        values.append(latched(fake_bus, 0))
    assert levels == [True] * 4 + [False] * 3
    # Datasheet: high half decrements by 1 then 2s, low half by 3 then 2s.
    assert values == [7, 6, 4, 2, 7, 4, 2]


def test_mode3_square_wave_interrupts_on_each_rising_edge(fake_bus, pit):
    start(fake_bus, 0, 3, 11932)  # ~100 Hz
    fake_bus.step(tick(4 * 11932))
    assert rises(fake_bus) == [tick(k * 11932) for k in range(1, 5)]


# --- modes 1, 4 and 5 (approximated) ------------------------------------------------------------


def test_mode1_one_shot_out_low_while_counting_and_rises_at_zero(fake_bus, pit):
    program(fake_bus, 0, 1)
    assert out0(fake_bus)
    load(fake_bus, 0, 20)
    at(fake_bus, tick(19))
    assert not out0(fake_bus) and latched(fake_bus, 0) == 1
    fake_bus.step(tick(100))
    assert rises(fake_bus) == [tick(20)]


@pytest.mark.parametrize("mode", [4, 5])
def test_strobe_modes_drive_out_low_for_one_period_at_zero(fake_bus, pit, mode):
    start(fake_bus, 0, mode, 20)
    seen = {}
    for k in (19, 20, 21):
        at(fake_bus, tick(k))
        seen[k] = out0(fake_bus)
    assert seen == {19: True, 20: False, 21: True}
    fake_bus.step(tick(100))
    assert rises(fake_bus) == [tick(21)]


# --- latching and reading ----------------------------------------------------------------------


def test_counter_latch_holds_value_until_read(fake_bus, pit):
    start(fake_bus, 0, 2, 50000)
    at(fake_bus, tick(100))
    fake_bus.outb(CONTROL, 0x00)  # latch counter 0
    fake_bus.step(tick(1000))
    lsb = fake_bus.inb(CH0)
    fake_bus.step(tick(1000))
    msb = fake_bus.inb(CH0)
    assert lsb | msb << 8 == 49900
    # Both bytes read: the latch is released and reads follow the counter again.
    assert fake_bus.inb(CH0) | fake_bus.inb(CH0) << 8 == 50000 - 100 - 2000


def test_second_latch_before_the_read_is_ignored(fake_bus, pit):
    start(fake_bus, 0, 0, 5000)
    at(fake_bus, tick(10))
    fake_bus.outb(CONTROL, 0x00)
    at(fake_bus, tick(20))
    fake_bus.outb(CONTROL, 0x00)
    assert fake_bus.inb(CH0) | fake_bus.inb(CH0) << 8 == 4990


def test_unlatched_reads_alternate_lsb_then_msb(fake_bus, pit):
    start(fake_bus, 0, 0, 0x1234)
    assert [fake_bus.inb(CH0), fake_bus.inb(CH0), fake_bus.inb(CH0)] == [0x34, 0x12, 0x34]


def test_lsb_only_access_writes_and_reads_the_low_byte(fake_bus, pit):
    program(fake_bus, 0, 0, rw=LSB)
    fake_bus.outb(CH0, 0x34)
    assert [fake_bus.inb(CH0), fake_bus.inb(CH0)] == [0x34, 0x34]
    fake_bus.step(tick(0x34))
    assert rises(fake_bus) == [tick(0x34)]


def test_msb_only_access_writes_and_reads_the_high_byte(fake_bus, pit):
    program(fake_bus, 0, 0, rw=MSB)
    fake_bus.outb(CH0, 0x12)
    assert fake_bus.inb(CH0) == 0x12
    at(fake_bus, tick(0x100))
    assert fake_bus.inb(CH0) == 0x11
    fake_bus.step(tick(0x1200) - fake_bus.clock.now())
    assert rises(fake_bus) == [tick(0x1200)]


def test_readback_status_reports_out_null_count_rw_mode_and_bcd(fake_bus, pit):
    program(fake_bus, 0, 2)
    # OUT high, NULL COUNT (no count yet), LSB then MSB, mode 2, binary.
    assert status(fake_bus, 0) == 0x80 | 0x40 | 0x30 | 0x04
    load(fake_bus, 0, 100)
    assert status(fake_bus, 0) == 0x80 | 0x30 | 0x04
    program(fake_bus, 1, 0, rw=LSB, bcd=1)
    assert status(fake_bus, 1) == 0x40 | 0x10 | 0x01


def test_readback_latching_status_and_count_returns_status_first(fake_bus, pit):
    start(fake_bus, 0, 0, 300)
    at(fake_bus, tick(45))
    fake_bus.outb(CONTROL, 0xC2)  # count and status of counter 0
    fake_bus.step(tick(50))
    assert [fake_bus.inb(CH0) for _ in range(3)] == [0x30, 255, 0]  # status, then 255 = 300 - 45


def test_readback_can_latch_several_counters_at_once(fake_bus, pit):
    start(fake_bus, 0, 0, 1000)
    start(fake_bus, 1, 0, 2000)
    at(fake_bus, tick(10))
    fake_bus.outb(CONTROL, 0xC0 | 0x10 | 0x06)  # counts of counters 0 and 1, no status
    fake_bus.step(tick(100))
    assert fake_bus.inb(CH0) | fake_bus.inb(CH0) << 8 == 990
    assert fake_bus.inb(CH1) | fake_bus.inb(CH1) << 8 == 1990


def test_readback_status_latch_is_held_until_read(fake_bus, pit):
    start(fake_bus, 0, 0, 10)
    fake_bus.outb(CONTROL, 0xE2)  # status of counter 0 while OUT is low
    fake_bus.step(tick(20))
    assert fake_bus.inb(CH0) & 0x80 == 0
    assert out0(fake_bus)


# --- BCD ---------------------------------------------------------------------------------------


def test_bcd_count_is_read_as_decimal_digits_and_reads_back_in_bcd(fake_bus, pit):
    start(fake_bus, 0, 0, 0x0100, bcd=1)  # 100 decimal
    at(fake_bus, tick(1))
    assert latched(fake_bus, 0) == 0x0099
    fake_bus.step(tick(100) - fake_bus.clock.now())
    assert rises(fake_bus) == [tick(100)]
    at(fake_bus, tick(101))
    assert latched(fake_bus, 0) == 0x9999  # wraps modulo 10000


def test_bcd_count_0_is_10000(fake_bus, pit):
    start(fake_bus, 0, 2, 0, bcd=1)
    fake_bus.step(tick(20000))
    assert rises(fake_bus) == [tick(10000), tick(20000)]


# --- counter 2 and port 0x61 -------------------------------------------------------------------


def test_channel2_out_is_readable_in_port_61_bit5(fake_bus, pit):
    fake_bus.outb(PORT_B, 0x01)  # gate 2 on
    start(fake_bus, 2, 0, 500)
    at(fake_bus, tick(499))
    assert not fake_bus.inb(PORT_B) & 0x20
    at(fake_bus, tick(500))
    assert fake_bus.inb(PORT_B) & 0x20
    assert fake_bus.irq_events == []  # counter 2 has no interrupt


def test_channel2_mode0_gate_low_pauses_counting(fake_bus, pit):
    start(fake_bus, 2, 0, 500)  # port 0x61 bit 0 is clear at power-on: gate low
    fake_bus.step(tick(10_000))
    assert latched(fake_bus, 2) == 500 and not fake_bus.inb(PORT_B) & 0x20
    fake_bus.outb(PORT_B, 0x01)
    opened = fake_bus.clock.now()
    fake_bus.step(tick(200))
    fake_bus.outb(PORT_B, 0x00)
    fake_bus.step(tick(10_000))
    assert latched(fake_bus, 2) == 300
    fake_bus.outb(PORT_B, 0x01)
    reopened = fake_bus.clock.now()
    at(fake_bus, reopened + tick(299))
    assert not fake_bus.inb(PORT_B) & 0x20
    at(fake_bus, reopened + tick(300))
    assert fake_bus.inb(PORT_B) & 0x20
    assert opened < reopened


def test_channel2_mode3_square_wave_on_out2(fake_bus, pit):
    fake_bus.outb(PORT_B, 0x03)  # gate and speaker on, as for a beep
    start(fake_bus, 2, 3, 1000)
    levels = []
    for k in (0, 499, 500, 999, 1000):
        at(fake_bus, tick(k))
        levels.append(bool(fake_bus.inb(PORT_B) & 0x20))
    assert levels == [True, True, False, False, True]


def test_channel2_mode2_gate_low_forces_out_high_and_rising_gate_reloads(fake_bus, pit):
    fake_bus.outb(PORT_B, 0x01)
    start(fake_bus, 2, 2, 100)
    at(fake_bus, tick(99))
    assert not fake_bus.inb(PORT_B) & 0x20
    fake_bus.outb(PORT_B, 0x00)
    assert fake_bus.inb(PORT_B) & 0x20
    held = latched(fake_bus, 2)
    fake_bus.step(tick(1000))
    assert latched(fake_bus, 2) == held == 1
    fake_bus.outb(PORT_B, 0x01)
    assert latched(fake_bus, 2) == 100
    fake_bus.step(tick(30))
    assert latched(fake_bus, 2) == 70


def test_port_61_keeps_gate_speaker_and_check_enable_bits(fake_bus, pit):
    fake_bus.outb(PORT_B, 0xFF)
    assert fake_bus.inb(PORT_B) & 0xCF == 0x0F  # bits 6-7 read 0
    fake_bus.outb(PORT_B, 0x02)
    assert fake_bus.inb(PORT_B) & 0x0F == 0x02


def test_port_61_refresh_bit_toggles_on_every_read(fake_bus, pit):
    bits = [fake_bus.inb(PORT_B) & 0x10 for _ in range(4)]
    assert bits == [0x10, 0, 0x10, 0]


# --- reset -----------------------------------------------------------------------------------


def test_reset_stops_counting_and_interrupts(fake_bus, pit):
    fake_bus.outb(PORT_B, 0x03)
    start(fake_bus, 0, 2, 100)
    at(fake_bus, tick(150))
    pit.reset()
    fake_bus.step(10**8)
    assert rises(fake_bus) == [tick(100)]
    assert fake_bus.inb(PORT_B) & 0x0F == 0
    assert status(fake_bus, 0) & 0x40  # no count
