"""Motorola MC146818A real-time clock and CMOS RAM, as in the PC/AT (ports 0x70/0x71).

Port ``port`` takes the register index (bit 7 is the PC's NMI-disable bit: it is
stored, masked off the index, and has no other effect); port ``port + 1`` reads
and writes the indexed register. 128 bytes are addressed:

=========  ==================================================================
index      register
=========  ==================================================================
0x00-0x09  seconds, seconds alarm, minutes, minutes alarm, hours, hours alarm,
           day of week (1 = Sunday), day of month, month, year
0x0A       A: UIP (bit 7, read-only), divider bits 6-4 (stored), rate select 3-0
0x0B       B: SET 7, PIE 6, AIE 5, UIE 4, SQWE 3, DM 2 (1 = binary), 24/12 1, DSE 0
0x0C       C (read-only): IRQF 7, PF 6, AF 5, UF 4; reading clears it
0x0D       D (read-only): VRT (bit 7) always 1
0x0E-0x7F  battery-backed RAM, laid out as on a PC (0x32 is the century)
=========  ==================================================================

Time is ``start`` plus the machine time elapsed (``ctx.clock``); the host's clock
is read once, when ``start`` is "now" and the device is built. Second boundaries
fall on whole seconds of machine time, and the periodic interrupt's ticks are
aligned to them, as the divider chain aligns them on the chip.

Modelled (MC146818A datasheet):

- BCD or binary (B.DM) and 12- or 24-hour (B.24/12; 12-hour sets bit 7 of the
  hours for PM) for the time, alarm and century bytes.
- UIP is set during the 244 us before each second boundary (and clear while SET
  is 1); the update itself is instantaneous at the boundary, so the time bytes are
  always consistent.
- SET (B bit 7) stops updates and lets the guest write the time; clearing it
  resumes counting from what was written, the next update at the next second
  boundary (the divider keeps running). Setting SET clears UIE. Time bytes written
  while SET is clear take effect at once.
- Flags: PF at each periodic tick (rate select in A: rate r >= 3 ticks at
  32768 >> (r - 1) Hz, so 6 is 1024 Hz and 15 is 2 Hz; 1 and 2 act as 8 and 9 with
  the 32.768 kHz time base; 0 is off), UF at each update, AF at an update whose
  seconds, minutes and hours match the alarm bytes (a byte 0xC0-0xFF matches any
  value). The flags are set whether or not their interrupts are enabled.
- IRQF = PF.PIE + AF.AIE + UF.UIE, and the IRQ line follows IRQF (level): it goes
  high when an enabled flag is set and stays high until register C is read, which
  clears the flags and lowers the line.
- ``reset()`` is the chip's RESET pin: PIE, AIE, UIE, SQWE and the flags clear;
  the time and the RAM are kept.

CMOS RAM bytes set at power-on (PC/AT layout): 0x10 floppy types (0: none), 0x12
hard disk types (0), 0x14 equipment (0x02: no floppy, FPU present, EGA/VGA),
0x15/0x16 base memory in KB (640, or less if there is less RAM), 0x17/0x18 and
0x30/0x31 KB of memory above 1M (capped at 0xFFFF), 0x34/0x35 64K blocks above
16M (capped at 0xFFFF), 0x5B-0x5D 64K blocks above 4G, and the checksum of
0x10-0x2D at 0x2E (high) / 0x2F (low). Every other byte, 0x0F (shutdown status)
included, is plain RAM; the checksum is not recomputed when the guest writes.

Approximations: the divider bits of A are stored but a divider reset (DV = 11x)
does not stop the clock; SQWE and DSE are stored only; time bytes that are out of
range (minute 75, 30 February) are clamped to the nearest valid value when they
are written; changing DM or 24/12 re-presents the time in the new format (the chip
would keep the bytes as they were and expect the guest to rewrite the time); the
clock stops at 9999-12-31 23:59:59 rather than rolling over to year 0000.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Sequence

import attrs

from vmcore.bus import Region, Space
from vmcore.clock import Timer
from vmcore.device import Device, DeviceContext, PropertyError, config, in_range, prop
from vmcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from vmcore.fuzz import FuzzScratch

NS = 1_000_000_000
LAST_SECOND = dt.datetime.max.replace(microsecond=0)  # 9999-12-31 23:59:59
UIP_NS = 244_000  # UIP leads each update by 244 us (datasheet, "Update Cycle")

# Register indices.
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
DAY_OF_WEEK, DAY, MONTH, YEAR = 0x06, 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
TIME_REGISTERS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY, MONTH, YEAR, CENTURY)
ALARMS = ((SECONDS_ALARM, SECONDS), (MINUTES_ALARM, MINUTES), (HOURS_ALARM, HOURS))

# Register A.
UIP = 0x80
RATE = 0x0F
# Register B.
SET = 0x80
PIE = 0x40
AIE = 0x20
UIE = 0x10
SQWE = 0x08
DM_BINARY = 0x04
HOUR_24 = 0x02
# Register C.
IRQF = 0x80
PF = 0x40
AF = 0x20
UF = 0x10
# Register D.
VRT = 0x80

PM = 0x80  # bit 7 of the hours in 12-hour mode
DONT_CARE = 0xC0  # an alarm byte with both top bits set matches any value

# CMOS RAM layout (PC/AT).
FLOPPY_TYPES = 0x10
DISK_TYPES = 0x12
EQUIPMENT = 0x14
BASE_MEM = 0x15
EXT_MEM = 0x17
CHECKSUM = 0x2E
CHECKSUM_FIRST, CHECKSUM_LAST = 0x10, 0x2D
EXT_MEM2 = 0x30
HIGH_MEM = 0x34
ABOVE_4G = 0x5B

EQUIPMENT_DEFAULT = 0x02  # bit 1: maths coprocessor; bits 5-4 = 00: EGA/VGA; no floppy
KB = 1024
MB = 1024 * KB
BLOCK = 64 * KB
FOUR_G = 1 << 32

RESET_VALUE_A = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate, as PC firmware sets it
RESET_VALUE_B = HOUR_24  # BCD, 24-hour


def parse_start(text: str) -> dt.datetime | None:
    """The ``start`` property: None for "now", else a naive UTC datetime."""
    if text.strip().lower() == "now":
        return None
    moment = dt.datetime.fromisoformat(text.strip())
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return moment.replace(microsecond=0)


def _check_start(_instance: object, attribute: attrs.Attribute, value: str) -> None:  # type: ignore[type-arg]
    try:
        parse_start(value)
    except ValueError:
        raise PropertyError(attribute.name, f"must be 'now' or an ISO date-time such as "
                                            f"2026-01-02T03:04:05, got {value!r}") from None


@config
class RtcConfig:
    port: int = prop(0x70, "Index port; the data port is port + 1.", hex=True, validator=in_range(0, 0xFFFE))
    irq: int = prop(8, "IRQ line, high while register C's IRQF is set.", validator=in_range(0, 255))
    start: str = prop("now", "Date and time (UTC) at machine start: 'now' (the host's time when the machine "
                             "is built) or an ISO date-time such as 2026-01-02T03:04:05.", validator=_check_start)
    memory_size: int = prop(0, "Bytes of RAM reported in the CMOS memory bytes (split at 4G); 0 counts the "
                               "machine's RAM slots.", validator=in_range(0, 1 << 52))


def _weekday(moment: dt.datetime) -> int:
    """The RTC's day of week: 1 is Sunday (PC convention)."""
    return (moment.weekday() + 1) % 7 + 1


