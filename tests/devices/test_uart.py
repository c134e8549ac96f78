"""devices/uart.py: the NS16550A registers on the fake bus, one test per datasheet behaviour."""

import pytest

from vmcore_devices.uart import Uart16550
from vmcore.device import PropertyError

BASE = 0x3F8
IRQ = 4
RBR = THR = DLL = BASE + 0
IER = DLM = BASE + 1
IIR = FCR = BASE + 2
LCR = BASE + 3
MCR = BASE + 4
LSR = BASE + 5
MSR = BASE + 6
SCR = BASE + 7

DLAB = 0x80
OUT2 = 0x08
LOOP = 0x10
DR, OE, THRE, TEMT = 0x01, 0x02, 0x20, 0x40
NO_INTERRUPT, IIR_MODEM, IIR_THRE, IIR_RX, IIR_LINE, IIR_TIMEOUT = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
FIFO_BITS = 0xC0


@pytest.fixture
def uart(fake_bus):
    return fake_bus.attach("uart16550", backend="memory")


def read_all(fake_bus):
    """Read RBR while LSR says data is ready."""
    data = bytearray()
    while fake_bus.inb(LSR) & DR:
        data.append(fake_bus.inb(RBR))
    return bytes(data)


def fifo_on(fake_bus, trigger_bits=0):
    fake_bus.outb(FCR, 0x01 | trigger_bits << 6)


# --- identity and reset ----------------------------------------------------------------


def test_type_is_found_through_the_vmcore_entry_point(device_registry):
    dtype = device_registry.get("uart16550")
    assert dtype.cls is Uart16550
    assert dtype.module == "vmcore_devices.uart"
    assert [p.name for p in dtype.properties] == [
        "port", "irq", "preset", "backend", "path", "input", "socket_mode"]


def test_registers_read_their_datasheet_reset_values(fake_bus, uart):
    values = [fake_bus.inb(BASE + offset) for offset in (1, 2, 3, 4, 5, 6, 7)]
    # IER, IIR, LCR, MCR, LSR, MSR (CTS, DSR, DCD from a ready host end), SCR.
    assert values == [0x00, 0x01, 0x00, 0x00, 0x60, 0xB0, 0x00]
    assert fake_bus.irq_events == []


def test_divisor_latch_powers_on_at_12_for_9600_baud(fake_bus, uart):
    fake_bus.outb(LCR, DLAB)
    assert (fake_bus.inb(DLL), fake_bus.inb(DLM)) == (12, 0)
    assert uart.baud == 9600


def test_reset_restores_power_on_state(fake_bus, uart):
    fake_bus.outb(LCR, DLAB)
    fake_bus.outb(DLL, 1)
    fake_bus.outb(LCR, 0x03)
    for port, value in ((IER, 0x0F), (MCR, 0x1F), (SCR, 0x55), (FCR, 0x01)):
        fake_bus.outb(port, value)
    uart.receive(b"x")
    uart.reset()
    assert [fake_bus.inb(BASE + offset) for offset in range(1, 8)] == [0x00, 0x01, 0x00, 0x00, 0x60, 0xB0, 0x00]
    assert uart.divisor == 12


# --- line control, divisor latch, scratch ------------------------------------------------


def test_dlab_maps_offsets_0_and_1_to_the_divisor_latch(fake_bus, uart):
    fake_bus.outb(LCR, DLAB | 0x03)
    fake_bus.outb(DLL, 0x01)
    fake_bus.outb(DLM, 0x02)
    assert (fake_bus.inb(DLL), fake_bus.inb(DLM)) == (0x01, 0x02)
    assert uart.divisor == 0x0201
    assert uart.output == b""  # the DLL write did not transmit
    fake_bus.outb(LCR, 0x03)
    assert fake_bus.inb(IER) == 0  # IER itself was not written
    fake_bus.outb(LCR, DLAB)
    assert (fake_bus.inb(DLL), fake_bus.inb(DLM)) == (0x01, 0x02)


def test_divisor_1_is_115200_baud(fake_bus, uart):
    fake_bus.outb(LCR, DLAB)
    fake_bus.outb(DLL, 1)
    fake_bus.outb(DLM, 0)
    assert uart.baud == 115200


def test_lcr_reads_back_what_was_written(fake_bus, uart):
    for value in (0x03, 0x1F, 0x7B, 0x83):
        fake_bus.outb(LCR, value)
        assert fake_bus.inb(LCR) == value


