"""devices/pic.py: the PC's cascaded 8259A pair (Intel 8259A datasheet) on the fake bus."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcore.device import PropertyError
from vmcore.irq import InterruptController
from vmcore.plugins import DeviceRegistry
from vmcore.testing import FakeBus

MASTER_CMD, MASTER_DATA = 0x20, 0x21
SLAVE_CMD, SLAVE_DATA = 0xA0, 0xA1
ELCR_MASTER, ELCR_SLAVE = 0x4D0, 0x4D1

OCW3_READ_IRR = 0x0A
OCW3_READ_ISR = 0x0B
OCW3_POLL = 0x0C
EOI = 0x20


def bios_init(bus, master_base=0x08, slave_base=0x70, icw4=0x01):
    """Program both chips as a PC BIOS does: edge, cascade, ICW4 needed, 8086 mode."""
    bus.outb(MASTER_CMD, 0x11)
    bus.outb(MASTER_DATA, master_base)
    bus.outb(MASTER_DATA, 0x04)  # a slave on IR2
    bus.outb(MASTER_DATA, icw4)
    bus.outb(SLAVE_CMD, 0x11)
    bus.outb(SLAVE_DATA, slave_base)
    bus.outb(SLAVE_DATA, 0x02)  # slave ID 2
    bus.outb(SLAVE_DATA, icw4)


def irr(bus, cmd=MASTER_CMD):
    bus.outb(cmd, OCW3_READ_IRR)
    return bus.inb(cmd)


def isr(bus, cmd=MASTER_CMD):
    bus.outb(cmd, OCW3_READ_ISR)
    return bus.inb(cmd)


@pytest.fixture
def pic(fake_bus):
    device = fake_bus.attach("i8259")
    bios_init(fake_bus)
    return device


def test_is_an_interrupt_controller_the_fake_bus_routes_lines_to(fake_bus):
    pic = fake_bus.attach("i8259")
    assert isinstance(pic, InterruptController)
    assert fake_bus.controller is pic


def test_power_on_state_is_unprogrammed_with_vector_base_zero(fake_bus):
    fake_bus.attach("i8259")
    assert fake_bus.inb(MASTER_DATA) == 0 and fake_bus.inb(SLAVE_DATA) == 0  # IMR
    assert irr(fake_bus) == 0 and isr(fake_bus) == 0
    assert not fake_bus.intr()
    fake_bus.irq(3).pulse()
    assert fake_bus.acknowledge() == 0x03  # no ICW2 yet: base 0
    fake_bus.irq(11).pulse()  # the slave already answers for master IR2, as the board is wired
    assert fake_bus.acknowledge() == 0x03
    assert isr(fake_bus, SLAVE_CMD) == 0x08


def test_icw2_to_icw4_go_to_the_odd_port_before_ocw1(fake_bus):
    fake_bus.attach("i8259")
    fake_bus.outb(MASTER_CMD, 0x11)
    for icw in (0x20, 0x04, 0x01):
        fake_bus.outb(MASTER_DATA, icw)
        assert fake_bus.inb(MASTER_DATA) == 0  # taken as an ICW, not as the IMR
    fake_bus.outb(MASTER_DATA, 0xFB)  # the sequence is over: this is OCW1
    assert fake_bus.inb(MASTER_DATA) == 0xFB


def test_icw1_without_ic4_skips_icw4_and_single_mode_skips_icw3(fake_bus):
    fake_bus.attach("i8259")
    fake_bus.outb(MASTER_CMD, 0x12)  # SNGL, no IC4: only ICW2 follows
    fake_bus.outb(MASTER_DATA, 0x40)
    fake_bus.outb(MASTER_DATA, 0x5A)  # already OCW1
    assert fake_bus.inb(MASTER_DATA) == 0x5A
    fake_bus.outb(SLAVE_CMD, 0x10)  # cascade, no IC4: ICW2 and ICW3 follow
    fake_bus.outb(SLAVE_DATA, 0x70)
    fake_bus.outb(SLAVE_DATA, 0x02)
    fake_bus.outb(SLAVE_DATA, 0xA5)  # already OCW1
    assert fake_bus.inb(SLAVE_DATA) == 0xA5


def test_icw1_clears_imr_isr_and_edge_latches(fake_bus, pic):
    fake_bus.outb(MASTER_DATA, 0xFF)
    fake_bus.irq(1).pulse()
    fake_bus.outb(MASTER_DATA, 0x00)
    fake_bus.acknowledge()  # IR1 in service
    fake_bus.irq(4).pulse()  # IR4 latched
    assert (isr(fake_bus), irr(fake_bus)) == (0x02, 0x10)
    bios_init(fake_bus)
    assert (isr(fake_bus), irr(fake_bus), fake_bus.inb(MASTER_DATA)) == (0, 0, 0)
    assert not fake_bus.intr()


def test_icw1_edge_sense_reset_needs_a_new_rising_edge(fake_bus, pic):
    fake_bus.irq(5).raise_()
    bios_init(fake_bus)
    assert not fake_bus.intr()
    fake_bus.irq(5).lower()
    fake_bus.irq(5).raise_()
    assert fake_bus.acknowledge() == 0x0D


def test_icw2_sets_the_vector_base_and_the_low_three_bits_are_the_ir(fake_bus):
    fake_bus.attach("i8259")
    bios_init(fake_bus, master_base=0x27, slave_base=0x41)  # T2-T0 are ignored
    fake_bus.irq(5).pulse()
    assert fake_bus.acknowledge() == 0x25
    fake_bus.outb(MASTER_CMD, EOI)
    fake_bus.irq(14).pulse()
    assert fake_bus.acknowledge() == 0x46


def test_edge_triggered_request_latches_in_irr_on_the_rising_edge(fake_bus, pic):
    fake_bus.irq(3).pulse()  # raised and lowered before the CPU looks
    assert irr(fake_bus) == 0x08
    assert fake_bus.intr()
    assert fake_bus.acknowledge() == 0x0B
    assert irr(fake_bus) == 0


def test_set_irq_high_again_is_not_a_new_edge(fake_bus, pic):
    pic.set_irq(3, True)
    assert fake_bus.acknowledge() == 0x0B
    fake_bus.outb(MASTER_CMD, EOI)
    pic.set_irq(3, True)
    assert not fake_bus.intr()


def test_edge_triggered_input_held_high_requests_only_once(fake_bus, pic):
    fake_bus.irq(3).raise_()
    assert fake_bus.acknowledge() == 0x0B
    fake_bus.outb(MASTER_CMD, EOI)
    assert irr(fake_bus) == 0
    assert not fake_bus.intr()


def test_elcr_level_triggered_irr_follows_the_line(fake_bus, pic):
    fake_bus.outb(ELCR_SLAVE, 0x08)  # IRQ 11 level-triggered
    assert fake_bus.inb(ELCR_SLAVE) == 0x08
    fake_bus.irq(11).raise_()
    assert irr(fake_bus, SLAVE_CMD) == 0x08
    fake_bus.irq(11).lower()
    assert irr(fake_bus, SLAVE_CMD) == 0


def test_elcr_level_request_withdrawn_drops_intr(fake_bus, pic):
    fake_bus.outb(ELCR_MASTER, 0x10)  # IRQ 4 level-triggered
    fake_bus.irq(4).raise_()
    assert fake_bus.intr()
    fake_bus.irq(4).lower()
    assert not fake_bus.intr()


def test_level_triggered_line_still_high_after_eoi_interrupts_again(fake_bus, pic):
    fake_bus.outb(ELCR_MASTER, 0x20)  # IRQ 5 level-triggered
    fake_bus.irq(5).raise_()
    assert fake_bus.acknowledge() == 0x0D
    assert irr(fake_bus) == 0x20  # the INTA does not clear a level request
    assert not fake_bus.intr()  # but ISR5 blocks it
    fake_bus.outb(MASTER_CMD, EOI)
    assert fake_bus.intr()
    assert fake_bus.acknowledge() == 0x0D


def test_line_made_level_triggered_drops_its_latched_edge(fake_bus, pic):
    fake_bus.irq(5).pulse()
    assert irr(fake_bus) == 0x20
    fake_bus.outb(ELCR_MASTER, 0x20)  # now IRR follows the line, which is low
    assert irr(fake_bus) == 0
    assert not fake_bus.intr()


def test_ltim_in_icw1_makes_every_input_level_triggered(fake_bus):
    fake_bus.attach("i8259", elcr_port=0)
    fake_bus.outb(MASTER_CMD, 0x19)  # ICW1 with LTIM
    for icw in (0x08, 0x04, 0x01):
        fake_bus.outb(MASTER_DATA, icw)
    fake_bus.irq(6).raise_()
    assert irr(fake_bus) == 0x40
    fake_bus.irq(6).lower()
    assert irr(fake_bus) == 0


def test_elcr_cannot_make_irq_0_1_2_8_13_level_triggered(fake_bus, pic):
    fake_bus.outb(ELCR_MASTER, 0xFF)
    fake_bus.outb(ELCR_SLAVE, 0xFF)
    assert (fake_bus.inb(ELCR_MASTER), fake_bus.inb(ELCR_SLAVE)) == (0xF8, 0xDE)


def test_imr_masks_a_request_until_unmasked(fake_bus, pic):
    fake_bus.outb(MASTER_DATA, 0x10)
    fake_bus.irq(4).pulse()
    assert irr(fake_bus) == 0x10  # the request is kept
    assert not fake_bus.intr()
    fake_bus.outb(MASTER_DATA, 0x00)
    assert fake_bus.intr()
    assert fake_bus.acknowledge() == 0x0C


def test_lower_numbered_line_is_acknowledged_first(fake_bus, pic):
    fake_bus.outb(MASTER_DATA, 0xFF)
    fake_bus.irq(6).pulse()
    fake_bus.irq(3).pulse()
    fake_bus.outb(MASTER_DATA, 0x00)
    assert fake_bus.acknowledge() == 0x0B
    fake_bus.outb(MASTER_CMD, EOI)
    assert fake_bus.acknowledge() == 0x0E


def test_in_service_line_blocks_equal_and_lower_priority_until_eoi(fake_bus, pic):
    fake_bus.irq(3).pulse()
    assert fake_bus.acknowledge() == 0x0B
    fake_bus.irq(3).pulse()
    fake_bus.irq(5).pulse()
    assert not fake_bus.intr()
    fake_bus.irq(1).pulse()  # higher priority nests
    assert fake_bus.acknowledge() == 0x09
    assert isr(fake_bus) == 0x0A
    fake_bus.outb(MASTER_CMD, EOI)  # non-specific: the highest priority in service, IR1
    assert isr(fake_bus) == 0x08
    assert not fake_bus.intr()
    fake_bus.outb(MASTER_CMD, EOI)
    assert fake_bus.acknowledge() == 0x0B


def test_specific_eoi_clears_only_the_named_isr_bit(fake_bus, pic):
    for line in (4, 1):
        fake_bus.irq(line).pulse()
        fake_bus.acknowledge()
    assert isr(fake_bus) == 0x12
    fake_bus.outb(MASTER_CMD, 0x60 | 4)
    assert isr(fake_bus) == 0x02


def test_auto_eoi_leaves_no_isr_bit(fake_bus):
    fake_bus.attach("i8259")
    bios_init(fake_bus, icw4=0x03)  # 8086 mode, AEOI
    fake_bus.irq(3).pulse()
    assert fake_bus.acknowledge() == 0x0B
    assert isr(fake_bus) == 0
    fake_bus.irq(4).pulse()  # nothing in service: a lower priority goes through without an EOI
    assert fake_bus.acknowledge() == 0x0C


def test_slave_line_8_is_delivered_through_master_ir2_with_both_isrs_set(fake_bus, pic):
    fake_bus.irq(8).pulse()
    assert irr(fake_bus) == 0x04  # the slave's INT is on master IR2
    assert fake_bus.intr()
    assert fake_bus.acknowledge() == 0x70
    assert isr(fake_bus) == 0x04
    assert isr(fake_bus, SLAVE_CMD) == 0x01
    fake_bus.outb(SLAVE_CMD, EOI)
    fake_bus.outb(MASTER_CMD, EOI)
    assert (isr(fake_bus), isr(fake_bus, SLAVE_CMD)) == (0, 0)


def test_slave_imr_masks_its_lines(fake_bus, pic):
    fake_bus.outb(SLAVE_DATA, 0x10)
    fake_bus.irq(12).pulse()
    assert irr(fake_bus, SLAVE_CMD) == 0x10
    assert irr(fake_bus) == 0  # the slave's INT never rose
    assert not fake_bus.intr()
    fake_bus.outb(SLAVE_DATA, 0x00)
    assert fake_bus.acknowledge() == 0x74


def test_master_imr_bit_2_masks_every_slave_line(fake_bus, pic):
    fake_bus.outb(MASTER_DATA, 0x04)
    fake_bus.irq(9).pulse()
    assert not fake_bus.intr()
    fake_bus.outb(MASTER_DATA, 0x00)
    assert fake_bus.acknowledge() == 0x71


def test_master_line_wins_over_slave_lines_below_ir2_priority(fake_bus, pic):
    fake_bus.outb(MASTER_DATA, 0xFF)
    fake_bus.irq(9).pulse()
    fake_bus.irq(1).pulse()
    fake_bus.irq(3).pulse()
    fake_bus.outb(MASTER_DATA, 0x00)
    assert fake_bus.acknowledge() == 0x09  # IR1 > IR2 (the slave) > IR3
    fake_bus.outb(MASTER_CMD, EOI)
    assert fake_bus.acknowledge() == 0x71
    fake_bus.outb(SLAVE_CMD, EOI)
    fake_bus.outb(MASTER_CMD, EOI)
    assert fake_bus.acknowledge() == 0x0B


def test_spurious_irq7_when_a_level_request_drops_before_inta(fake_bus, pic):
    fake_bus.outb(ELCR_MASTER, 0x08)
    fake_bus.irq(3).raise_()
    assert fake_bus.intr()
    fake_bus.irq(3).lower()  # the CPU has already seen INTR
    assert fake_bus.acknowledge() == 0x0F
    assert isr(fake_bus) == 0  # no ISR bit for a spurious IRQ 7


def test_spurious_irq15_sets_master_isr2_but_no_slave_isr_bit(fake_bus, pic):
    fake_bus.outb(ELCR_SLAVE, 0x08)
    fake_bus.irq(11).raise_()
    fake_bus.irq(11).lower()  # the master latched the slave's INT on its edge-triggered IR2
    assert fake_bus.acknowledge() == 0x77
    assert isr(fake_bus) == 0x04
    assert isr(fake_bus, SLAVE_CMD) == 0


def test_ocw3_selects_irr_or_isr_for_command_port_reads(fake_bus, pic):
    fake_bus.irq(0).pulse()
    fake_bus.acknowledge()
    fake_bus.irq(6).pulse()
    fake_bus.outb(MASTER_CMD, OCW3_READ_ISR)
    assert [fake_bus.inb(MASTER_CMD) for _ in range(2)] == [0x01, 0x01]  # the choice sticks
    fake_bus.outb(MASTER_CMD, OCW3_READ_IRR)
    assert fake_bus.inb(MASTER_CMD) == 0x40
    fake_bus.outb(MASTER_CMD, 0x08)  # RR=0: no change
    assert fake_bus.inb(MASTER_CMD) == 0x40


def test_poll_command_reads_the_highest_request_as_an_acknowledge(fake_bus, pic):
    fake_bus.irq(5).pulse()
    assert fake_bus.intr()
    fake_bus.outb(MASTER_CMD, OCW3_POLL)
    assert fake_bus.inb(MASTER_CMD) == 0x85
    assert not fake_bus.intr()  # taken by the poll: no INTA will follow
    assert isr(fake_bus) == 0x20
    fake_bus.outb(MASTER_CMD, OCW3_POLL)
    assert fake_bus.inb(MASTER_CMD) == 0x00  # nothing requested


def test_rotate_on_non_specific_eoi_makes_the_serviced_line_lowest(fake_bus, pic):
    fake_bus.outb(MASTER_DATA, 0xFF)
    fake_bus.irq(1).pulse()
    fake_bus.irq(4).pulse()
    fake_bus.outb(MASTER_DATA, 0x00)
    assert fake_bus.acknowledge() == 0x09
    fake_bus.outb(MASTER_CMD, 0xA0)  # IR1 lowest: IR2 is now highest
    fake_bus.irq(1).pulse()
    assert fake_bus.acknowledge() == 0x0C


def test_rotate_in_auto_eoi_mode_makes_each_acknowledged_line_lowest(fake_bus):
    fake_bus.attach("i8259")
    bios_init(fake_bus, icw4=0x03)  # AEOI
    fake_bus.outb(MASTER_CMD, 0x80)  # OCW2: set rotate in automatic EOI mode
    fake_bus.irq(1).pulse()
    assert fake_bus.acknowledge() == 0x09
    fake_bus.outb(MASTER_DATA, 0xFF)
    fake_bus.irq(1).pulse()
    fake_bus.irq(4).pulse()
    fake_bus.outb(MASTER_DATA, 0x00)
    assert fake_bus.acknowledge() == 0x0C
    fake_bus.outb(MASTER_CMD, 0x00)  # clear rotate in AEOI: the order stays as it was left
    assert fake_bus.acknowledge() == 0x09


def test_set_priority_command_names_the_lowest_priority_line(fake_bus, pic):
    fake_bus.outb(MASTER_CMD, 0xC0 | 4)  # IR5 highest ... IR4 lowest
    fake_bus.outb(MASTER_DATA, 0xFF)
    fake_bus.irq(3).pulse()
    fake_bus.irq(6).pulse()
    fake_bus.outb(MASTER_DATA, 0x00)
    assert fake_bus.acknowledge() == 0x0E


def test_special_mask_mode_lets_lower_priority_through_a_masked_in_service_level(fake_bus, pic):
    fake_bus.irq(3).pulse()
    fake_bus.acknowledge()
    fake_bus.outb(MASTER_CMD, 0x68)  # OCW3: set special mask mode
    fake_bus.outb(MASTER_DATA, 0x08)  # mask the level in service
    fake_bus.irq(5).pulse()
    assert fake_bus.acknowledge() == 0x0D


def test_special_fully_nested_mode_lets_a_higher_slave_request_nest(fake_bus):
    fake_bus.attach("i8259")
    bios_init(fake_bus, icw4=0x11)  # SFNM on both (used by the master)
    fake_bus.irq(12).pulse()
    assert fake_bus.acknowledge() == 0x74
    fake_bus.irq(9).pulse()
    assert fake_bus.acknowledge() == 0x71  # master ISR2 does not block it


def test_intr_changed_is_called_on_output_changes_only(fake_bus, pic):
    seen = []
    pic.intr_changed = seen.append
    fake_bus.irq(4).pulse()
    fake_bus.irq(6).pulse()  # INTR already high
    assert seen == [True]
    fake_bus.outb(MASTER_DATA, 0x00)  # an IMR write that changes nothing
    assert seen == [True]
    fake_bus.acknowledge()  # IR4 in service blocks IR6
    assert seen == [True, False]
    fake_bus.outb(MASTER_DATA, 0x40)
    fake_bus.outb(MASTER_CMD, EOI)
    assert seen == [True, False]
    fake_bus.outb(MASTER_DATA, 0x00)  # unmasking IR6
    assert seen == [True, False, True]
    assert pic.pending()


def test_irq_line_2_and_lines_above_15_are_ignored(fake_bus, pic):
    fake_bus.irq(2).pulse()
    fake_bus.irq(16).pulse()
    assert irr(fake_bus) == 0 and irr(fake_bus, SLAVE_CMD) == 0
    assert not fake_bus.intr()


def test_port_properties_move_the_chips_and_elcr_port_0_leaves_it_out(fake_bus):
    fake_bus.attach("i8259", master_port=0x120, slave_port=0x1A0, elcr_port=0)
    fake_bus.outb(0x121, 0x5A)
    fake_bus.outb(0x1A1, 0xA5)
    assert (fake_bus.inb(0x121), fake_bus.inb(0x1A1)) == (0x5A, 0xA5)
    assert [(region.base, region.name) for region, _ in fake_bus.pio.claims()] == [(0x120, "master"), (0x1A0, "slave")]


def test_overlapping_port_properties_are_rejected(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("i8259", slave_port=0x21)
    assert info.value.key == "slave_port"


_operations = st.lists(
    st.one_of(
        st.tuples(st.just("line"), st.integers(0, 15), st.booleans()),
        st.tuples(st.just("out"), st.sampled_from([MASTER_CMD, SLAVE_CMD]),
                  # EOIs, rotations, OCW3 reads/poll/special mask; sometimes any byte (ICW1 too)
                  st.sampled_from([0x20, 0x62, 0xA0, 0xE5, 0xC3, 0x80, 0x00, 0x0A, 0x0B, 0x0C, 0x68, 0x48])
                  | st.integers(0, 0xFF)),
        st.tuples(st.just("out"), st.sampled_from([MASTER_DATA, SLAVE_DATA, ELCR_MASTER, ELCR_SLAVE]),
                  st.integers(0, 0xFF)),
        st.tuples(st.just("in"), st.sampled_from([MASTER_CMD, SLAVE_CMD]), st.just(0)),
        st.tuples(st.just("inta"), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(ops=_operations)
def test_pending_and_intr_changed_follow_the_int_pin_for_any_guest_and_lines(ops):
    bus = FakeBus(DeviceRegistry.default())
    try:
        pic = bus.attach("i8259")
        seen = []
        pic.intr_changed = seen.append
        levels = [False]
        bios_init(bus)
        for kind, where, value in ops:
            if kind == "line":
                bus.irq(where).set_level(value)
            elif kind == "out":
                bus.outb(where, value)
            elif kind == "in":
                bus.inb(where)
            else:
                vector = bus.acknowledge()
                assert 0 <= vector <= 0xFF
            # Every path has already propagated its change: the slave's INT is on master IR2,
            # and settling again changes nothing.
            assert bool(pic.master.pins & 0x04) == (pic.slave.request() is not None)
            calls = len(seen)
            pic._update()
            assert len(seen) == calls
            intr = pic.master.request() is not None  # the master's INT pin
            assert pic.pending() == intr
            if intr != levels[-1]:
                levels.append(intr)
        assert [False] + seen == levels  # one call per change, none without one
    finally:
        bus.close()
