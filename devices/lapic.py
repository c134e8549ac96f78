"""The local APIC (xAPIC): the CPU's own interrupt controller, its timer and inter-processor interrupts.

Modelled from the Intel SDM vol. 3A, chapter 11 ("Advanced Programmable Interrupt
Controller"), at its register interface: 4 KiB of MMIO at ``base`` (IA32_APIC_BASE's
default, 0xFEE00000), 32-bit registers at 16-byte aligned offsets.

- ID (0x20, bits 24-31 writable), version (0x30: 0x14, six LVT entries), TPR (0x80),
  APR (0x90, reads 0), PPR (0xA0, computed), EOI (0xB0), LDR (0xD0), DFR (0xE0), SVR
  (0xF0), ISR/TMR/IRR (0x100-0x270, eight 32-bit words each), ESR (0x280), ICR
  (0x300/0x310), the LVT (CMCI 0x2F0, timer 0x320, thermal 0x330, performance 0x340,
  LINT0 0x350, LINT1 0x360, error 0x370), and the timer's initial count (0x380),
  current count (0x390) and divide configuration (0x3E0).
- Interrupts are accepted into IRR (and TMR for level-triggered ones); the CPU is
  offered the highest IRR vector whose priority class is above PPR's, with the APIC
  software-enabled (SVR bit 8); taking it moves it to ISR. An EOI clears the highest
  ISR bit, and tells the EOI listeners (an IOAPIC) when TMR says it was level-triggered.
  Vectors 0-15 are illegal: they set ESR bit 6 (received) or 5 (sent) and are dropped.
- The PIC: connected by the machine to LINT0 (:meth:`connect_external`). While LINT0 is
  unmasked in ExtINT mode, or the APIC is globally disabled, the PIC's INTR reaches the
  CPU behind the APIC's own interrupts, and the CPU's INTA goes to the PIC. At reset
  LINT0 is ExtINT and unmasked, as QEMU makes it for the bootstrap processor, so PIC
  interrupts get through without firmware to program it (the "virtual wire" mode).
- The timer: one-shot and periodic, counting the initial count down at one tick per
  ``divide`` ns (the bus clock is 1 GHz, as KVM's and QEMU's); the current count is
  computed from machine time. A timer interrupt is accepted unless the LVT masks it.
- TSC-deadline mode (LVT timer mode 10b, SDM 11.5.4.1): IA32_TSC_DEADLINE (MSR 0x6E0)
  arms the timer for when the guest's TSC reaches the value written (``ctx.tsc``, which
  the machine binds to the accelerator's TSC), at once if it already has; writing 0
  disarms it, and it reads 0 once fired. Entering or leaving the mode disarms the timer;
  in it the initial count is ignored and the current count reads 0, in the other modes
  the MSR reads 0 and writes are ignored. Whether the MSR exists at all is the CPU
  model's (CPUID.1:ECX.TSC_DEADLINE): the accelerator refuses it (#GP) without.
- ICR: fixed and lowest-priority interrupts to this APIC (the "self" and "all
  including self" shorthands, its own physical ID, a logical destination that matches
  LDR in flat mode, or the broadcast ID 0xFF) are accepted; the delivery status is
  always idle. An NMI to this APIC is latched for the CPU (``take_nmi``), which takes it
  whatever IF says. There is one CPU: INIT, SIPI and SMI are logged once and dropped.

- IA32_APIC_BASE (MSR 0x1B, through vmcore.irq.ModelSpecificRegisters): the base, BSP,
  global enable (EN) and x2APIC mode (EXTD). Clearing EN disables the APIC globally (SDM
  11.4.3): its registers go back to their power-up state, its page is not decoded (reads
  all ones, writes ignored), it offers none of its own interrupts, and the PIC's INTR
  reaches the CPU directly; setting EN again brings it back in that state. The modes go
  disabled, xAPIC, x2APIC and back to disabled; any other step is refused (#GP, SDM 10.12.5).
- x2APIC mode (SDM 10.12): the registers are MSRs 0x800 + offset / 16 and the page is not
  decoded. The ID is the 32-bit x2APIC ID (read-only), LDR is derived from it (cluster in
  bits 31:16, one bit of 16 below), ICR is one 64-bit MSR with a 32-bit destination, and
  SELF IPI (0x83F) sends a fixed interrupt to this APIC. Reads of write-only registers,
  writes of read-only ones, registers x2APIC mode has not (APR, RRD, DFR, the ICR's high
  half), reserved bits set and non-zero writes to EOI or ESR are refused (#GP).

Approximations (documented): the registers stay at ``base`` (a write to IA32_APIC_BASE that moves them is
kept and read back, and warned about once); accesses that are not 4-byte reads or writes
of a register take the bus's rule for the region's sizes; unimplemented offsets read 0
and set ESR bit 7.
"""

