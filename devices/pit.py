"""Intel 8254 Programmable Interval Timer, as wired in a PC, with port 0x61.

Three 16-bit down-counters clocked at 1.193182 MHz (``PIT_HZ``) at ports
``port`` .. ``port + 3`` (counters 0, 1, 2 and the control word). Counter 0's OUT
drives IRQ ``irq``; counter 2's GATE and OUT are reached through the PC's
port 0x61 (``speaker_port``):

====  =====================================================================
bit   port 0x61
====  =====================================================================
0     GATE of counter 2 (read/write)
1     speaker data enable (read/write; no sound is made)
2-3   parity / channel check enables (read/write, no effect)
4     refresh toggle: flips on every read, so firmware delay loops that poll it end
5     OUT of counter 2 (read-only)
6-7   read as 0 (no parity or channel-check errors)
====  =====================================================================

Time is never ticked: each counter remembers the machine time (``ctx.clock.now()``)
when its count was loaded, and its value and OUT are computed from the input-clock
periods elapsed since. Counter 0's rising OUT edges are scheduled with
``ctx.clock.call_at`` at the exact machine time they happen; periodic modes compute
each deadline from the load time and the edge's tick number, so they never drift.

What is modelled (8254 datasheet, "Modes of Operation"):

- Control word: counter select, read/write format (LSB, MSB, LSB then MSB), mode
  and BCD; the counter-latch command (the value is held until read in the
  programmed format, both bytes for LSB-then-MSB, and a second latch before the
  read is ignored); the read-back command (0xC0 | ...) latching counts and/or
  status bytes (OUT, NULL COUNT, RW, mode, BCD), status first.
- Mode 0: OUT low from the control word; goes high when the count reaches 0 and
  stays high while the counter keeps counting down through 0xFFFF. Writing the
  first byte of a two-byte count stops counting and drives OUT low; the second
  byte loads the new count. GATE low pauses counting.
- Mode 2: OUT high, low for the one clock period before each reload, so it rises
  every N periods. Mode 3: OUT high for ceil(N/2) periods and low for floor(N/2),
  the counter going down by two (odd counts as the datasheet describes). In both,
  GATE low stops counting and forces OUT high, GATE rising reloads the count, and
  a count written while counting takes effect when the current period ends.
- Count 0 is 65536 (10000 in BCD). BCD counting is modelled: the written count is
  read as four decimal digits (a nibble above 9 is taken at its face value), the
  counter counts modulo 10000 and reads back in BCD.

Approximations, documented:

- The count starts counting when it is written: the datasheet's extra clock to
  move the count register into the counting element (< 1 us) is not modelled, so
  in mode 0 OUT rises exactly N periods after the count is written (as in QEMU).
- Modes 1 and 5 (hardware-triggered one-shot and strobe) start counting when the
  count is written, as though triggered then (a PC wires counters 0 and 1's GATE
  high, so they would otherwise never count); a rising GATE (counter 2) retriggers
  them. Mode 1: OUT low while counting, high at 0. Modes 4 and 5: OUT low for the
  one period when the count reaches 0. In modes 1, 4 and 5 a new count takes
  effect at once.
- An initial count of 1 in modes 2 and 3 (illegal: the datasheet's minimum is 2)
  counts as 2.
- IRQ: each rising edge of counter 0's OUT caused by counting (terminal count,
  each period) pulses the line (raise then lower): the 8259's IRQ 0 input is
  edge-triggered, so the edge is the interrupt. OUT changes forced by a control
  word (mode 0 to another mode drives OUT high at once) do not pulse it.
- Power-on state is undefined per the datasheet; here each counter starts idle in
  mode 0 with no count (OUT low, no interrupts) until the guest programs it.
- Reading the control-word port returns 0xFF (it is write-only). Counter 1 (DRAM
  refresh on a PC) counts like the others; port 0x61 bit 4 does not follow it.
"""

from __future__ import annotations

from typing import Sequence

from vmcore.bus import Region, Space
from vmcore.clock import Timer
from vmcore.device import Device, DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl

#: The 8254's input clock on a PC (14.31818 MHz / 12).
PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000

CONTROL = 3  # offset of the control word register

# Port 0x61 bits.
GATE2 = 0x01
SPEAKER = 0x02
WRITABLE_61 = 0x0F
REFRESH = 0x10
OUT2 = 0x20


def ticks_in(ns: int) -> int:
    """Whole input-clock periods in ``ns`` nanoseconds of machine time."""
    return ns * PIT_HZ // NS_PER_S


