"""Tier 3: the guest programs boot on KVM and stop the way guest/README.md says.

Each boot runs in a child process with a timeout, so a hung guest fails its test
instead of hanging the suite. This module is also a vmcore plugin (see
:func:`vmcore_device_types`): the child processes of the MMIO and device-error
tests import it to get the ``scratch`` and ``faulty`` device types.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import attrs
import pytest

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.kvm import Kvm, KvmUnavailable

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
CHILD_TIMEOUT = 60

pytestmark = pytest.mark.kvm


@functools.cache
def kvm_unavailable() -> str | None:
    """None when /dev/kvm opens, else KvmUnavailable's one-line reason."""
    try:
        Kvm.open().close()
    except KvmUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(autouse=True)
def _needs_kvm() -> None:
    reason = kvm_unavailable()
    if reason is not None:
        pytest.skip(f"needs /dev/kvm: {reason}")


# --- the plugin the child processes load ----------------------------------------------------


@attrs.frozen
class ScratchConfig:
    base: int = prop(0x10000000, "Guest-physical address of the 16-byte register block.")


class Scratch(Device):
    """16 bytes of MMIO registers that read back what was written (little-endian)."""

    type_name = "scratch"
    Config = ScratchConfig
    SIZE = 16

    def __init__(self, config: ScratchConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.data = bytearray(self.SIZE)

    def regions(self) -> Sequence[Region]:
        return [Region(Space.MMIO, self.config.base, self.SIZE, self.read, self.write, name="regs")]

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.data[offset : offset + size] = value.to_bytes(size, "little")


@attrs.frozen
class FaultyConfig:
    port: int = prop(0xF1, "I/O port.", validator=in_range(0, 0xFFFF))
    error: Literal["runtime", "value", "os"] = prop("runtime", "Which exception write() raises.")


class Faulty(Device):
    """A byte port whose write raises: a device model with a bug."""

    type_name = "faulty"
    Config = FaultyConfig
    ERRORS = {"runtime": RuntimeError, "value": ValueError, "os": OSError}

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 1, None, self.write, name="data")]

    def write(self, offset: int, size: int, value: int) -> None:
        raise self.ERRORS[self.config.error](f"model bug on byte {value:#x}")


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Scratch, Faulty]


# --- running guests in child processes ------------------------------------------------------


@attrs.frozen
class Run:
    status: int
    stdout: bytes
    stderr: str
    seconds: float


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1"}


def _child(argv: list[str], timeout: float = CHILD_TIMEOUT) -> Run:
    start = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=REPO, env=_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(argv[2:])} did not finish in {timeout} s; stderr: {exc.stderr!r}")
    return Run(result.returncode, result.stdout, result.stderr.decode("utf-8", "replace"),
               time.monotonic() - start)


def vmcore(*args: str, timeout: float = CHILD_TIMEOUT) -> Run:
    """``python -m vmcore ARGS`` in a child process."""
    return _child([sys.executable, "-m", "vmcore", *args], timeout)


_IN_PROCESS = """\
import json, sys
from vmcore.accel import RunLimits
from vmcore.machine import Machine
from vmcore.plugins import DeviceRegistry
from vmcore.profile import Profile
import tests.test_boot as plugin

profile = Profile.load(sys.argv[1], sys.argv[2:])
trace = []
with Machine.build(profile, DeviceRegistry.default(plugins=[plugin])) as machine:
    machine.set_tracer(trace.append)
    stop = machine.run(limits=RunLimits(timeout=20))
    console = machine.devices.get("console")
    scratch = machine.devices.get("scratch")
    result = {
        "kind": stop.kind, "status": stop.status, "message": stop.message, "exits": stop.exits,
        "traceback": stop.detail.get("traceback", ""),
        "console": bytes(console.buffer).decode("latin-1") if console is not None else None,
        "scratch": bytes(scratch.data).hex() if scratch is not None else None,
        "trace": [[t.space.value, t.direction.value, t.address, t.size, t.value, t.device] for t in trace],
    }
print("RESULT " + json.dumps(result))
"""


