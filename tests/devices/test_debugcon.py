"""devices/debugcon.py: the debug console port (QEMU ``isa-debugcon``) on the fake bus."""

import io
import logging
import sys

import pytest

from vmcore.bus import Direction
from devices.debugcon import Debugcon, DebugconConfig
from vmcore.device import DeviceContext, PropertyError, build_config

DEFAULT_PORT = 0xF1


def test_bytes_written_to_the_port_appear_in_order(fake_bus):
    console = fake_bus.attach("debugcon", output="memory")
    for byte in b"Hello\n\x00\xff":
        fake_bus.outb(DEFAULT_PORT, byte)
    assert console.buffer == b"Hello\n\x00\xff"


def test_read_returns_0xe9_like_qemu(fake_bus):
    fake_bus.attach("debugcon", output="memory")
    assert fake_bus.inb(DEFAULT_PORT) == 0xE9


def test_read_returns_the_configured_readback_byte(fake_bus):
    fake_bus.attach("debugcon", output="memory", readback="0x42")
    assert fake_bus.inb(DEFAULT_PORT) == 0x42


def test_reads_do_not_write_to_the_console(fake_bus):
    console = fake_bus.attach("debugcon", output="memory")
    fake_bus.inb(DEFAULT_PORT)
    assert console.buffer == b""


def test_port_property_moves_the_console(fake_bus):
    console = fake_bus.attach("debugcon", output="memory", port="0xE9")
    fake_bus.outb(0xE9, ord("x"))
    fake_bus.outb(DEFAULT_PORT, ord("y"))
    assert console.buffer == b"x"
    assert fake_bus.inb(0xE9) == 0xE9
    assert fake_bus.pio.unclaimed == {(Direction.WRITE, DEFAULT_PORT): 1}


def test_word_write_gives_only_the_low_byte_to_the_console(fake_bus):
    console = fake_bus.attach("debugcon", output="memory")
    fake_bus.outw(DEFAULT_PORT, 0x4241)
    assert console.buffer == b"A"
    # The high byte went to the next port, which nobody claims.
    assert fake_bus.pio.unclaimed == {(Direction.WRITE, DEFAULT_PORT + 1): 1}


def test_word_read_has_the_readback_in_the_low_byte_and_ones_above(fake_bus):
    fake_bus.attach("debugcon", output="memory")
    assert fake_bus.inw(DEFAULT_PORT) == 0xFFE9


def test_output_file_is_truncated_written_and_flushed_on_close(fake_bus, tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"stale contents from an earlier run")
    console = fake_bus.attach("debugcon", output="file", path=str(path))
    for byte in b"boot ok":
        fake_bus.outb(DEFAULT_PORT, byte)
    console.close()
    assert path.read_bytes() == b"boot ok"
    assert console.buffer == b""


def test_output_stdout_writes_to_sys_stdout_buffer(fake_bus, capfd):
    console = fake_bus.attach("debugcon")  # stdout is the default
    for byte in b"line\npartial":
        fake_bus.outb(DEFAULT_PORT, byte)
    console.close()
    assert capfd.readouterr().out == "line\npartial"
    assert not sys.stdout.closed  # close flushes stdout but must not close it


def test_output_stdout_flushes_at_each_newline(fake_bus, capfd):
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


def test_output_stderr_writes_to_sys_stderr_buffer(fake_bus, capfd):
    console = fake_bus.attach("debugcon", output="stderr")
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
        ({"output": "bogus"}, "output", "expected one of stdout, stderr, file, memory, got 'bogus'"),
        ({"output": "file"}, "output", "path must be set when output is 'file'"),
        ({"port": "twelve"}, "port", "expected a number"),
        ({"prot": "0xE9"}, "prot", "unknown property (did you mean 'port'?)"),
    ],
    ids=["port-too-big", "readback-too-big", "bogus-output", "file-without-path", "port-not-a-number", "typo"],
)
def test_invalid_property_raises_property_error_naming_the_key(fake_bus, props, key, message):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("debugcon", **props)
    assert excinfo.value.key == key
    assert message in excinfo.value.message
    assert str(excinfo.value).startswith(f"{key}: ")
    assert fake_bus.devices == {}


def test_transactions_on_the_console_name_the_device(fake_bus):
    fake_bus.attach("debugcon", name="con", output="memory")
    fake_bus.outb(DEFAULT_PORT, 0x41)
    assert [str(t) for t in fake_bus.transactions] == ["pio  write 0x000000f1/1 -> 0x41 con"]


def test_output_file_in_a_missing_folder_is_refused_naming_path(fake_bus, tmp_path):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("debugcon", output="file", path=str(tmp_path / "missing" / "console.log"))
    assert excinfo.value.key == "path"
    assert fake_bus.devices == {}


def test_output_file_is_opened_by_start_not_when_built(fake_bus, tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"earlier run")
    config = build_config(DebugconConfig, {"output": "file", "path": str(path)})
    ctx = DeviceContext(name="con", clock=fake_bus.clock, memory=fake_bus.memory, irq_line=fake_bus.irq,
                        log=logging.getLogger("test"))
    console = Debugcon(config, ctx)
    assert path.read_bytes() == b"earlier run"  # built, as `vmcore check` builds it
    console.start()
    console.write(0, 1, ord("k"))
    console.close()
    assert path.read_bytes() == b"k"