def test_scr_reads_back_what_was_written(fake_bus, uart):
    for value in (0x00, 0x5A, 0xA5, 0xFF):
        fake_bus.outb(SCR, value)
        assert fake_bus.inb(SCR) == value


def test_ier_and_mcr_upper_bits_read_as_zero(fake_bus, uart):
    fake_bus.outb(IER, 0xFF)
    fake_bus.outb(MCR, 0xFF)
    assert (fake_bus.inb(IER), fake_bus.inb(MCR)) == (0x0F, 0x1F)


def test_word_access_is_split_into_byte_registers(fake_bus, uart):
    fake_bus.outw(LCR, 0x0B03)  # LCR = 0x03, MCR = 0x0B
    assert (fake_bus.inb(LCR), fake_bus.inb(MCR)) == (0x03, 0x0B)
    assert fake_bus.inw(LCR) == 0x0B03


# --- transmit ---------------------------------------------------------------------------


def test_thr_write_reaches_the_backend_output(fake_bus, uart):
    for byte in b"Hi\r\n\x00\xff":
        fake_bus.outb(THR, byte)
    assert uart.output == b"Hi\r\n\x00\xff"


def test_transmit_is_instantaneous_so_thre_and_temt_stay_set(fake_bus, uart):
    fake_bus.outb(THR, ord("a"))
    assert fake_bus.inb(LSR) & (THRE | TEMT) == THRE | TEMT


def test_bytes_cross_whole_whatever_the_word_length(fake_bus, uart):
    # LCR resets to 5-bit words; a guest that never programs it must still print.
    fake_bus.outb(THR, 0xFF)
    fake_bus.outb(LCR, 0x02)  # 7 data bits
    fake_bus.outb(THR, 0xC1)
    uart.receive(b"\xe9")
    assert uart.output == b"\xff\xc1"
    assert fake_bus.inb(RBR) == 0xE9


def test_thre_interrupt_raised_when_enabled(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    assert not fake_bus.irq_level(IRQ)
    fake_bus.outb(IER, 0x02)
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(IIR) == IIR_THRE


def test_thre_interrupt_cleared_by_iir_read(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x02)
    assert fake_bus.inb(IIR) == IIR_THRE
    assert not fake_bus.irq_level(IRQ)
    assert fake_bus.inb(IIR) == NO_INTERRUPT


def test_thre_interrupt_rearmed_after_thr_write(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x02)
    fake_bus.inb(IIR)
    assert not fake_bus.irq_level(IRQ)
    fake_bus.outb(THR, ord("x"))
    assert fake_bus.irq_level(IRQ)
    assert fake_bus.inb(IIR) == IIR_THRE


def test_thr_write_lowers_then_raises_the_line_for_a_fresh_edge(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x02)  # the line goes high; the interrupt is not acknowledged
    fake_bus.outb(THR, ord("x"))
    assert fake_bus.irq_events == [(0, IRQ, True), (0, IRQ, False), (0, IRQ, True)]


def test_clearing_ier_thri_withdraws_the_thre_interrupt(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x02)
    fake_bus.outb(IER, 0x00)
    assert not fake_bus.irq_level(IRQ)
    assert fake_bus.inb(IIR) == NO_INTERRUPT


# --- IRQ output gating (PC wiring) ------------------------------------------------------


def test_irq_line_follows_the_pending_interrupt_only_while_out2_is_set(fake_bus, uart):
    fake_bus.outb(IER, 0x02)  # THRE interrupt pending, OUT2 off
    assert not fake_bus.irq_level(IRQ)
    fake_bus.outb(MCR, OUT2)
    assert fake_bus.irq_level(IRQ)
    fake_bus.outb(MCR, 0x03)  # DTR | RTS, OUT2 off
    assert not fake_bus.irq_level(IRQ)
    assert fake_bus.inb(IIR) == IIR_THRE  # still pending inside the UART


def test_loopback_forces_out2_off_so_the_line_stays_low(fake_bus, uart):
    fake_bus.outb(IER, 0x02)
    fake_bus.outb(MCR, LOOP | OUT2)
    assert not fake_bus.irq_level(IRQ)
    assert fake_bus.inb(IIR) == IIR_THRE


def test_an_idle_uart_sharing_the_line_does_not_lower_it(fake_bus):
    fake_bus.attach("uart16550", name="com1", backend="memory", preset="com1")
    fake_bus.attach("uart16550", name="com3", backend="memory", preset="com3")
    fake_bus.outb(0x3F8 + 4, OUT2)
    fake_bus.outb(0x3F8 + 1, 0x02)
    assert fake_bus.irq_level(4)
    for port, value in ((0x3E8 + 7, 0x11), (0x3E8 + 1, 0x0F), (0x3E8 + 4, 0x03), (0x3E8 + 2, 0x07)):
        fake_bus.outb(port, value)
    fake_bus.inb(0x3E8 + 2)
    assert fake_bus.irq_level(4)


# --- receive ----------------------------------------------------------------------------


def test_received_bytes_set_dr_and_read_back_in_order(fake_bus, uart):
    fifo_on(fake_bus)
    assert not fake_bus.inb(LSR) & DR
    uart.receive(b"abc")
    assert fake_bus.inb(LSR) & DR
    assert [fake_bus.inb(RBR) for _ in range(3)] == list(b"abc")
    assert not fake_bus.inb(LSR) & DR


def test_rbr_read_when_empty_returns_the_last_character(fake_bus, uart):
    uart.receive(b"q")
    assert fake_bus.inb(RBR) == ord("q")
    assert fake_bus.inb(RBR) == ord("q")
    assert not fake_bus.inb(LSR) & DR


@pytest.mark.parametrize(("trigger_bits", "level"), [(0, 1), (1, 4), (2, 8), (3, 14)])
def test_rx_interrupt_waits_for_the_fifo_trigger_level(fake_bus, uart, trigger_bits, level):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x01)
    fifo_on(fake_bus, trigger_bits)
    uart.receive(b"x" * (level - 1))
    assert fake_bus.inb(IIR) == FIFO_BITS | NO_INTERRUPT
    assert not fake_bus.irq_level(IRQ)
    uart.receive(b"y")
    assert fake_bus.inb(IIR) == FIFO_BITS | IIR_RX
    assert fake_bus.irq_level(IRQ)
    fake_bus.inb(RBR)  # one below the trigger again
    assert fake_bus.inb(IIR) == FIFO_BITS | NO_INTERRUPT
    assert not fake_bus.irq_level(IRQ)


