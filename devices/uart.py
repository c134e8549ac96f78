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
  the new character replaces the unread one). Host input from a backend goes through
  ``feed(data)`` instead, which holds it on the host side and moves it into the receiver as
  room frees up (QEMU's ``can_receive``), so pasting a long line loses nothing.
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

import atexit
import collections
import functools
import logging
import os
import select
import socket
import stat
import sys
import threading
from typing import IO, Callable, Literal, Sequence

import attrs

from vmcore.bus import Region, Space
from vmcore.clock import Timer
from vmcore.device import Device, DeviceContext, PropertyError, in_range, prop
from vmcore.hookspecs import hookimpl

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
#: 9600 baud from the 1.8432 MHz clock; the datasheet leaves the latch undefined at power-on.
POWER_ON_DIVISOR = 12
CLOCK_HZ = 1_843_200

#: Standard PC serial ports: port base and ISA IRQ.
PRESETS = {"com1": (0x3F8, 4), "com2": (0x2F8, 3), "com3": (0x3E8, 4), "com4": (0x2E8, 3)}


class _Unset(int):
    """An int default that remembers nobody gave it, so a preset may replace it."""

    __slots__ = ()


@attrs.frozen
class Uart16550Config:
    port: int = prop(_Unset(0x3F8), "First of the 8 I/O ports (COM1: 0x3F8).", hex=True,
                     validator=in_range(0, 0xFFF8))
    irq: int = prop(_Unset(4), "ISA IRQ line the UART drives (COM1: 4).", validator=in_range(0, 15))
    preset: Literal["", "com1", "com2", "com3", "com4"] = prop(
        "", "Standard PC port and IRQ (com1 0x3F8/4, com2 0x2F8/3, com3 0x3E8/4, com4 0x2E8/3); "
            "a port or irq given explicitly wins over the preset."
    )
    backend: Literal["stdio", "file", "memory", "socket", "null"] = prop(
        "stdio", "Host end of the line: stdio, a file (see path, input), an in-memory buffer "
                 "(device.output), a Unix socket (see path, socket_mode) or nothing."
    )
    path: str = prop("", "file: the output file (truncated at start); socket: the Unix socket path.")
    input: str = prop("", "file backend: a file whose bytes are received at start (optional).")
    socket_mode: Literal["server", "client"] = prop(
        "server", "socket backend: listen on path and take one client at a time (server), "
                  "or connect to path (client)."
    )

    def __attrs_post_init__(self) -> None:
        # The preset replaces only defaults; then store plain ints so nothing downstream sees _Unset.
        port, irq = PRESETS.get(self.preset, (self.port, self.irq))
        object.__setattr__(self, "port", int(port if isinstance(self.port, _Unset) else self.port))
        object.__setattr__(self, "irq", int(irq if isinstance(self.irq, _Unset) else self.irq))
        if self.backend in ("file", "socket") and not self.path:
            raise PropertyError("backend", f"path must be set when backend is {self.backend!r}")
        if self.input and self.backend != "file":
            raise PropertyError("input", f"input is read by the file backend only, not {self.backend!r}")


# --- backends: the host end of the serial line --------------------------------------------

Deliver = Callable[[bytes], None]


class _Worker:
    """A daemon thread that can be woken out of a blocking wait and joined."""

    def __init__(self, name: str, target: Callable[[_Worker], None]) -> None:
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=target, args=(self,), name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def readable(self, fileobj: int | socket.socket) -> bool:
        """Wait until ``fileobj`` is readable: False once stop() was called (or the fd went bad)."""
        try:
            ready, _, _ = select.select([fileobj, self._wake_r], [], [])
        except (OSError, ValueError):
            return False
        return self._wake_r not in ready

    def stop(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            # Close the pipe only once the thread cannot select on it any more (fd reuse).
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake_r = self._wake_w = -1


def _read_fd_until_eof(fd: int, deliver: Deliver) -> Callable[[_Worker], None]:
    def run(worker: _Worker) -> None:
        while worker.readable(fd):
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            deliver(data)

    return run


class NullBackend:
    """Drops output; never receives."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def start(self, deliver: Deliver) -> None:
        pass

    def write(self, byte: int) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryBackend(NullBackend):
    """Output into a bytearray (the device's ``output``); tests call ``receive``/``feed``."""

    def __init__(self, log: logging.Logger, buffer: bytearray) -> None:
        super().__init__(log)
        self.buffer = buffer

    def write(self, byte: int) -> None:
        self.buffer.append(byte)


class _StreamOutput(NullBackend):
    """Writes to a binary stream; a stream the host closed or a broken pipe drops output."""

    def __init__(self, log: logging.Logger, stream: IO[bytes] | None, flush_each: bool) -> None:
        super().__init__(log)
        self._stream = stream
        self._flush_each = flush_each

    def write(self, byte: int) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.write(bytes((byte,)))
            if self._flush_each or byte == 0x0A:
                stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: closed by the host
            self.log.warning("serial output stopped: %s", exc)
            self._stream = None

    def _flush(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and not stream.closed:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


class StdioBackend(_StreamOutput):
    """Output to stdout; stdin read in a thread (raw mode on a tty, restored on close and at exit)."""

    def __init__(self, log: logging.Logger) -> None:
        # Flushed per byte: an interactive guest's prompt has no newline after it.
        super().__init__(log, getattr(sys.stdout, "buffer", None), flush_each=True)
        self._reader: _Worker | None = None
        self._tty_fd = -1
        self._tty_saved: list | None = None
        self._tty_raw: list | None = None

    def start(self, deliver: Deliver) -> None:
        try:
            fd = sys.stdin.fileno()
            os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            # No stdin, closed, or a pseudo-file (pytest's capture): nothing to read.
            self.log.debug("stdin is not readable; serial input disabled")
            return
        if os.isatty(fd):
            self._make_raw(fd)
        self._reader = _Worker("uart-stdin", _read_fd_until_eof(fd, deliver))
        self._reader.start()

    def _make_raw(self, fd: int) -> None:
        import termios

        saved = termios.tcgetattr(fd)
        raw = termios.tcgetattr(fd)
        # Keystrokes go to the guest as typed: no line editing, echo, CR/NL mapping or flow
        # control. Output processing (OPOST) and signal keys (Ctrl-C stops vmcore) are kept.
        raw[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                    | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        raw[2] = (raw[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        raw[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, raw)
        self._tty_fd, self._tty_saved, self._tty_raw = fd, saved, termios.tcgetattr(fd)
        atexit.register(self._restore_tty)

    def _restore_tty(self) -> None:
        saved, self._tty_saved = self._tty_saved, None
        if saved is None:
            return
        atexit.unregister(self._restore_tty)
        import termios

        try:
            # Only if the terminal is still as we left it: with two stdio UARTs, the one that
            # saw the original settings restores them whichever closes first.
            if termios.tcgetattr(self._tty_fd) == self._tty_raw:
                termios.tcsetattr(self._tty_fd, termios.TCSADRAIN, saved)
        except (OSError, termios.error):
            pass

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self._restore_tty()
        self._flush()  # stdout is the host's: flushed, never closed


class FileBackend(_StreamOutput):
    """Output to ``path`` (truncated); the optional ``input`` file is read in a thread and received."""

    def __init__(self, log: logging.Logger, path: str, input_path: str) -> None:
        self._input = open(input_path, "rb") if input_path else None
        try:
            output = open(path, "wb")
        except OSError:
            if self._input is not None:
                self._input.close()
            raise
        super().__init__(log, output, flush_each=False)
        self._output = output
        self._reader: _Worker | None = None

    def start(self, deliver: Deliver) -> None:
        if self._input is not None:
            self._reader = _Worker("uart-file-input", _read_fd_until_eof(self._input.fileno(), deliver))
            self._reader.start()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self._input is not None:
            self._input.close()
            self._input = None
        self._flush()
        self._output.close()


class SocketBackend(NullBackend):
    """A Unix stream socket: bytes from the peer are received, transmitted bytes are sent to it.

    Server mode listens on ``path`` and serves one client at a time (the next may connect
    once the first has gone); client mode connects to ``path`` at start. Sends never block
    the machine: with no peer, or a peer that stopped reading, output is dropped and logged once.
    """

    def __init__(self, log: logging.Logger, path: str, mode: str) -> None:
        super().__init__(log)
        self.path = path
        self.mode = mode
        self._lock = threading.Lock()  # guards _peer: the worker sets it, the machine thread sends
        self._peer: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._worker: _Worker | None = None
        self._dropping = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if mode == "server":
                self._remove_stale_socket()
                sock.bind(path)
                sock.listen(1)
                self._listener = sock
            else:
                sock.connect(path)
                sock.setblocking(False)
                self._peer = sock
        except OSError:
            sock.close()
            raise

    def _remove_stale_socket(self) -> None:
        # A socket file left by an earlier run would make bind fail; anything else is not ours.
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def start(self, deliver: Deliver) -> None:
        self._worker = _Worker(f"uart-socket-{self.mode}", functools.partial(self._run, deliver))
        self._worker.start()

    def _run(self, deliver: Deliver, worker: _Worker) -> None:
        while True:
            peer = self._peer
            if peer is None:
                listener = self._listener
                if listener is None or not worker.readable(listener):
                    return
                try:
                    peer, _ = listener.accept()
                except OSError:
                    return
                peer.setblocking(False)
                with self._lock:
                    self._peer = peer
                    self._dropping = False
                self.log.info("serial client connected on %s", self.path)
            if not self._pump(peer, deliver, worker):
                return
            with self._lock:
                self._peer = None
            peer.close()
            if self._listener is None:
                return  # client mode: the server went away

    def _pump(self, peer: socket.socket, deliver: Deliver, worker: _Worker) -> bool:
        """Receive from ``peer`` until it closes (True) or the backend stops (False)."""
        while worker.readable(peer):
            try:
                data = peer.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                return True
            if not data:
                return True
            deliver(data)
        return False

    def write(self, byte: int) -> None:
        with self._lock:
            peer = self._peer
            if peer is not None:
                try:
                    peer.send(bytes((byte,)))
                    return
                except BlockingIOError:
                    reason = "the client is not reading"
                except OSError as exc:
                    reason = f"the client went away ({exc})"
            else:
                reason = "no client is connected"
            if not self._dropping:
                self._dropping = True
                self.log.warning("serial output on %s dropped: %s", self.path, reason)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        with self._lock:
            peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except OSError:
                pass


def make_backend(config: Uart16550Config, output: bytearray, log: logging.Logger) -> NullBackend:
    if config.backend == "stdio":
        return StdioBackend(log)
    if config.backend == "file":
        return FileBackend(log, config.path, config.input)
    if config.backend == "memory":
        return MemoryBackend(log, output)
    if config.backend == "socket":
        return SocketBackend(log, config.path, config.socket_mode)
    return NullBackend(log)


# --- the UART ---------------------------------------------------------------------------


class Uart16550(Device):
    """NS16550A UART with 16-byte FIFOs: the PC serial port."""

    type_name = "uart16550"
    Config = Uart16550Config

    # Register state: plain attributes, set in reset().
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

    def __init__(self, config: Uart16550Config, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.line = ctx.irq(config.irq)
        self._driven = False  # the level this UART drives (the line may be shared)
        self._timer: Timer | None = None
        self._last_rx_activity = 0
        #: Host input waiting for room in the receiver (see feed()).
        self.host_pending = bytearray()
        #: Everything transmitted, when backend is 'memory'.
        self.output = bytearray()
        self.reset()
        self.backend = make_backend(config, self.output, ctx.log)
        self.backend.start(self._post_host_input)

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
            self.backend.write(value)
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
        """Host input (machine thread): queued, and moved into the receiver as room frees up."""
        self.host_pending += data
        self._drain_host_input()

    def _post_host_input(self, data: bytes) -> None:
        # Backend threads: device state is touched on the machine thread only.
        self.ctx.clock.call_soon_threadsafe(functools.partial(self.feed, data))

    def _drain_host_input(self) -> None:
        if not self.host_pending or self.mcr & MCR_LOOP:
            return
        room = (FIFO_SIZE if self.fifo_enabled else 1) - len(self.rx)
        if room > 0:
            chunk = bytes(self.host_pending[:room])
            del self.host_pending[:room]
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
        if self._timer is None and self.fifo_enabled and self.rx and not self.timeout_pending:
            self._timer = self.ctx.clock.call_later(4 * self.char_time_ns(), self._timeout_expired)

    def _timeout_expired(self) -> None:
        self._timer = None
        if not (self.fifo_enabled and self.rx) or self.timeout_pending:
            return
        due = self._last_rx_activity + 4 * self.char_time_ns()
        now = self.ctx.clock.now()
        if now < due:
            self._timer = self.ctx.clock.call_at(due, self._timeout_expired)
            return
        self.timeout_pending = True
        self._update_irq()

    def _cancel_timeout(self) -> None:
        self.timeout_pending = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

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
