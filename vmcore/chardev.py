"""Host character backends: the host end of a device's byte stream (a serial line, a debug console).

A backend is a sink (:meth:`Backend.write`) and a source (:attr:`Backend.input`), injected into a
device, which never touches host I/O itself. Its life has three steps, so that building a machine
(``vmcore check``) opens, creates, truncates and unlinks nothing:

1. **Built** with the device, from its properties: checks what it can without opening anything
   (a missing folder, a directory, an unreadable input, a Unix socket path that is too long), and
   raises :class:`~vmcore.device.PropertyError` naming the property.
2. **Opened** by the device's ``start()``, when the machine starts running: output files are
   created or truncated, sockets bound or connected, input readers started. Nothing blocks: a
   FIFO or device file is opened non-blocking. A socket path another process serves is refused
   ("in use"), and so is one left behind by an earlier run: only a socket this backend bound is
   ever removed.
3. **Closed** when the machine stops: outputs flushed, readers stopped and joined.

Host input is bounded. A reader thread reads from the host only while the backend's
:class:`InputBuffer` has room, and the device takes bytes from it as its receiver frees up (the
backpressure vm-superio's ``fifo_capacity`` leaves to its caller): a guest that never reads leaves
the rest in the host's file, pipe or socket, and nothing is lost or grows. A device with no
receiver (a debug console) has a buffer of capacity 0: what a socket peer sends is read and
dropped, so its leaving is still seen, and stdin is never touched.

Every device with a byte stream offers the same properties for its host end (``backend``,
``path``, ``socket_mode``; :func:`backend_prop` and its siblings declare them) and builds the
backend with :func:`make_backend`; what it wrote to a ``memory`` backend is its ``output``.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import select
import signal
import stat
import sys
import threading
from typing import IO, TYPE_CHECKING, Any, Callable, Literal

from .device import PropertyError, prop
from .immutable import Immutable

if TYPE_CHECKING:
    import socket  # imported where a socket backend opens (a few ms every run would pay)

#: Most bytes one host read asks for.
READ_CHUNK = 4096
#: Most output a server-mode socket holds for a client not connected yet (the latest bytes).
HELD_OUTPUT = 4096
#: Longest wait for a server to take a client-mode connection, in seconds.
CONNECT_TIMEOUT = 5.0
#: Longest Unix socket path (sockaddr_un.sun_path, less its NUL).
MAX_SOCKET_PATH = 107

#: Called from a reader thread when a backend's input goes from empty to non-empty.
Ready = Callable[[], None]


class HostFile(Immutable):
    """A host file a device reads (an input) or creates and writes (an output), by property."""

    key: str  # the property naming it, for errors against the profile
    path: str
    output: bool


# --- host input -------------------------------------------------------------------------


class InputBuffer:
    """Host input on its way to a device: filled by a reader thread, drained by the machine thread.

    A reader asks :meth:`wait_for_room` before each host read, so the buffer never holds more
    than ``capacity`` bytes read from the host. It is woken once half the buffer is free, not
    for each byte a guest takes, so a reader and a guest reading byte by byte do not trade
    one-byte reads. ``ready`` is called (from the reader's thread) only when the buffer goes
    from empty to non-empty, so at most one wake-up is ever in flight. Capacity 0 is a device
    with no receiver: readers read on and what they read is dropped.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._low_water = capacity // 2  # a waiting reader resumes at or below this
        self._data = bytearray()
        self._changed = threading.Condition(threading.Lock())
        self._closed = False
        self.ready: Ready | None = None
        # A recording's gate (see hold): host input waits here until the machine thread commits it.
        self._pending = bytearray()
        self._post: Callable[[Callable[[], None]], None] | None = None
        self._committed: Callable[[bytes], None] | None = None
        self._silenced = False

    def __len__(self) -> int:
        return len(self._data)

    def wait_for_room(self) -> int:
        """Block until there is room (reader thread): how many bytes may be read, 0 once closed."""
        if not self.capacity or self._silenced:  # no receiver: read on, and put() drops it
            return 0 if self._closed else READ_CHUNK
        with self._changed:
            if len(self._data) + len(self._pending) >= self.capacity:
                while not self._closed and len(self._data) + len(self._pending) > self._low_water:
                    self._changed.wait()
            return 0 if self._closed else self.capacity - len(self._data) - len(self._pending)

    def put(self, data: bytes) -> None:
        """Append host input (any thread): a reader puts no more than :meth:`wait_for_room` allowed."""
        if not data or not self.capacity or self._silenced:
            return
        post = self._post
        with self._changed:
            if post is not None:  # a recording's gate: the machine thread commits it (see hold)
                first = not self._pending
                self._pending += data
            else:
                was_empty = not self._data
                self._data += data
        if post is not None:
            if first:
                post(self._commit)
            return
        ready = self.ready
        if was_empty and ready is not None:
            ready()

    def hold(self, post: Callable[[Callable[[], None]], None], committed: Callable[[bytes], None]) -> None:
        """Gate host input for a recording (vmcore.record): what readers put waits, unseen by the
        device, until ``post`` (a clock's ``call_soon_threadsafe``) has the machine thread commit
        it, at a point of the run a replay can name; ``committed`` is told what each commit added."""
        self._post, self._committed = post, committed

    def _commit(self) -> None:
        with self._changed:
            data = bytes(self._pending)
            self._pending.clear()
        if data:
            assert self._committed is not None
            self._committed(data)
            self.inject(data)

    def silence(self) -> None:
        """Receive nothing from the host from now on (a replay gives the device its input instead):
        readers read on, and what they read is dropped."""
        self._silenced = True
        with self._changed:
            self._pending.clear()
            self._changed.notify_all()

    def inject(self, data: bytes) -> None:
        """Input from the machine thread itself (a commit, a replay): visible to the device at once."""
        if not data:
            return
        with self._changed:
            was_empty = not self._data
            self._data += data
        ready = self.ready
        if was_empty and ready is not None:
            ready()

    def take(self, limit: int) -> bytes:
        """Remove and return up to ``limit`` bytes (machine thread); never blocks on the host."""
        if not self._data or limit <= 0:  # unlocked peek: a racing put() calls ready() anyway
            return b""
        with self._changed:
            chunk = bytes(self._data[:limit])
            del self._data[:limit]
            if len(self._data) <= self._low_water:
                self._changed.notify_all()
        return chunk

    def close(self) -> None:
        """Wake every reader waiting for room, for good."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class _Reader:
    """A daemon thread that moves host input into an InputBuffer; stop() wakes it from any wait."""

    def __init__(self, name: str, buffer: InputBuffer, target: Callable[[_Reader], None]) -> None:
        self.buffer = buffer
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=target, args=(self,), name=name, daemon=True)
        self._thread.start()

    def readable(self, fileobj: int | socket.socket) -> bool:
        """Wait until ``fileobj`` is readable: False once stop() was called (or the fd went bad)."""
        poller = select.poll()  # not select(): any fd number works
        try:
            poller.register(fileobj, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            ready = poller.poll()
        except (OSError, ValueError):
            return False
        return all(fd != self._wake_r for fd, _ in ready)

    def pump(self, fileobj: int | socket.socket, read: Callable[[int], bytes]) -> bool:
        """Move input while there is room, until EOF (True) or stop() (False)."""
        while True:
            room = self.buffer.wait_for_room()
            if not room or not self.readable(fileobj):
                return False
            try:
                data = read(min(room, READ_CHUNK))
            except (BlockingIOError, InterruptedError):
                continue  # select woke us for nothing (a tty, a shared stdin)
            except OSError:
                return True
            if not data:
                return True
            self.buffer.put(data)

    def stop(self) -> None:
        self.buffer.close()
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


# --- checks at build: stat only, never open -----------------------------------------------


def check_output_path(key: str, path: str) -> None:
    """An output file can be created at ``path``: its folder exists, and it is not a folder."""
    if os.path.isdir(path):
        raise PropertyError(key, f"{path} is a directory")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise PropertyError(key, f"cannot create {path}: folder {folder} does not exist")


def check_input_path(key: str, path: str) -> None:
    """``path`` names something readable that is not a folder (a file, FIFO or device)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise PropertyError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise PropertyError(key, f"{path} is a directory")
    if not os.access(path, os.R_OK):
        raise PropertyError(key, f"cannot read {path}: permission denied")


def open_output(key: str, path: str) -> IO[bytes]:
    """Create or truncate ``path`` for writing without blocking (a FIFO needs a reader already)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise PropertyError(key, f"{path} is a FIFO with no reader") from None
        raise PropertyError(key, f"cannot open {path}: {exc.strerror or exc}") from None
    os.set_blocking(fd, True)  # writes wait for a slow reader, as stdout's do
    return os.fdopen(fd, "wb")


def open_input(key: str, path: str) -> int:
    """Open ``path`` for reading without blocking: a FIFO with no writer yet, a tty without carrier."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PropertyError(key, f"cannot read {path}: {exc.strerror or exc}") from None


# --- backends -----------------------------------------------------------------------------


class Backend:
    """The host end of a byte stream; this base drops output and never receives (``null``)."""

    def __init__(self, log: logging.Logger, input_capacity: int = 0) -> None:
        self.log = log
        #: Host input waiting for the device (see :class:`InputBuffer`).
        self.input = InputBuffer(input_capacity)

    def host_files(self) -> tuple[HostFile, ...]:
        """The host files this backend will open (checked by the machine against its inputs)."""
        return ()

    def open(self, ready: Ready | None = None) -> None:
        """Open the host end and start reading input; ``ready`` as in :attr:`InputBuffer.ready`."""
        self.input.ready = ready

    def write(self, data: bytes) -> None:
        """Send bytes to the host end (machine thread); output before open() or after close() is dropped."""

    def close(self) -> None:
        """Stop reading and release the host end; safe to call more than once, or without open()."""
        self.input.close()


class MemoryBackend(Backend):
    """Output appended to a bytearray the device exposes; input only through ``input.put``."""

    def __init__(self, log: logging.Logger, buffer: bytearray, input_capacity: int = 0) -> None:
        super().__init__(log, input_capacity)
        self.buffer = buffer

    def write(self, data: bytes) -> None:
        self.buffer += data


class StreamBackend(Backend):
    """Output to a binary stream, flushed at each newline (or each write); a failing stream drops output."""

    def __init__(self, log: logging.Logger, input_capacity: int = 0, flush_each: bool = False) -> None:
        super().__init__(log, input_capacity)
        self._stream: IO[bytes] | None = None
        self._flush_each = flush_each

    def write(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.write(data)
            if self._flush_each or b"\n" in data:
                stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: closed by the host
            self.log.warning("output stopped: %s", exc)
            self._stream = None

    def _flush(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and not stream.closed:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


class StdoutBackend(StreamBackend):
    """Output to the process's stdout or stderr (found when opened; flushed, never closed)."""

    def __init__(self, log: logging.Logger, which: Literal["stdout", "stderr"] = "stdout",
                 input_capacity: int = 0, flush_each: bool = False) -> None:
        super().__init__(log, input_capacity, flush_each)
        self._which = which

    def open(self, ready: Ready | None = None) -> None:
        super().open(ready)
        self._stream = getattr(getattr(sys, self._which), "buffer", None)

    def close(self) -> None:
        super().close()
        self._flush()


#: The terminal's escape key (QEMU's, Ctrl-A): Ctrl-A x leaves vmcore, Ctrl-A Ctrl-A sends a Ctrl-A.
ESCAPE = 0x01


class TerminalKeys:
    """What a terminal's keys do: every byte goes to the guest (Ctrl-C too, as on a serial
    console), except the escape Ctrl-A: then ``x`` calls ``leave`` and Ctrl-A sends one Ctrl-A;
    any other key after it is dropped."""

    def __init__(self, leave: Callable[[], None]) -> None:
        self.leave = leave
        self._escaped = False

    def filter(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            if self._escaped:
                self._escaped = False
                if byte in (ord("x"), ord("X")):
                    self.leave()
                    break
                if byte == ESCAPE:
                    out.append(byte)
            elif byte == ESCAPE:
                self._escaped = True
            else:
                out.append(byte)
        return bytes(out)


def _leave_vmcore() -> None:
    """Ctrl-A x: stop the run as a SIGINT would (the machine reports "interrupted")."""
    os.kill(os.getpid(), signal.SIGINT)


class StdioBackend(StdoutBackend):
    """Output to stdout, flushed per write (a prompt has no newline); stdin read in a thread.

    A tty on stdin is put in raw mode while open, and restored on close and at interpreter exit.
    In raw mode every key goes to the guest, Ctrl-C included (as on a serial console): Ctrl-A x
    leaves vmcore, Ctrl-A Ctrl-A sends a Ctrl-A (QEMU's keys, :class:`TerminalKeys`).
    """

    def __init__(self, log: logging.Logger, input_capacity: int) -> None:
        super().__init__(log, "stdout", input_capacity, flush_each=True)
        self._reader: _Reader | None = None
        self._tty_fd = -1
        self._tty_saved: list | None = None
        self._tty_raw: list | None = None

    def open(self, ready: Ready | None = None) -> None:
        super().open(ready)
        try:
            fd = sys.stdin.fileno()
            os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            # No stdin, closed, or a pseudo-file (pytest's capture): nothing to read.
            self.log.debug("stdin is not readable; input disabled")
            return
        read = raw_read = _fd_reader(fd)
        if os.isatty(fd):
            self._make_raw(fd)
            keys = TerminalKeys(_leave_vmcore)

            def read_keys(count: int) -> bytes:
                data = keys.filter(raw_read(count))
                if not data:
                    raise BlockingIOError  # only an escape: nothing for the guest yet (not EOF)
                return data

            read = read_keys
        self._reader = _Reader("chardev-stdin", self.input, lambda reader: reader.pump(fd, read))

    def _make_raw(self, fd: int) -> None:
        import termios

        saved = termios.tcgetattr(fd)
        raw = termios.tcgetattr(fd)
        # Keystrokes go to the guest as typed: no line editing, echo, CR/NL mapping, flow
        # control or signal keys (Ctrl-C is the guest's; Ctrl-A x leaves). Output processing
        # (OPOST) is kept.
        raw[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                    | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        raw[2] = (raw[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        raw[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN | termios.ISIG)
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
            # Only if the terminal is still as we left it: with two stdio backends, the one that
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
        super().close()


class FileBackend(StreamBackend):
    """Output to ``path`` (created or truncated when opened); the optional ``input`` is read and received."""

    def __init__(self, log: logging.Logger, path: str, input_path: str = "", input_capacity: int = 0) -> None:
        super().__init__(log, input_capacity)
        check_output_path("path", path)
        if input_path:
            check_input_path("input", input_path)
        self.path = path
        self.input_path = input_path
        self._input_fd = -1
        self._reader: _Reader | None = None

    def host_files(self) -> tuple[HostFile, ...]:
        files = (HostFile("path", self.path, output=True),)
        return files + ((HostFile("input", self.input_path, output=False),) if self.input_path else ())

    def open(self, ready: Ready | None = None) -> None:
        super().open(ready)
        if self.input_path:
            self._input_fd = open_input("input", self.input_path)
        try:
            self._stream = open_output("path", self.path)
        except PropertyError:
            self.close()
            raise
        if self._input_fd >= 0:
            fd = self._input_fd
            self._reader = _Reader("chardev-file-input", self.input, lambda reader: reader.pump(fd, _fd_reader(fd)))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        super().close()
        if self._input_fd >= 0:
            os.close(self._input_fd)
            self._input_fd = -1
        stream = self._stream
        self._flush()
        if stream is not None:
            stream.close()


class SocketBackend(Backend):
    """A Unix stream socket: bytes from the peer are input, written bytes are sent to it.

    Server mode listens on ``path`` and serves one client at a time (the next may connect once
    the first has gone); client mode connects to ``path`` when opened. Output written while no
    client is connected is held for the next one, the last :data:`HELD_OUTPUT` bytes of it (a
    client connecting once the machine runs still sees the guest's banner). Sends never block
    the machine: output beyond that, or to a peer that stopped reading, is dropped and logged once.
    """

    def __init__(self, log: logging.Logger, path: str, mode: Literal["server", "client"],
                 input_capacity: int = 0) -> None:
        super().__init__(log, input_capacity)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise PropertyError("path", f"a Unix socket path is at most {MAX_SOCKET_PATH} bytes; "
                                        f"{path} has {len(os.fsencode(path))}")
        if mode == "server":
            check_output_path("path", path)
            self._refuse_non_socket(path)
        self.path = path
        self.mode = mode
        self._lock = threading.Lock()  # guards _peer: the reader sets it, the machine thread sends
        self._peer: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file we made
        self._reader: _Reader | None = None
        self._dropping = False
        self._held = bytearray()  # output for the next client (see HELD_OUTPUT)

    @staticmethod
    def _refuse_non_socket(path: str) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise PropertyError("path", f"{path} exists and is not a socket; refusing to replace it")

    def host_files(self) -> tuple[HostFile, ...]:
        return (HostFile("path", self.path, output=self.mode == "server"),)

    def open(self, ready: Ready | None = None) -> None:
        super().open(ready)
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.mode == "server":
                self._refuse_existing(self.path)
                try:
                    sock.bind(self.path)
                except OSError as exc:
                    raise PropertyError("path", f"cannot listen on {self.path}: {exc.strerror or exc}") from None
                info = os.lstat(self.path)
                self._bound = (info.st_dev, info.st_ino)
                sock.listen(1)
                self._listener = sock
            else:
                sock.settimeout(CONNECT_TIMEOUT)  # a server that never accepts must not hang the start
                try:
                    sock.connect(self.path)
                except OSError as exc:
                    raise PropertyError("path", f"cannot connect to {self.path}: {exc.strerror or exc}") from None
                sock.setblocking(False)
                self._peer = sock
        except BaseException:
            sock.close()
            self.close()
            raise
        self._reader = _Reader(f"chardev-socket-{self.mode}", self.input, self._run)

    def _refuse_existing(self, path: str) -> None:
        """Bind only a free path: a live socket is another process's, a dead one not ours to remove."""
        self._refuse_non_socket(path)
        if not os.path.lexists(path):
            return
        import socket

        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.setblocking(False)
            probe.connect(path)
            live = True
        except BlockingIOError:  # listening, its backlog full
            live = True
        except OSError:
            live = False
        finally:
            probe.close()
        if live:
            raise PropertyError("path", f"{path} is in use: another process is listening on it")
        raise PropertyError("path", f"{path} is a socket nobody listens on (left by an earlier run?); "
                                    "remove it first: vmcore removes only sockets it made")

    def _run(self, reader: _Reader) -> None:
        while True:
            peer = self._peer
            if peer is None:
                listener = self._listener
                if listener is None or not reader.readable(listener):
                    return
                try:
                    peer, _ = listener.accept()
                except OSError:
                    return
                peer.setblocking(False)
                with self._lock:
                    self._peer = peer
                    self._dropping = False
                    held, self._held = bytes(self._held), bytearray()
                    if held:
                        self._send(peer, held)
                self.log.info("client connected on %s", self.path)
            if not reader.pump(peer, peer.recv):
                return
            with self._lock:
                self._peer = None
            peer.close()
            if self._listener is None:
                return  # client mode: the server went away

    def write(self, data: bytes) -> None:
        with self._lock:
            peer = self._peer
            if peer is not None:
                self._send(peer, data)
            elif self._reader is not None:  # open, between clients
                held = self._held
                held += data
                if len(held) > HELD_OUTPUT:
                    del held[:len(held) - HELD_OUTPUT]
                    self._dropped(f"no client is connected (the last {HELD_OUTPUT} bytes are kept for the next)")

    def _send(self, peer: socket.socket, data: bytes) -> None:
        """Send without blocking (lock held); what the peer cannot take now is dropped."""
        try:
            if peer.send(data) == len(data):
                return
            reason = "the client is not reading"
        except BlockingIOError:
            reason = "the client is not reading"
        except OSError as exc:
            reason = f"the client went away ({exc})"
        self._dropped(reason)

    def _dropped(self, reason: str) -> None:
        if not self._dropping:
            self._dropping = True
            self.log.warning("output on %s dropped: %s", self.path, reason)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        super().close()
        with self._lock:
            peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        bound, self._bound = self._bound, None
        if bound is not None:
            # Remove the socket file only if it is still the one we bound.
            try:
                info = os.lstat(self.path)
                if (info.st_dev, info.st_ino) == bound:
                    os.unlink(self.path)
            except OSError:
                pass


# --- the host end a device's properties choose ------------------------------------------

#: The ``backend`` property: the host end of a device's byte stream.
BackendKind = Literal["stdio", "stderr", "file", "memory", "socket", "null"]
#: The ``socket_mode`` property: listen for a client, or connect to a server.
SocketMode = Literal["server", "client"]


def backend_prop() -> Any:
    """The ``backend`` property, annotated :data:`BackendKind`."""
    return prop("stdio", "Host end of the byte stream: stdio (stdout, and stdin in raw mode where the device "
                         "receives), stderr, a file (see path), an in-memory buffer (device.output), a Unix "
                         "socket (see path, socket_mode) or nothing (null).")


def path_prop() -> Any:
    """The ``path`` property: the file or socket of the ``file`` and ``socket`` backends."""
    return prop("", "file: the output file (truncated when the machine starts); socket: the Unix socket path "
                    "(server: never an existing file; client: a listening socket). Relative to the profile "
                    "that sets it.", path=True)


def socket_mode_prop() -> Any:
    """The ``socket_mode`` property, annotated :data:`SocketMode`."""
    return prop("server", "socket backend: listen on path and take one client at a time, holding the last "
                          "4 KiB of output for a client not connected yet (server), or connect to path (client).")


def check_backend_props(backend: BackendKind, path: str) -> None:
    """The checks between these properties a Config makes in ``__attrs_post_init__``."""
    if backend in ("file", "socket") and not path:
        raise PropertyError("backend", f"path must be set when backend is {backend!r}")


def make_backend(log: logging.Logger, backend: BackendKind, output: bytearray, *, path: str = "",
                 socket_mode: SocketMode = "server", input_path: str = "", input_capacity: int = 0) -> Backend:
    """The host end the properties choose; it opens nothing until the device starts.

    ``output`` is the device's buffer for the ``memory`` backend. ``input_capacity`` 0 is a
    device that receives nothing: stdio leaves stdin alone and, as stderr always does, flushes
    at each newline; a device that receives may print a prompt and wait, so its output is
    flushed at each write.
    """
    if backend in ("stdio", "stderr"):
        if backend == "stdio" and input_capacity:
            return StdioBackend(log, input_capacity)
        which: Literal["stdout", "stderr"] = "stdout" if backend == "stdio" else "stderr"
        return StdoutBackend(log, which, input_capacity, flush_each=bool(input_capacity))
    if backend == "file":
        return FileBackend(log, path, input_path, input_capacity)
    if backend == "memory":
        return MemoryBackend(log, output, input_capacity)
    if backend == "socket":
        return SocketBackend(log, path, socket_mode, input_capacity)
    return Backend(log, input_capacity)


def _fd_reader(fd: int) -> Callable[[int], bytes]:
    return lambda count: os.read(fd, count)