def test_rx_interrupt_needs_ier_bit_0(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    uart.receive(b"x")
    assert fake_bus.inb(IIR) == NO_INTERRUPT
    fake_bus.outb(IER, 0x01)
    assert fake_bus.inb(IIR) == IIR_RX
    assert fake_bus.irq_level(IRQ)


def test_non_fifo_mode_interrupts_on_one_character(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x01)
    uart.receive(b"x")
    assert fake_bus.inb(IIR) == IIR_RX
    assert fake_bus.irq_level(IRQ)
    fake_bus.inb(RBR)
    assert not fake_bus.irq_level(IRQ)


def test_non_fifo_mode_holds_one_character_and_overrun_sets_oe(fake_bus, uart):
    uart.receive(b"ab")
    # Datasheet LSR bit 1: the unread character is destroyed by the next one.
    assert fake_bus.inb(LSR) == THRE | TEMT | OE | DR
    assert fake_bus.inb(RBR) == ord("b")
    assert not fake_bus.inb(LSR) & DR


def test_overrun_raises_a_line_status_interrupt_when_ier_bit_2_is_set(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x04)
    uart.receive(b"a")
    assert fake_bus.inb(IIR) == NO_INTERRUPT
    uart.receive(b"b")
    assert fake_bus.inb(IIR) == IIR_LINE
    assert fake_bus.irq_level(IRQ)


def test_overrun_without_ier_bit_2_raises_no_interrupt(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    uart.receive(b"ab")
    assert fake_bus.inb(IIR) == NO_INTERRUPT
    assert fake_bus.irq_events == []


def test_fifo_overrun_keeps_the_first_16_characters(fake_bus, uart):
    fifo_on(fake_bus)
    uart.receive(bytes(range(17)))
    assert fake_bus.inb(LSR) & OE
    assert read_all(fake_bus) == bytes(range(16))


def test_lsr_read_clears_oe_and_the_line_status_interrupt(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x04)
    uart.receive(b"ab")
    assert fake_bus.inb(LSR) & OE
    assert not fake_bus.inb(LSR) & OE
    assert fake_bus.inb(IIR) == NO_INTERRUPT
    assert not fake_bus.irq_level(IRQ)
    assert fake_bus.inb(LSR) & DR  # the data itself is still there


def test_fcr_rx_reset_clears_the_receive_fifo(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x01)
    fifo_on(fake_bus)
    uart.receive(b"abcd")
    assert fake_bus.irq_level(IRQ)
    fake_bus.outb(FCR, 0x03)
    assert not fake_bus.inb(LSR) & DR
    assert not fake_bus.irq_level(IRQ)
    uart.receive(b"z")
    assert read_all(fake_bus) == b"z"


def test_fcr_rx_reset_is_ignored_while_fifos_are_disabled(fake_bus, uart):
    uart.receive(b"a")
    fake_bus.outb(FCR, 0x02)  # bit 0 clear: the other bits are not programmed
    assert fake_bus.inb(RBR) == ord("a")


def test_fcr_tx_reset_is_accepted_and_transmit_continues(fake_bus, uart):
    fifo_on(fake_bus)
    fake_bus.outb(FCR, 0x05)
    fake_bus.outb(THR, ord("t"))
    assert uart.output == b"t"
    assert fake_bus.inb(LSR) & (THRE | TEMT) == THRE | TEMT


def test_changing_fifo_mode_clears_the_receiver(fake_bus, uart):
    uart.receive(b"a")
    fifo_on(fake_bus)
    assert not fake_bus.inb(LSR) & DR
    uart.receive(b"bc")
    fake_bus.outb(FCR, 0x00)
    assert not fake_bus.inb(LSR) & DR


def test_iir_fifo_bits_follow_fcr_bit_0(fake_bus, uart):
    assert fake_bus.inb(IIR) == NO_INTERRUPT
    fifo_on(fake_bus, 3)
    assert fake_bus.inb(IIR) == FIFO_BITS | NO_INTERRUPT
    fake_bus.outb(FCR, 0x00)
    assert fake_bus.inb(IIR) == NO_INTERRUPT


def test_iir_reports_line_status_then_rx_data_then_thre_then_modem_status(fake_bus, uart):
    fake_bus.outb(IER, 0x0F)
    # Loopback raises them all at once: entering it drops CTS/DSR/DCD (modem status), the first
    # THR write fills RBR, the second overruns it (line status), and THR is empty (THRE).
    fake_bus.outb(MCR, LOOP)
    fake_bus.outb(THR, ord("a"))
    fake_bus.outb(THR, ord("b"))
    order = []
    for acknowledge in (lambda: fake_bus.inb(LSR), lambda: fake_bus.inb(RBR), lambda: None,
                        lambda: fake_bus.inb(MSR)):
        order.append(fake_bus.inb(IIR))
        acknowledge()
    order.append(fake_bus.inb(IIR))
    # Reading IIR itself acknowledged the THRE interrupt.
    assert order == [IIR_LINE, IIR_RX, IIR_THRE, IIR_MODEM, NO_INTERRUPT]


def test_iir_read_clears_thre_only_when_it_is_the_reported_source(fake_bus, uart):
    fake_bus.outb(IER, 0x03)
    uart.receive(b"r")
    assert fake_bus.inb(IIR) == IIR_RX
    assert fake_bus.inb(IIR) == IIR_RX
    fake_bus.inb(RBR)
    assert fake_bus.inb(IIR) == IIR_THRE  # still pending behind the RX interrupt
    assert fake_bus.inb(IIR) == NO_INTERRUPT


# --- character timeout ------------------------------------------------------------------


def four_chars_ns(uart):
    return 4 * uart.char_time_ns()


def test_character_time_follows_the_frame_format_and_divisor(fake_bus, uart):
    fake_bus.outb(LCR, DLAB)
    fake_bus.outb(DLL, 1)
    fake_bus.outb(LCR, 0x03)  # 8N1: 10 bits of 1/115200 s
    assert uart.char_time_ns() == 86_805
    fake_bus.outb(LCR, 0x0F)  # 8 data, parity, 2 stop: 12 bits
    assert uart.char_time_ns() == 104_166
    fake_bus.outb(LCR, 0x04)  # 5 data, 1.5 stop: 7.5 bits
    assert uart.char_time_ns() == 65_104


def test_character_timeout_indicated_after_four_character_times(fake_bus, uart):
    fake_bus.outb(LCR, 0x03)
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x01)
    fifo_on(fake_bus, 2)  # trigger 8
    uart.receive(b"ab")
    fake_bus.step(four_chars_ns(uart) - 1)
    assert fake_bus.inb(IIR) == FIFO_BITS | NO_INTERRUPT
    fake_bus.step(1)
    assert fake_bus.inb(IIR) == FIFO_BITS | IIR_TIMEOUT
    assert fake_bus.irq_level(IRQ)


def test_rbr_read_clears_the_timeout_and_restarts_it(fake_bus, uart):
    fake_bus.outb(MCR, OUT2)
    fake_bus.outb(IER, 0x01)
    fifo_on(fake_bus, 2)
    uart.receive(b"ab")
    fake_bus.step(four_chars_ns(uart))
    assert fake_bus.inb(RBR) == ord("a")
    assert fake_bus.inb(IIR) == FIFO_BITS | NO_INTERRUPT
    assert not fake_bus.irq_level(IRQ)
    fake_bus.step(four_chars_ns(uart))
    assert fake_bus.inb(IIR) == FIFO_BITS | IIR_TIMEOUT
    fake_bus.inb(RBR)
    fake_bus.step(10 * four_chars_ns(uart))
    assert fake_bus.inb(IIR) == FIFO_BITS | NO_INTERRUPT  # empty: no timeout


def test_each_received_character_restarts_the_timeout(fake_bus, uart):
    fake_bus.outb(IER, 0x01)
    fifo_on(fake_bus, 3)
    uart.receive(b"a")
    fake_bus.step(four_chars_ns(uart) - 10)
    uart.receive(b"b")
    fake_bus.step(four_chars_ns(uart) - 10)
    assert fake_bus.inb(IIR) == FIFO_BITS | NO_INTERRUPT
    fake_bus.step(10)
    assert fake_bus.inb(IIR) == FIFO_BITS | IIR_TIMEOUT


def test_no_character_timeout_in_non_fifo_mode(fake_bus, uart):
    fake_bus.outb(IER, 0x01)
    uart.receive(b"a")
    fake_bus.step(100 * four_chars_ns(uart))
    assert fake_bus.inb(IIR) == IIR_RX


# --- host input -------------------------------------------------------------------------


def test_host_input_is_paced_into_the_fifo_without_overrun(fake_bus, uart):
    fifo_on(fake_bus)
    text = bytes(range(40))
    uart.feed(text)
    assert len(uart.rx) == 16
    assert read_all(fake_bus) == text
    assert not fake_bus.inb(LSR) & OE


def test_host_input_moves_one_character_at_a_time_in_non_fifo_mode(fake_bus, uart):
    uart.feed(b"xyz")
    assert list(uart.rx) == [ord("x")]
    assert read_all(fake_bus) == b"xyz"
    assert not fake_bus.inb(LSR) & OE


# --- loopback and modem status ----------------------------------------------------------


def test_loopback_sends_thr_to_rx_not_to_the_backend(fake_bus, uart):
    fifo_on(fake_bus)
    fake_bus.outb(MCR, LOOP)
    for byte in b"ping":
        fake_bus.outb(THR, byte)
    assert uart.output == b""
    assert read_all(fake_bus) == b"ping"


def test_loopback_disconnects_the_receiver_from_the_line(fake_bus, uart):
    fake_bus.outb(MCR, LOOP)
    uart.receive(b"lost")
    uart.feed(b"kept")  # host input waits on the host side
    assert not fake_bus.inb(LSR) & DR
    fifo_on(fake_bus)
    fake_bus.outb(MCR, 0)
    assert read_all(fake_bus) == b"kept"


def test_msr_reflects_mcr_in_loopback(fake_bus, uart):
    # MCR bit -> MSR bit: RTS -> CTS, DTR -> DSR, OUT1 -> RI, OUT2 -> DCD.
    cases = {0x02: 0x10, 0x01: 0x20, 0x04: 0x40, 0x08: 0x80, 0x0A: 0x90, 0x0F: 0xF0, 0x00: 0x00}
    for mcr, msr in cases.items():
        fake_bus.outb(MCR, LOOP | mcr)
        assert fake_bus.inb(MSR) & 0xF0 == msr, f"MCR {mcr:#x}"


def test_msr_delta_bits_record_changes_and_clear_on_read(fake_bus, uart):
    fake_bus.outb(MCR, LOOP | 0x0F)  # CTS, DSR, DCD unchanged from the host; RI rises
    assert fake_bus.inb(MSR) == 0xF0  # a rising RI is no trailing edge
    assert fake_bus.inb(MSR) == 0xF0
    fake_bus.outb(MCR, LOOP | 0x0D)  # RTS off: CTS changes
    assert fake_bus.inb(MSR) == 0xE0 | 0x01
    fake_bus.outb(MCR, LOOP | 0x09)  # OUT1 off: RI trailing edge
    assert fake_bus.inb(MSR) == 0xA0 | 0x04
    fake_bus.outb(MCR, LOOP | 0x00)  # DTR and OUT2 off: DSR and DCD change
    assert fake_bus.inb(MSR) == 0x00 | 0x02 | 0x08
    assert fake_bus.inb(MSR) == 0x00


def test_modem_status_interrupt_on_a_delta_when_ier_bit_3_is_set(fake_bus, uart):
    fake_bus.outb(IER, 0x08)
    fake_bus.outb(MCR, LOOP | 0x0B)
    assert fake_bus.inb(IIR) == NO_INTERRUPT
    fake_bus.outb(MCR, LOOP | 0x09)  # RTS off
    assert fake_bus.inb(IIR) == IIR_MODEM
    fake_bus.inb(MSR)
    assert fake_bus.inb(IIR) == NO_INTERRUPT


def test_leaving_loopback_restores_the_host_modem_inputs(fake_bus, uart):
    fake_bus.outb(MCR, LOOP)
    fake_bus.inb(MSR)
    fake_bus.outb(MCR, 0x00)
    assert fake_bus.inb(MSR) == 0xB0 | 0x01 | 0x02 | 0x08


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "port", "irq"),
                         [("com1", 0x3F8, 4), ("com2", 0x2F8, 3), ("com3", 0x3E8, 4), ("com4", 0x2E8, 3)])
