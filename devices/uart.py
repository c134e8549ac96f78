"""NS16550A UART: the PC serial port (COM1..COM4), eight byte-wide I/O ports.

Register map (offsets from ``port``; DLAB is LCR bit 7):

====== ==================== ===================
offset read                 write
====== ==================== ===================
0      RBR (DLAB=1: DLL)    THR (DLAB=1: DLL)
1      IER (DLAB=1: DLM)    IER (DLAB=1: DLM)
2      IIR                  FCR
3      LCR                  LCR
4      MCR                  MCR
5      LSR                  (ignored)
6      MSR                  (ignored)
7      SCR                  SCR
====== ==================== ===================

Modelled as in the PC16550D datasheet, with these choices:

- **Transmit is instantaneous.** A THR write hands the byte to the backend at once, so THRE
  and TEMT always read 1 and the TX FIFO never holds anything (its reset bit is accepted and
  has nothing to clear). The THRE interrupt is cleared by the THR write and re-armed as the
  byte leaves, as in QEMU: with the THRE interrupt enabled, each THR write lowers the IRQ line
  and raises it again, a fresh edge for an edge-triggered PIC.
- **Receive.** ``receive(data)`` is the serial line: the bytes arrive now, and what does not
  fit is an overrun (FIFO mode: the new character is lost, datasheet LSR bit 1; non-FIFO mode:
  the new character replaces the unread one). Host input from a backend (``feed(data)`` in
  tests) waits in the backend's bounded input buffer and moves into the receiver as room frees
  up (QEMU's ``can_receive``), so pasting a long line loses nothing; while that buffer is full
  the backend stops reading the host, so a guest that never reads leaves the rest in the host's
  file, pipe or socket (see ``vmcore.chardev``).
- **Host files** are opened when the machine starts running (``start()``), not when it is
  built: ``vmcore check`` creates, truncates and unlinks nothing.
- **Character timeout (IIR 0xC)** follows the datasheet on the machine clock: with the FIFO on,
  at least one character in it and neither a character received nor RBR read for four
  character times (from LCR's frame format and the divisor, 1.8432 MHz input clock). The
  approximation: bytes handed over together arrive together, not one character time apart.
- **IRQ output.** The line is level-driven to "an enabled interrupt is pending", gated as on
  PC serial boards: the UART's INTR reaches the bus only while MCR OUT2 is set, and the
  datasheet forces OUT2 inactive in loopback, so loopback gates the line too. The device only
  drives the line when its own level changes, so an idle UART sharing the line (COM1 and
  COM3 on IRQ 4) does not lower it under another.
- **Modem inputs.** Outside loopback the host end is a connected, ready terminal: CTS, DSR
  and DCD asserted, RI not (MSR reads 0xB0 after reset, as in QEMU). In loopback MSR bits
  4-7 follow MCR (CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2) and the delta bits record changes;
  the receiver is disconnected from the line, so host input waits until loopback ends.
- **Word length.** Bytes cross the line whole whatever LCR bits 0-1 say, as in QEMU: LCR
  resets to 5-bit words, and a guest that never programs it must still print. The frame
  format only sets the character time. Parity, framing and break errors never occur.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Literal, Sequence

from vmcore.bus import Region, Space
from vmcore.chardev import (BackendKind, HostFile, SocketMode, backend_prop, check_backend_props, make_backend,
                            path_prop, socket_mode_prop)
from vmcore.clock import Timer
from vmcore.device import Device, DeviceContext, PropertyError, config, in_range, prop
from vmcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from vmcore.fuzz import FuzzScratch

# Register offsets.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

# IER bits.
IER_RDI = 0x01  # received data available (and character timeout)
IER_THRI = 0x02  # THR empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status

# IIR values (bits 1-3: the source; bit 0: no interrupt pending; bits 6-7: FIFOs enabled).
IIR_NONE = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_TIMEOUT = 0x0C
IIR_FIFO = 0xC0

# FCR bits.
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
#: RX trigger level by FCR bits 6-7 (datasheet, FCR description).
TRIGGER_LEVELS = (1, 4, 8, 14)

LCR_DLAB = 0x80
LCR_STOP2 = 0x04
LCR_PARITY = 0x08

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
#: The modem inputs a connected, ready host terminal presents.
MSR_HOST = MSR_CTS | MSR_DSR | MSR_DCD

FIFO_SIZE = 16
#: Host input read ahead of the RX FIFO: the host side is read only while this has room.
HOST_INPUT_BUFFER = 256
#: Single-byte bytes objects, so a THR write allocates nothing.
_BYTES = tuple(bytes((value,)) for value in range(256))
#: 9600 baud from the 1.8432 MHz clock; the datasheet leaves the latch undefined at power-on.
POWER_ON_DIVISOR = 12
CLOCK_HZ = 1_843_200

#: Standard PC serial ports: port base and ISA IRQ.
PRESETS = {"com1": (0x3F8, 4), "com2": (0x2F8, 3), "com3": (0x3E8, 4), "com4": (0x2E8, 3)}


class _Unset(int):
    """An int default that remembers nobody gave it, so a preset may replace it."""

    __slots__ = ()


@config
class Uart16550Config:
    port: int = prop(_Unset(0x3F8), "First of the 8 I/O ports (COM1: 0x3F8).", hex=True,
                     validator=in_range(0, 0xFFF8))
    irq: int = prop(_Unset(4), "ISA IRQ line the UART drives (COM1: 4).", validator=in_range(0, 15))
    preset: Literal["", "com1", "com2", "com3", "com4"] = prop(
        "", "Standard PC port and IRQ (com1 0x3F8/4, com2 0x2F8/3, com3 0x3E8/4, com4 0x2E8/3); "
            "a port or irq given explicitly wins over the preset."
    )
    backend: BackendKind = backend_prop()
    path: str = path_prop()
    input: str = prop("", "file backend: a file, FIFO or device whose bytes are received, read only as "
                          "the guest takes them (optional). Relative to the profile that sets it.", path=True)
    socket_mode: SocketMode = socket_mode_prop()

    def __attrs_post_init__(self) -> None:
        # The preset replaces only defaults; then store plain ints so nothing downstream sees _Unset.
        port, irq = PRESETS.get(self.preset, (self.port, self.irq))
        object.__setattr__(self, "port", int(port if isinstance(self.port, _Unset) else self.port))
        object.__setattr__(self, "irq", int(irq if isinstance(self.irq, _Unset) else self.irq))
        check_backend_props(self.backend, self.path)
        if self.input and self.backend != "file":
            raise PropertyError("input", f"input is read by the file backend only, not {self.backend!r}")


# --- the UART ---------------------------------------------------------------------------


class Uart16550(Device):
    """NS16550A UART with 16-byte FIFOs: the PC serial port."""

    type_name = "uart16550"
    Config = Uart16550Config
    class State:
        """What a snapshot keeps (vmcore.snapshot); what the backend holds (host input not yet
        received, output written) is the host's, not the guest's."""

        _driven: bool
        _timer: Timer
        _last_rx_activity: int
        # The registers: plain attributes of the UART, set in reset().
        ier: int
        lcr: int
        mcr: int
        scr: int
        divisor: int
        fifo_enabled: bool
        trigger: int
        rx: collections.deque[int]
        rbr: int  # the last character read, which RBR keeps returning when empty
        overrun: bool
        thr_ipending: bool
        timeout_pending: bool
        modem_inputs: int  # MSR bits 4-7
        msr_delta: int  # MSR bits 0-3

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        return {"backend": "memory"}  # no terminal, file or socket at the other end

    def __init__(self, config: Uart16550Config, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.line = ctx.irq(config.irq)
        self._driven = False  # the level this UART drives (the line may be shared)
        self._timer: Timer = ctx.clock.timer(self._timeout_expired)  # the character timeout
        self._last_rx_activity = 0
        #: Everything transmitted, when backend is 'memory'.
        self.output = bytearray()
        #: The host end: opened by start(); its ``input`` holds host bytes waiting for the receiver.
        self.backend = make_backend(ctx.log, config.backend, self.output, path=config.path,
                                    socket_mode=config.socket_mode, input_path=config.input,
                                    input_capacity=HOST_INPUT_BUFFER)
        self.reset()

    def host_files(self) -> Sequence[HostFile]:
        return self.backend.host_files()

    def start(self) -> None:
        self.backend.open(self._host_input_ready)

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 8, self.read, self.write, sizes=(1,), name="uart")]

    def reset(self) -> None:
        # Datasheet, table "UART reset configuration"; the divisor is undefined there.
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.divisor = POWER_ON_DIVISOR
        self.fifo_enabled = False
        self.trigger = 1
        self.rx = collections.deque()
        self.rbr = 0
        self.overrun = False
        self.thr_ipending = False
        self.timeout_pending = False
        self.modem_inputs = MSR_HOST
        self.msr_delta = 0
        self._cancel_timeout()
        self._drain_host_input()
        self._update_irq()

    def close(self) -> None:
        self._cancel_timeout()
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()

    # --- guest accesses -----------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset == RBR:
            if self.lcr & LCR_DLAB:
                return self.divisor & 0xFF
            return self._read_rbr()
        if offset == IER:
            if self.lcr & LCR_DLAB:
                return self.divisor >> 8
            return self.ier
        if offset == IIR:
            source = self._interrupt_source()
            if source == IIR_THRI:
                # Datasheet: reading IIR clears the THRE interrupt when it is the one reported.
                self.thr_ipending = False
                self._update_irq()
            return source | (IIR_FIFO if self.fifo_enabled else 0)
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            value = self._lsr()
            if self.overrun:
                self.overrun = False  # error bits clear on LSR read
                self._update_irq()
            return value
        if offset == MSR:
            value = self.modem_inputs | self.msr_delta
            if self.msr_delta:
                self.msr_delta = 0  # delta bits clear on MSR read
                self._update_irq()
            return value
        return self.scr

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == THR:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._write_thr(value)
        elif offset == IER:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                enabled = value & ~self.ier & IER_THRI
                self.ier = value & 0x0F
                if enabled:
                    self.thr_ipending = True  # THR is always empty: enabling THRI interrupts at once
                self._update_irq()
        elif offset == FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self._write_mcr(value)
        elif offset == SCR:
            self.scr = value
        # LSR and MSR are read-only here (writing them is for factory test only).

    # --- transmit -----------------------------------------------------------------------

    def _write_thr(self, value: int) -> None:
        self.thr_ipending = False
        self._update_irq()
        if self.mcr & MCR_LOOP:
            self._line_in(value)  # loopback: TX feeds RX, the line stays marking
            self._rx_activity()
        else:
            self.backend.write(_BYTES[value])
        # The byte left at once: THR is empty again, which re-arms the THRE interrupt.
        self.thr_ipending = True
        self._update_irq()

    # --- receive ------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Characters arriving on the serial line now (machine thread); overflow is an overrun."""
        if self.mcr & MCR_LOOP:
            return  # the receiver is disconnected from the line in loopback
        for byte in data:
            self._line_in(byte)
        if data:
            self._rx_activity()
        self._update_irq()

    def feed(self, data: bytes) -> None:
        """Host input (machine thread): queued on the host side, moved into the receiver as room frees up."""
        self.backend.input.put(data)
        self._drain_host_input()

    def _host_input_ready(self) -> None:
        # A backend thread: device state is touched on the machine thread only.
        self.ctx.clock.call_soon_threadsafe(self._drain_host_input)

    def _drain_host_input(self) -> None:
        if self.mcr & MCR_LOOP:
            return
        chunk = self.backend.input.take((FIFO_SIZE if self.fifo_enabled else 1) - len(self.rx))
        if chunk:
            self.receive(chunk)

    def _line_in(self, byte: int) -> None:
        """One character completes in the receive shift register."""
        rx = self.rx
        if self.fifo_enabled:
            if len(rx) >= FIFO_SIZE:
                self.overrun = True  # the FIFO keeps its contents; the new character is lost
                return
        elif rx:
            self.overrun = True  # non-FIFO: the unread character is overwritten
            rx.clear()
        rx.append(byte)

    def _read_rbr(self) -> int:
        if self.rx:
            self.rbr = self.rx.popleft()
            self.timeout_pending = False  # datasheet: a read clears the timeout and restarts it
            self._drain_host_input()
            self._rx_activity()
            self._update_irq()
        return self.rbr

    # --- character timeout (FIFO mode) --------------------------------------------------

    def char_time_ns(self) -> int:
        """One character on the line: start, data, parity and stop bits at the current divisor."""
        half_bits = 2 * (1 + 5 + (self.lcr & 0x03) + (1 if self.lcr & LCR_PARITY else 0))
        if self.lcr & LCR_STOP2:
            half_bits += 3 if self.lcr & 0x03 == 0 else 4  # 1.5 stop bits with 5-bit words
        else:
            half_bits += 2
        divisor = self.divisor or 1
        return half_bits * divisor * 16 * 1_000_000_000 // (2 * CLOCK_HZ)

    def _rx_activity(self) -> None:
        """A character was received or read: the 4-character timeout starts over."""
        self._last_rx_activity = self.ctx.clock.now()
        # One timer at a time, re-armed lazily when it fires early, rather than one per character.
        if not self._timer.armed and self.fifo_enabled and self.rx and not self.timeout_pending:
            self._timer.mod(self._last_rx_activity + 4 * self.char_time_ns())

    def _timeout_expired(self) -> None:
        if not (self.fifo_enabled and self.rx) or self.timeout_pending:
            return
        due = self._last_rx_activity + 4 * self.char_time_ns()
        now = self.ctx.clock.now()
        if now < due:
            self._timer.mod(due)
            return
        self.timeout_pending = True
        self._update_irq()

    def _cancel_timeout(self) -> None:
        self.timeout_pending = False
        self._timer.cancel()

    # --- FIFO and modem control -----------------------------------------------------------

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if not enable:
            # The other bits are programmed only together with bit 0 (datasheet FCR description).
            value = 0
        if enable != self.fifo_enabled:
            # Datasheet FCR bit 0: changing FIFO mode clears both FIFOs.
            value |= FCR_CLEAR_RX | FCR_CLEAR_TX
            self.fifo_enabled = enable
        if value & FCR_CLEAR_RX:
            # The shift register and LSR error bits are not affected.
            self.rx.clear()
            self._cancel_timeout()
        # FCR_CLEAR_TX: the TX FIFO is always empty (transmit is instantaneous).
        if enable:
            self.trigger = TRIGGER_LEVELS[value >> 6]
        self._drain_host_input()
        self._update_irq()

    def _write_mcr(self, value: int) -> None:
        was_loop = self.mcr & MCR_LOOP
        self.mcr = value & MCR_MASK
        if self.mcr & MCR_LOOP:
            # Datasheet, loopback: the modem outputs drive the modem inputs internally.
            inputs = ((MSR_CTS if self.mcr & MCR_RTS else 0) | (MSR_DSR if self.mcr & MCR_DTR else 0)
                      | (MSR_RI if self.mcr & MCR_OUT1 else 0) | (MSR_DCD if self.mcr & MCR_OUT2 else 0))
        else:
            inputs = MSR_HOST
        self._set_modem_inputs(inputs)
        if was_loop and not self.mcr & MCR_LOOP:
            self._drain_host_input()
        self._update_irq()

    def _set_modem_inputs(self, inputs: int) -> None:
        changed = self.modem_inputs ^ inputs
        delta = 0
        if changed & MSR_CTS:
            delta |= MSR_DCTS
        if changed & MSR_DSR:
            delta |= MSR_DDSR
        if changed & MSR_RI and not inputs & MSR_RI:
            delta |= MSR_TERI  # trailing edge of RI only
        if changed & MSR_DCD:
            delta |= MSR_DDCD
        self.modem_inputs = inputs
        self.msr_delta |= delta

    # --- status and interrupts ----------------------------------------------------------

    def _lsr(self) -> int:
        return (LSR_DR if self.rx else 0) | (LSR_OE if self.overrun else 0) | LSR_THRE | LSR_TEMT

    def _interrupt_source(self) -> int:
        """IIR bits 0-3: the highest-priority pending enabled interrupt (datasheet IIR table)."""
        ier = self.ier
        if ier & IER_RLSI and self.overrun:
            return IIR_RLSI
        if ier & IER_RDI and self.rx:
            if len(self.rx) >= (self.trigger if self.fifo_enabled else 1):
                return IIR_RDI
            if self.timeout_pending:
                return IIR_TIMEOUT
        if ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        if ier & IER_MSI and self.msr_delta:
            return IIR_MSI
        return IIR_NONE

    def _update_irq(self) -> None:
        # PC wiring: INTR reaches the bus through a buffer enabled by OUT2, which loopback forces off.
        level = (self.mcr & (MCR_OUT2 | MCR_LOOP)) == MCR_OUT2 and self._interrupt_source() != IIR_NONE
        if level != self._driven:
            self._driven = level
            self.line.set_level(level)

    @property
    def baud(self) -> int:
        """The line speed the divisor selects (115200 / divisor)."""
        return CLOCK_HZ // 16 // (self.divisor or 1)


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Uart16550]
