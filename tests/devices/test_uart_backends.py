"""devices/uart.py with the host ends of the line (vmcore.chardev: file, socket, stdio, memory, null).

Backends read in host threads and post to the machine thread; ``fake_bus.step(0)`` runs
what was posted. Every wait is bounded, so a broken backend fails a test instead of hanging it.
"""

import fcntl
import io
import os
import socket
import sys
import threading
import time

import pytest

import vmcore.chardev as chardev
from vmcore_devices.uart import FIFO_SIZE, HOST_INPUT_BUFFER
from vmcore.device import PropertyError

BASE = 0x3F8
RBR = THR = BASE
FCR = BASE + 2
LSR = BASE + 5
DR = 0x01
TIMEOUT = 5.0


def wait_until(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def receive_from_host(fake_bus, count):
    """Run posted host input and read RBR until ``count`` bytes came in."""
    got = bytearray()

    def pump():
        fake_bus.step(0)
        while len(got) < count and fake_bus.inb(LSR) & DR:
            got.append(fake_bus.inb(RBR))
        return len(got) >= count

    wait_until(pump, f"{count} received bytes (have {bytes(got)!r})")
    return bytes(got)


def recv_exactly(sock, count):
    sock.settimeout(TIMEOUT)
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def transmit(fake_bus, data):
    for byte in data:
        fake_bus.outb(THR, byte)


def worker_threads():
    return [t for t in threading.enumerate() if t.name.startswith("chardev-")]


# --- memory and null --------------------------------------------------------------------


def test_memory_backend_collects_output_in_device_output(fake_bus):
    uart = fake_bus.attach("uart16550", backend="memory")
    transmit(fake_bus, b"ok\n")
    assert uart.output == b"ok\n"


def test_null_backend_drops_output(fake_bus, capfd):
    uart = fake_bus.attach("uart16550", backend="null")
    transmit(fake_bus, b"gone")
    assert uart.output == b""
    assert capfd.readouterr().out == ""


# --- file -------------------------------------------------------------------------------


def test_file_backend_truncates_and_writes_the_output_file(fake_bus, tmp_path):
    path = tmp_path / "serial.log"
    path.write_bytes(b"stale output of an earlier run")
    uart = fake_bus.attach("uart16550", backend="file", path=str(path))
    transmit(fake_bus, b"line 1\npartial")
    assert path.read_bytes() == b"line 1\n"  # flushed at each newline
    uart.close()
    assert path.read_bytes() == b"line 1\npartial"


def test_file_backend_input_file_is_received(fake_bus, tmp_path):
    source = tmp_path / "keys.txt"
    source.write_bytes(b"root\npassword\n")
    fake_bus.attach("uart16550", backend="file", path=str(tmp_path / "out.log"), input=str(source))
    fake_bus.outb(FCR, 0x01)
    assert receive_from_host(fake_bus, 14) == b"root\npassword\n"


def test_file_backend_output_in_a_missing_folder_is_refused_naming_path(fake_bus, tmp_path):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("uart16550", backend="file", path=str(tmp_path / "missing-dir" / "out.log"))
    assert excinfo.value.key == "path"
    assert "does not exist" in excinfo.value.message
    assert fake_bus.devices == {}


def test_file_backend_missing_input_is_refused_naming_input(fake_bus, tmp_path):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("uart16550", backend="file", path=str(tmp_path / "out"), input=str(tmp_path / "nope"))
    assert excinfo.value.key == "input"
    assert not (tmp_path / "out").exists()


def test_close_stops_the_reader_threads(fake_bus, tmp_path):
    read_end, write_end = os.pipe()  # a named-pipe-like input that never reaches EOF
    before = set(worker_threads())
    try:
        fifo_path = f"/dev/fd/{read_end}"
        uart = fake_bus.attach("uart16550", backend="file", path=str(tmp_path / "o"), input=fifo_path)
        started = set(worker_threads()) - before
        assert started
        uart.close()
        assert not any(t.is_alive() for t in started)
    finally:
        os.close(read_end)
        os.close(write_end)


# --- socket -----------------------------------------------------------------------------


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "uart.sock")


