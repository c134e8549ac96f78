"""devices/lapic.py: the local APIC (xAPIC) on the fake bus, one test per behaviour (Intel SDM vol. 3A ch. 11)."""

import pytest

BASE = 0xFEE0_0000
ID, VERSION, TPR, PPR, EOI, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR, ICR_LOW, ICR_HIGH = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVT_TIMER, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x320, 0x350, 0x360, 0x370
INITIAL, CURRENT, DIVIDE = 0x380, 0x390, 0x3E0
MASKED, PERIODIC = 1 << 16, 1 << 17
# ICR: shorthand self / all including self / all excluding self; level; logical destination.
SELF, ALL, OTHERS, LEVEL, LOGICAL = 1 << 18, 2 << 18, 3 << 18, 1 << 15, 1 << 11


def rd(bus, offset: int) -> int:
    return bus.readl(BASE + offset)


def wr(bus, offset: int, value: int) -> None:
    bus.writel(BASE + offset, value)


def bit(bus, group: int, vector: int) -> bool:
    """Vector's bit in ISR, TMR or IRR (eight 32-bit registers, 16 bytes apart)."""
    return bool(rd(bus, group + 0x10 * (vector // 32)) >> (vector % 32) & 1)


@pytest.fixture
def apic(fake_bus):
    device = fake_bus.attach("lapic")
    wr(fake_bus, SVR, 0x1FF)  # software-enabled, spurious vector 0xFF
    return device


def test_power_on_registers(fake_bus):
    fake_bus.attach("lapic", apic_id=3)
    assert rd(fake_bus, ID) == 3 << 24
    assert rd(fake_bus, VERSION) == 0x0005_0014
    assert rd(fake_bus, SVR) == 0xFF  # software-disabled
    assert rd(fake_bus, DFR) == 0xFFFF_FFFF
    assert rd(fake_bus, LVT_TIMER) == MASKED and rd(fake_bus, LVT_LINT1) == MASKED
    assert rd(fake_bus, LVT_LINT0) == 0x700  # ExtINT, unmasked: the PIC gets through with no firmware
    assert rd(fake_bus, TPR) == rd(fake_bus, PPR) == rd(fake_bus, CURRENT) == 0
    assert not fake_bus.intr()


def test_a_self_ipi_is_taken_into_isr_and_eoi_clears_it(fake_bus, apic):
    wr(fake_bus, ICR_LOW, SELF | 0x40)
    assert bit(fake_bus, IRR, 0x40) and fake_bus.intr()
    assert rd(fake_bus, ICR_LOW) & (1 << 12) == 0  # delivery status: idle
    assert fake_bus.acknowledge() == 0x40
    assert bit(fake_bus, ISR, 0x40) and not bit(fake_bus, IRR, 0x40) and not fake_bus.intr()
    assert rd(fake_bus, PPR) == 0x40
    wr(fake_bus, EOI, 0)
    assert not bit(fake_bus, ISR, 0x40) and rd(fake_bus, PPR) == 0


def test_priority_classes_tpr_and_in_service_vectors_hold_lower_ones_back(fake_bus, apic):
    wr(fake_bus, TPR, 0x50)
    wr(fake_bus, ICR_LOW, SELF | 0x52)  # same class as TPR: held
    assert bit(fake_bus, IRR, 0x52) and not fake_bus.intr()
    wr(fake_bus, ICR_LOW, SELF | 0x61)
    assert fake_bus.acknowledge() == 0x61
    wr(fake_bus, TPR, 0)
    wr(fake_bus, ICR_LOW, SELF | 0x65)  # same class as the one in service: held until its EOI
    assert not fake_bus.intr()
    wr(fake_bus, EOI, 0)
    assert fake_bus.acknowledge() == 0x65  # the highest first
    wr(fake_bus, EOI, 0)
    assert fake_bus.acknowledge() == 0x52


def test_the_highest_vector_is_delivered_first_and_eoi_ends_the_highest_in_service(fake_bus, apic):
    for vector in (0x30, 0x90, 0x70):
        wr(fake_bus, ICR_LOW, ALL | vector)  # "all including self" reaches this APIC too
    assert fake_bus.acknowledge() == 0x90
    wr(fake_bus, EOI, 0)
    assert fake_bus.acknowledge() == 0x70
    assert fake_bus.acknowledge() != 0x30  # class 3 is below the in-service class 7: spurious
    wr(fake_bus, EOI, 0)
    assert fake_bus.acknowledge() == 0x30


def test_ipis_to_other_cpus_and_to_other_ids_are_dropped(fake_bus, apic):
    wr(fake_bus, ICR_LOW, OTHERS | 0x40)
    wr(fake_bus, ICR_HIGH, 5 << 24)
    wr(fake_bus, ICR_LOW, 0x41)  # physical destination 5; this APIC is 0
    assert rd(fake_bus, IRR + 0x20) == 0 and not fake_bus.intr()
    wr(fake_bus, ICR_HIGH, 0)
    wr(fake_bus, ICR_LOW, 0x42)  # physical destination 0: this one
    assert bit(fake_bus, IRR, 0x42)


def test_a_logical_destination_matches_the_ldr_in_flat_mode(fake_bus, apic):
    wr(fake_bus, LDR, 0x04 << 24)
    wr(fake_bus, ICR_HIGH, 0x02 << 24)
    wr(fake_bus, ICR_LOW, LOGICAL | 0x50)
    assert not bit(fake_bus, IRR, 0x50)
    wr(fake_bus, ICR_HIGH, 0x06 << 24)
    wr(fake_bus, ICR_LOW, LOGICAL | 0x50)
    assert bit(fake_bus, IRR, 0x50)


def test_level_triggered_interrupts_set_tmr_and_their_eoi_is_broadcast(fake_bus, apic):
    eois = []
    apic.eoi_listeners.append(eois.append)
    wr(fake_bus, ICR_LOW, SELF | LEVEL | 0x80)
    assert bit(fake_bus, TMR, 0x80)
    assert fake_bus.acknowledge() == 0x80
    wr(fake_bus, EOI, 0)
    assert eois == [0x80]
    wr(fake_bus, ICR_LOW, SELF | 0x81)
    fake_bus.acknowledge()
    wr(fake_bus, EOI, 0)
    assert eois == [0x80]  # edge-triggered: no broadcast


def test_illegal_vectors_are_dropped_and_reported_in_esr(fake_bus, apic):
    wr(fake_bus, ICR_LOW, SELF | 0x05)
    assert rd(fake_bus, IRR) == 0
    wr(fake_bus, ESR, 0)  # a write latches the errors seen since the last one
    assert rd(fake_bus, ESR) == 1 << 5  # send illegal vector
    wr(fake_bus, ESR, 0)
    assert rd(fake_bus, ESR) == 0


def test_an_unimplemented_register_reads_zero_and_sets_esr(fake_bus, apic):
    assert rd(fake_bus, 0x40) == 0
    wr(fake_bus, ESR, 0)
    assert rd(fake_bus, ESR) == 1 << 7


def test_nothing_is_offered_while_software_disabled_and_the_lvt_stays_masked(fake_bus):
    fake_bus.attach("lapic")
    wr(fake_bus, ICR_LOW, SELF | 0x40)
    assert bit(fake_bus, IRR, 0x40) and not fake_bus.intr()
    wr(fake_bus, LVT_TIMER, 0x30)
    assert rd(fake_bus, LVT_TIMER) == MASKED | 0x30
    wr(fake_bus, SVR, 0x1FF)
    assert fake_bus.intr()


def test_one_shot_timer_counts_down_and_interrupts_once(fake_bus, apic):
    wr(fake_bus, DIVIDE, 0xB)  # divide by 1: one count per ns
    wr(fake_bus, LVT_TIMER, 0x31)
    wr(fake_bus, INITIAL, 1000)
    fake_bus.step(400)
    assert rd(fake_bus, CURRENT) == 600 and not fake_bus.intr()
    fake_bus.step(600)
    assert rd(fake_bus, CURRENT) == 0 and fake_bus.acknowledge() == 0x31
    wr(fake_bus, EOI, 0)
    fake_bus.step(5000)
    assert not fake_bus.intr()


def test_periodic_timer_reloads_and_the_divider_scales_it(fake_bus, apic):
    wr(fake_bus, DIVIDE, 0x3)  # divide by 16
    wr(fake_bus, LVT_TIMER, PERIODIC | 0x32)
    wr(fake_bus, INITIAL, 100)  # 1600 ns a period
    ticks = 0
    for _ in range(5):
        fake_bus.step(1600)
        if fake_bus.intr():
            assert fake_bus.acknowledge() == 0x32
            wr(fake_bus, EOI, 0)
            ticks += 1
    assert ticks == 5
    fake_bus.step(800)
    assert rd(fake_bus, CURRENT) == 50


def test_a_masked_timer_does_not_interrupt_and_a_zero_count_stops_it(fake_bus, apic):
    wr(fake_bus, DIVIDE, 0xB)
    wr(fake_bus, LVT_TIMER, MASKED | 0x33)
    wr(fake_bus, INITIAL, 10)
    fake_bus.step(100)
    assert not fake_bus.intr()
    wr(fake_bus, LVT_TIMER, PERIODIC | 0x33)
    wr(fake_bus, INITIAL, 10)
    wr(fake_bus, INITIAL, 0)
    fake_bus.step(100)
    assert not fake_bus.intr() and rd(fake_bus, CURRENT) == 0


def test_the_pic_reaches_the_cpu_through_lint0_in_extint_mode(fake_bus, apic):
    fake_bus.attach("i8259")
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)):  # ICW1-4: vectors 0x20..
        fake_bus.outb(port, value)
    fake_bus.irq(1).raise_()
    assert fake_bus.intr()
    assert fake_bus.acknowledge() == 0x21  # the PIC's INTA, through the APIC
    fake_bus.outb(0x20, 0x20)
    # The APIC's own interrupts come first; masking LINT0 keeps the PIC out.
    fake_bus.irq(1).lower()
    fake_bus.irq(3).raise_()
    wr(fake_bus, ICR_LOW, SELF | 0xE0)
    assert fake_bus.acknowledge() == 0xE0
    wr(fake_bus, EOI, 0)
    wr(fake_bus, LVT_LINT0, MASKED | 0x700)
    assert not fake_bus.intr()
    wr(fake_bus, LVT_LINT0, 0x700)
    assert fake_bus.acknowledge() == 0x23


def test_an_error_interrupt_when_the_error_lvt_is_unmasked(fake_bus, apic):
    wr(fake_bus, LVT_ERROR, 0xFE)
    wr(fake_bus, ICR_LOW, SELF | 0x01)  # illegal vector
    assert fake_bus.acknowledge() == 0xFE


def test_an_error_lvt_with_an_illegal_vector_records_the_error_once(fake_bus, apic):
    # Found by the fuzzer: the error interrupt's own illegal vector is another error, which
    # signalled an error interrupt again, without end (RecursionError on the read below).
    wr(fake_bus, LVT_ERROR, 0x00)
    assert rd(fake_bus, 0x3F0) == 0  # a register that is not there: an illegal register address
    wr(fake_bus, ESR, 0)
    assert rd(fake_bus, ESR) == (1 << 7) | (1 << 6)  # illegal register address, receive illegal vector
    assert not fake_bus.intr()  # nothing was accepted
    wr(fake_bus, LVT_ERROR, 0xFE)  # and errors signal again once it holds a vector
    wr(fake_bus, ICR_LOW, SELF | 0x01)
    assert fake_bus.acknowledge() == 0xFE


def test_survives_fuzzing():
    from vmcore.fuzz import assert_survives_fuzzing

    assert_survives_fuzzing("lapic", runs=10, steps=300)


def test_a_flood_of_unmodelled_ipis_is_logged_once(fake_bus, apic, caplog):
    for _ in range(1000):
        wr(fake_bus, ICR_LOW, SELF | 0x500)  # INIT: one CPU, not modelled
    assert sum("INIT IPIs are not modelled" in r.getMessage() for r in caplog.records) == 1
    assert rd(fake_bus, IRR + 0x20) == 0


def test_an_nmi_ipi_to_itself_is_latched_for_the_cpu_once(fake_bus, apic):
    raised = []
    apic.nmi_raised = lambda: raised.append(True)
    wr(fake_bus, ICR_LOW, SELF | 0x400 | 0x2)  # NMI: the vector field is ignored
    wr(fake_bus, ICR_LOW, SELF | 0x400)         # a second before the CPU took the first: still one NMI
    assert raised == [True, True]
    assert not fake_bus.intr() and rd(fake_bus, IRR + 0x00) == 0  # not an INTR, no IRR bit
    assert apic.take_nmi() and not apic.take_nmi()
    wr(fake_bus, ICR_LOW, OTHERS | 0x400)  # to the other CPUs: there are none
    assert not apic.take_nmi()


# --- IA32_APIC_BASE and CR8 (the CPU side routes them here: vmcore.irq.ModelSpecificRegisters) --

APIC_BASE = 0x1B
TSC_DEADLINE = 0x6E0
EN, BSP, EXTD = 1 << 11, 1 << 8, 1 << 10


def test_apic_base_reads_the_bootstrap_processors_enabled_apic(apic):
    assert apic.msr_indices() == (APIC_BASE, TSC_DEADLINE, *range(0x800, 0x900))
    assert apic.read_msr(APIC_BASE) == BASE | BSP | EN
    assert apic.read_msr(0x1C) is None
    assert apic.read_msr(0x803) is None  # x2APIC registers: only in x2APIC mode


def test_reserved_apic_base_bits_and_invalid_mode_changes_are_refused(apic):
    for value in (BASE | BSP | EN | 1, BASE | BSP | EN | 1 << 9, BASE | BSP | EXTD):
        assert apic.write_msr(APIC_BASE, value) is False  # reserved bits; EXTD without EN
    assert apic.read_msr(APIC_BASE) == BASE | BSP | EN
    assert apic.write_msr(APIC_BASE, BASE | EN | EXTD)  # xAPIC -> x2APIC
    assert apic.write_msr(APIC_BASE, BASE | EN) is False  # x2APIC -> xAPIC: only through disabled
    assert apic.write_msr(APIC_BASE, BASE)
    assert apic.write_msr(APIC_BASE, BASE | EN | EXTD) is False  # disabled -> x2APIC: only through xAPIC


def test_a_globally_disabled_apic_decodes_nothing_and_comes_back_at_power_up(fake_bus, apic):
    wr(fake_bus, TPR, 0x20)
    wr(fake_bus, ICR_LOW, SELF | 0x40)
    assert fake_bus.intr()
    assert apic.write_msr(APIC_BASE, BASE | BSP)  # EN clear
    assert apic.read_msr(APIC_BASE) == BASE | BSP
    assert not fake_bus.intr()  # its own interrupts are gone with its state
    assert rd(fake_bus, VERSION) == 0xFFFF_FFFF  # the page is not decoded
    wr(fake_bus, SVR, 0x1FF)
    apic.accept(0x50)  # takes no messages either
    assert apic.write_msr(APIC_BASE, BASE | BSP | EN)
    assert rd(fake_bus, VERSION) == 0x0005_0014
    assert rd(fake_bus, SVR) == 0xFF and rd(fake_bus, TPR) == 0 and not bit(fake_bus, IRR, 0x50)


def test_bsp_is_read_only_and_a_move_is_kept_but_warned_about(apic, caplog):
    assert apic.write_msr(APIC_BASE, 0xFED4_0000 | EN)
    assert apic.read_msr(APIC_BASE) == 0xFED4_0000 | BSP | EN  # as written, BSP kept
    assert "not modelled" in caplog.text
    assert rd_at(apic, VERSION) == 0x0005_0014  # still answering at its configured base


def rd_at(apic, offset: int) -> int:
    return apic.read(offset, 4)


def test_cr8_is_tpr_bits_7_to_4(fake_bus, apic):
    apic.set_task_priority(0x5F)
    assert rd(fake_bus, TPR) == 0x50 and apic.task_priority() == 0x50
    wr(fake_bus, ICR_LOW, SELF | 0x52)  # same class: held back
    assert not fake_bus.intr()
    apic.set_task_priority(0x40)
    assert fake_bus.intr()


# --- x2APIC mode (SDM 10.12) ------------------------------------------------------------------


@pytest.fixture
def x2apic(fake_bus):
    device = fake_bus.attach("lapic", apic_id=0x23)
    assert device.write_msr(APIC_BASE, BASE | BSP | EN | EXTD)
    assert device.write_msr(0x80F, 0x1FF)  # SVR: software-enabled
    return device


def test_x2apic_registers_are_msrs_and_the_page_is_not_decoded(fake_bus, x2apic):
    assert x2apic.read_msr(0x802) == 0x23  # the 32-bit x2APIC ID
    assert x2apic.read_msr(0x803) == 0x0005_0014
    assert x2apic.read_msr(0x80D) == (0x2 << 16) | 1 << 3  # LDR: cluster 2, bit 3
    assert rd(fake_bus, VERSION) == 0xFFFF_FFFF
    wr(fake_bus, TPR, 0x70)
    assert x2apic.read_msr(0x808) == 0  # the MMIO write went nowhere
    assert x2apic.write_msr(0x808, 0x30) and x2apic.read_msr(0x808) == 0x30 and x2apic.task_priority() == 0x30


def test_x2apic_refuses_what_a_processor_refuses(x2apic):
    assert x2apic.read_msr(0x80B) is None and x2apic.read_msr(0x83F) is None  # write-only: EOI, SELF IPI
    for index in (0x809, 0x80C, 0x80E, 0x831, 0x82F):  # APR, RRD, DFR, ICR high, CMCI: not in x2APIC mode
        assert x2apic.read_msr(index) is None and not x2apic.write_msr(index, 0)
    assert not x2apic.write_msr(0x802, 5) and not x2apic.write_msr(0x803, 0)  # read-only
    assert not x2apic.write_msr(0x80B, 1) and not x2apic.write_msr(0x828, 1)  # EOI, ESR: 0 only
    assert not x2apic.write_msr(0x808, 1 << 32) and not x2apic.write_msr(0x808, 0x100)  # reserved bits
    assert not x2apic.write_msr(0x83F, 0x100)  # SELF IPI bits 31:8
    assert not x2apic.write_msr(0x830, 1 << 13 | 0x40)  # ICR reserved bit 13


def test_x2apic_self_ipi_and_icr_with_a_32_bit_destination(fake_bus, x2apic):
    assert x2apic.write_msr(0x83F, 0x41)
    assert fake_bus.acknowledge() == 0x41
    assert x2apic.write_msr(0x80B, 0)  # EOI
    assert x2apic.write_msr(0x830, 0x23 << 32 | 0x42)  # physical, to our 32-bit ID
    assert fake_bus.acknowledge() == 0x42
    assert x2apic.write_msr(0x80B, 0)
    assert x2apic.write_msr(0x830, 0x24 << 32 | 0x43)  # another CPU: not here
    assert not fake_bus.intr()
    assert x2apic.write_msr(0x830, (0x2 << 16 | 1 << 3) << 32 | LOGICAL | 0x44)  # logical: our cluster and bit
    assert fake_bus.acknowledge() == 0x44
    assert x2apic.read_msr(0x830) == (0x2 << 16 | 1 << 3) << 32 | LOGICAL | 0x44


# --- the TSC-deadline timer (SDM 11.5.4.1); on the fake bus the TSC counts machine time at 1 GHz --

DEADLINE_MODE = 2 << 17


def test_tsc_deadline_mode_fires_when_the_tsc_reaches_the_deadline_and_clears_it(fake_bus, apic):
    wr(fake_bus, LVT_TIMER, DEADLINE_MODE | 0x41)
    assert rd(fake_bus, LVT_TIMER) & (3 << 17) == DEADLINE_MODE
    fake_bus.step(1000)
    assert apic.ctx.tsc.read() == 1000
    assert apic.write_msr(TSC_DEADLINE, 1500)
    assert apic.read_msr(TSC_DEADLINE) == 1500
    fake_bus.step(499)
    assert not fake_bus.intr()
    fake_bus.step(1)
    assert fake_bus.acknowledge() == 0x41
    assert apic.read_msr(TSC_DEADLINE) == 0  # fired: reads 0 until the next deadline
    wr(fake_bus, EOI, 0)
    fake_bus.step(10_000)
    assert not fake_bus.intr()  # one-shot: nothing more


def test_a_past_deadline_fires_at_once_and_zero_disarms(fake_bus, apic):
    wr(fake_bus, LVT_TIMER, DEADLINE_MODE | 0x42)
    fake_bus.step(5000)
    apic.write_msr(TSC_DEADLINE, 10)
    fake_bus.step(0)
    assert fake_bus.acknowledge() == 0x42
    wr(fake_bus, EOI, 0)
    apic.write_msr(TSC_DEADLINE, 6000)
    apic.write_msr(TSC_DEADLINE, 0)
    fake_bus.step(10_000)
    assert not fake_bus.intr() and apic.read_msr(TSC_DEADLINE) == 0


def test_entering_or_leaving_deadline_mode_disarms_and_the_counts_do_not_apply(fake_bus, apic):
    wr(fake_bus, DIVIDE, 0xB)
    wr(fake_bus, LVT_TIMER, DEADLINE_MODE | 0x43)
    wr(fake_bus, INITIAL, 100)  # ignored in TSC-deadline mode
    assert rd(fake_bus, CURRENT) == 0
    apic.write_msr(TSC_DEADLINE, 1000)
    wr(fake_bus, LVT_TIMER, 0x43)  # one-shot: the armed deadline is dropped
    assert apic.read_msr(TSC_DEADLINE) == 0
    fake_bus.step(5000)
    assert not fake_bus.intr()
    assert apic.write_msr(TSC_DEADLINE, 9000)  # taken, ignored: reads 0, never fires
    assert apic.read_msr(TSC_DEADLINE) == 0
    fake_bus.step(10_000)
    assert not fake_bus.intr()
    wr(fake_bus, INITIAL, 100)  # one-shot mode counts again
    fake_bus.step(100)
    assert fake_bus.acknowledge() == 0x43


def test_a_masked_deadline_timer_still_clears_the_msr_but_does_not_interrupt(fake_bus, apic):
    wr(fake_bus, LVT_TIMER, MASKED | DEADLINE_MODE | 0x44)
    apic.write_msr(TSC_DEADLINE, 100)
    fake_bus.step(100)
    assert not fake_bus.intr() and apic.read_msr(TSC_DEADLINE) == 0
