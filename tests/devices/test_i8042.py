"""devices/i8042.py: the PC keyboard controller, its keyboard and port 0x92 on the fake bus."""

import pytest

from vmcore.device import PropertyError

DATA, COMMAND, PORT92 = 0x60, 0x64, 0x92
KBD_IRQ, AUX_IRQ = 1, 12

OBF, IBF, SYS, A2, UNINHIBITED, AUX_OBF = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACK, BAT_OK, RESEND = 0xFA, 0xAA, 0xFE


def command(bus, value: int, data: int | None = None) -> None:
    bus.outb(COMMAND, value)
    if data is not None:
        bus.outb(DATA, data)


def drain(bus) -> list[int]:
    """Every byte waiting in the output buffer, read as a driver polls: status, then data."""
    out = []
    while bus.inb(COMMAND) & OBF:
        out.append(bus.inb(DATA))
    return out


def kbd_edges(bus) -> list[bool]:
    return [level for _, n, level in bus.irq_events if n == KBD_IRQ]


@pytest.fixture
def kbc(fake_bus):
    return fake_bus.attach("i8042")


# --- registration and ports -------------------------------------------------------------------


def test_type_is_registered_with_its_properties(device_registry):
    dtype = device_registry.get("i8042")
    assert [p.name for p in dtype.properties] == ["port", "irq", "aux_irq", "port92"]
    assert [p.default_text() for p in dtype.properties] == ["0x60", "1", "12", "0x92"]


def test_claims_0x60_0x64_and_0x92_but_leaves_0x61_to_0x63_free(fake_bus, kbc):
    assert all(fake_bus.pio.find(p) is not None for p in (DATA, COMMAND, PORT92))
    assert all(fake_bus.pio.find(p) is None for p in (0x61, 0x62, 0x63, 0x65))


def test_port92_0_leaves_it_unclaimed(fake_bus):
    fake_bus.attach("i8042", port92=0)
    assert fake_bus.pio.find(PORT92) is None


