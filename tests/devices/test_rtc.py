"""devices/rtc.py: the MC146818A RTC and PC CMOS RAM on the fake bus, one test per behaviour."""

import datetime as dt

import pytest

from vmcore.device import PropertyError

INDEX, DATA = 0x70, 0x71
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = range(6)
DAY_OF_WEEK, DAY, MONTH, YEAR = 6, 7, 8, 9
A, B, C, D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
IRQ = 8
S = 1_000_000_000

UIP = 0x80
SET, PIE, AIE, UIE, DM_BINARY, HOUR_24 = 0x80, 0x40, 0x20, 0x10, 0x04, 0x02
IRQF, PF, AF, UF = 0x80, 0x40, 0x20, 0x10

START = "2026-01-02T03:04:05"  # a Friday: day of week 6 (1 is Sunday)


def rd(bus, index: int) -> int:
    bus.outb(INDEX, index)
    return bus.inb(DATA)


def wr(bus, index: int, value: int) -> None:
    bus.outb(INDEX, index)
    bus.outb(DATA, value)


def at(bus, ns: int) -> None:
    bus.step(ns - bus.clock.now())


def clock_bytes(bus) -> list[int]:
    return [rd(bus, i) for i in (CENTURY, YEAR, MONTH, DAY, HOURS, MINUTES, SECONDS)]


def raises(bus) -> list[int]:
    return [t for t, n, level in bus.irq_events if n == IRQ and level]


def acknowledged_raises(bus, until: int) -> list[int]:
    """Step timer by timer up to ``until``, reading C (as a handler would) after each raise."""
    times = []
    while (deadline := bus.clock.next_deadline()) is not None and deadline <= until:
        at(bus, deadline)
        if bus.irq_level(IRQ):
            times.append(deadline)
            rd(bus, C)
    return times


@pytest.fixture
def rtc(fake_bus):
    return fake_bus.attach("cmos-rtc", start=START, memory_size="1M")


# --- registration and properties ------------------------------------------------------------


def test_type_is_registered_with_port_irq_start_and_memory_size(device_registry):
    dtype = device_registry.get("cmos-rtc")
    assert [p.name for p in dtype.properties] == ["port", "irq", "start", "memory_size"]
    assert [p.default_text() for p in dtype.properties] == ["0x70", "8", "'now'", "0"]


def test_claims_the_index_and_data_ports(fake_bus, rtc):
    assert fake_bus.pio.find(0x70) is not None and fake_bus.pio.find(0x71) is not None
    assert fake_bus.pio.find(0x72) is None


