"""The PC's interrupt controller: a cascaded master/slave pair of Intel 8259A PICs, plus the ELCR.

One device models both chips as the PC wires them: IRQ lines 0-7 go to the master's
IR0-IR7, lines 8-15 to the slave's IR0-IR7, and the slave's INT output drives the
master's IR2 (the cascade). The master's INT is the CPU's INTR: :meth:`I8259.pending`
reads it, :meth:`I8259.acknowledge` is the INTA cycle, and ``intr_changed`` is told
each time it changes. The device implements :class:`vmcore.irq.InterruptController`,
so the machine and the fake bus route every IRQ line change to :meth:`I8259.set_irq`.

Ports (properties): master command/data at ``master_port`` (0x20/0x21), slave at
``slave_port`` (0xA0/0xA1), and the Edge/Level Control Registers at ``elcr_port``
(0x4D0 master, 0x4D1 slave; 0 leaves them out, every line is then edge-triggered
unless ICW1 sets LTIM).

Modelled from the Intel 8259A datasheet:

- the ICW1..ICW4 initialization sequence: ICW1 (even port, D4=1) with IC4, SNGL and
  LTIM; ICW2 the vector base (T7-T3; the low three bits of a vector are the IR
  number); ICW3 only in cascade mode; ICW4 only when IC4 is set (AEOI and SFNM are
  used). ICW1 resets the edge-sense latches, clears IMR and ISR, makes IR7 the lowest
  priority, clears special mask mode and selects IRR for status reads;
- OCW1: the IMR, written and read at the odd port once initialized;
- OCW2: non-specific EOI (0x20), specific EOI (0x60|n), rotate on non-specific EOI
  (0xA0), rotate on specific EOI (0xE0|n), set priority (0xC0|n), and set/clear
  rotate in automatic EOI mode (0x80/0x00);
- OCW3: read IRR or ISR at the even port (RR/RIS), the poll command (P: the next even
  port read is an acknowledge on that chip and returns 0x80|level, or 0 when nothing
  is requested), and special mask mode (ESMM/SMM);
- edge-triggered inputs latch a request in IRR on a rising edge; level-triggered inputs
  (ELCR bit, or LTIM for the whole chip) make IRR follow the input;
- priority resolution with fixed or rotated priority: an in-service level blocks
  requests of equal and lower priority (in special mask mode only unmasked in-service
  levels block; in special fully nested mode the master's cascade level does not block
  the slave);
- automatic EOI (ICW4 AEOI): the ISR bit is not left set by the INTA cycle;
- the cascade: a master request on IR2 (ICW3 bit 2 set, not SNGL) is answered by the
  slave's vector; both ISRs are set;
- spurious interrupts: a request withdrawn before INTA gives vector base+7 with no ISR
  bit set: IRQ 7 from the master, or IRQ 15 from the slave, in which case the master
  has taken IR2 and its ISR bit 2 is set (the handler must EOI the master only).

Approximations and choices (documented, not datasheet):

- An edge-triggered request stays latched in IRR when the input falls before INTA (as
  in QEMU): ISA devices, and :meth:`IrqLine.pulse`, raise and lower a line at once.
  The datasheet's "default IR7" for a withdrawn request therefore arises here from
  level-triggered inputs, from a slave request withdrawn after the master latched IR2,
  and from an INTA when no request is left (for instance after an IMR write).
- The slave is always wired to the master's IR2 (the PC board); ICW3 decides whether
  the master treats IR2 as a cascade (as the datasheet says), the slave's ID in its
  ICW3 is not checked. ICW4's uPM, BUF and M/S bits are ignored: vectors are always
  delivered 8086-style. An external IRQ line 2 is ignored (IR2 is the cascade), as are
  lines outside 0-15.
- ELCR write masks as in the PIIX: IRQ 0, 1, 2, 8 and 13 are always edge-triggered.
- Power-on state (the chip's is undefined; this is what vmcore chooses, like QEMU's
  reset): both chips operational but not programmed, vector base 0, IRR/ISR/IMR 0,
  fixed priority, IRR selected for reads, edge-triggered, ELCR 0, and ICW3 reflecting
  the board's wiring (slave on IR2). A guest must send ICW1..ICW4 to get useful
  vectors, as a PC BIOS does (ICW1=0x11, ICW2=0x08/0x70, ICW3=0x04/0x02, ICW4=0x01).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, PropertyError, config, in_range, prop
from vmcore.hookspecs import hookimpl

log = logging.getLogger(__name__)

CASCADE_IR = 2  # the PC wires the slave's INT to the master's IR2

# ICW1 and OCW3 are told apart from OCW2 by bits of the even-port byte (8259A datasheet).
ICW1_SELECT = 0x10  # D4=1: ICW1
ICW1_IC4 = 0x01  # ICW4 follows
ICW1_SNGL = 0x02  # single chip: no ICW3
ICW1_LTIM = 0x08  # level-triggered mode for all inputs
OCW3_SELECT = 0x08  # D4=0, D3=1: OCW3 (else OCW2)
OCW3_RIS = 0x01
OCW3_RR = 0x02
OCW3_POLL = 0x04
OCW3_SMM = 0x20
OCW3_ESMM = 0x40
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10

# PIIX ELCR: IRQ 0, 1, 2 (master) and 8, 13 (slave) cannot be level-triggered.
ELCR_WRITABLE = (0xF8, 0xDE)


class _Chip:
    """One 8259A: its registers and its priority resolver. Register state only."""

    __slots__ = (
        "is_master", "pins", "latched", "isr", "imr", "elcr", "elcr_writable", "ltim", "single",
        "need_icw4", "base", "icw3", "init_step", "auto_eoi", "rotate_in_aeoi", "sfnm", "lowest",
        "read_isr", "poll", "special_mask",
    )
    class State:
        """What a snapshot keeps of one chip (vmcore.snapshot); which chip it is comes from its place."""

        pins: int
        latched: int
        isr: int
        imr: int
        elcr: int
        ltim: bool
        single: bool
        need_icw4: bool
        base: int
        icw3: int
        init_step: int
        auto_eoi: bool
        rotate_in_aeoi: bool
        sfnm: bool
        lowest: int
        read_isr: bool
        poll: bool
        special_mask: bool

    def __init__(self, is_master: bool) -> None:
        self.is_master = is_master
        self.elcr_writable = ELCR_WRITABLE[0 if is_master else 1]
        self.pins = 0  # input levels: they belong to the devices, so power_on keeps them
        self.power_on()

    def power_on(self) -> None:
        self.latched = 0  # edge-sense latches (the edge-triggered part of IRR)
        self.isr = 0
        self.imr = 0
        self.elcr = 0
        self.ltim = False
        self.single = False
        self.need_icw4 = False
        self.base = 0
        self.icw3 = (1 << CASCADE_IR) if self.is_master else CASCADE_IR
        self.init_step = 0  # 0: operational; 2, 3, 4: the ICW expected at the odd port
        self.auto_eoi = False
        self.rotate_in_aeoi = False
        self.sfnm = False
        self.lowest = 7  # the IR with the lowest priority; the next one up is the highest
        self.read_isr = False
        self.poll = False
        self.special_mask = False

    # --- inputs -------------------------------------------------------------------------

    @property
    def level_mask(self) -> int:
        return 0xFF if self.ltim else self.elcr

    @property
    def irr(self) -> int:
        # set_level_mask keeps latched bits to edge-triggered lines only.
        return self.latched | (self.pins & self.level_mask)

    def set_pin(self, ir: int, level: bool) -> None:
        bit = 1 << ir
        if level:
            if not self.pins & bit and not self.level_mask & bit:
                self.latched |= bit  # rising edge on an edge-triggered input
            self.pins |= bit
        else:
            self.pins &= ~bit

    def set_level_mask(self, elcr: int | None = None, ltim: bool | None = None) -> None:
        if elcr is not None:
            self.elcr = elcr & self.elcr_writable
        if ltim is not None:
            self.ltim = ltim
        # A line turned level-triggered forgets any edge it latched before.
        self.latched &= ~self.level_mask

    # --- priority -----------------------------------------------------------------------

    def _by_priority(self) -> range:
        return range(self.lowest + 1, self.lowest + 9)  # IR numbers mod 8, highest first

    def request(self) -> int | None:
        """The IR this chip would present to INTA now (its INT output is high), or None."""
        pending = self.irr & ~self.imr
        if not pending:
            return None
        blocking = self.isr
        if self.special_mask:
            blocking &= ~self.imr  # only unmasked in-service levels inhibit others
        if self.sfnm and self.is_master:
            blocking &= ~(1 << CASCADE_IR)  # a higher slave request may nest
        for k in self._by_priority():
            bit = 1 << (k & 7)
            if blocking & bit:
                return None  # in service at equal or higher priority
            if pending & bit:
                return k & 7
        return None

    def highest_in_service(self) -> int | None:
        for k in self._by_priority():
            if self.isr & (1 << (k & 7)):
                return k & 7
        return None

    def acknowledge(self, ir: int) -> None:
        """The INTA cycle for ``ir``: IRR -> ISR (not kept with AEOI), edge latch cleared."""
        bit = 1 << ir
        self.latched &= ~bit
        if self.auto_eoi:
            if self.rotate_in_aeoi:
                self.lowest = ir
        else:
            self.isr |= bit

    # --- programming --------------------------------------------------------------------

    def read(self, offset: int) -> int:
        if offset == 1:
            return self.imr  # OCW1
        if self.poll:
            self.poll = False
            ir = self.request()
            if ir is None:
                return 0
            self.acknowledge(ir)
            return 0x80 | ir
        return self.isr if self.read_isr else self.irr

    def write(self, offset: int, value: int) -> None:
        if offset == 0:
            if value & ICW1_SELECT:
                self._icw1(value)
            elif value & OCW3_SELECT:
                self._ocw3(value)
            else:
                self._ocw2(value)
            return
        step = self.init_step
        if step == 2:  # ICW2: T7-T3; T2-T0 come from the IR number
            self.base = value & 0xF8
            self.init_step = 0 if self.single else 3
            if self.init_step == 0 and self.need_icw4:
                self.init_step = 4
        elif step == 3:  # ICW3: master: which IRs have slaves; slave: its ID
            self.icw3 = value
            self.init_step = 4 if self.need_icw4 else 0
        elif step == 4:  # ICW4
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.sfnm = bool(value & ICW4_SFNM)
            self.init_step = 0
        else:  # OCW1
            self.imr = value

    def _icw1(self, value: int) -> None:
        # What ICW1 does (8259A datasheet, "Initialization command words"): edge-sense
        # latches reset (a high input must go low and high again), IMR cleared, IR7
        # lowest priority, special mask mode cleared, status reads select IRR, and the
        # ICW4 functions cleared when IC4 = 0. ISR is cleared too (as QEMU does).
        self.latched = 0
        self.isr = 0
        self.imr = 0
        self.lowest = 7
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.rotate_in_aeoi = False
        self.single = bool(value & ICW1_SNGL)
        self.need_icw4 = bool(value & ICW1_IC4)
        self.auto_eoi = False
        self.sfnm = False
        self.set_level_mask(ltim=bool(value & ICW1_LTIM))
        self.init_step = 2

    def _ocw2(self, value: int) -> None:
        command = value >> 5  # R, SL, EOI
        ir = value & 7
        if command == 0b001:  # non-specific EOI
            self._eoi(self.highest_in_service(), rotate=False)
        elif command == 0b011:  # specific EOI
            self._eoi(ir, rotate=False)
        elif command == 0b101:  # rotate on non-specific EOI
            self._eoi(self.highest_in_service(), rotate=True)
        elif command == 0b111:  # rotate on specific EOI
            self._eoi(ir, rotate=True)
        elif command == 0b110:  # set priority: ir becomes the lowest
            self.lowest = ir
        elif command == 0b100:
            self.rotate_in_aeoi = True
        elif command == 0b000:
            self.rotate_in_aeoi = False
        # 0b010: no operation

    def _eoi(self, ir: int | None, rotate: bool) -> None:
        if ir is None:
            return
        self.isr &= ~(1 << ir)
        if rotate:
            self.lowest = ir

    def _ocw3(self, value: int) -> None:
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)
        if value & OCW3_POLL:
            self.poll = True
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)

    @property
    def cascades(self) -> bool:
        """Whether this (master) chip hands IR2's INTA to the slave (ICW3 bit 2, not SNGL)."""
        return not self.single and bool(self.icw3 & (1 << CASCADE_IR))


