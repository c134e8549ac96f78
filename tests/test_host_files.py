"""Host files: `vmcore check` opens no output, and `run` touches only what it made.

Devices open their host files in ``start()``, when the machine starts running; building a
machine (all ``check`` does) only looks at them. These tests drive the CLI and then look at
the host file: same inode, size, mtime and contents.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from vmcore.cli import STATUS, main

REPO = Path(__file__).resolve().parent.parent
CONFIG_ERROR = STATUS["config-error"]


def write_profile(tmp_path: Path, devices: str) -> Path:
    """hello.bin (prints to the debug console and halts) on tcg, plus ``devices`` lines (line 6 on)."""
    shutil.copy(REPO / "guest" / "hello.bin", tmp_path / "hello.bin")
    profile = tmp_path / "machine.yaml"
    profile.write_text(
        "accel: tcg\n"
        "memory:\n"
        "  ram: {size: 4K, image: hello.bin}\n"
        "devices:\n"
        "  console: {type: debugcon, port: 0xF1, backend: memory}\n"
        f"{devices}"
    )
    return profile


def identity(path: Path) -> tuple[int, int, int, int, bytes]:
    """What 'untouched' means: file type, inode, size, mtime and contents (sockets: no contents)."""
    info = os.lstat(path)
    data = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
    return stat.S_IFMT(info.st_mode), info.st_ino, info.st_size, info.st_mtime_ns, data


def vmcore(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().err


@pytest.fixture
def live_socket(tmp_path: Path) -> Iterator[Path]:
    """A Unix socket another process (here, the test) is serving."""
    path = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(4)
        yield path


def still_serving(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        return client.connect_ex(str(path)) == 0


# --- check opens no output ----------------------------------------------------------------


def test_check_leaves_a_live_socket_named_by_a_uart_serving(capsys, tmp_path, live_socket):
    profile = write_profile(tmp_path, f"  com1: {{type: uart16550, backend: socket, path: {live_socket}}}\n")
    before = identity(live_socket)
    status, err = vmcore(capsys, "check", str(profile))
    assert status == 0, err
    assert identity(live_socket) == before
    assert still_serving(live_socket)


def test_check_creates_and_truncates_no_output(capsys, tmp_path):
    uart_out, console_out, absent = tmp_path / "serial.log", tmp_path / "console.log", tmp_path / "absent.log"
    uart_out.write_bytes(b"serial log of an earlier run")
    console_out.write_bytes(b"console log of an earlier run")
    profile = write_profile(
        tmp_path,
        f"  com1: {{type: uart16550, backend: file, path: {uart_out}}}\n"
        f"  log: {{type: debugcon, port: 0x402, backend: file, path: {console_out}}}\n"
        f"  com2: {{type: uart16550, preset: com2, backend: file, path: {absent}}}\n",
    )
    before = identity(uart_out), identity(console_out)
    status, err = vmcore(capsys, "check", str(profile))
    assert status == 0, err
    assert (identity(uart_out), identity(console_out)) == before
    assert not absent.exists()


# --- an output may not be one of the machine's inputs -------------------------------------


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("victim", ["profile", "image", "device-input"])
def test_an_output_that_is_an_input_is_a_profile_error_and_stays_untouched(capsys, tmp_path, command, victim):
    keys = tmp_path / "keys.txt"
    keys.write_bytes(b"root\n")
    profile = tmp_path / "machine.yaml"
    target = {"profile": profile, "image": tmp_path / "hello.bin", "device-input": keys}[victim]
    profile = write_profile(
        tmp_path,
        f"  com2: {{type: uart16550, preset: com2, backend: file, path: {tmp_path / 'com2.log'}, input: {keys}}}\n"
        f"  com1: {{type: uart16550, backend: file, path: {target}}}\n",
    )
    before = identity(target)
    status, err = vmcore(capsys, command, str(profile))
    assert status == CONFIG_ERROR
    assert err.startswith(f"vmcore: {profile}:7: devices.com1.path: {target} is ")
    assert "an input of this machine" in err and len(err.splitlines()) == 1
    assert identity(target) == before


@pytest.mark.parametrize("command", ["check", "run"])
def test_an_output_that_is_the_loader_kernel_is_a_profile_error_and_stays_untouched(capsys, tmp_path, command):
    kernel = tmp_path / "serial_echo.elf"
    shutil.copy(REPO / "guest" / "c" / "serial_echo.elf", kernel)
    profile = tmp_path / "kernel.yaml"
    profile.write_text(
        "accel: tcg\n"
        "cpu: {mode: protected}\n"
        "memory:\n"
        "  ram: {base: 0x0, size: 4M, kind: ram}\n"
        "loader: {kernel: serial_echo.elf, format: multiboot}\n"
        "devices:\n"
        f"  com1: {{type: uart16550, backend: file, path: {kernel}}}\n"
    )
    before = identity(kernel)
    status, err = vmcore(capsys, command, str(profile))
    assert status == CONFIG_ERROR
    assert err == f"vmcore: {profile}:7: devices.com1.path: {kernel} is the loader kernel, an input of this " \
                  "machine; an output would overwrite it\n"
    assert identity(kernel) == before


# --- run touches only what it made --------------------------------------------------------


def test_run_refuses_a_live_socket_as_in_use_and_leaves_it_serving(capsys, tmp_path, live_socket):
    profile = write_profile(tmp_path, f"  com1: {{type: uart16550, backend: socket, path: {live_socket}}}\n")
    before = identity(live_socket)
    status, err = vmcore(capsys, "run", str(profile))
    assert status == CONFIG_ERROR
    assert err.startswith(f"vmcore: {profile}:6: devices.com1.path: {live_socket} is in use"), err
    assert identity(live_socket) == before
    assert still_serving(live_socket)


def test_run_refuses_a_stale_socket_it_did_not_make_and_leaves_it(capsys, tmp_path):
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(stale))  # the file stays behind when the socket closes, as after a crash
    profile = write_profile(tmp_path, f"  com1: {{type: uart16550, backend: socket, path: {stale}}}\n")
    before = identity(stale)
    status, err = vmcore(capsys, "run", str(profile))
    assert status == CONFIG_ERROR
    assert f"{profile}:6: devices.com1.path: {stale} is a socket nobody listens on" in err
    assert identity(stale) == before


def test_run_removes_the_socket_it_made(capsys, tmp_path):
    path = tmp_path / "mine.sock"
    profile = write_profile(tmp_path, f"  com1: {{type: uart16550, backend: socket, path: {path}}}\n")
    status, err = vmcore(capsys, "run", str(profile))
    assert status == 0, err
    assert not path.exists()


# --- FIFOs and device files never block ---------------------------------------------------


def vmcore_process(*argv: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child, so a blocking open() fails the test by timeout instead of hanging it."""
    return subprocess.run([sys.executable, "-m", "vmcore", *argv], capture_output=True, text=True,
                          timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)