def test_bad_start_is_rejected_against_the_start_property(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("cmos-rtc", start="yesterday")
    assert info.value.key == "start"
    assert "ISO date-time" in info.value.message


def test_start_now_is_the_host_utc_time_at_construction(fake_bus):
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    fake_bus.attach("cmos-rtc")
    after = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    wr(fake_bus, B, HOUR_24 | DM_BINARY)
    century, year, month, day, hour, minute, second = clock_bytes(fake_bus)
    seen = dt.datetime(century * 100 + year, month, day, hour, minute, second)
    assert before <= seen <= after


def test_start_with_a_time_zone_is_converted_to_utc(fake_bus):
    fake_bus.attach("cmos-rtc", start="2026-01-02T03:04:05+02:00")
    assert rd(fake_bus, HOURS) == 0x01


# --- time and formats ----------------------------------------------------------------------


def test_time_registers_read_the_start_time_in_bcd_by_default(fake_bus, rtc):
    assert clock_bytes(fake_bus) == [0x20, 0x26, 0x01, 0x02, 0x03, 0x04, 0x05]
    assert rd(fake_bus, DAY_OF_WEEK) == 6


def test_time_advances_with_machine_time(fake_bus, rtc):
    fake_bus.step(S - 1)
    assert rd(fake_bus, SECONDS) == 0x05
    fake_bus.step(1)
    assert rd(fake_bus, SECONDS) == 0x06
    fake_bus.step(3600 * S)
    assert (rd(fake_bus, HOURS), rd(fake_bus, MINUTES), rd(fake_bus, SECONDS)) == (0x04, 0x04, 0x06)


def test_new_year_rolls_every_field_and_day_of_week(fake_bus):
    fake_bus.attach("cmos-rtc", start="2099-12-31T23:59:59")  # a Thursday
    assert rd(fake_bus, DAY_OF_WEEK) == 5
    fake_bus.step(S)
    assert clock_bytes(fake_bus) == [0x21, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00]
    assert rd(fake_bus, DAY_OF_WEEK) == 6


def test_day_of_week_wraps_from_saturday_to_sunday(fake_bus):
    fake_bus.attach("cmos-rtc", start="2026-01-03T23:59:59")  # Saturday
    assert rd(fake_bus, DAY_OF_WEEK) == 7
    fake_bus.step(S)
    assert rd(fake_bus, DAY_OF_WEEK) == 1


def test_bcd_vs_binary(fake_bus):
    fake_bus.attach("cmos-rtc", start="2026-11-29T23:45:59")
    assert clock_bytes(fake_bus) == [0x20, 0x26, 0x11, 0x29, 0x23, 0x45, 0x59]
    wr(fake_bus, B, HOUR_24 | DM_BINARY)
    assert clock_bytes(fake_bus) == [20, 26, 11, 29, 23, 45, 59]


@pytest.mark.parametrize("start, bcd, binary", [
    ("2026-01-02T15:04:05", 0x83, 0x83),   # 3 PM
    ("2026-01-02T00:30:00", 0x12, 0x0C),   # 12 AM
    ("2026-01-02T12:30:00", 0x92, 0x8C),   # 12 PM
    ("2026-01-02T11:59:00", 0x11, 0x0B),   # 11 AM
    ("2026-01-02T23:00:00", 0x91, 0x8B),   # 11 PM
])
def test_12_hour_mode_sets_pm_bit(fake_bus, start, bcd, binary):
    fake_bus.attach("cmos-rtc", start=start)
    wr(fake_bus, B, 0)  # 12-hour, BCD
    assert rd(fake_bus, HOURS) == bcd
    wr(fake_bus, B, DM_BINARY)
    assert rd(fake_bus, HOURS) == binary


def test_12_hour_hours_written_with_pm_bit_are_afternoon(fake_bus, rtc):
    wr(fake_bus, B, 0)
    wr(fake_bus, HOURS, 0x80 | 0x07)  # 7 PM
    wr(fake_bus, B, HOUR_24)
    assert rd(fake_bus, HOURS) == 0x19


def test_rtc_uip_set_in_last_244us_before_second(fake_bus, rtc):
    at(fake_bus, S - 244_001)
    assert not rd(fake_bus, A) & UIP
    at(fake_bus, S - 244_000)
    assert rd(fake_bus, A) & UIP
    assert rd(fake_bus, SECONDS) == 0x05  # the update comes at the boundary
    at(fake_bus, S - 1)
    assert rd(fake_bus, A) & UIP
    at(fake_bus, S)
    assert not rd(fake_bus, A) & UIP
    assert rd(fake_bus, SECONDS) == 0x06


def test_uip_is_clear_while_set_is_1(fake_bus, rtc):
    wr(fake_bus, B, SET | HOUR_24)
    at(fake_bus, S - 1000)
    assert not rd(fake_bus, A) & UIP


def test_set_bit_freezes_time_and_allows_setting_it(fake_bus, rtc):
    at(fake_bus, S // 2)
    wr(fake_bus, B, SET | HOUR_24)
    fake_bus.step(10 * S)
    assert rd(fake_bus, SECONDS) == 0x05
    for index, value in ((CENTURY, 0x20), (YEAR, 0x30), (MONTH, 0x06), (DAY, 0x15), (HOURS, 0x12),
                         (MINUTES, 0x00), (SECONDS, 0x00), (DAY_OF_WEEK, 0x07)):
        wr(fake_bus, index, value)
    fake_bus.step(3 * S)
    assert clock_bytes(fake_bus) == [0x20, 0x30, 0x06, 0x15, 0x12, 0x00, 0x00]
    wr(fake_bus, B, HOUR_24)  # running again: the next update is at the next second boundary
    cleared = fake_bus.clock.now()
    at(fake_bus, (cleared // S + 1) * S - 1)
    assert rd(fake_bus, SECONDS) == 0x00
    fake_bus.step(1)
    assert rd(fake_bus, SECONDS) == 0x01
    assert rd(fake_bus, DAY_OF_WEEK) == 7


def test_no_update_flag_while_set_is_1(fake_bus, rtc):
    wr(fake_bus, A, 0x20)  # no periodic flag either
    wr(fake_bus, B, SET | HOUR_24)
    fake_bus.step(3 * S)
    assert rd(fake_bus, C) == 0


def test_setting_set_clears_uie(fake_bus, rtc):
    wr(fake_bus, B, SET | UIE | HOUR_24)
    assert rd(fake_bus, B) == SET | HOUR_24


def test_time_written_while_running_takes_effect_at_once(fake_bus, rtc):
    at(fake_bus, S // 2)
    wr(fake_bus, MINUTES, 0x30)
    assert (rd(fake_bus, HOURS), rd(fake_bus, MINUTES), rd(fake_bus, SECONDS)) == (0x03, 0x30, 0x05)
    at(fake_bus, S)
    assert rd(fake_bus, SECONDS) == 0x06


def test_out_of_range_time_bytes_are_clamped(fake_bus, rtc):
    wr(fake_bus, B, SET | HOUR_24)
    wr(fake_bus, MONTH, 0x02)
    wr(fake_bus, DAY, 0x31)
    wr(fake_bus, MINUTES, 0x75)
    wr(fake_bus, B, HOUR_24)
    assert (rd(fake_bus, MONTH), rd(fake_bus, DAY), rd(fake_bus, MINUTES)) == (0x02, 0x28, 0x59)


@pytest.mark.parametrize("century, year, month, last", [(0x20, 0x24, 0x02, 0x29), (0x19, 0x00, 0x02, 0x28),
                                                       (0x20, 0x00, 0x02, 0x29), (0x20, 0x25, 0x04, 0x30),
                                                       (0x99, 0x99, 0x12, 0x31)])
def test_a_day_past_the_month_is_clamped_to_its_last_day(fake_bus, rtc, century, year, month, last):
    # Leap years as the Gregorian calendar has them (2000 and 2024, not 1900); December of 9999.
    wr(fake_bus, B, SET | HOUR_24)
    for index, value in ((CENTURY, century), (YEAR, year), (MONTH, month), (DAY, 0x31)):
        wr(fake_bus, index, value)
    wr(fake_bus, B, HOUR_24)
    assert (rd(fake_bus, MONTH), rd(fake_bus, DAY)) == (month, last)


def test_clock_stops_at_the_end_of_year_9999_instead_of_failing(fake_bus, rtc):
    # Found by `vmcore fuzz cmos-rtc`: the next update raised OverflowError (datetime ends in 9999).
    wr(fake_bus, B, SET | HOUR_24)
    for index, value in ((CENTURY, 0x99), (YEAR, 0x99), (MONTH, 0x12), (DAY, 0x31), (HOURS, 0x23),
                         (MINUTES, 0x59), (SECONDS, 0x59)):
        wr(fake_bus, index, value)
    wr(fake_bus, B, HOUR_24 | UIE)
    fake_bus.step(3 * S)
    assert clock_bytes(fake_bus) == [0x99, 0x99, 0x12, 0x31, 0x23, 0x59, 0x59]
    assert rd(fake_bus, C) & UF  # updates go on


# --- registers A-D --------------------------------------------------------------------------


def test_register_a_keeps_divider_and_rate_but_uip_is_read_only(fake_bus, rtc):
    assert rd(fake_bus, A) == 0x26
    wr(fake_bus, A, 0xA3)
    assert rd(fake_bus, A) == 0x23


def test_register_d_reports_valid_ram_and_time(fake_bus, rtc):
    assert rd(fake_bus, D) == 0x80
    wr(fake_bus, D, 0)
    assert rd(fake_bus, D) == 0x80


def test_register_c_is_read_only(fake_bus, rtc):
    at(fake_bus, S)
    wr(fake_bus, C, 0)
    assert rd(fake_bus, C) & UF


def test_index_bit7_nmi_disable_is_masked_off(fake_bus, rtc):
    fake_bus.outb(INDEX, 0x80 | MINUTES)
    assert fake_bus.inb(DATA) == 0x04
    assert rtc.nmi_disabled


def test_index_port_reads_all_ones(fake_bus, rtc):
    assert fake_bus.inb(INDEX) == 0xFF


# --- flags and interrupts -------------------------------------------------------------------


def test_periodic_interrupt_rate_6_is_1024_hz(fake_bus, rtc):
    wr(fake_bus, A, 0x26)
    wr(fake_bus, B, PIE | HOUR_24)
    times = acknowledged_raises(fake_bus, S)
    assert len(times) == 1024
    assert times[0] == 976_563  # 1 s / 1024 = 976562.5 ns, rounded up
    assert times[-1] == S  # aligned to the second: no drift


@pytest.mark.parametrize("rate, hertz", [(1, 256), (2, 128), (3, 8192), (7, 512), (15, 2)])
def test_periodic_rate_is_32768_hz_shifted_by_rate_minus_1(fake_bus, rtc, rate, hertz):
    wr(fake_bus, A, 0x20 | rate)
    wr(fake_bus, B, PIE | HOUR_24)
    assert len(acknowledged_raises(fake_bus, S)) == hertz


def test_periodic_rate_0_disables_the_periodic_interrupt(fake_bus, rtc):
    wr(fake_bus, A, 0x20)
    wr(fake_bus, B, PIE | HOUR_24)
    fake_bus.step(S // 2)
    assert raises(fake_bus) == [] and not rd(fake_bus, C) & PF


def test_irq_stays_high_until_register_c_is_read(fake_bus, rtc):
    wr(fake_bus, B, PIE | HOUR_24)
    fake_bus.step(S // 100)  # ~10 periodic ticks
    assert fake_bus.irq_level(IRQ)
    assert raises(fake_bus) == [976_563]  # level: one rise, however many ticks follow


def test_register_c_read_clears_flags_and_lowers_irq(fake_bus, rtc):
    wr(fake_bus, B, PIE | HOUR_24)
    at(fake_bus, 976_563)
    assert rd(fake_bus, C) == IRQF | PF
    assert not fake_bus.irq_level(IRQ)
    assert fake_bus.irq_events[-1] == (976_563, IRQ, False)
    assert rd(fake_bus, C) == 0
    at(fake_bus, 1_953_125)
    assert fake_bus.irq_level(IRQ)


def test_update_ended_interrupt_once_a_second(fake_bus, rtc):
    wr(fake_bus, B, UIE | HOUR_24)
    assert acknowledged_raises(fake_bus, 3 * S) == [S, 2 * S, 3 * S]


def test_update_interrupt_flags_uf_and_irqf(fake_bus, rtc):
    wr(fake_bus, B, UIE | HOUR_24)
    at(fake_bus, S)
    assert rd(fake_bus, C) & (IRQF | UF) == IRQF | UF


def test_alarm_interrupt_when_time_matches(fake_bus, rtc):
    wr(fake_bus, HOURS_ALARM, 0x03)
    wr(fake_bus, MINUTES_ALARM, 0x04)
    wr(fake_bus, SECONDS_ALARM, 0x08)
    wr(fake_bus, B, AIE | HOUR_24)
    fake_bus.step(10 * S)
    assert raises(fake_bus) == [3 * S]
    assert rd(fake_bus, C) & (IRQF | AF) == IRQF | AF


def test_alarm_dont_care_bytes_match_any_value(fake_bus, rtc):
    wr(fake_bus, HOURS_ALARM, 0xC0)
    wr(fake_bus, MINUTES_ALARM, 0xFF)
    wr(fake_bus, SECONDS_ALARM, 0x00)  # every minute, on the minute
    wr(fake_bus, B, AIE | HOUR_24)
    assert acknowledged_raises(fake_bus, 200 * S) == [55 * S, 115 * S, 175 * S]


def test_alarm_registers_read_back_what_was_written(fake_bus, rtc):
    wr(fake_bus, HOURS_ALARM, 0xC7)
    assert rd(fake_bus, HOURS_ALARM) == 0xC7


def test_flags_are_set_even_when_interrupts_are_disabled(fake_bus, rtc):
    wr(fake_bus, SECONDS_ALARM, 0x06)
    wr(fake_bus, MINUTES_ALARM, 0xC0)
    wr(fake_bus, HOURS_ALARM, 0xC0)
    fake_bus.step(S)
    assert rd(fake_bus, C) == PF | AF | UF  # rate 6 is running; no IRQF
    assert fake_bus.irq_events == []


def test_enabling_pie_with_pf_already_set_raises_the_irq_at_once(fake_bus, rtc):
    at(fake_bus, S // 10)
    assert not fake_bus.irq_level(IRQ)
    wr(fake_bus, B, PIE | HOUR_24)
    assert fake_bus.irq_level(IRQ)


def test_clearing_the_enable_bit_lowers_the_irq(fake_bus, rtc):
    wr(fake_bus, B, UIE | HOUR_24)
    at(fake_bus, S)
    assert fake_bus.irq_level(IRQ)
    wr(fake_bus, B, HOUR_24)
    assert not fake_bus.irq_level(IRQ)


def test_irq_property_moves_the_line(fake_bus):
    fake_bus.attach("cmos-rtc", start=START, irq=5)
    wr(fake_bus, B, UIE | HOUR_24)
    fake_bus.step(S)
    assert fake_bus.irq_events == [(S, 5, True)]


def test_reset_clears_enables_and_flags_but_keeps_time_and_ram(fake_bus, rtc):
    wr(fake_bus, 0x40, 0x5A)
    wr(fake_bus, B, PIE | UIE | HOUR_24)
    at(fake_bus, 2 * S)
    rtc.reset()
    assert not fake_bus.irq_level(IRQ)
    assert rd(fake_bus, B) == HOUR_24
    assert rd(fake_bus, C) == 0
    assert rd(fake_bus, SECONDS) == 0x07 and rd(fake_bus, 0x40) == 0x5A


# --- CMOS RAM --------------------------------------------------------------------------------


def test_nvram_reads_back_what_was_written(fake_bus, rtc):
    for index in (0x0E, 0x0F, 0x40, 0x7F):
        wr(fake_bus, index, index ^ 0xA5)
    assert [rd(fake_bus, i) for i in (0x0E, 0x0F, 0x40, 0x7F)] == [i ^ 0xA5 for i in (0x0E, 0x0F, 0x40, 0x7F)]


def test_shutdown_status_byte_0f_starts_at_0_and_is_writable(fake_bus, rtc):
    assert rd(fake_bus, 0x0F) == 0
    wr(fake_bus, 0x0F, 0x0A)
    assert rd(fake_bus, 0x0F) == 0x0A


def test_no_floppies_and_equipment_byte(fake_bus, rtc):
    assert rd(fake_bus, 0x10) == 0x00
    assert rd(fake_bus, 0x14) == 0x02  # maths coprocessor, EGA/VGA, no floppy


def word(bus, low_index: int) -> int:
    return rd(bus, low_index) | rd(bus, low_index + 1) << 8


def test_nvram_memory_size_bytes_from_guest_memory(fake_bus, fake_memory):
    fake_memory.add_slot("more", 1 << 20, 31 << 20)  # 32M below 4G in all
    fake_memory.add_slot("bios", 0xFFFF0000, 0x10000, readonly=True)  # ROM is not counted
    fake_memory.add_slot("high", 1 << 32, 128 << 20)
    fake_bus.attach("cmos-rtc", start=START)
    assert word(fake_bus, 0x15) == 640
    assert word(fake_bus, 0x17) == word(fake_bus, 0x30) == 31 * 1024
    assert word(fake_bus, 0x34) == (16 << 20) // 65536
    assert word(fake_bus, 0x5B) | rd(fake_bus, 0x5D) << 16 == (128 << 20) // 65536


def test_one_megabyte_of_guest_memory_has_no_extended_memory(fake_bus):
    fake_bus.attach("cmos-rtc", start=START)  # the fake bus's 1 MiB
    assert (word(fake_bus, 0x15), word(fake_bus, 0x17), word(fake_bus, 0x34)) == (640, 0, 0)


def test_memory_size_property_overrides_guest_memory_and_is_capped(fake_bus):
    fake_bus.attach("cmos-rtc", start=START, memory_size="8G")
    assert word(fake_bus, 0x17) == word(fake_bus, 0x30) == 0xFFFF
    assert word(fake_bus, 0x34) == ((4 << 30) - (16 << 20)) // 65536
    assert word(fake_bus, 0x5B) | rd(fake_bus, 0x5D) << 16 == (4 << 30) // 65536


def test_base_memory_is_less_than_640k_when_there_is_less_ram(fake_bus):
    fake_bus.attach("cmos-rtc", start=START, memory_size="512K")
    assert word(fake_bus, 0x15) == 512


def test_nvram_checksum_covers_0x10_to_0x2d(fake_bus):
    fake_bus.attach("cmos-rtc", start=START, memory_size="64M")
    total = sum(rd(fake_bus, i) for i in range(0x10, 0x2E))
    assert total > 0
    assert rd(fake_bus, 0x2E) << 8 | rd(fake_bus, 0x2F) == total & 0xFFFF