from __future__ import annotations

from typing import Callable, Sequence

from vmcore.bus import Region, Space
from vmcore.clock import Timer
from vmcore.device import Device, DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.irq import InterruptController

VERSION = 0x0005_0014  # version 0x14 (integrated APIC), max LVT entry 5 (six entries)
LVT_OFFSETS = (0x2F0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370)  # CMCI, timer, thermal, perf, LINT0, LINT1, error
LVT_CMCI, LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(7)
MASKED = 1 << 16
SVR_ENABLE = 1 << 8
DELIVERY_MODE = 0x700
EXTINT = 0x700
TIMER_PERIODIC = 1 << 17
TIMER_MODE = 3 << 17
TIMER_TSC_DEADLINE = 2 << 17
# ESR bits (SDM 11.5.3).
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECEIVE_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7
# IA32_APIC_BASE (SDM 11.4.4): the bootstrap processor, x2APIC mode, global enable.
MSR_APIC_BASE = 0x1B
MSR_TSC_DEADLINE = 0x6E0
# x2APIC mode: register offset / 16 + 0x800.
MSR_X2APIC_FIRST = 0x800
X2APIC_MSRS = tuple(range(MSR_X2APIC_FIRST, MSR_X2APIC_FIRST + 0x100))
# ICR bits an x2APIC write may not set: 31:20, 17:16 and 13 (and the delivery status, 12).
_X2APIC_ICR_RESERVED = 0xFFF0_0000 | 0x3_0000 | 1 << 13 | 1 << 12
# Offsets of registers x2APIC mode reads (besides ISR/TMR/IRR and the LVT).
_X2APIC_READABLE = frozenset((0x20, 0x30, 0x80, 0xA0, 0xD0, 0xF0, 0x280, 0x300, 0x380, 0x390, 0x3E0))
# The LVT as x2APIC mode has it: the version register counts six entries, so no CMCI (0x2F0).
_X2APIC_LVTS = frozenset(LVT_OFFSETS[1:])
APIC_BASE_BSP, APIC_BASE_EXTD, APIC_BASE_EN = 1 << 8, 1 << 10, 1 << 11
_APIC_BASE_RESERVED = 0xFF | 1 << 9  # bits 0-7 and 9; address bits above MAXPHYADDR: the CPU's
# The LVT bits a write keeps, per entry (vector, delivery mode, polarity, trigger, mask, timer mode).
_LVT_WRITABLE = (0x107FF, 0x700FF, 0x107FF, 0x107FF, 0x1A7FF, 0x1A7FF, 0x100FF)


@config
class LocalApicConfig:
    base: int = prop(0xFEE0_0000, "Guest-physical address of the 4 KiB register page (IA32_APIC_BASE).", hex=True,
                     validator=in_range(0, (1 << 52) - 0x1000))
    apic_id: int = prop(0, "The APIC ID (register 0x20 bits 24-31).", validator=in_range(0, 0xFE))

    def __attrs_post_init__(self) -> None:
        if self.base & 0xFFF:
            raise ValueError(f"base {self.base:#x} is not 4 KiB aligned")


