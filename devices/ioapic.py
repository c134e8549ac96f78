"""The I/O APIC (82093AA): IRQ lines in, interrupt messages to the local APIC out.

Modelled from the Intel 82093AA datasheet at its register interface: IOREGSEL at
``base`` + 0x00 and IOWIN at ``base`` + 0x10 (indirect access to the registers), and
the EOI register at ``base`` + 0x40 of the later versions (version 0x20, as QEMU's).

- Registers: ID (0x00, bits 24-27 writable), version (0x01: 0x20, 24 entries),
  arbitration ID (0x02, the ID), and the 24 redirection entries (0x10 + 2n low word,
  0x11 + 2n high word): vector, delivery mode, destination mode, delivery status (read
  only), polarity, remote IRR (read only), trigger mode, mask, destination (bits 56-63).
  Power-on: every entry masked, everything else 0.
- Edge-triggered pins send one message per asserting edge (the polarity bit says which
  level asserts); level-triggered pins send one while asserted, and set remote IRR until
  the local APIC's EOI of that vector (or a write of the vector to the EOI register),
  after which a pin still asserted sends again. A masked pin sends nothing; unmasking an
  asserted level-triggered pin sends.
- Messages go to the local APICs the machine connects (:meth:`connect_local`): fixed
  and lowest-priority ones to those whose ID (physical) or logical ID matches, or all
  for destination 0xFF. ExtINT, NMI, SMI and INIT are logged once and dropped (the PIC
  reaches the CPU through the local APIC's LINT0 instead).

The machine routes the ISA IRQ lines here as on a PC (``vmcore.wiring``): line n to
pin n, except that the timer's line 0 goes to pin 2 (the override every PC firmware
announces); pins 16-23 take lines 16-23.
"""

from __future__ import annotations

from typing import Any, Sequence

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl

PINS = 24
VERSION = 0x0017_0020  # 24 entries (max index 23), version 0x20
MASKED = 1 << 16
LEVEL = 1 << 15
REMOTE_IRR = 1 << 14
LOW_ACTIVE = 1 << 13
DELIVERY_STATUS = 1 << 12
LOGICAL = 1 << 11
# The entry bits a write keeps: vector, delivery and destination mode, polarity, trigger, mask; destination.
_WRITABLE = 0xFF00_0000_0001_AFFF


@config
class IoApicConfig:
    base: int = prop(0xFEC0_0000, "Guest-physical address of the register window.", hex=True,
                     validator=in_range(0, (1 << 52) - 0x1000))
    apic_id: int = prop(0, "The I/O APIC's ID (register 0 bits 24-27).", validator=in_range(0, 15))


class IoApic(Device):
    """The 82093AA I/O APIC: 24 redirection entries from IRQ lines to local APIC interrupts."""

    type_name = "ioapic"
    Config = IoApicConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot): the redirection table and the pins' levels."""

        select: int
        id: int
        entries: list[int]
        levels: list[bool]

    def __init__(self, config: IoApicConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.locals: list[Any] = []  # the local APICs messages go to
        self._warned: set[int] = set()
        self.select = 0
        self.id = config.apic_id << 24
        self.entries = [MASKED] * PINS
        self.levels = [False] * PINS  # each pin's input as the lines drive it

    def regions(self) -> Sequence[Region]:
        return [Region(Space.MMIO, self.config.base, 0x100, self.read, self.write, sizes=(4,), name="registers")]

    def connect_local(self, apic: Any) -> None:
        """Send interrupts to ``apic`` (a local APIC: ``accept``, ``matches``, ``eoi_listeners``)."""
        if apic in self.locals:
            return
        self.locals.append(apic)
        apic.eoi_listeners.append(self.eoi)

    # --- the pins ----------------------------------------------------------------------------

    def set_irq(self, pin: int, level: bool) -> None:
        """An input pin changed level (the machine's IRQ routing calls this)."""
        if not 0 <= pin < PINS:
            return
        was = self.levels[pin]
        self.levels[pin] = level
        if self._asserted(pin) and (self.entries[pin] & LEVEL or was != level):
            self._service(pin)

    def eoi(self, vector: int) -> None:
        """The local APIC ended a level-triggered interrupt of ``vector``: clear remote IRR, resend if still asserted."""
        for pin, entry in enumerate(self.entries):
            if entry & REMOTE_IRR and entry & 0xFF == vector:
                self.entries[pin] = entry & ~REMOTE_IRR
                if self._asserted(pin):
                    self._service(pin)

    def _asserted(self, pin: int) -> bool:
        return self.levels[pin] != bool(self.entries[pin] & LOW_ACTIVE)

    def _service(self, pin: int) -> None:
        entry = self.entries[pin]
        if entry & MASKED or (entry & LEVEL and entry & REMOTE_IRR):
            return
        mode = (entry >> 8) & 7
        if mode not in (0, 1):
            if mode not in self._warned:
                self._warned.add(mode)
                names = {2: "SMI", 4: "NMI", 5: "INIT", 7: "ExtINT"}
                self.ctx.log.warning("%s: %s messages are not modelled; pin %d's interrupt dropped",
                                     self.ctx.name, names.get(mode, "reserved"), pin)
            return
        targets = [apic for apic in self.locals if apic.matches(entry >> 56, bool(entry & LOGICAL))]
        if entry & LEVEL:
            self.entries[pin] = entry | REMOTE_IRR
        for apic in targets[:1] if mode == 1 else targets:  # lowest priority: one of them
            apic.accept(entry & 0xFF, level=bool(entry & LEVEL))

    # --- registers ---------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset == 0x00:
            return self.select
        if offset == 0x10:
            return self._read_register(self.select)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0x00:
            self.select = value & 0xFF
        elif offset == 0x10:
            self._write_register(self.select, value)
        elif offset == 0x40:
            self.eoi(value & 0xFF)

    def _read_register(self, index: int) -> int:
        if index == 0x00:
            return self.id
        if index == 0x01:
            return VERSION
        if index == 0x02:
            return self.id
        if 0x10 <= index < 0x10 + 2 * PINS:
            pin, high = divmod(index - 0x10, 2)
            return (self.entries[pin] >> (32 * high)) & 0xFFFF_FFFF
        return 0

    def _write_register(self, index: int, value: int) -> None:
        if index == 0x00:
            self.id = value & 0x0F00_0000
        elif 0x10 <= index < 0x10 + 2 * PINS:
            pin, high = divmod(index - 0x10, 2)
            entry = self.entries[pin]
            if high:
                entry = (entry & 0xFFFF_FFFF) | (value << 32)
            else:
                entry = (entry & ~0xFFFF_FFFF) | value
            # Remote IRR and delivery status are the chip's; edge-triggered entries have no remote IRR.
            kept = self.entries[pin] & REMOTE_IRR if entry & LEVEL else 0
            self.entries[pin] = (entry & _WRITABLE) | kept
            if self._asserted(pin) and entry & LEVEL:
                self._service(pin)  # unmasked (or re-aimed) while asserted



@hookimpl
def vmcore_device_types() -> list[type]:
    return [IoApic]