@config
class I8259Config:
    master_port: int = prop(0x20, "Master command (even) and data (odd) ports.", hex=True, validator=in_range(0, 0xFFFE))
    slave_port: int = prop(0xA0, "Slave command (even) and data (odd) ports.", hex=True, validator=in_range(0, 0xFFFE))
    elcr_port: int = prop(0x4D0, "Edge/Level Control Registers, master then slave; 0: none.", hex=True,
                          validator=in_range(0, 0xFFFE))

    def __attrs_post_init__(self) -> None:
        ranges = [("master_port", self.master_port), ("slave_port", self.slave_port)]
        if self.elcr_port:
            ranges.append(("elcr_port", self.elcr_port))
        for i, (name, port) in enumerate(ranges):
            for other, other_port in ranges[:i]:
                if abs(port - other_port) < 2:
                    raise PropertyError(name, f"ports {port:#x}..{port + 1:#x} overlap {other} ({other_port:#x})")


class I8259(Device):
    """The PC's cascaded pair of 8259A interrupt controllers with the ELCR: IRQs 0-15 to INTR."""

    type_name = "i8259"
    Config = I8259Config
    class State:
        """What a snapshot keeps (vmcore.snapshot): both chips and the INTR output."""

        master: _Chip
        slave: _Chip
        _intr: bool

    #: Called with the new INTR level whenever it changes (set by the machine).
    intr_changed: Callable[[bool], None] | None

    def __init__(self, config: I8259Config, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.intr_changed = None
        self.master = _Chip(is_master=True)
        self.slave = _Chip(is_master=False)
        self._intr = False
        self.reset()

    def regions(self) -> Sequence[Region]:
        cfg = self.config
        regions = [
            Region(Space.PIO, cfg.master_port, 2, self._master_read, self._master_write, sizes=(1,), name="master"),
            Region(Space.PIO, cfg.slave_port, 2, self._slave_read, self._slave_write, sizes=(1,), name="slave"),
        ]
        if cfg.elcr_port:
            regions.append(Region(Space.PIO, cfg.elcr_port, 2, self._elcr_read, self._elcr_write, sizes=(1,),
                                  name="elcr"))
        return regions

    def reset(self) -> None:
        self.master.power_on()
        self.slave.power_on()
        self._update()

    # --- InterruptController --------------------------------------------------------------

    def set_irq(self, line: int, level: bool) -> None:
        if 0 <= line < 8:
            if line == CASCADE_IR:
                return  # IR2 is the slave's INT, not an external line
            self.master.set_pin(line, level)
        elif 8 <= line < 16:
            self.slave.set_pin(line - 8, level)
        else:
            return
        self._update()

    def pending(self) -> bool:
        return self._intr

    def acknowledge(self) -> int:
        master, slave = self.master, self.slave
        ir = master.request()
        if ir is None:
            # The request went away before INTA: the master answers "IR7" and sets no ISR bit.
            vector = master.base | 7
            log.debug("spurious IRQ 7")
        else:
            master.acknowledge(ir)
            if ir == CASCADE_IR and master.cascades:
                sub = slave.request()
                if sub is None:
                    vector = slave.base | 7  # spurious IRQ 15: the master's ISR2 stays set
                    log.debug("spurious IRQ 15")
                else:
                    slave.acknowledge(sub)
                    vector = slave.base | sub
            else:
                vector = master.base | ir
        self._update()
        return vector

    def _update(self) -> None:
        """Propagate the slave's INT to master IR2, then report a change of INTR."""
        self.master.set_pin(CASCADE_IR, self.slave.request() is not None)
        intr = self.master.request() is not None
        if intr != self._intr:
            self._intr = intr
            notify = self.intr_changed
            if notify is not None:
                notify(intr)

    # --- ports --------------------------------------------------------------------------------

    def _master_read(self, offset: int, size: int) -> int:
        value = self.master.read(offset)
        self._update()  # a poll read acknowledges
        return value

    def _slave_read(self, offset: int, size: int) -> int:
        value = self.slave.read(offset)
        self._update()
        return value

    def _master_write(self, offset: int, size: int, value: int) -> None:
        self.master.write(offset, value & 0xFF)
        self._update()

    def _slave_write(self, offset: int, size: int, value: int) -> None:
        self.slave.write(offset, value & 0xFF)
        self._update()

    def _elcr_read(self, offset: int, size: int) -> int:
        return (self.slave if offset else self.master).elcr

    def _elcr_write(self, offset: int, size: int, value: int) -> None:
        (self.slave if offset else self.master).set_level_mask(elcr=value & 0xFF)
        self._update()


@hookimpl
def vmcore_device_types() -> list[type]:
    return [I8259]