class LocalApic(Device):
    """The CPU's local APIC: IRR/ISR/TMR, TPR/PPR, EOI, the LVT, the timer and self-IPIs."""

    type_name = "lapic"
    Config = LocalApicConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot): the registers, the timer and the pending NMI."""

        apic_base: int
        id: int
        tpr: int
        ldr: int
        dfr: int
        svr: int
        irr: int
        isr: int
        tmr: int
        esr: int
        _esr_pending: int
        icr: int
        lvt: list[int]
        initial_count: int
        divide_config: int
        tsc_deadline: int
        _timer: Timer
        _started: int
        _nmi: bool
        _intr: bool

    def __init__(self, config: LocalApicConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        #: Set by the machine (the run core): called with the new INTR level whenever it changes.
        self.intr_changed: Callable[[bool], None] | None = None
        #: Set by the machine (the run core): called when an NMI is latched for the CPU.
        self.nmi_raised: Callable[[], None] | None = None
        self._nmi = False
        #: Told the vector of each EOI of a level-triggered interrupt (an IOAPIC's remote IRR).
        self.eoi_listeners: list[Callable[[int], None]] = []
        self._external: InterruptController | None = None
        self._timer: Timer = ctx.clock.timer(self._timer_fired)
        self._warned: set[str] = set()
        self._intr = False
        self.reset()

    def reset(self) -> None:
        """A CPU reset: IA32_APIC_BASE at its default (enabled, the bootstrap processor's) and the
        registers at power-up."""
        self.apic_base = self.config.base | APIC_BASE_BSP | APIC_BASE_EN
        self._power_up()

    def _power_up(self) -> None:
        """Power-on state (SDM 11.4.7.1), with LINT0 in ExtINT mode as QEMU leaves the BSP's."""
        self.id = self.config.apic_id << 24
        self.tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFF_FFFF
        self.svr = 0xFF
        self.irr = self.isr = self.tmr = 0  # 256-bit sets, bit v for vector v
        self.esr = self._esr_pending = 0
        self._signalling_error = False
        self.icr = 0  # ICR as one 64-bit value (destination in bits 56-63)
        self.lvt = [MASKED] * 7
        self.lvt[LVT_LINT0] = EXTINT
        self.initial_count = 0
        self.divide_config = 0
        self.tsc_deadline = 0  # IA32_TSC_DEADLINE: the TSC value the timer fires at; 0: disarmed
        self._timer.cancel()
        self._started = 0  # machine time the count was loaded (ns)
        self._nmi = False
        self._update()

    def regions(self) -> Sequence[Region]:
        return [Region(Space.MMIO, self.config.base, 0x1000, self.read, self.write, sizes=(4,), name="registers")]

    @property
    def hardware_enabled(self) -> bool:
        """IA32_APIC_BASE.EN: the APIC is globally enabled."""
        return bool(self.apic_base & APIC_BASE_EN)

    # --- CR8 -----------------------------------------------------------------------------------

    def task_priority(self) -> int:
        """TPR, which the CPU's CR8 shows (bits 7:4) in 64-bit mode."""
        return self.tpr

    def set_task_priority(self, value: int) -> None:
        """A write of CR8: TPR bits 7:4 (bits 3:0 clear, SDM 10.8.6.1)."""
        self.tpr = value & 0xF0
        self._update()

    # --- IA32_APIC_BASE (vmcore.irq.ModelSpecificRegisters) ----------------------------------

    def msr_indices(self) -> tuple[int, ...]:
        return (MSR_APIC_BASE, MSR_TSC_DEADLINE, *X2APIC_MSRS)

    @property
    def x2apic_mode(self) -> bool:
        return self.apic_base & (APIC_BASE_EN | APIC_BASE_EXTD) == APIC_BASE_EN | APIC_BASE_EXTD

    def read_msr(self, index: int) -> int | None:
        if index == MSR_APIC_BASE:
            return self.apic_base
        if index == MSR_TSC_DEADLINE:
            return self.tsc_deadline if self._deadline_mode else 0  # reads 0 in the other modes
        if index in X2APIC_MSRS and self.x2apic_mode:
            return self._x2apic_read((index - MSR_X2APIC_FIRST) << 4)
        return None

    def write_msr(self, index: int, value: int) -> bool:
        if index == MSR_APIC_BASE:
            return self._write_apic_base(value)
        if index == MSR_TSC_DEADLINE:
            self._write_deadline(value & 0xFFFF_FFFF_FFFF_FFFF)
            return True
        if index in X2APIC_MSRS and self.x2apic_mode:
            return self._x2apic_write((index - MSR_X2APIC_FIRST) << 4, value)
        return False

    def _write_apic_base(self, value: int) -> bool:
        if value & _APIC_BASE_RESERVED:
            return False
        mode = value & (APIC_BASE_EN | APIC_BASE_EXTD)
        current = self.apic_base & (APIC_BASE_EN | APIC_BASE_EXTD)
        # Disabled -> xAPIC -> x2APIC -> disabled (SDM 10.12.5): EXTD alone is invalid, and
        # x2APIC cannot go straight back to xAPIC nor disabled straight to x2APIC.
        if mode == APIC_BASE_EXTD or (current == APIC_BASE_EN | APIC_BASE_EXTD and mode == APIC_BASE_EN) \
                or (current == 0 and mode == APIC_BASE_EN | APIC_BASE_EXTD):
            return False
        self.apic_base = value & ~0xFF | (self.apic_base & APIC_BASE_BSP)  # BSP is read-only
        if value & ~0xFFF != self.config.base:
            self._warn_once("relocate", f"IA32_APIC_BASE moves the registers to {value & ~0xFFF:#x}: not "
                            f"modelled, they stay at {self.config.base:#x}")
        if (current == 0) != (mode == 0):
            self._power_up()  # disabled or enabled again: the power-up state either way (SDM 11.4.3)
        elif mode != current:
            self._update()  # xAPIC -> x2APIC: the same state, seen through the MSRs (and a new ID)
        return True

    # --- x2APIC mode (SDM 10.12) ----------------------------------------------------------------

    @property
    def x2apic_id(self) -> int:
        return self.config.apic_id

    @property
    def x2apic_ldr(self) -> int:
        """Cluster (ID bits 19:4) in bits 31:16, the ID's low 4 bits as one bit below (SDM 10.12.10.2)."""
        return (self.x2apic_id >> 4) << 16 | 1 << (self.x2apic_id & 0xF)

    def _x2apic_read(self, offset: int) -> int | None:
        if offset == 0x20:
            return self.x2apic_id
        if offset == 0xD0:
            return self.x2apic_ldr
        if offset == 0x300:
            return self.icr & ~(1 << 12)
        if offset in _X2APIC_READABLE or 0x100 <= offset < 0x280 or offset in _X2APIC_LVTS:
            return self._read_register(offset)
        return None  # write-only (EOI, SELF IPI) or not there in x2APIC mode

    def _x2apic_write(self, offset: int, value: int) -> bool:
        if offset == 0x300:
            if value & _X2APIC_ICR_RESERVED:
                return False
            self.icr = value
            self._send_ipi()
            return True
        if value >> 32:
            return False
        if offset == 0x80:
            if value & ~0xFF:
                return False
        elif offset == 0xB0 or offset == 0x280:
            if value:
                return False  # EOI and ESR take only 0
        elif offset == 0xF0:
            if value & ~0x13FF:
                return False
        elif offset in _X2APIC_LVTS:
            if value & ~_LVT_WRITABLE[LVT_OFFSETS.index(offset)]:
                return False
        elif offset == 0x3E0:
            if value & ~0xB:
                return False
        elif offset == 0x3F0:  # SELF IPI: a fixed, edge interrupt to this APIC
            if value & ~0xFF:
                return False
            if value < 16:
                self._error(ESR_SEND_ILLEGAL_VECTOR)
            else:
                self.accept(value)
            return True
        elif offset != 0x380:
            return False  # read-only, or not there in x2APIC mode
        self._write_register(offset, value)
        return True

    # --- the CPU side (vmcore.irq.InterruptController) -----------------------------------------

    def connect_external(self, controller: InterruptController) -> None:
        """Wire an external interrupt controller (the PC's 8259 pair) to LINT0."""
        self._external = controller
        controller.intr_changed = lambda _level: self._update()
        self._update()

    def pending(self) -> bool:
        return self._intr

    def take_nmi(self) -> bool:
        """Whether an NMI waits for the CPU; taking it clears the latch (the CPU's own NMI blocking does the rest)."""
        nmi, self._nmi = self._nmi, False
        return nmi

    def acknowledge(self) -> int:
        """The CPU takes an interrupt: the APIC's own first, else the PIC's through LINT0 (INTA)."""
        vector = self._deliverable()
        if vector is not None:
            self.irr &= ~(1 << vector)
            self.isr |= 1 << vector
            self._update()
            return vector
        if self._external_open() and self._external is not None and self._external.pending():
            vector = self._external.acknowledge()
            self._update()
            return vector
        self._update()
        return self.svr & 0xFF  # the request went away before the INTA cycle: the spurious vector

    def accept(self, vector: int, level: bool = False) -> None:
        """An interrupt arrives for this APIC (its timer, an IPI, an IOAPIC): into IRR."""
        if not self.hardware_enabled:
            return  # globally disabled: it takes no messages
        if vector < 16:
            self._error(ESR_RECEIVE_ILLEGAL_VECTOR)
            return
        self.irr |= 1 << vector
        if level:
            self.tmr |= 1 << vector
        else:
            self.tmr &= ~(1 << vector)
        self._update()

    # --- registers ---------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if not self.hardware_enabled or self.x2apic_mode:
            return 0xFFFF_FFFF  # globally disabled or in x2APIC mode: the page is not decoded
        return self._read_register(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        if self.hardware_enabled and not self.x2apic_mode:
            self._write_register(offset, value)

    def _read_register(self, offset: int) -> int:
        if offset & 0xF:
            return 0  # between registers
        if offset == 0x20:
            return self.id
        if offset == 0x30:
            return VERSION
        if offset == 0x80:
            return self.tpr
        if offset == 0x90:
            return 0  # APR: arbitration priority, not modelled (one CPU)
        if offset == 0xA0:
            return self.ppr
        if offset == 0xD0:
            return self.ldr
        if offset == 0xE0:
            return self.dfr
        if offset == 0xF0:
            return self.svr
        if 0x100 <= offset < 0x280:
            group, word = divmod(offset - 0x100, 0x80)
            return ((self.isr, self.tmr, self.irr)[group] >> (32 * (word // 0x10))) & 0xFFFF_FFFF
        if offset == 0x280:
            return self.esr
        if offset == 0x300:
            return self.icr & 0xFFFF_EFFF  # delivery status (bit 12): always idle
        if offset == 0x310:
            return self.icr >> 32
        if offset in LVT_OFFSETS:
            return self.lvt[LVT_OFFSETS.index(offset)]
        if offset == 0x380:
            return self.initial_count
        if offset == 0x390:
            return self.current_count()
        if offset == 0x3E0:
            return self.divide_config
        if offset == 0xB0:
            return 0  # EOI is write-only
        self._error(ESR_ILLEGAL_REGISTER)
        return 0

    def _write_register(self, offset: int, value: int) -> None:
        if offset & 0xF:
            return
        if offset == 0x20:
            self.id = value & 0xFF00_0000
        elif offset == 0x80:
            self.tpr = value & 0xFF
            self._update()
        elif offset == 0xB0:
            self._eoi()
        elif offset == 0xD0:
            self.ldr = value & 0xFF00_0000
        elif offset == 0xE0:
            self.dfr = (value & 0xF000_0000) | 0x0FFF_FFFF
        elif offset == 0xF0:
            self._write_svr(value)
        elif offset == 0x280:
            self.esr, self._esr_pending = self._esr_pending, 0  # a write latches the errors since the last
        elif offset == 0x300:
            self.icr = (self.icr & ~0xFFFF_FFFF) | (value & 0x000C_CFFF)
            self._send_ipi()
        elif offset == 0x310:
            self.icr = (self.icr & 0xFFFF_FFFF) | (value & 0xFF00_0000) << 32
        elif offset in LVT_OFFSETS:
            self._write_lvt(LVT_OFFSETS.index(offset), value)
        elif offset == 0x380:
            if not self._deadline_mode:  # ignored in TSC-deadline mode (SDM 11.5.4.1)
                self._load_count(value)
        elif offset == 0x3E0:
            self.divide_config = value & 0xB
            if self._timer.armed and not self._deadline_mode:
                self._load_count(self.initial_count)  # a new rate: the count starts again (approximation)
        elif offset in (0x30, 0x90, 0xA0, 0x390) or 0x100 <= offset < 0x280:
            pass  # read-only
        else:
            self._error(ESR_ILLEGAL_REGISTER)

    @property
    def ppr(self) -> int:
        """Processor priority: TPR, or the in-service vector's class if that is higher (SDM 11.8.3.1)."""
        isrv = self.isr.bit_length() - 1 if self.isr else 0
        return self.tpr if (self.tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    def _write_svr(self, value: int) -> None:
        self.svr = value & 0x13FF
        if not self.software_enabled:
            # Software-disabled: every LVT entry is masked and stays so (SDM 11.4.7.2).
            self.lvt = [entry | MASKED for entry in self.lvt]
        self._update()

    def _write_lvt(self, index: int, value: int) -> None:
        value &= _LVT_WRITABLE[index]
        if not self.software_enabled:
            value |= MASKED
        mode = self.lvt[LVT_TIMER] & TIMER_MODE
        self.lvt[index] = value
        if index == LVT_TIMER and (value & TIMER_MODE) != mode \
                and TIMER_TSC_DEADLINE in (mode, value & TIMER_MODE):
            # Into or out of TSC-deadline mode: the timer is disarmed (SDM 11.5.4.1).
            self._timer.cancel()
            self.tsc_deadline = 0
        self._update()

    def _eoi(self) -> None:
        if not self.isr:
            return
        vector = self.isr.bit_length() - 1
        self.isr &= ~(1 << vector)
        if self.tmr >> vector & 1:
            for listener in self.eoi_listeners:
                listener(vector)
        self._update()

    def _send_ipi(self) -> None:
        low = self.icr & 0xFFFF_FFFF
        vector, mode, shorthand = low & 0xFF, low & DELIVERY_MODE, (low >> 18) & 3
        if self.x2apic_mode:
            addressed = self._matches_x2apic(self.icr >> 32, bool(low & 0x800))
        else:
            addressed = self.matches(self.icr >> 56, bool(low & 0x800))
        if shorthand == 3 or (shorthand == 0 and not addressed):
            return  # to other CPUs only, and there are none
        if mode in (0x000, 0x100):  # fixed, lowest priority
            if vector < 16:
                self._error(ESR_SEND_ILLEGAL_VECTOR)
                return
            self.accept(vector, level=bool(low & 0x8000))
        elif mode == 0x400:
            self._nmi = True
            if self.nmi_raised is not None:
                self.nmi_raised()
        else:
            names = {0x200: "SMI", 0x500: "INIT", 0x600: "SIPI"}
            self._warn_once(f"ipi-{mode}", f"{names.get(mode, 'reserved')} IPIs are not modelled (one CPU); dropped")

    def _matches_x2apic(self, destination: int, logical: bool) -> bool:
        """An x2APIC ICR's 32-bit destination: 0xFFFFFFFF is everyone; logical is cluster and bits."""
        if destination == 0xFFFF_FFFF:
            return True
        if not logical:
            return destination == self.x2apic_id
        ldr = self.x2apic_ldr
        return destination >> 16 == ldr >> 16 and bool(destination & ldr & 0xFFFF)

    def matches(self, destination: int, logical: bool) -> bool:
        """Whether an interrupt message for ``destination`` (physical ID, or logical in flat/cluster mode) is for this APIC."""
        if destination == 0xFF:
            return True
        if not logical:
            return destination == self.id >> 24
        if self.dfr >> 28 == 0xF:  # flat model: a bit per APIC
            return bool(destination & (self.ldr >> 24))
        return (destination >> 4) == (self.ldr >> 28) and bool(destination & (self.ldr >> 24) & 0xF)  # cluster

    def _error(self, bit: int) -> None:
        self._esr_pending |= bit
        entry = self.lvt[LVT_ERROR]
        if not entry & MASKED and not self._signalling_error:
            # An error the error interrupt itself meets (its LVT holds an illegal vector, 0-15)
            # is recorded in ESR too, but signals nothing more: it would only repeat itself.
            self._signalling_error = True
            try:
                self.accept(entry & 0xFF)
            finally:
                self._signalling_error = False

    # --- the timer ---------------------------------------------------------------------------

    @property
    def tick_ns(self) -> int:
        """Nanoseconds per count: the 1 GHz bus clock through the divide configuration (SDM 11.5.4)."""
        code = (self.divide_config & 3) | (self.divide_config & 8) >> 1
        return 1 if code == 7 else 2 << code

    @property
    def _deadline_mode(self) -> bool:
        return self.lvt[LVT_TIMER] & TIMER_MODE == TIMER_TSC_DEADLINE

    def _write_deadline(self, value: int) -> None:
        """IA32_TSC_DEADLINE: in TSC-deadline mode, arm the timer for when the guest's TSC reaches
        ``value`` (at once if it has), or disarm it with 0; ignored in the other modes."""
        if not self._deadline_mode:
            return
        self.tsc_deadline = value
        if value:
            self._timer.mod(self.ctx.tsc.when(value))
        else:
            self._timer.cancel()

    def _load_count(self, count: int) -> None:
        self.initial_count = count & 0xFFFF_FFFF
        self._started = self.ctx.clock.now()
        if self.initial_count and self.lvt[LVT_TIMER] & TIMER_MODE != 2 << 17:
            self._timer.mod(self._started + self.initial_count * self.tick_ns)
        else:
            self._timer.cancel()

    def current_count(self) -> int:
        if not self._timer.armed or not self.initial_count or self._deadline_mode:
            return 0
        ticks = (self.ctx.clock.now() - self._started) // self.tick_ns
        if self.lvt[LVT_TIMER] & TIMER_PERIODIC:
            return self.initial_count - ticks % self.initial_count
        return max(0, self.initial_count - ticks)

    def _timer_fired(self) -> None:
        entry = self.lvt[LVT_TIMER]
        if entry & TIMER_MODE == TIMER_TSC_DEADLINE:
            self.tsc_deadline = 0  # fired: reads 0 until the next deadline
        elif entry & TIMER_PERIODIC and self.initial_count:
            period = self.initial_count * self.tick_ns
            self._started += period
            self._timer.mod(self._started + period)
        if not entry & MASKED:
            self.accept(entry & 0xFF)

    # --- the INTR output ---------------------------------------------------------------------

    def _deliverable(self) -> int | None:
        """The IRR vector the CPU may take now, if any."""
        if not self.irr or not self.software_enabled or not self.hardware_enabled:
            return None
        vector = self.irr.bit_length() - 1
        return vector if (vector >> 4) > (self.ppr >> 4) else None

    def _external_open(self) -> bool:
        if not self.hardware_enabled:
            return True  # globally disabled: INTR goes straight to the CPU
        entry = self.lvt[LVT_LINT0]
        return not entry & MASKED and entry & DELIVERY_MODE == EXTINT

    def _update(self) -> None:
        level = self._deliverable() is not None or (
            self._external is not None and self._external_open() and self._external.pending())
        if level != self._intr:
            self._intr = level
            if self.intr_changed is not None:
                self.intr_changed(level)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.ctx.log.warning("%s: %s", self.ctx.name, message)



@hookimpl
def vmcore_device_types() -> list[type]:
    return [LocalApic]
