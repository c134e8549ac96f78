"""devices/debugcon.py: the debug console port (QEMU ``isa-debugcon``) on the fake bus."""

import io
import logging
import os
import socket
import sys
import threading
import time

import pytest

from vmcore.bus import Direction
from vmcore_devices.debugcon import Debugcon, DebugconConfig
from vmcore.device import DeviceContext, PropertyError, build_config

DEFAULT_PORT = 0xF1


def test_bytes_written_to_the_port_appear_in_order(fake_bus):
    console = fake_bus.attach("debugcon", backend="memory")
    for byte in b"Hello\n\x00\xff":
        fake_bus.outb(DEFAULT_PORT, byte)
    assert console.output == b"Hello\n\x00\xff"


def test_read_returns_0xe9_like_qemu(fake_bus):
    fake_bus.attach("debugcon", backend="memory")
    assert fake_bus.inb(DEFAULT_PORT) == 0xE9


def test_read_returns_the_configured_readback_byte(fake_bus):
    fake_bus.attach("debugcon", backend="memory", readback="0x42")
    assert fake_bus.inb(DEFAULT_PORT) == 0x42


def test_reads_do_not_write_to_the_console(fake_bus):
    console = fake_bus.attach("debugcon", backend="memory")
    fake_bus.inb(DEFAULT_PORT)
    assert console.output == b""


def test_port_property_moves_the_console(fake_bus):
    console = fake_bus.attach("debugcon", backend="memory", port="0xE9")
    fake_bus.outb(0xE9, ord("x"))
    fake_bus.outb(DEFAULT_PORT, ord("y"))
    assert console.output == b"x"
    assert fake_bus.inb(0xE9) == 0xE9
    assert fake_bus.pio.unclaimed == {(Direction.WRITE, DEFAULT_PORT): 1}


def test_word_write_gives_only_the_low_byte_to_the_console(fake_bus):
    console = fake_bus.attach("debugcon", backend="memory")
    fake_bus.outw(DEFAULT_PORT, 0x4241)
    assert console.output == b"A"
    # The high byte went to the next port, which nobody claims.
    assert fake_bus.pio.unclaimed == {(Direction.WRITE, DEFAULT_PORT + 1): 1}


def test_word_read_has_the_readback_in_the_low_byte_and_ones_above(fake_bus):
    fake_bus.attach("debugcon", backend="memory")
    assert fake_bus.inw(DEFAULT_PORT) == 0xFFE9


def test_file_backend_is_truncated_written_and_flushed_on_close(fake_bus, tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"stale contents from an earlier run")
    console = fake_bus.attach("debugcon", backend="file", path=str(path))
    for byte in b"boot ok":
        fake_bus.outb(DEFAULT_PORT, byte)
    console.close()
    assert path.read_bytes() == b"boot ok"
    assert console.output == b""


def test_stdio_backend_writes_to_sys_stdout_buffer(fake_bus, capfd):
    console = fake_bus.attach("debugcon")  # stdio is the default
    for byte in b"line\npartial":
        fake_bus.outb(DEFAULT_PORT, byte)
    console.close()
    assert capfd.readouterr().out == "line\npartial"
    assert not sys.stdout.closed  # close flushes stdout but must not close it


def test_stdio_backend_flushes_at_each_newline(fake_bus, capfd):
    fake_bus.attach("debugcon")
    for byte in b"ready\n":
        fake_bus.outb(DEFAULT_PORT, byte)
    assert capfd.readouterr().out == "ready\n"


def test_close_after_the_host_closed_stdout_does_not_raise(fake_bus, monkeypatch):
    # pytest's capfd closes its capture file before fake_bus tears down; so may a host.
    host_stdout = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", host_stdout)
    console = fake_bus.attach("debugcon")
    fake_bus.outb(DEFAULT_PORT, ord("x"))
    host_stdout.close()
    console.close()
    fake_bus.outb(DEFAULT_PORT, ord("y"))  # a write after close is not an error either


def test_stderr_backend_writes_to_sys_stderr_buffer(fake_bus, capfd):
    console = fake_bus.attach("debugcon", backend="stderr")
    fake_bus.outb(DEFAULT_PORT, ord("!"))
    console.close()
    captured = capfd.readouterr()
    assert captured.err == "!"
    assert captured.out == ""