def test_presets_claim_the_standard_ports_and_irq(fake_bus, preset, port, irq):
    uart = fake_bus.attach("uart16550", backend="memory", preset=preset)
    assert [(r.base, r.size) for r in uart.regions()] == [(port, 8)]
    assert (uart.config.port, uart.config.irq) == (port, irq)
    fake_bus.outb(port + 7, 0x5A)
    assert fake_bus.inb(port + 7) == 0x5A
    fake_bus.outb(port + 4, OUT2)
    fake_bus.outb(port + 1, 0x02)
    assert fake_bus.irq_events == [(0, irq, True)]


def test_an_explicit_port_or_irq_wins_over_the_preset(fake_bus):
    uart = fake_bus.attach("uart16550", backend="memory", preset="com2", irq=5)
    assert (uart.config.port, uart.config.irq) == (0x2F8, 5)
    uart = fake_bus.attach("uart16550", backend="memory", preset="com4", port="0x3F8")
    assert (uart.config.port, uart.config.irq) == (0x3F8, 3)
    assert type(uart.config.port) is int


def test_without_a_preset_the_defaults_are_com1(fake_bus):
    uart = fake_bus.attach("uart16550", backend="memory")
    assert (uart.config.port, uart.config.irq) == (0x3F8, 4)
    assert (type(uart.config.port), type(uart.config.irq)) == (int, int)