def connect(path):
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(TIMEOUT)
    client.connect(path)
    return client


def test_socket_server_bytes_from_the_client_reach_rbr(fake_bus, sock_path):
    fake_bus.attach("uart16550", backend="socket", path=sock_path)
    fake_bus.outb(FCR, 0x01)
    with connect(sock_path) as client:
        client.sendall(b"hello")
        assert receive_from_host(fake_bus, 5) == b"hello"


def test_socket_server_thr_bytes_reach_the_client(fake_bus, sock_path):
    uart = fake_bus.attach("uart16550", backend="socket", path=sock_path)
    with connect(sock_path) as client:
        client.sendall(b"!")  # once this arrives, the device has accepted the client
        receive_from_host(fake_bus, 1)
        transmit(fake_bus, b"guest says hi")
        assert recv_exactly(client, 13) == b"guest says hi"
    assert uart.output == b""


def test_socket_server_holds_output_written_before_a_client_for_it(fake_bus, sock_path):
    fake_bus.attach("uart16550", backend="socket", path=sock_path)
    transmit(fake_bus, b"banner\n")
    with connect(sock_path) as client:
        assert recv_exactly(client, 7) == b"banner\n"
        transmit(fake_bus, b"now")
        assert recv_exactly(client, 3) == b"now"


def test_socket_server_holds_only_the_latest_output_and_logs_the_drop_once(fake_bus, sock_path, caplog):
    fake_bus.attach("uart16550", backend="socket", path=sock_path)
    data = os.urandom(chardev.HELD_OUTPUT + 1000)
    with caplog.at_level("WARNING", logger="vmcore.device"):
        transmit(fake_bus, data)
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1
    assert "no client is connected" in drops[0].getMessage()
    with connect(sock_path) as client:
        assert recv_exactly(client, chardev.HELD_OUTPUT) == data[-chardev.HELD_OUTPUT:]
        transmit(fake_bus, b"!")
        assert recv_exactly(client, 1) == b"!"


def test_socket_server_takes_the_next_client_after_the_first_leaves(fake_bus, sock_path):
    fake_bus.attach("uart16550", backend="socket", path=sock_path)
    fake_bus.outb(FCR, 0x01)
    with connect(sock_path) as first:
        first.sendall(b"1")
        assert receive_from_host(fake_bus, 1) == b"1"
    with connect(sock_path) as second:
        second.sendall(b"2")
        assert receive_from_host(fake_bus, 1) == b"2"
        transmit(fake_bus, b"x")
        assert recv_exactly(second, 1) == b"x"


def test_socket_server_removes_the_socket_it_made_on_close(fake_bus, sock_path):
    uart = fake_bus.attach("uart16550", backend="socket", path=sock_path)
    with connect(sock_path):
        pass
    uart.close()
    assert not os.path.exists(sock_path)