@pytest.mark.parametrize(
    ("props", "key", "message"),
    [
        ({"port": "0x10000"}, "port", "must be in 0x0..0xffff, got 0x10000"),
        ({"readback": "0x100"}, "readback", "must be in 0x0..0xff, got 0x100"),
        ({"backend": "bogus"}, "backend", "expected one of stdio, stderr, file, memory, socket, null, got 'bogus'"),
        ({"backend": "file"}, "backend", "path must be set when backend is 'file'"),
        ({"backend": "socket"}, "backend", "path must be set when backend is 'socket'"),
        ({"output": "memory"}, "output", "unknown property"),
        ({"port": "twelve"}, "port", "expected a number"),
        ({"prot": "0xE9"}, "prot", "unknown property (did you mean 'port'?)"),
    ],
    ids=["port-too-big", "readback-too-big", "bogus-backend", "file-without-path", "socket-without-path",
         "old-output-name", "port-not-a-number", "typo"],
)
def test_invalid_property_raises_property_error_naming_the_key(fake_bus, props, key, message):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("debugcon", **props)
    assert excinfo.value.key == key
    assert message in excinfo.value.message
    assert str(excinfo.value).startswith(f"{key}: ")
    assert fake_bus.devices == {}


def test_transactions_on_the_console_name_the_device(fake_bus):
    fake_bus.attach("debugcon", name="con", backend="memory")
    fake_bus.outb(DEFAULT_PORT, 0x41)
    assert [str(t) for t in fake_bus.transactions] == ["pio  write 0x000000f1/1 -> 0x41 con"]


def test_file_backend_in_a_missing_folder_is_refused_naming_path(fake_bus, tmp_path):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("debugcon", backend="file", path=str(tmp_path / "missing" / "console.log"))
    assert excinfo.value.key == "path"
    assert fake_bus.devices == {}


def test_file_backend_is_opened_by_start_not_when_built(fake_bus, tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"earlier run")
    config = build_config(DebugconConfig, {"backend": "file", "path": str(path)})
    ctx = DeviceContext(name="con", clock=fake_bus.clock, memory=fake_bus.memory, irq_line=fake_bus.irq,
                        log=logging.getLogger("test"))
    console = Debugcon(config, ctx)
    assert path.read_bytes() == b"earlier run"  # built, as `vmcore check` builds it
    console.start()
    console.write(0, 1, ord("k"))
    console.close()
    assert path.read_bytes() == b"k"


def test_properties_of_the_host_end_are_the_uarts(fake_bus):
    from vmcore_devices.uart import Uart16550Config
    from vmcore.device import properties

    uart = {p.name: p for p in properties(Uart16550Config)}
    for prop in properties(DebugconConfig):
        if prop.name in ("backend", "path", "socket_mode"):
            assert prop == uart[prop.name]


def test_null_backend_drops_output(fake_bus, capfd):
    console = fake_bus.attach("debugcon", backend="null")
    fake_bus.outb(DEFAULT_PORT, ord("x"))
    console.close()
    assert capfd.readouterr() == ("", "")
    assert console.output == b""


def test_stdio_backend_leaves_stdin_alone(fake_bus, monkeypatch):
    # The console receives nothing: stdin is neither read nor put in raw mode.
    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "rb")
    monkeypatch.setattr(sys, "stdin", stdin)
    try:
        os.write(write_end, b"typed")
        fake_bus.attach("debugcon")
        time.sleep(0.05)
        assert not [t for t in threading.enumerate() if t.name.startswith("chardev-")]
        assert os.read(read_end, 16) == b"typed"
    finally:
        fake_bus.close()
        stdin.close()
        os.close(write_end)


def _connect(path: str) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5.0)
    client.connect(path)
    return client


def _recv(client: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count and (chunk := client.recv(count - len(data))):
        data += chunk
    return data


def test_socket_backend_sends_the_bytes_to_the_client(fake_bus, tmp_path):
    path = str(tmp_path / "con.sock")
    fake_bus.attach("debugcon", backend="socket", path=path)
    with _connect(path) as client:
        client.sendall(b"ignored")  # read and dropped: the console receives nothing
        for byte in b"hi\n":
            fake_bus.outb(DEFAULT_PORT, byte)
        assert _recv(client, 3) == b"hi\n"


def test_socket_backend_takes_the_next_client_after_the_first_leaves(fake_bus, tmp_path):
    path = str(tmp_path / "con.sock")
    console = fake_bus.attach("debugcon", backend="socket", path=path)
    with _connect(path) as first:
        first.sendall(b"x" * 10_000)  # more than any input buffer: dropped, never blocks the reader
        fake_bus.outb(DEFAULT_PORT, ord("1"))
        assert _recv(first, 1) == b"1"
    deadline = time.monotonic() + 5.0
    while console.backend._peer is not None:  # the reader saw the first client leave
        assert time.monotonic() < deadline, "the first client's leaving was not seen"
        time.sleep(0.005)
    with _connect(path) as second:
        fake_bus.outb(DEFAULT_PORT, ord("2"))
        assert _recv(second, 1) == b"2"
