"""Intel 8042 PC keyboard controller (ports 0x60/0x64) with a keyboard, and port 0x92.

Enough for firmware and operating systems to probe the controller, talk to the
keyboard, and reset the machine.

Ports: ``port`` (0x60) is the data port; ``port + 4`` (0x64) reads the status and
takes controller commands. Status bits: 0 OBF (a byte waits in the output
buffer), 1 IBF (always 0: every write is taken at once), 2 SYS (set by the
self-test, and copied from bit 2 of the command byte when it is written), 3 A2
(the last write went to the command port), 4 keyboard not inhibited (always 1),
5 the waiting byte is from the auxiliary port, 6-7 no timeout or parity error.

Controller commands: 0x20-0x3F read internal RAM byte n (0x20: the command byte),
0x60-0x7F write it (the next data byte), 0xA7/0xA8 disable/enable the aux port
(command byte bit 5), 0xA9 aux interface test (0x00), 0xAA self-test (0x55, sets
SYS), 0xAB keyboard interface test (0x00), 0xAD/0xAE disable/enable the keyboard
(command byte bit 4: keyboard bytes are held, not lost, while it is disabled),
0xD0 read the output port, 0xD1 write it (next data byte), 0xD2/0xD3 put the next
data byte in the output buffer as from the keyboard/aux port, 0xD4 send the next
data byte to the aux device (there is none: it is dropped, as by an absent
mouse), 0xF0-0xFF pulse output-port bits 0-3 low for each clear bit of the
command (0xFE pulses bit 0). Other commands are ignored (and logged).

Command byte: bit 0 keyboard interrupt (IRQ ``irq`` is high while a keyboard or
controller byte waits), 1 aux interrupt (IRQ ``aux_irq`` while an aux byte waits),
2 SYS, 4 keyboard disabled, 5 aux disabled, 6 translation (stored only: bytes
from ``send_key`` reach the guest as given). Power-on value 0x01. When the
guest reads a byte and another is queued, the line drops and rises again, so an
edge-triggered PIC sees one edge per byte.

Keyboard commands (bytes written to the data port when no controller command
awaits a data byte): 0xFF reset (0xFA then 0xAA, self-test passed), 0xF4 enable
scanning (0xFA), 0xF5 disable scanning (0xFA; ``send_key`` is then ignored), 0xF6
defaults (0xFA), 0xEE echo (0xEE), 0xF2 identify (0xFA 0xAB 0x83: MF2 keyboard),
0xED LEDs, 0xF3 typematic rate and 0xF0 scancode set (0xFA, then 0xFA for the
parameter; 0xF0 0x00 answers the set, 2), 0xFE resend (the last byte again),
anything else 0xFE (resend). The keyboard buffers 16 bytes; more are dropped.

Reset: output-port bit 0 is the CPU reset line. A reset request (command 0xFE or
any 0xF0-0xFF with bit 0 clear, 0xD1 with bit 0 clear, or a 1 written to bit 0 of
port 0x92) ends the run with a stop of its own kind, ``reset`` (status 0, ctx.reset), as
QEMU does with -no-reboot: vmcore does not reboot machines.

Port 0x92 (System Control Port A, ``port92``; 0 leaves it unclaimed): bit 1 is
the "fast A20" gate, bit 0 the fast reset. A20 (here and in output-port bit 1) is
stored and reads back, and reads as enabled at power-on, because vmcore never
masks address line 20: memory above 1M does not wrap whatever the guest writes.
"""

from __future__ import annotations

import collections
from typing import Sequence

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl

# Status register.
OBF = 0x01
SYS = 0x04
A2 = 0x08
UNINHIBITED = 0x10
AUX_OBF = 0x20

# Command byte.
KBD_INT = 0x01
AUX_INT = 0x02
CCB_SYS = 0x04
KBD_DISABLED = 0x10
AUX_DISABLED = 0x20
CCB_POWER_ON = KBD_INT

# Output port.
OUT_RESET = 0x01  # 0 holds the CPU in reset
OUT_A20 = 0x02
OUT_KBD_OBF = 0x10
OUT_AUX_OBF = 0x20

# Controller responses.
SELF_TEST_OK = 0x55
INTERFACE_OK = 0x00

# Keyboard responses.
ACK = 0xFA
BAT_OK = 0xAA
ECHO = 0xEE
RESEND = 0xFE
KEYBOARD_ID = (0xAB, 0x83)
KEYBOARD_BUFFER = 16

PORT92_RESET = 0x01
PORT92_A20 = 0x02


@config
class I8042Config:
    port: int = prop(0x60, "Data port; the status/command port is port + 4.", hex=True,
                     validator=in_range(0, 0xFFFB))
    irq: int = prop(1, "Keyboard IRQ line: high while a keyboard byte waits and the command byte allows it.",
                    validator=in_range(0, 255))
    aux_irq: int = prop(12, "Aux (mouse) port IRQ line, for bytes looped back with command 0xD3.",
                        validator=in_range(0, 255))
    port92: int = prop(0x92, "System Control Port A (fast A20 and reset); 0 leaves it unclaimed.", hex=True,
                       validator=in_range(0, 0xFFFF))