@pytest.mark.parametrize(
    ("props", "key", "message"),
    [
        ({"port": "0xFFF9"}, "port", "must be in 0x0..0xfff8, got 0xfff9"),
        ({"irq": 16}, "irq", "must be in 0x0..0xf, got 0x10"),
        ({"irq": -1}, "irq", "must be in 0x0..0xf"),
        ({"backend": "file"}, "backend", "path must be set when backend is 'file'"),
        ({"backend": "socket"}, "backend", "path must be set when backend is 'socket'"),
        ({"backend": "memory", "input": "in.txt"}, "input", "file backend only"),
        ({"backend": "tty"}, "backend", "expected one of stdio, stderr, file, memory, socket, null"),
        ({"preset": "com5"}, "preset", "expected one of , com1, com2, com3, com4"),
        ({"socket_mode": "both"}, "socket_mode", "expected one of server, client"),
    ],
    ids=["port-range", "irq-16", "irq-negative", "file-without-path", "socket-without-path",
         "input-without-file", "bogus-backend", "bogus-preset", "bogus-socket-mode"],
)
def test_bad_property_values_raise_property_error_naming_the_key(fake_bus, props, key, message):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("uart16550", **props)
    assert excinfo.value.key == key
    assert message in excinfo.value.message
    assert fake_bus.devices == {}