def test_check_with_a_fifo_input_returns_at_once(tmp_path):
    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo)
    profile = write_profile(tmp_path, f"  com1: {{type: uart16550, backend: file, path: {tmp_path / 'out'}, "
                                      f"input: {fifo}}}\n")
    before = identity(fifo)
    result = vmcore_process("check", str(profile))
    assert result.returncode == 0, result.stderr
    assert identity(fifo) == before
    assert not (tmp_path / "out").exists()


def test_run_with_a_fifo_input_no_one_writes_to_does_not_block(tmp_path):
    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo)
    profile = write_profile(tmp_path, f"  com1: {{type: uart16550, backend: file, path: {tmp_path / 'out'}, "
                                      f"input: {fifo}}}\n")
    result = vmcore_process("run", str(profile))
    assert result.returncode == 0, result.stderr  # hello.bin halts; the FIFO never had a writer


def test_run_with_a_fifo_output_no_one_reads_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "serial.fifo"
    os.mkfifo(fifo)
    profile = write_profile(tmp_path, f"  com1: {{type: uart16550, backend: file, path: {fifo}}}\n")
    result = vmcore_process("run", str(profile))
    assert result.returncode == CONFIG_ERROR
    assert result.stderr == f"vmcore: {profile}:6: devices.com1.path: {fifo} is a FIFO with no reader\n"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_serial_input_through_a_fifo_reaches_the_guest(tmp_path):
    """serial-echo echoes what it receives and exits on 'q'; the test writes into a FIFO once vmcore runs."""
    fifo, out = tmp_path / "keys.fifo", tmp_path / "serial.log"
    os.mkfifo(fifo)

    def type_keys() -> None:
        with open(fifo, "wb") as keys:  # blocks until vmcore opened the FIFO for reading
            deadline = time.monotonic() + 30
            # Bytes sent before the guest set its UART up are lost on the line, as on hardware.
            while not (out.exists() and b"echo ready\n" in out.read_bytes()) and time.monotonic() < deadline:
                time.sleep(0.01)
            keys.write(b"hi q")

    typist = threading.Thread(target=type_keys, daemon=True)
    typist.start()
    result = vmcore_process("run", "serial-echo", "--accel", "tcg", "--set", "devices.com1.backend=file",
                            "--set", f"devices.com1.path={out}", "--set", f"devices.com1.input={fifo}")
    typist.join(5)
    assert result.returncode == 35, result.stderr  # debug-exit 0x11 after 'q'
    assert out.read_bytes() == b"echo ready\nhi qbye\n"


@pytest.mark.parametrize("disk_device", ["ide", "piix-ide"])
def test_an_output_that_is_a_disk_image_is_a_profile_error_and_the_disk_stays_untouched(capsys, tmp_path, disk_device):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\x55" * 1024)
    key = "image" if disk_device == "ide" else "primary_master"
    profile = write_profile(
        tmp_path,
        f"  disk: {{type: {disk_device}, {key}: {disk}}}\n"
        f"  com1: {{type: uart16550, backend: file, path: {disk}}}\n",
    )
    before = identity(disk)
    status, err = vmcore(capsys, "check", str(profile))
    assert status == CONFIG_ERROR
    assert f"devices.com1.path: {disk} is the {key} of device 'disk', an input of this machine" in err
    assert identity(disk) == before and disk.read_bytes() == b"\x55" * 1024


def test_relative_host_paths_are_taken_from_the_profiles_folder(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "machine"
    folder.mkdir()
    (folder / "keys.txt").write_bytes(b"")
    profile = folder / "p.yaml"
    profile.write_text(
        f"extends: {REPO / 'machines' / 'hello.yaml'}\n"
        "devices:\n"
        "  console: {type: debugcon, backend: file, path: console.log}\n"
        "  com1: {type: uart16550, backend: file, path: serial.log, input: keys.txt}\n"
    )
    monkeypatch.chdir(tmp_path)  # not the profile's folder
    status, err = vmcore(capsys, "run", str(profile))
    assert status == 0, err
    assert (folder / "console.log").read_bytes() == b"Hello\n"
    assert (folder / "serial.log").exists()
    assert not (tmp_path / "console.log").exists() and not (tmp_path / "serial.log").exists()