def ns_for(ticks: int) -> int:
    """The first nanosecond by which ``ticks`` periods have elapsed (inverse of :func:`ticks_in`)."""
    return -(-ticks * NS_PER_S // PIT_HZ)


def from_bcd(value: int) -> int:
    return ((value >> 12) & 0xF) * 1000 + ((value >> 8) & 0xF) * 100 + ((value >> 4) & 0xF) * 10 + (value & 0xF)


def to_bcd(value: int) -> int:
    value %= 10000
    return (value // 1000) << 12 | (value // 100 % 10) << 8 | (value // 10 % 10) << 4 | value % 10


class Counter:
    """One 8254 counter: register state plus the arithmetic that turns machine time into count and OUT.

    Elapsed periods are ``base + ticks_in(now - anchor)`` while ``running``, else
    ``base``; they are counted from the start of the current count's first period.
    """

    __slots__ = ("index", "gate", "mode", "rw", "bcd", "count", "held", "idle_out", "base", "anchor",
                 "running", "pending", "pending_tick", "lsb", "read_msb", "latched", "status")
    class State:
        """What a snapshot keeps of one counter (vmcore.snapshot): machine times stay absolute."""

        gate: bool
        mode: int
        rw: int
        bcd: bool
        count: int | None
        held: int
        idle_out: bool
        base: int
        anchor: int
        running: bool
        pending: int | None
        pending_tick: int
        lsb: int | None
        read_msb: bool
        latched: int | None
        status: int | None

    def __init__(self, index: int) -> None:
        self.index = index
        self.power_on()

    def power_on(self) -> None:
        self.gate = self.index != 2  # counters 0 and 1 have GATE wired high on a PC
        self.mode = 0  # as programmed (6 and 7 are modes 2 and 3)
        self.rw = 3
        self.bcd = False
        self.count: int | None = None  # N, 1..65536 (or 10000); None: no count since the control word
        self.held = 0  # the value read while there is no count
        self.idle_out = False  # OUT while there is no count
        self.base = 0
        self.anchor = 0
        self.running = False
        self.pending: int | None = None  # modes 2 and 3: a count waiting for the end of the period
        self.pending_tick = 0
        self.lsb: int | None = None  # first byte of an LSB-then-MSB write
        self.read_msb = False
        self.latched: int | None = None
        self.status: int | None = None

    # --- derived state ------------------------------------------------------------

    @property
    def kind(self) -> int:
        """The mode as it behaves (x10 is mode 2, x11 mode 3)."""
        return self.mode - 4 if self.mode >= 6 else self.mode

    @property
    def modulus(self) -> int:
        return 10000 if self.bcd else 0x10000

    def elapsed(self, now: int) -> int:
        return self.base + ticks_in(now - self.anchor) if self.running else self.base

    def effective(self, now: int) -> tuple[int, int]:
        """(count, periods into it), switching to a pending count once its period has begun."""
        assert self.count is not None
        d = self.elapsed(now)
        if self.pending is not None and d >= self.pending_tick:
            return self.pending, d - self.pending_tick
        return self.count, d

    def value(self, now: int) -> int:
        """The counting element, as a binary number."""
        if self.count is None:
            return self.held
        n, d = self.effective(now)
        kind = self.kind
        if kind == 2:
            v = n - d % n  # n, n-1, ..., 1, reload
        elif kind == 3:
            p = d % n
            if n % 2 == 0:
                v = n - 2 * (p if p < n // 2 else p - n // 2)
            else:
                # Odd N: high half goes n, n-1, n-3, ... 2; low half n, n-3, n-5, ... 2.
                high = (n + 1) // 2
                if p == 0 or p == high:
                    v = n
                elif p < high:
                    v = n - 1 - 2 * (p - 1)
                else:
                    v = n - 3 - 2 * (p - high - 1)
        else:
            return (n - d) % self.modulus  # modes 0, 1, 4, 5 keep counting down past 0
        return v % self.modulus

    def out(self, now: int) -> bool:
        if self.count is None:
            return self.idle_out
        n, d = self.effective(now)
        kind = self.kind
        if kind in (0, 1):
            return d >= n
        if kind in (4, 5):
            return d != n
        if not self.running:
            return True  # GATE low forces OUT high in modes 2 and 3
        if kind == 2:
            return d % n != n - 1
        return d % n < (n + 1) // 2

    def null_count(self, now: int) -> bool:
        if self.count is None:
            return True
        return self.pending is not None and self.elapsed(now) < self.pending_tick

    def next_rise(self, after: int) -> int | None:
        """The first period number after ``after`` at which OUT rises, or None."""
        n = self.count
        if n is None or not self.running:
            return None
        kind = self.kind
        if kind in (0, 1):
            return n if after < n else None
        if kind in (4, 5):
            return n + 1 if after < n + 1 else None
        if self.pending is not None and after >= self.pending_tick:
            start, n = self.pending_tick, self.pending
            return start + ((after - start) // n + 1) * n
        return (after // n + 1) * n  # a pending count starts on a multiple of n too

    def deadline(self, tick: int) -> int:
        """Machine time at which period ``tick`` has elapsed (requires ``running``)."""
        return self.anchor + ns_for(tick - self.base)

    # --- state changes --------------------------------------------------------------

    def settle(self, now: int) -> int:
        """Make a pending count current once its period has begun; return the period shift."""
        if self.pending is not None and self.running and self.elapsed(now) >= self.pending_tick:
            shift = self.pending_tick
            self.base -= shift
            self.count, self.pending = self.pending, None
            return shift
        return 0

    def program(self, mode: int, rw: int, bcd: bool, now: int) -> None:
        """A control word: all counter logic is reset and OUT goes to the mode's initial state."""
        self.held = self.value(now)
        self.mode, self.rw, self.bcd = mode, rw, bcd
        self.count = self.pending = None
        self.running = False
        self.lsb = self.latched = self.status = None
        self.read_msb = False
        self.idle_out = self.kind != 0

    def write(self, value: int, now: int) -> None:
        if self.rw == 1:
            self.load(value, now)
        elif self.rw == 2:
            self.load(value << 8, now)
        elif self.lsb is None:
            self.lsb = value
            if self.kind == 0:
                # Mode 0: writing the first byte stops counting and drives OUT low.
                self.held = self.value(now)
                self.count = self.pending = None
                self.running = False
                self.idle_out = False
        else:
            value, self.lsb = self.lsb | value << 8, None
            self.load(value, now)

    def load(self, raw: int, now: int) -> None:
        n = from_bcd(raw) if self.bcd else raw
        if n == 0:
            n = self.modulus
        kind = self.kind
        if kind in (2, 3) and n == 1:
            n = 2  # below the datasheet's minimum count for these modes
        self.settle(now)
        if kind in (2, 3) and self.count is not None and self.running:
            # The current period runs out first (datasheet, modes 2 and 3); a second write
            # before then replaces the waiting count.
            if self.pending is None:
                self.pending_tick = (self.elapsed(now) // self.count + 1) * self.count
            self.pending = n
            return
        self.count, self.pending = n, None
        self.base, self.anchor = 0, now
        self.running = self.gate or kind in (1, 5)

    def set_gate(self, level: bool, now: int) -> None:
        if level == self.gate:
            return
        self.settle(now)
        d = self.elapsed(now)
        self.gate = level
        if self.count is None:
            return
        kind = self.kind
        if kind in (0, 4):  # GATE enables counting
            self.base, self.anchor, self.running = d, now, level
        elif kind in (2, 3):  # GATE low stops counting; rising GATE reloads
            if level:
                if self.pending is not None:
                    self.count, self.pending = self.pending, None
                self.base, self.anchor, self.running = 0, now, True
            else:
                self.base, self.running = d, False
        elif level:  # modes 1 and 5: rising GATE (re)triggers
            self.base, self.anchor = 0, now

    def latch_count(self, now: int) -> None:
        if self.latched is None:  # a second latch before the read is ignored
            self.latched = self.value(now)

    def latch_status(self, now: int) -> None:
        if self.status is None:
            self.status = (self.out(now) << 7 | self.null_count(now) << 6 | self.rw << 4
                           | self.mode << 1 | int(self.bcd))

    def read(self, now: int) -> int:
        if self.status is not None:
            status, self.status = self.status, None
            return status
        value = self.latched if self.latched is not None else self.value(now)
        if self.bcd:
            value = to_bcd(value)
        if self.rw == 1:
            byte = value & 0xFF
        elif self.rw == 2:
            byte = value >> 8 & 0xFF
        elif not self.read_msb:
            self.read_msb = True
            return value & 0xFF  # a latch stays until its second byte is read
        else:
            self.read_msb = False
            byte = value >> 8 & 0xFF
        self.latched = None
        return byte


@config
class PitConfig:
    port: int = prop(0x40, "First of the four I/O ports: counters 0, 1, 2 and the control word.", hex=True,
                     validator=in_range(0, 0xFFFC))
    irq: int = prop(0, "IRQ line pulsed on each rising edge of counter 0's OUT.", validator=in_range(0, 255))
    speaker_port: int = prop(0x61, "Port of the PC's port B (counter 2 gate, speaker enable, OUT 2, refresh "
                                   "toggle); 0 leaves it unclaimed.", hex=True, validator=in_range(0, 0xFFFF))


class Pit(Device):
    """Intel 8254 PIT: counter 0 on an IRQ line, counter 2 gated and read through port 0x61."""

    type_name = "i8254"
    Config = PitConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot): the counters, the IRQ 0 edge timer, port B."""

        counters: tuple[Counter, Counter, Counter]
        _timer: Timer
        _tick: int
        port_b: int
        refresh: int

    def __init__(self, config: PitConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.line = ctx.irq(config.irq)
        self.counters = (Counter(0), Counter(1), Counter(2))
        self._timer: Timer = ctx.clock.timer(self._rise)  # counter 0's next rising edge
        self._tick = 0  # the period number of the edge _timer is armed for
        self.port_b = 0
        self.refresh = 0
        self.reset()

    def regions(self) -> Sequence[Region]:
        regions = [Region(Space.PIO, self.config.port, 4, self.read, self.write, sizes=(1,), name="counters")]
        if self.config.speaker_port:
            regions.append(Region(Space.PIO, self.config.speaker_port, 1, self.read_port_b, self.write_port_b,
                                  sizes=(1,), name="port-b"))
        return regions

    def reset(self) -> None:
        self._cancel()
        for counter in self.counters:
            counter.power_on()
        self.port_b = 0
        self.refresh = 0

    def close(self) -> None:
        self._cancel()

    # --- counters and control word ------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset == CONTROL:
            return 0xFF  # the control word register is write-only
        return self.counters[offset].read(self.ctx.clock.now())

    def write(self, offset: int, size: int, value: int) -> None:
        now = self.ctx.clock.now()
        if offset != CONTROL:
            self.counters[offset].write(value, now)
            if offset == 0:
                self._arm(now)
            return
        select = value >> 6
        if select == 3:
            # Read-back command: bit 5 clear latches counts, bit 4 clear latches status,
            # bits 1-3 pick counters 0-2 (datasheet, "Read-Back Command").
            for counter in self.counters:
                if value & (2 << counter.index):
                    if not value & 0x20:
                        counter.latch_count(now)
                    if not value & 0x10:
                        counter.latch_status(now)
            return
        counter = self.counters[select]
        rw = value >> 4 & 3
        if rw == 0:
            counter.latch_count(now)
            return
        counter.program(value >> 1 & 7, rw, bool(value & 1), now)
        if select == 0:
            self._arm(now)

    # --- port 0x61 ------------------------------------------------------------------------

    def read_port_b(self, offset: int, size: int) -> int:
        self.refresh ^= REFRESH
        out2 = OUT2 if self.counters[2].out(self.ctx.clock.now()) else 0
        return self.port_b | self.refresh | out2

    def write_port_b(self, offset: int, size: int, value: int) -> None:
        self.port_b = value & WRITABLE_61
        self.counters[2].set_gate(bool(value & GATE2), self.ctx.clock.now())

    # --- counter 0's interrupt ----------------------------------------------------------

    def _cancel(self) -> None:
        self._timer.cancel()

    def _arm(self, now: int) -> None:
        """Schedule the next rising edge of OUT 0 from the counter's current state."""
        counter = self.counters[0]
        self._schedule(counter.next_rise(counter.elapsed(now)))

    def _schedule(self, tick: int | None) -> None:
        """Move the one timer to edge ``tick`` (None: no edge comes)."""
        if tick is None:
            self._timer.cancel()
            return
        self._tick = tick
        self._timer.mod(self.counters[0].deadline(tick))

    def _rise(self) -> None:
        tick = self._tick
        now = self.ctx.clock.now()
        counter = self.counters[0]
        tick -= counter.settle(now)
        self.line.pulse()
        # The next edge follows from this edge's period number, not from now(): no drift.
        following = counter.next_rise(tick)
        if following is not None and counter.deadline(following) <= now:
            # The clock ran late (host time) past further edges: the PIC would have merged
            # them into this one, so go on from the present.
            following = counter.next_rise(counter.elapsed(now))
        self._schedule(following)


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Pit]