def _days_in_month(year: int, month: int) -> int:
    """Days in ``month`` of ``year`` (1-9999): the calendar module's answer, without its import (and
    locale's, some 2 ms of every run's start-up)."""
    return 31 if month == 12 else (dt.date(year, month + 1, 1) - dt.date(year, month, 1)).days


def _clamped(fields: dict[int, int]) -> dt.datetime:
    def clamp(value: int, low: int, high: int) -> int:
        return max(low, min(high, value))

    year = clamp(fields[CENTURY] * 100 + fields[YEAR], 1, 9999)
    month = clamp(fields[MONTH], 1, 12)
    day = clamp(fields[DAY], 1, _days_in_month(year, month))
    return dt.datetime(year, month, day, clamp(fields[HOURS], 0, 23), clamp(fields[MINUTES], 0, 59),
                       clamp(fields[SECONDS], 0, 59))


def _fields(moment: dt.datetime, day_of_week: int) -> dict[int, int]:
    return {SECONDS: moment.second, MINUTES: moment.minute, HOURS: moment.hour, DAY_OF_WEEK: day_of_week,
            DAY: moment.day, MONTH: moment.month, YEAR: moment.year % 100, CENTURY: moment.year // 100}


def _periodic_shift(rate: int) -> int:
    """log2 of the periodic interval in 32.768 kHz cycles (rate 1 and 2 act as 8 and 9)."""
    return (rate + 7 if rate < 3 else rate) - 1


def _ticks_by(ns: int, rate: int) -> int:
    """Periodic ticks in the first ``ns`` of machine time."""
    return ns * 32768 // (NS << _periodic_shift(rate))


def _tick_time(k: int, rate: int) -> int:
    """Machine time of periodic tick ``k`` (the inverse of :func:`_ticks_by`)."""
    return -(-k * (NS << _periodic_shift(rate)) // 32768)


class Rtc(Device):
    """MC146818A RTC with 128 bytes of CMOS RAM, laid out as a PC/AT's."""

    type_name = "cmos-rtc"
    Config = RtcConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot): the clock's setting against machine time, CMOS,
        the registers and the two interrupt timers."""

        _epoch: dt.datetime
        _epoch_s: int
        _epoch_dow: int
        _held: dict[int, int] | None
        cmos: bytearray
        index: int
        nmi_disabled: bool
        reg_a: int
        reg_b: int
        flags: int
        _seen: int
        _periodic: Timer
        _periodic_tick: tuple[int, int]
        _update: Timer
        _update_second: int

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        # Not the host's clock, so a run replays identically; a minute before a leap day.
        return {"start": "2024-02-28T23:59:00"}

    def __init__(self, config: RtcConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.line = ctx.irq(config.irq)
        start = parse_start(config.start)
        if start is None:
            # The battery-backed clock's setting at power-on: the host's time, from the machine's
            # clock (a virtual clock gives a fixed one, so its runs repeat).
            start = ctx.clock.power_on_time()
        now = ctx.clock.now()
        self._epoch = start  # the time at second boundary _epoch_s of machine time
        self._epoch_s = now // NS
        self._epoch_dow = _weekday(start)
        self._held: dict[int, int] | None = None  # the time bytes while SET is 1
        self.cmos = bytearray(128)
        self.index = 0
        self.nmi_disabled = False
        self.reg_a = RESET_VALUE_A
        self.reg_b = RESET_VALUE_B
        self.flags = 0
        self._seen = now  # flags are accounted for up to this machine time
        # One timer each for the periodic and the update/alarm interrupts, re-armed in place.
        self._periodic: Timer = ctx.clock.timer(self._on_periodic)
        self._periodic_tick = (0, 0)  # (tick number k, rate) _periodic is armed for
        self._update: Timer = ctx.clock.timer(self._on_update)
        self._update_second = 0  # the second boundary _update is armed for
        self._fill_cmos()
        self.reset()

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 2, self.read, self.write, sizes=(1,), name="index-data")]

    def reset(self) -> None:
        now = self.ctx.clock.now()
        self._catch_up(now)
        self.reg_b &= ~(PIE | AIE | UIE | SQWE)
        self.flags = 0
        self.line.lower()
        self._arm(now)

    def close(self) -> None:
        self._cancel()

    # --- CMOS RAM ---------------------------------------------------------------------------

    def memory_split(self) -> tuple[int, int]:
        """(bytes of RAM below 4G, bytes above), from ``memory_size`` or the RAM slots."""
        if self.config.memory_size:
            below = min(self.config.memory_size, FOUR_G)
            return below, self.config.memory_size - below
        below = above = 0
        for slot in self.ctx.memory:
            if slot.readonly:
                continue  # ROM is not RAM to report
            low = max(0, min(slot.end, FOUR_G) - slot.base)
            below += low
            above += slot.size - low
        return below, above

    def _fill_cmos(self) -> None:
        below, above = self.memory_split()
        cmos = self.cmos
        cmos[FLOPPY_TYPES] = 0
        cmos[DISK_TYPES] = 0
        cmos[EQUIPMENT] = EQUIPMENT_DEFAULT
        cmos[BASE_MEM:BASE_MEM + 2] = min(640, below // KB).to_bytes(2, "little")
        extended = min(max(below - MB, 0) // KB, 0xFFFF).to_bytes(2, "little")
        cmos[EXT_MEM:EXT_MEM + 2] = extended
        cmos[EXT_MEM2:EXT_MEM2 + 2] = extended
        cmos[HIGH_MEM:HIGH_MEM + 2] = min(max(below - 16 * MB, 0) // BLOCK, 0xFFFF).to_bytes(2, "little")
        cmos[ABOVE_4G:ABOVE_4G + 3] = min(above // BLOCK, 0xFFFFFF).to_bytes(3, "little")
        checksum = sum(cmos[CHECKSUM_FIRST:CHECKSUM_LAST + 1]) & 0xFFFF
        cmos[CHECKSUM:CHECKSUM + 2] = checksum.to_bytes(2, "big")

    # --- time ------------------------------------------------------------------------------

    def time_fields(self, now: int) -> dict[int, int]:
        """The time registers as binary values (hours 0-23, full century), at machine time ``now``."""
        if self._held is not None:
            return dict(self._held)
        return self._fields_at(now // NS)

    def _fields_at(self, second: int) -> dict[int, int]:
        # A guest can set the last second of 9999 (century and year 0x99): the clock stops there,
        # where datetime ends, instead of raising OverflowError at the next update.
        elapsed = min(second - self._epoch_s, (LAST_SECOND - self._epoch) // dt.timedelta(seconds=1))
        moment = self._epoch + dt.timedelta(seconds=elapsed)
        days = (moment.date() - self._epoch.date()).days
        return _fields(moment, (self._epoch_dow - 1 + days) % 7 + 1)

    def _run_from(self, fields: dict[int, int], now: int) -> None:
        self._epoch = _clamped(fields)
        self._epoch_s = now // NS
        self._epoch_dow = max(1, min(7, fields[DAY_OF_WEEK]))

    def _encode(self, value: int) -> int:
        if self.reg_b & DM_BINARY:
            return value & 0xFF
        return (value // 10 % 10) << 4 | value % 10

    def _decode(self, value: int) -> int:
        if self.reg_b & DM_BINARY:
            return value
        return (value >> 4) * 10 + (value & 0xF)

    def _encode_field(self, register: int, value: int) -> int:
        if register == HOURS and not self.reg_b & HOUR_24:
            return self._encode(value % 12 or 12) | (PM if value >= 12 else 0)
        return self._encode(value)

    def _decode_field(self, register: int, raw: int) -> int:
        if register == HOURS and not self.reg_b & HOUR_24:
            return self._decode(raw & ~PM & 0xFF) % 12 + (12 if raw & PM else 0)
        return self._decode(raw)

    def _write_time(self, register: int, raw: int, now: int) -> None:
        value = self._decode_field(register, raw)
        if self._held is not None:
            self._held[register] = value
            return
        fields = self.time_fields(now)
        fields[register] = value
        self._run_from(fields, now)

    def _alarm_matches(self, fields: dict[int, int]) -> bool:
        for alarm, register in ALARMS:
            wanted = self.cmos[alarm]
            if wanted & DONT_CARE != DONT_CARE and wanted != self._encode_field(register, fields[register]):
                return False
        return True

    # --- flags and interrupts -------------------------------------------------------------

    def _catch_up(self, now: int) -> None:
        """Set the flags for every periodic tick and update in (last accounted time, now]."""
        seen = self._seen
        if now <= seen:
            return
        self._seen = now
        rate = self.reg_a & RATE
        if rate and _ticks_by(now, rate) > _ticks_by(seen, rate):
            self.flags |= PF
        if self._held is not None:
            return  # SET: no updates
        first, last = seen // NS + 1, now // NS
        if last < first:
            return
        self.flags |= UF
        if not self.flags & AF:
            # A day of updates shows every time of day: no need to look further back.
            for second in range(max(first, last - 86399), last + 1):
                if self._alarm_matches(self._fields_at(second)):
                    self.flags |= AF
                    break

    def _irqf(self) -> bool:
        # B's PIE/AIE/UIE (bits 6/5/4) sit where C's PF/AF/UF do.
        return bool(self.flags & self.reg_b & (PF | AF | UF))

    def _cancel(self) -> None:
        self._periodic.cancel()
        self._update.cancel()

    def _arm(self, now: int) -> None:
        """Schedule the timers the enabled interrupts need (disabled flags are set lazily)."""
        rate = self.reg_a & RATE
        if self.reg_b & PIE and rate:
            self._arm_periodic(_ticks_by(now, rate) + 1, rate)
        else:
            self._periodic.cancel()
        if self.reg_b & (UIE | AIE) and self._held is None:
            self._arm_update(now // NS + 1)
        else:
            self._update.cancel()

    def _arm_periodic(self, k: int, rate: int) -> None:
        self._periodic_tick = (k, rate)
        self._periodic.mod(_tick_time(k, rate))

    def _arm_update(self, second: int) -> None:
        self._update_second = second
        self._update.mod(second * NS)

    def _on_periodic(self) -> None:
        k, rate = self._periodic_tick
        now = self.ctx.clock.now()
        self._catch_up(now)
        self.line.set_level(self._irqf())
        k += 1  # from this tick's number, not from now(): no drift
        if _tick_time(k, rate) <= now:
            k = _ticks_by(now, rate) + 1  # the clock ran late: skip ticks already past
        self._arm_periodic(k, rate)

    def _on_update(self) -> None:
        second = self._update_second
        now = self.ctx.clock.now()
        self._catch_up(now)
        self.line.set_level(self._irqf())
        self._arm_update(max(second + 1, now // NS + 1))

    # --- the two ports -------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index port is write-only
        now = self.ctx.clock.now()
        index = self.index
        if index in TIME_REGISTERS:
            return self._encode_field(index, self.time_fields(now)[index])
        if index == REG_A:
            in_update = self._held is None and now % NS >= NS - UIP_NS
            return self.reg_a | (UIP if in_update else 0)
        if index == REG_B:
            return self.reg_b
        if index == REG_C:
            self._catch_up(now)
            value = self.flags | (IRQF if self._irqf() else 0)
            self.flags = 0
            self.line.lower()
            return value
        if index == REG_D:
            return VRT
        return self.cmos[index]

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
            return
        now = self.ctx.clock.now()
        self._catch_up(now)  # account for what happened under the old settings first
        index = self.index
        if index in TIME_REGISTERS:
            self._write_time(index, value, now)
        elif index == REG_A:
            self.reg_a = value & ~UIP & 0xFF
            self._arm(now)
        elif index == REG_B:
            self._write_b(value, now)
        elif index in (REG_C, REG_D):
            pass  # read-only
        else:
            self.cmos[index] = value

    def _write_b(self, value: int, now: int) -> None:
        if value & SET:
            value &= ~UIE  # datasheet: SET going to 1 clears UIE
            if self._held is None:
                self._held = self.time_fields(now)
        elif self._held is not None:
            self._run_from(self._held, now)
            self._held = None
        self.reg_b = value
        self.line.set_level(self._irqf())
        self._arm(now)


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Rtc]