def test_socket_server_refuses_a_stale_socket_file_and_leaves_it(fake_bus, sock_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays behind, as after a crash
    before = os.lstat(sock_path)
    with pytest.raises(PropertyError, match="nobody listens"):
        fake_bus.attach("uart16550", backend="socket", path=sock_path)
    assert os.lstat(sock_path).st_ino == before.st_ino


def test_socket_server_refuses_a_live_socket_as_in_use_and_leaves_it_serving(fake_bus, sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(sock_path)
        other.listen(1)
        before = os.lstat(sock_path)
        with pytest.raises(PropertyError, match="in use"):
            fake_bus.attach("uart16550", backend="socket", path=sock_path)
        assert os.lstat(sock_path).st_ino == before.st_ino
        connect(sock_path).close()  # the other process still serves its socket


def test_socket_server_close_leaves_a_socket_that_replaced_its_own(fake_bus, sock_path):
    uart = fake_bus.attach("uart16550", backend="socket", path=sock_path)
    os.unlink(sock_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(sock_path)  # another process took the path over
        uart.close()
        assert os.path.exists(sock_path)


def test_socket_server_refuses_to_replace_a_file_that_is_not_a_socket(fake_bus, sock_path):
    with open(sock_path, "w") as f:
        f.write("precious")
    with pytest.raises(PropertyError, match="not a socket"):
        fake_bus.attach("uart16550", backend="socket", path=sock_path)
    with open(sock_path) as f:
        assert f.read() == "precious"


def test_socket_path_longer_than_a_unix_socket_address_is_refused(fake_bus, tmp_path):
    with pytest.raises(PropertyError, match="at most 107 bytes"):
        fake_bus.attach("uart16550", backend="socket", path=str(tmp_path / ("s" * 120)))


def test_socket_client_mode_connects_to_the_path(fake_bus, sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(sock_path)
        server.listen(1)
        server.settimeout(TIMEOUT)
        fake_bus.attach("uart16550", backend="socket", path=sock_path, socket_mode="client")
        peer, _ = server.accept()
        with peer:
            transmit(fake_bus, b"up")
            assert recv_exactly(peer, 2) == b"up"
            peer.sendall(b"down")
            fake_bus.outb(FCR, 0x01)
            assert receive_from_host(fake_bus, 4) == b"down"


def test_socket_client_mode_without_a_server_fails_at_attach(fake_bus, sock_path):
    with pytest.raises(PropertyError, match="cannot connect"):
        fake_bus.attach("uart16550", backend="socket", path=sock_path, socket_mode="client")


# --- stdio ------------------------------------------------------------------------------


def test_stdio_with_a_pseudo_file_stdin_writes_output_to_stdout(fake_bus, capfd):
    # Under pytest, sys.stdin has no file descriptor: the backend must not read it, nor fail.
    uart = fake_bus.attach("uart16550")  # stdio is the default
    transmit(fake_bus, b"login: ")
    assert capfd.readouterr().out == "login: "  # flushed without waiting for a newline
    uart.close()
    assert not sys.stdout.closed


def test_stderr_backend_writes_each_byte_to_stderr_at_once_and_reads_nothing(fake_bus, capfd):
    uart = fake_bus.attach("uart16550", backend="stderr")
    transmit(fake_bus, b"login: ")
    assert capfd.readouterr() == ("", "login: ")  # flushed without waiting for a newline
    assert not worker_threads()
    uart.close()


def test_stdio_with_a_closed_stdin_does_not_read(fake_bus, monkeypatch, capfd):
    closed = io.TextIOWrapper(io.BytesIO())
    closed.close()
    monkeypatch.setattr(sys, "stdin", closed)
    uart = fake_bus.attach("uart16550")
    assert uart.backend._reader is None
    transmit(fake_bus, b"x")
    assert capfd.readouterr().out == "x"


def test_stdio_reads_a_pipe_on_stdin(fake_bus, monkeypatch):
    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "rb")
    monkeypatch.setattr(sys, "stdin", stdin)
    try:
        fake_bus.attach("uart16550")
        fake_bus.outb(FCR, 0x01)
        os.write(write_end, b"typed")
        os.close(write_end)
        assert receive_from_host(fake_bus, 5) == b"typed"
    finally:
        fake_bus.close()
        stdin.close()


def test_stdio_output_after_the_host_closed_stdout_is_dropped(fake_bus, monkeypatch):
    host_stdout = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", host_stdout)
    uart = fake_bus.attach("uart16550")
    host_stdout.close()
    transmit(fake_bus, b"late")
    uart.close()


@pytest.fixture
def pty_stdin(monkeypatch):
    termios = pytest.importorskip("termios")
    pty = pytest.importorskip("pty")
    try:
        master, slave = pty.openpty()
    except OSError as exc:
        pytest.skip(f"no pseudo-terminal: {exc}")
    stdin = os.fdopen(slave, "rb", buffering=0)
    monkeypatch.setattr(sys, "stdin", stdin)
    yield master, slave, termios
    stdin.close()
    os.close(master)


def test_stdio_tty_is_put_in_raw_mode_with_ctrl_c_for_the_guest(fake_bus, pty_stdin):
    master, slave, termios = pty_stdin
    fake_bus.attach("uart16550")
    lflag = termios.tcgetattr(slave)[3]
    assert not lflag & (termios.ICANON | termios.ECHO)
    assert not lflag & termios.ISIG  # Ctrl-C is a byte for the guest; Ctrl-A x leaves vmcore
    os.write(master, b"\x03")
    fake_bus.outb(FCR, 0x01)
    assert receive_from_host(fake_bus, 1) == b"\x03"
    os.write(master, b"k\r")
    fake_bus.outb(FCR, 0x01)
    assert receive_from_host(fake_bus, 2) == b"k\r"  # no CR-to-NL mapping


def test_stdio_tty_attributes_are_restored_on_close(fake_bus, pty_stdin):
    _, slave, termios = pty_stdin
    before = termios.tcgetattr(slave)
    uart = fake_bus.attach("uart16550")
    assert termios.tcgetattr(slave) != before
    uart.close()
    assert termios.tcgetattr(slave) == before


def test_stdio_tty_attributes_are_restored_at_interpreter_exit(fake_bus, pty_stdin, monkeypatch):
    _, slave, termios = pty_stdin
    at_exit = []
    monkeypatch.setattr(chardev.atexit, "register", at_exit.append)
    monkeypatch.setattr(chardev.atexit, "unregister", lambda func: None)
    before = termios.tcgetattr(slave)
    fake_bus.attach("uart16550")
    assert len(at_exit) == 1
    at_exit[0]()  # what the interpreter runs at exit if the machine was never closed
    assert termios.tcgetattr(slave) == before


def test_two_stdio_uarts_leave_the_tty_as_it_was(fake_bus, pty_stdin):
    _, slave, termios = pty_stdin
    before = termios.tcgetattr(slave)
    first = fake_bus.attach("uart16550", name="a")
    second = fake_bus.attach("uart16550", name="b", preset="com2")
    first.close()
    second.close()
    assert termios.tcgetattr(slave) == before


# --- bounded host input: the host is read only while there is room -----------------------


def wait_until_host_input_is_held(fake_bus, uart):
    """Until the FIFO is full and the reader has stopped for want of room, then a while more."""

    def full():
        fake_bus.step(0)
        return len(uart.rx) == FIFO_SIZE and len(uart.backend.input) > HOST_INPUT_BUFFER // 2

    wait_until(full, "the RX FIFO and the host input buffer to fill")
    time.sleep(0.2)  # a reader that ignored the bound would go on reading meanwhile
    fake_bus.step(0)


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_file_input_far_larger_than_the_buffer_is_held_then_received_in_order(fake_bus, tmp_path):
    data = os.urandom(64 * 1024)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    uart = fake_bus.attach("uart16550", backend="file", path=str(tmp_path / "out"), input=str(source))
    fake_bus.outb(FCR, 0x01)
    wait_until_host_input_is_held(fake_bus, uart)
    assert len(uart.backend.input) <= HOST_INPUT_BUFFER
    assert len(uart.rx) == FIFO_SIZE
    assert receive_from_host(fake_bus, len(data)) == data
    assert not fake_bus.inb(LSR) & 0x02  # no overrun: nothing was lost


def test_endless_file_input_keeps_memory_bounded(fake_bus, tmp_path):
    before = rss_bytes()
    uart = fake_bus.attach("uart16550", backend="file", path=str(tmp_path / "out"), input="/dev/zero")
    fake_bus.outb(FCR, 0x01)
    wait_until_host_input_is_held(fake_bus, uart)
    time.sleep(0.3)
    fake_bus.step(0)
    assert len(uart.backend.input) <= HOST_INPUT_BUFFER
    assert rss_bytes() - before < 8 << 20  # unbounded, /dev/zero filled gigabytes in seconds
    assert receive_from_host(fake_bus, 4096) == bytes(4096)


class Writer(threading.Thread):
    """Sends ``data`` in 4 KiB pieces with a blocking ``send``, counting what the host end accepted."""

    def __init__(self, send, data):
        super().__init__(daemon=True)
        self.send, self.data, self.sent = send, data, 0

    def run(self):
        for start in range(0, len(self.data), 4096):
            self.sent += self.send(self.data[start:start + 4096])


def test_stdin_pipe_input_stays_in_the_pipe_until_the_guest_reads(fake_bus, monkeypatch):
    data = os.urandom(64 * 1024)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # so the data is far more than the pipe holds
    stdin = os.fdopen(read_end, "rb")
    monkeypatch.setattr(sys, "stdin", stdin)
    writer = Writer(lambda piece: os.write(write_end, piece), data)
    try:
        uart = fake_bus.attach("uart16550")
        fake_bus.outb(FCR, 0x01)
        writer.start()
        wait_until_host_input_is_held(fake_bus, uart)
        assert len(uart.backend.input) <= HOST_INPUT_BUFFER
        assert writer.is_alive() and writer.sent < len(data)  # the rest waits in the host pipe
        assert receive_from_host(fake_bus, len(data)) == data
        writer.join(TIMEOUT)
    finally:
        fake_bus.close()
        os.close(write_end)
        stdin.close()


def test_socket_peer_input_stays_with_the_peer_until_the_guest_reads(fake_bus, sock_path):
    data = os.urandom(64 * 1024)
    uart = fake_bus.attach("uart16550", backend="socket", path=sock_path)
    fake_bus.outb(FCR, 0x01)
    with connect(sock_path) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # far less than the data
        client.settimeout(None)
        writer = Writer(client.send, data)
        writer.start()
        wait_until_host_input_is_held(fake_bus, uart)
        assert len(uart.backend.input) <= HOST_INPUT_BUFFER
        assert writer.is_alive() and writer.sent < len(data)  # the peer's send blocks instead
        assert receive_from_host(fake_bus, len(data)) == data
        writer.join(TIMEOUT)


def test_close_stops_a_reader_waiting_for_room(fake_bus, tmp_path):
    before = set(worker_threads())
    uart = fake_bus.attach("uart16550", backend="file", path=str(tmp_path / "out"), input="/dev/zero")
    fake_bus.outb(FCR, 0x01)
    started = set(worker_threads()) - before
    wait_until_host_input_is_held(fake_bus, uart)
    uart.close()
    assert started and not any(t.is_alive() for t in started)


def test_input_held_for_a_recording_stays_within_the_buffer_until_the_machine_commits_it():
    """InputBuffer.hold (vmcore.record): what a reader puts waits unseen; with what waits counted, a
    reader is let read no more than the capacity, and a commit on the machine thread makes it visible."""
    posted = []
    committed = []
    buffer = chardev.InputBuffer(8)
    buffer.hold(posted.append, committed.append)
    assert buffer.wait_for_room() == 8
    buffer.put(b"abcdef")
    buffer.put(b"gh")
    assert len(posted) == 1 and buffer.take(8) == b""  # one commit asked for; nothing seen yet
    room = []
    reader = threading.Thread(target=lambda: room.append(buffer.wait_for_room()))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # full: the reader waits, reading nothing more from the host
    posted[0]()  # the machine thread commits
    assert committed == [b"abcdefgh"] and buffer.take(8) == b"abcdefgh"
    reader.join(5)
    assert room == [8]
    buffer.silence()
    buffer.put(b"dropped")
    assert buffer.take(8) == b"" and buffer.wait_for_room() == chardev.READ_CHUNK
    buffer.close()