class I8042(Device):
    """PC keyboard controller with an MF2 keyboard behind it, and port 0x92."""

    type_name = "i8042"
    Config = I8042Config
    class State:
        """What a snapshot keeps (vmcore.snapshot): the controller's, then the keyboard's."""

        ram: bytearray
        status: int
        output_port: int
        port92: int
        _obuf: tuple[int, bool] | None
        _last: int
        _replies: collections.deque[tuple[int, bool]]
        _expect: int | None
        _keyboard: collections.deque[int]
        _kbd_expect: int | None
        _kbd_last: int
        scanning: bool
        leds: int
        typematic: int
        scancode_set: int

    def __init__(self, config: I8042Config, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.kbd_line = ctx.irq(config.irq)
        self.aux_line = ctx.irq(config.aux_irq)
        self.ram = bytearray(32)  # byte 0 is the command byte
        self.status = 0
        self.output_port = OUT_RESET | OUT_A20
        self.port92 = PORT92_A20
        self._obuf: tuple[int, bool] | None = None  # the output buffer: (byte, from aux)
        self._last = 0  # what a read of an empty output buffer returns
        self._replies: collections.deque[tuple[int, bool]] = collections.deque()  # controller's own bytes
        self._expect: int | None = None  # controller command waiting for its data byte
        # The keyboard.
        self._keyboard: collections.deque[int] = collections.deque()
        self._kbd_expect: int | None = None
        self._kbd_last = 0
        self.scanning = True
        self.leds = 0
        self.typematic = 0x2B
        self.scancode_set = 2
        self.reset()

    def regions(self) -> Sequence[Region]:
        port = self.config.port
        regions = [
            Region(Space.PIO, port, 1, self.read_data, self.write_data, sizes=(1,), name="data"),
            Region(Space.PIO, port + 4, 1, self.read_status, self.write_command, sizes=(1,), name="status-command"),
        ]
        if self.config.port92:
            regions.append(Region(Space.PIO, self.config.port92, 1, self.read_port92, self.write_port92,
                                  sizes=(1,), name="port92"))
        return regions

    def reset(self) -> None:
        self.ram[:] = bytes(32)
        self.ram[0] = CCB_POWER_ON
        self.status = 0
        self.output_port = OUT_RESET | OUT_A20
        self.port92 = PORT92_A20
        self._obuf = None
        self._last = 0
        self._replies.clear()
        self._expect = None
        self._reset_keyboard()
        self._update_lines()

    @property
    def command_byte(self) -> int:
        return self.ram[0]

    # --- host side ------------------------------------------------------------------------------

    def send_key(self, scancode: int) -> None:
        """Queue one byte from the keyboard (a scancode, as the guest should see it).

        Call it on the machine's thread; a host-side reader hands it over with
        ``ctx.clock.call_soon_threadsafe``. Ignored while scanning is disabled (0xF5).
        """
        if not 0 <= scancode <= 0xFF:
            raise ValueError(f"a scancode byte is 0..0xff, got {scancode:#x}")
        if self.scanning:
            self._from_keyboard(scancode)

    # --- output buffer and interrupt lines -----------------------------------------------------

    def _from_keyboard(self, *data: int) -> None:
        for byte in data:
            if len(self._keyboard) < KEYBOARD_BUFFER:
                self._keyboard.append(byte)
            else:
                self.ctx.log.debug("keyboard buffer full: byte %#x dropped", byte)
        self._fill()

    def _reply(self, byte: int, aux: bool = False) -> None:
        self._replies.append((byte, aux))
        self._fill()

    def _fill(self) -> None:
        """Move the next byte into an empty output buffer: the controller's first, then the keyboard's."""
        if self._obuf is None:
            if self._replies:
                self._obuf = self._replies.popleft()
            elif self._keyboard and not self.ram[0] & KBD_DISABLED:
                self._obuf = (self._keyboard.popleft(), False)
        self._update_lines()

    def _update_lines(self) -> None:
        full = self._obuf is not None
        aux = full and self._obuf[1]  # type: ignore[index]
        self.kbd_line.set_level(full and not aux and bool(self.ram[0] & KBD_INT))
        self.aux_line.set_level(aux and bool(self.ram[0] & AUX_INT))

    # --- data port ------------------------------------------------------------------------------

    def read_data(self, offset: int, size: int) -> int:
        if self._obuf is None:
            return self._last
        self._last = self._obuf[0]
        self._obuf = None
        self._update_lines()  # drop the line, so the next byte raises a fresh edge
        self._fill()
        return self._last

    def write_data(self, offset: int, size: int, value: int) -> None:
        self.status &= ~A2
        command, self._expect = self._expect, None
        if command is None:
            self._keyboard_command(value)
        elif 0x60 <= command <= 0x7F:
            self.ram[command - 0x60] = value
            if command == 0x60:
                self.status = (self.status & ~SYS) | (value & CCB_SYS)
                self._fill()  # enabling the keyboard or its interrupt may deliver a byte
        elif command == 0xD1:
            self._write_output_port(value)
        elif command == 0xD2:
            self._reply(value)
        elif command == 0xD3:
            self._reply(value, aux=True)
        elif command == 0xD4:
            self.ctx.log.debug("byte %#x for the aux device dropped: no aux device is modelled", value)

    def _write_output_port(self, value: int) -> None:
        self.output_port = value & ~(OUT_KBD_OBF | OUT_AUX_OBF)
        if not value & OUT_RESET:
            self._reset_request("output port bit 0 cleared (command 0xD1)")

    def _reset_request(self, how: str) -> None:
        self.ctx.reset(f"the guest asked for a system reset ({how}); vmcore stops on reset")

    # --- status and command port -----------------------------------------------------------

    def read_status(self, offset: int, size: int) -> int:
        value = self.status | UNINHIBITED
        if self._obuf is not None:
            value |= OBF | (AUX_OBF if self._obuf[1] else 0)
        return value

    def write_command(self, offset: int, size: int, value: int) -> None:
        self.status |= A2
        self._expect = None  # a new command abandons one still waiting for its data byte
        if 0x20 <= value <= 0x3F:
            self._reply(self.ram[value - 0x20])
        elif 0x60 <= value <= 0x7F or value in (0xD1, 0xD2, 0xD3, 0xD4):
            self._expect = value
        elif value == 0xA7:
            self.ram[0] |= AUX_DISABLED
        elif value == 0xA8:
            self.ram[0] &= ~AUX_DISABLED
        elif value == 0xA9:
            self._reply(INTERFACE_OK)
        elif value == 0xAA:
            self.status |= SYS
            self._reply(SELF_TEST_OK)
        elif value == 0xAB:
            self._reply(INTERFACE_OK)
        elif value == 0xAD:
            self.ram[0] |= KBD_DISABLED
        elif value == 0xAE:
            self.ram[0] &= ~KBD_DISABLED
            self._fill()
        elif value == 0xD0:
            value = self.output_port & ~(OUT_KBD_OBF | OUT_AUX_OBF)
            if self._obuf is not None:
                value |= OUT_AUX_OBF if self._obuf[1] else OUT_KBD_OBF
            self._reply(value)
        elif value >= 0xF0:
            if not value & OUT_RESET:
                self._reset_request(f"command {value:#04x} pulsed the reset line")
        else:
            self.ctx.log.debug("controller command %#x ignored", value)

    # --- the keyboard -----------------------------------------------------------------------

    def _reset_keyboard(self) -> None:
        self._keyboard.clear()
        self._kbd_expect = None
        self.scanning = True
        self._keyboard_defaults()

    def _keyboard_defaults(self) -> None:
        self.leds = 0
        self.typematic = 0x2B
        self.scancode_set = 2

    def _keyboard_answer(self, *data: int) -> None:
        self._kbd_last = data[-1]
        self._from_keyboard(*data)

    def _keyboard_command(self, value: int) -> None:
        command, self._kbd_expect = self._kbd_expect, None
        if command is not None:  # the parameter of 0xED, 0xF3 or 0xF0
            if command == 0xED:
                self.leds = value & 0x07
            elif command == 0xF3:
                self.typematic = value & 0x7F
            elif value == 0:
                self._keyboard_answer(ACK, self.scancode_set)
                return
            elif value <= 3:
                self.scancode_set = value
            else:
                self._keyboard_answer(RESEND)
                return
            self._keyboard_answer(ACK)
        elif value == 0xFF:
            self._reset_keyboard()
            self._keyboard_answer(ACK, BAT_OK)
        elif value == 0xF4:
            self.scanning = True
            self._keyboard_answer(ACK)
        elif value == 0xF5:
            self.scanning = False
            self._keyboard_defaults()
            self._keyboard_answer(ACK)
        elif value == 0xF6:
            self._keyboard_defaults()
            self._keyboard_answer(ACK)
        elif value == 0xEE:
            self._keyboard_answer(ECHO)
        elif value == 0xF2:
            self._keyboard_answer(ACK, *KEYBOARD_ID)
        elif value in (0xED, 0xF3, 0xF0):
            self._kbd_expect = value
            self._keyboard_answer(ACK)
        elif value == 0xFE:
            self._from_keyboard(self._kbd_last)
        else:
            self._keyboard_answer(RESEND)

    # --- port 0x92 --------------------------------------------------------------------------

    def read_port92(self, offset: int, size: int) -> int:
        return self.port92

    def write_port92(self, offset: int, size: int, value: int) -> None:
        self.port92 = value & ~PORT92_RESET & 0xFF
        if value & PORT92_RESET:
            self._reset_request("fast reset through port 0x92 bit 0")


@hookimpl
def vmcore_device_types() -> list[type]:
    return [I8042]