def in_process(profile: Path, *overrides: str) -> dict[str, Any]:
    """Build with this module as a plugin and run, in a child; the machine's report as a dict."""
    run = _child([sys.executable, "-c", _IN_PROCESS, str(profile), *overrides])
    assert run.status == 0, run.stderr
    lines = [line for line in run.stdout.decode().splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0][len("RESULT "):])


# --- the bundled guests -------------------------------------------------------------------


def test_hello_prints_hello_and_halts() -> None:
    run = vmcore("run", "hello")
    assert run.stdout == b"Hello\n"
    assert run.status == 0
    assert run.stderr == ""


def test_hello_counts_one_io_exit_per_byte() -> None:
    run = vmcore("-v", "run", "hello")
    assert run.status == 0
    assert "halted: the guest executed hlt (accelerator kvm, 6 exits, status 0)" in run.stderr


def test_string_io_rep_outsb_and_insb() -> None:
    run = vmcore("run", "string-io")
    assert run.stdout == b"rep outsb works\ninsb ok\n"
    assert run.status == 0


def test_exit_status_is_odd_status_from_debug_exit() -> None:
    run = vmcore("run", "exit-status")
    assert run.stdout == b"bye\n"
    assert run.status == 85  # (42 << 1) | 1


def test_triple_fault_is_a_shutdown_with_a_register_dump() -> None:
    run = vmcore("run", "triple-fault")
    assert run.stdout == b"fault\n"
    assert run.status == 4
    assert "vmcore: shutdown: triple fault" in run.stderr
    assert "rip=" in run.stderr and "cr0=" in run.stderr
    assert " cs sel=" in run.stderr
    assert "code at 0x" in run.stderr


def test_internal_error_is_reported_with_its_suberror() -> None:
    run = vmcore("run", "internal-error")
    assert run.stdout == b"ie\n"
    assert run.status == 4
    assert "vmcore: internal-error: KVM internal error" in run.stderr
    assert "suberror:" in run.stderr and "rip=" in run.stderr


def test_protected_mode_guest() -> None:
    run = vmcore("run", "protected")
    assert run.stdout == b"protected mode\n"
    assert run.status == 0


def test_long_mode_guest() -> None:
    run = vmcore("run", "long")
    assert run.stdout == b"long mode\n64\n"
    assert run.status == 0


def test_rom_write_is_dropped_with_one_warning() -> None:
    run = vmcore("run", "rom-write")
    assert run.stdout == b"rom ok\n"
    assert run.status == 0
    warnings = [line for line in run.stderr.splitlines() if "ROM slot" in line]
    assert len(warnings) == 1
    assert "guest write to ROM slot 'rom'" in warnings[0] and "dropped" in warnings[0]


# --- run options ----------------------------------------------------------------------------


def test_trace_names_the_console_for_every_byte() -> None:
    run = vmcore("run", "hello", "--trace")
    assert run.stdout == b"Hello\n"
    assert run.status == 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("pio")]
    assert len(lines) == 6
    for line, byte in zip(lines, b"Hello\n"):
        assert line.split() == ["pio", "write", "0x000000f1/1", "->", f"{byte:#04x}", "console"]


def test_trace_file_gets_the_transactions(tmp_path: Path) -> None:
    out = tmp_path / "trace.txt"
    run = vmcore("run", "hello", "--trace-file", str(out))
    assert run.status == 0 and run.stdout == b"Hello\n"
    assert run.stderr == ""
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and all(line.endswith(" console") for line in lines)


def test_trace_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    run = vmcore("run", "hello", "--trace-file", str(tmp_path / "no" / "such" / "dir" / "t.txt"))
    assert run.status == 2
    assert run.stdout == b""
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and str(tmp_path / "no") in lines[0]


def test_max_exits_stops_the_run() -> None:
    run = vmcore("run", "hello", "--max-exits", "3")
    assert run.status == 6
    assert run.stdout == b"Hel"
    assert "vmcore: max-exits: reached the limit of 3 exits" in run.stderr