def test_port_must_leave_room_for_the_command_port(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("i8042", port=0xFFFC)
    assert info.value.key == "port"


# --- status register ------------------------------------------------------------------------------


def test_status_at_power_on_has_empty_buffers_and_no_sys_flag(fake_bus, kbc):
    assert fake_bus.inb(COMMAND) == UNINHIBITED


def test_i8042_self_test_returns_0x55(fake_bus, kbc):
    command(fake_bus, 0xAA)
    assert fake_bus.inb(DATA) == 0x55


def test_self_test_sets_the_sys_flag(fake_bus, kbc):
    command(fake_bus, 0xAA)
    drain(fake_bus)
    assert fake_bus.inb(COMMAND) & SYS


def test_status_obf_is_set_while_a_byte_waits_and_cleared_by_reading_it(fake_bus, kbc):
    command(fake_bus, 0xAB)
    assert fake_bus.inb(COMMAND) & OBF
    assert fake_bus.inb(DATA) == 0x00
    assert not fake_bus.inb(COMMAND) & OBF


def test_ibf_is_never_set_because_writes_are_taken_at_once(fake_bus, kbc):
    fake_bus.outb(DATA, 0xF4)
    assert not fake_bus.inb(COMMAND) & IBF


def test_status_a2_tells_whether_the_last_write_was_a_command(fake_bus, kbc):
    command(fake_bus, 0xAE)
    assert fake_bus.inb(COMMAND) & A2
    fake_bus.outb(DATA, 0xEE)
    assert not fake_bus.inb(COMMAND) & A2


def test_reading_an_empty_output_buffer_returns_the_last_byte(fake_bus, kbc):
    command(fake_bus, 0xAA)
    assert fake_bus.inb(DATA) == 0x55
    assert fake_bus.inb(DATA) == 0x55


# --- controller commands ------------------------------------------------------------------------


def test_interface_tests_return_0x00(fake_bus, kbc):
    command(fake_bus, 0xAB)
    command(fake_bus, 0xA9)
    assert drain(fake_bus) == [0x00, 0x00]


def test_command_byte_round_trip(fake_bus, kbc):
    command(fake_bus, 0x20)
    assert drain(fake_bus) == [0x01]  # power-on: keyboard interrupt enabled
    command(fake_bus, 0x60, 0x65)
    command(fake_bus, 0x20)
    assert drain(fake_bus) == [0x65]


def test_writing_command_byte_bit2_sets_the_sys_flag(fake_bus, kbc):
    command(fake_bus, 0x60, 0x04)
    assert fake_bus.inb(COMMAND) & SYS
    command(fake_bus, 0x60, 0x00)
    assert not fake_bus.inb(COMMAND) & SYS


def test_internal_ram_bytes_round_trip(fake_bus, kbc):
    command(fake_bus, 0x7F, 0x5A)
    command(fake_bus, 0x3F)
    assert drain(fake_bus) == [0x5A]


def test_disable_and_enable_keyboard_set_and_clear_command_byte_bit4(fake_bus, kbc):
    command(fake_bus, 0xAD)
    command(fake_bus, 0x20)
    assert drain(fake_bus) == [0x11]
    command(fake_bus, 0xAE)
    command(fake_bus, 0x20)
    assert drain(fake_bus) == [0x01]


def test_disabled_keyboard_bytes_are_held_until_it_is_enabled(fake_bus, kbc):
    command(fake_bus, 0xAD)
    kbc.send_key(0x1E)
    assert drain(fake_bus) == []
    command(fake_bus, 0xAE)
    assert drain(fake_bus) == [0x1E]


def test_aux_disable_and_enable_set_and_clear_command_byte_bit5(fake_bus, kbc):
    command(fake_bus, 0xA7)
    command(fake_bus, 0x20)
    assert drain(fake_bus) == [0x21]
    command(fake_bus, 0xA8)
    command(fake_bus, 0x20)
    assert drain(fake_bus) == [0x01]


def test_d2_and_d3_put_the_next_byte_in_the_output_buffer_as_keyboard_or_aux_data(fake_bus, kbc):
    command(fake_bus, 0xD2, 0x42)
    assert fake_bus.inb(COMMAND) & (OBF | AUX_OBF) == OBF
    assert fake_bus.inb(DATA) == 0x42
    command(fake_bus, 0xD3, 0x5A)
    assert fake_bus.inb(COMMAND) & (OBF | AUX_OBF) == OBF | AUX_OBF
    assert fake_bus.inb(DATA) == 0x5A


def test_aux_bytes_raise_the_aux_irq_when_command_byte_bit1_is_set(fake_bus, kbc):
    command(fake_bus, 0x60, 0x02)
    command(fake_bus, 0xD3, 0x5A)
    assert fake_bus.irq_level(AUX_IRQ) and not fake_bus.irq_level(KBD_IRQ)
    fake_bus.inb(DATA)
    assert not fake_bus.irq_level(AUX_IRQ)


def test_d4_byte_for_the_absent_aux_device_is_dropped(fake_bus, kbc):
    command(fake_bus, 0xD4, 0xFF)
    assert drain(fake_bus) == []  # not taken as a keyboard reset either


def test_a_new_command_abandons_one_waiting_for_its_data_byte(fake_bus, kbc):
    fake_bus.outb(COMMAND, 0x60)
    command(fake_bus, 0xAE)
    fake_bus.outb(DATA, 0xEE)  # now a keyboard echo, not a command byte
    assert drain(fake_bus) == [0xEE]
    command(fake_bus, 0x20)
    assert drain(fake_bus) == [0x01]


def test_controller_replies_come_before_queued_keyboard_bytes(fake_bus, kbc):
    kbc.send_key(0x1E)
    kbc.send_key(0x9E)
    command(fake_bus, 0x20)
    assert drain(fake_bus) == [0x1E, 0x01, 0x9E]  # 0x1E was already in the buffer


# --- interrupts -----------------------------------------------------------------------------------


def test_irq1_raised_when_output_buffer_full_and_command_byte_bit0_set(fake_bus, kbc):
    kbc.send_key(0x1C)
    assert fake_bus.irq_level(KBD_IRQ)
    assert fake_bus.inb(DATA) == 0x1C
    assert not fake_bus.irq_level(KBD_IRQ)


def test_no_irq1_when_command_byte_bit0_is_clear(fake_bus, kbc):
    command(fake_bus, 0x60, 0x00)
    kbc.send_key(0x1C)
    assert fake_bus.inb(COMMAND) & OBF
    assert kbd_edges(fake_bus) == []


def test_setting_command_byte_bit0_with_a_byte_waiting_raises_irq1(fake_bus, kbc):
    command(fake_bus, 0x60, 0x00)
    kbc.send_key(0x1C)
    command(fake_bus, 0x60, 0x01)
    assert fake_bus.irq_level(KBD_IRQ)


def test_each_queued_byte_gives_a_new_irq1_edge(fake_bus, kbc):
    for code in (0x2A, 0x1E, 0x9E):
        kbc.send_key(code)
    assert [fake_bus.inb(DATA) for _ in range(3)] == [0x2A, 0x1E, 0x9E]
    assert kbd_edges(fake_bus) == [True, False, True, False, True, False]


def test_controller_replies_raise_irq1_too(fake_bus, kbc):
    command(fake_bus, 0xAA)
    assert fake_bus.irq_level(KBD_IRQ)


def test_irq_property_moves_the_keyboard_line(fake_bus):
    kbc = fake_bus.attach("i8042", irq=9)
    kbc.send_key(0x1C)
    assert fake_bus.irq_level(9) and not fake_bus.irq_level(KBD_IRQ)


# --- the keyboard ------------------------------------------------------------------------------


def test_keyboard_reset_answers_ack_then_self_test_passed(fake_bus, kbc):
    kbc.send_key(0x1E)
    fake_bus.inb(DATA)
    kbc.send_key(0x9E)  # in the output buffer
    kbc.send_key(0x1F)  # still in the keyboard: the reset discards it
    fake_bus.outb(DATA, 0xFF)
    assert drain(fake_bus) == [0x9E, ACK, BAT_OK]


@pytest.mark.parametrize("code", [0xF4, 0xF5, 0xF6])
def test_enable_disable_and_defaults_answer_ack(fake_bus, kbc, code):
    fake_bus.outb(DATA, code)
    assert drain(fake_bus) == [ACK]


def test_disabled_scanning_ignores_keys_until_enabled(fake_bus, kbc):
    fake_bus.outb(DATA, 0xF5)
    drain(fake_bus)
    kbc.send_key(0x1E)
    assert drain(fake_bus) == []
    fake_bus.outb(DATA, 0xF4)
    kbc.send_key(0x1F)
    assert drain(fake_bus) == [ACK, 0x1F]


def test_keyboard_echo(fake_bus, kbc):
    fake_bus.outb(DATA, 0xEE)
    assert drain(fake_bus) == [0xEE]


def test_keyboard_identify_answers_mf2(fake_bus, kbc):
    fake_bus.outb(DATA, 0xF2)
    assert drain(fake_bus) == [ACK, 0xAB, 0x83]


def test_unknown_keyboard_command_answers_resend(fake_bus, kbc):
    fake_bus.outb(DATA, 0x01)
    assert drain(fake_bus) == [RESEND]


def test_set_leds_acks_the_command_and_its_parameter(fake_bus, kbc):
    fake_bus.outb(DATA, 0xED)
    fake_bus.outb(DATA, 0x07)  # a parameter, not a command: no resend
    assert drain(fake_bus) == [ACK, ACK]
    assert kbc.leds == 0x07


def test_scancode_set_0_reports_the_current_set(fake_bus, kbc):
    fake_bus.outb(DATA, 0xF0)
    fake_bus.outb(DATA, 0x00)
    assert drain(fake_bus) == [ACK, ACK, 0x02]


def test_resend_repeats_the_last_keyboard_byte(fake_bus, kbc):
    fake_bus.outb(DATA, 0xF2)
    drain(fake_bus)
    fake_bus.outb(DATA, 0xFE)
    assert drain(fake_bus) == [0x83]


def test_keyboard_buffer_holds_16_bytes(fake_bus, kbc):
    for code in range(20):
        kbc.send_key(code)
    assert drain(fake_bus) == list(range(17))  # the output buffer plus 16 in the keyboard


def test_send_key_rejects_values_outside_a_byte(kbc):
    with pytest.raises(ValueError):
        kbc.send_key(0x100)


# --- output port, A20 and reset -----------------------------------------------------------------


def test_read_output_port_has_reset_line_inactive_and_a20_on(fake_bus, kbc):
    command(fake_bus, 0xD0)
    assert drain(fake_bus) == [0x03]


def test_write_output_port_stores_a20(fake_bus, kbc):
    command(fake_bus, 0xD1, 0x01)
    command(fake_bus, 0xD0)
    assert drain(fake_bus) == [0x01]
    assert fake_bus.exit_status is None


def test_write_output_port_clearing_bit0_requests_reset(fake_bus, kbc):
    command(fake_bus, 0xD1, 0x02)
    assert (fake_bus.exit_status, fake_bus.exit_kind) == (0, "reset")


def test_fe_command_requests_reset(fake_bus, kbc):
    command(fake_bus, 0xFE)
    assert fake_bus.exit_status == 0
    assert fake_bus.exit_kind == "reset" and "0xfe" in fake_bus.exit_reason


@pytest.mark.parametrize("code", [0xF0, 0xFA, 0xFC])
def test_any_pulse_command_with_bit0_clear_requests_reset(fake_bus, kbc, code):
    command(fake_bus, code)  # bits 0-3 are a mask: a clear bit pulses that output-port line
    assert fake_bus.exit_status == 0


@pytest.mark.parametrize("code", [0xFF, 0xF1, 0xFD])
def test_pulse_commands_with_bit0_set_leave_the_reset_line_alone(fake_bus, kbc, code):
    command(fake_bus, code)
    assert fake_bus.exit_status is None


def test_port92_fast_reset(fake_bus, kbc):
    fake_bus.outb(PORT92, 0x02)
    assert fake_bus.exit_status is None
    fake_bus.outb(PORT92, 0x03)
    assert fake_bus.exit_status == 0
    assert fake_bus.exit_kind == "reset" and "0x92" in fake_bus.exit_reason


def test_port92_a20_bit_is_stored_and_reads_back(fake_bus, kbc):
    assert fake_bus.inb(PORT92) == 0x02  # on: vmcore never masks A20
    fake_bus.outb(PORT92, 0x00)
    assert fake_bus.inb(PORT92) == 0x00
    fake_bus.outb(PORT92, 0x02)
    assert fake_bus.inb(PORT92) == 0x02


def test_reset_restores_power_on_state(fake_bus, kbc):
    command(fake_bus, 0x60, 0x74)
    command(fake_bus, 0xAA)
    kbc.send_key(0x1E)
    fake_bus.outb(PORT92, 0x00)
    kbc.reset()
    assert fake_bus.inb(COMMAND) == UNINHIBITED
    assert not fake_bus.irq_level(KBD_IRQ)
    assert fake_bus.inb(PORT92) == 0x02
    command(fake_bus, 0x20)
    assert drain(fake_bus) == [0x01]