@pytest.fixture
def spin_image(tmp_path: Path) -> Path:
    image = tmp_path / "spin.bin"
    image.write_bytes(b"\xeb\xfe")  # jmp $
    return image


def test_timeout_stops_a_guest_that_never_exits(spin_image: Path) -> None:
    run = vmcore("run", str(DATA / "spin.yaml"), "--set", f"memory.ram.image={spin_image}", "--timeout", "1")
    assert run.status == 6
    assert "vmcore: timeout: no stop after 1 s" in run.stderr
    assert run.seconds < 6, f"took {run.seconds:.1f} s"


def test_profile_timeout_applies_without_the_option(spin_image: Path) -> None:
    run = vmcore("run", str(DATA / "spin.yaml"), "--set", f"memory.ram.image={spin_image}",
                 "--set", "limits.timeout=0.5")
    assert run.status == 6
    assert "timeout: no stop after 0.5 s" in run.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_timeout_option_must_be_a_positive_number(spin_image: Path, value: str) -> None:
    # --timeout 0 used to disable the timer, so a spinning guest ran for ever.
    run = vmcore("run", str(DATA / "spin.yaml"), "--set", f"memory.ram.image={spin_image}",
                 f"--timeout={value}", timeout=15)
    assert run.status == 2
    assert run.stdout == b""
    assert "--timeout" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_exits_option_must_be_positive(value: str) -> None:
    run = vmcore("run", "hello", f"--max-exits={value}")
    assert run.status == 2
    assert run.stdout == b""
    assert "--max-exits" in run.stderr


def test_moving_the_console_leaves_the_guests_port_unclaimed() -> None:
    run = vmcore("run", "hello", "--set", "devices.console.port=0xE9")
    assert run.stdout == b""
    assert run.status == 0
    assert "unclaimed pio write at 0xf1 (size 1)" in run.stderr
    assert run.stderr.count("unclaimed") == 1  # once per address, not once per byte


# --- a third-party device on the MMIO bus, and a device that raises -------------------------


def test_mmio_scratch_device_round_trips() -> None:
    result = in_process(DATA / "mmio.yaml")
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert result["console"] == "mmio ok\n"
    mmio = [t for t in result["trace"] if t[0] == "mmio"]
    assert mmio == [
        ["mmio", "write", 0x10000000, 4, 0x11223344, "scratch"],
        ["mmio", "read", 0x10000000, 4, 0x11223344, "scratch"],
        ["mmio", "write", 0x10000008, 1, 0xAB, "scratch"],
        ["mmio", "read", 0x10000008, 1, 0xAB, "scratch"],
    ]
    assert result["scratch"] == "44332211" + "00" * 4 + "ab" + "00" * 7


@pytest.mark.parametrize(("error", "exc_name"), [("runtime", "RuntimeError"), ("value", "ValueError"),
                                                 ("os", "OSError")])
def test_device_raising_in_write_is_a_device_error(error: str, exc_name: str) -> None:
    result = in_process(DATA / "faulty.yaml", f"devices.boom.error={error}")
    assert result["kind"] == "device-error"
    assert result["status"] == 10
    assert result["message"] == f"device 'boom' raised {exc_name}: model bug on byte 0x48"
    assert "in write" in result["traceback"]


_BROKEN_KVM_RUN = """\
import errno
from vmcore.accel.kvm import KvmAccelerator
from vmcore.machine import Machine
from vmcore.profile import Profile

def kvm_run_fails():
    raise OSError(errno.EFAULT, "Bad address")

with Machine.build(Profile.load("machines/hello.yaml")) as machine:
    accel = KvmAccelerator.open()
    accel.vcpu._run = kvm_run_fails  # what the ioctl raises when the kernel returns EFAULT
    stop = machine.run(accel)
print(stop.kind, stop.status, stop.message, sep="|")
"""


def test_failing_kvm_run_is_a_host_error_not_a_device_error() -> None:
    run = _child([sys.executable, "-c", _BROKEN_KVM_RUN])
    assert run.status == 0, run.stderr
    assert run.stdout.decode().strip() == "host-error|8|KVM_RUN failed: Bad address"
