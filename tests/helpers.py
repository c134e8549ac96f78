"""What the test modules share: paths, the KVM probe, guests run in child processes, scripted vCPUs.

Test modules import from here, never from each other. This module is also a vmcore
plugin (:func:`vmcore_device_types`): child processes load it, through
``plugins=("tests.helpers",)``, for the ``scratch`` and ``faulty`` device types.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import attrs
import pytest

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.kvm import Kvm
from vmcore.kvm import ioctl as k
from vmcore.kvm import structs as s

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
CHILD_TIMEOUT = 60
NO_KVM = {"VMCORE_KVM_PATH": "/nonexistent"}  # vmcore then behaves as on a host without KVM


@functools.cache
def kvm_unavailable() -> str | None:
    """None when /dev/kvm opens, else KvmUnavailable's one-line reason (probed once per process)."""
    return Kvm.unavailable()


def skip_without_kvm() -> None:
    reason = kvm_unavailable()
    if reason is not None:
        pytest.skip(f"needs /dev/kvm: {reason}")


@functools.cache
def kvm_ignores_set_cpuid() -> str | None:
    """Why this host's KVM guests do not see the CPUID vmcore sets, or None where they do.

    Probed once per process: machines/cpuid-dump.yaml with FPU removed must print leaf 1
    without it (a paravirtualized KVM here answers leaves 1, 7 and 0xD from the host).
    """
    skip_without_kvm()
    run = vmcore("run", str(REPO / "machines" / "cpuid-dump.yaml"), "--accel", "kvm",
                 "--set", "cpu.features=-pni,-svm,-fpu")
    lines = run.stdout.decode().splitlines()
    if run.status != 35 or len(lines) < 2:
        return f"cpuid-dump did not run on KVM: {run.stderr.strip()[:200]}"
    if int(lines[1].split()[-1], 16) & 1:
        return ("this host's KVM answers CPUID leaf 1 from the host, not from KVM_SET_CPUID2 "
                f"(leaf 1 is {lines[1]!r} with FPU removed)")
    return None


@functools.cache
def kvm_refuses_pae_paging() -> str | None:
    """Why this host's KVM cannot run guest/smc.S's paging part, or None where it runs it all.

    Probed once per process: machines/smc.yaml on KVM must get past the ``mov cr0`` that turns
    on 32-bit PAE paging (a paravirtualized KVM here runs long-mode paging, not that).
    """
    skip_without_kvm()
    run = vmcore("run", str(REPO / "machines" / "smc.yaml"), "--accel", "kvm")
    if run.status != 0 and "triple fault" in run.stderr and "mov cr0, eax" in run.stderr.split("=>", 1)[-1][:80]:
        return "this host's KVM shuts the guest down where it turns on 32-bit PAE paging (mov cr0 with PG)"
    return None


@functools.cache
def kvm_runs_guest_code_slowly() -> str | None:
    """Why this host's KVM cannot run a long guest (Linux) in a test's time, or None.

    Probed once per process: 2 M instructions of a register loop (no exits) must take well
    under a second; a paravirtualized KVM that emulates guest code (this host's PVM) takes
    about one. Hardware KVM runs them in about a millisecond.
    """
    import tempfile

    skip_without_kvm()
    loop = (bytes([0x66, 0xB9]) + (1_000_000).to_bytes(4, "little")  # mov ecx, 1M
            + bytes([0x66, 0x49, 0x75, 0xFC, 0xF4]))                  # dec ecx; jnz back; hlt
    with tempfile.TemporaryDirectory() as folder:
        profile = real_mode_profile(Path(folder), "kvm_speed", loop)
        run = vmcore("run", str(profile), "--accel", "kvm")
    if run.status != 0:
        return f"the KVM speed probe did not run: {run.stderr.strip()[-200:]}"
    rate = 2e6 / max(run.seconds - 0.3, 1e-3)  # less the process start-up
    if rate < 200e6:
        return (f"this host's KVM runs guest code at about {rate / 1e6:.0f} M instructions/s (it emulates it): "
                "Linux's decompressor alone runs for minutes (a 360 s run ended inside it)")
    return None


@functools.cache
def kvm_unit_tests_suite() -> Path:
    """The pinned kvm-unit-tests, built once into .cache/ (scripts/build-kvm-unit-tests); skips with its reason."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "build-kvm-unit-tests")], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip() or "scripts/build-kvm-unit-tests failed")
    return Path(done.stdout.strip())


# --- the plugin the child processes load: ``plugins=("tests.helpers",)`` ----------------------


@attrs.frozen
class RegsConfig:
    """Four byte registers at ``port`` (the fuzzing tests' devices)."""

    port: int = prop(0x600, "First of four byte registers.", hex=True)


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


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment plus ``extra``, with the repository on PYTHONPATH for the ``tests.*`` plugins."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}


def child(argv: list[str], timeout: float = CHILD_TIMEOUT, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` from the repository with it on PYTHONPATH; fail the test if it outlives ``timeout``."""
    start = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=REPO, env=child_env(env))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(argv[2:])} did not finish in {timeout} s; stderr: {exc.stderr!r}")
    return Run(result.returncode, result.stdout, result.stderr.decode("utf-8", "replace"),
               time.monotonic() - start)


def serial_echo(accel: str, folder: Path, exchanges: Sequence[tuple[bytes, bytes]], *extra: str) -> tuple[bytes, int]:
    """``vmcore run serial-echo`` (with ``extra`` arguments) driven over its UART's socket: for each
    (send, echoed) of ``exchanges`` the bytes are sent once all echoed so far came back; everything
    received (up to the end of the socket) and the process's status."""
    import socket

    path = folder / "com1.sock"
    argv = [sys.executable, "-m", "vmcore", "run", "serial-echo", "--accel", accel, *extra,
            "--set", "devices.com1.backend=socket", "--set", f"devices.com1.path={path}"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the UART socket never appeared"
            time.sleep(0.02)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(30)
        client.connect(str(path))
        received = expected = b""
        for send, echoed in exchanges:
            client.sendall(send)  # each after the guest echoed the last: at another moment of its run
            expected += echoed
            while expected not in received:
                chunk = client.recv(256)
                if not chunk:
                    break
                received += chunk
        client.close()
        status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return received, status


def signal_a_spinning_guest(profile: Path, signum: int, *args: str) -> tuple[int, bytes]:
    """``vmcore run PROFILE --accel tcg ARGS`` on a guest that spins without exits (tiny_guests.SPIN),
    sent ``signum`` once it runs; its status and stderr. It must end within half its time limit:
    only the signal can have ended it."""
    proc = subprocess.Popen([sys.executable, "-m", "vmcore", "run", str(profile), "--accel", "tcg", "--timeout", "60",
                             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        time.sleep(1.5)  # started and spinning (a signal before the run's handler would end the process)
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def vmcore(*args: str, timeout: float = CHILD_TIMEOUT, env: dict[str, str] | None = None) -> Run:
    """``python -m vmcore ARGS`` in a child process (``env`` adds to the environment)."""
    return child([sys.executable, "-m", "vmcore", *args], timeout, env)


_IN_PROCESS = """\
import importlib, json, sys
from vmcore.accel import RunLimits
from vmcore.machine import Machine
from vmcore.plugins import DeviceRegistry
from vmcore.profile import Profile

spec = json.loads(sys.argv[1])
plugins = [importlib.import_module(name) for name in spec["plugins"]]
profile = Profile.load(spec["profile"], spec["overrides"])
trace = []
with Machine.build(profile, DeviceRegistry.default(plugins=plugins)) as machine:
    machine.set_tracer(trace.append)
    stop = machine.run(spec["accel"], RunLimits(timeout=spec["timeout"], max_exits=spec["max_exits"]))
    console = machine.devices.get("console")
    scratch = machine.devices.get("scratch")
    result = {
        "accel": machine.accelerator.name if machine.accelerator else None,
        "kind": stop.kind, "status": stop.status, "message": stop.message, "exits": stop.exits,
        "traceback": stop.detail.get("traceback", ""),
        "console": bytes(console.output).decode("latin-1") if console is not None else None,
        "scratch": bytes(scratch.data).hex() if scratch is not None else None,
        "roms": {slot.name: bytes(slot.view).hex() for slot in machine.memory if slot.readonly},
        "trace": [[t.space.value, t.direction.value, t.address, t.size, t.value, t.device] for t in trace],
        # The vCPU where it stopped (the accelerator is still open inside the with).
        "registers": machine.accelerator.snapshot()[0] if machine.accelerator else None,
    }
print("RESULT " + json.dumps(result))
"""


def in_process(profile: Path, *overrides: str, accel: str | None = None, timeout: float | None = 20,
               max_exits: int | None = None, plugins: Sequence[str] = ("tests.helpers",)) -> dict[str, Any]:
    """Build with ``plugins`` (modules, default this one: ``scratch`` and ``faulty``) and run on ``accel``, in a child.

    The machine's report as a dict: the stop, the console's bytes (``backend: memory``),
    the scratch device's registers, the ROM slots' bytes, every bus transaction, the
    vCPU's registers where it stopped, and
    ``stderr`` (where the log lines go).
    """
    spec = {"profile": str(profile), "overrides": list(overrides), "accel": accel, "timeout": timeout,
            "max_exits": max_exits, "plugins": list(plugins)}
    run = child([sys.executable, "-c", _IN_PROCESS, json.dumps(spec)])
    assert run.status == 0, run.stderr
    lines = [line for line in run.stdout.decode().splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, run.stdout
    return {**json.loads(lines[0][len("RESULT "):]), "stderr": run.stderr}


# --- differential runs (KVM, then tcg) in a child process ----------------------------------------

_DIFFERENTIAL = """\
import importlib, json, sys
from vmcore.accel import RunLimits
from vmcore.diff import differential
from vmcore.plugins import DeviceRegistry
from vmcore.profile import Profile

spec = json.loads(sys.argv[1])
plugins = [importlib.import_module(name) for name in spec["plugins"]]
result = differential(Profile.load(spec["profile"]), registry=DeviceRegistry.default(plugins=plugins),
                      limits=RunLimits(timeout=spec["timeout"]))

def txn(t):
    return [t.space.value, t.direction.value, t.address, t.size, t.value, t.device]

out = {
    "identical": result.identical, "index": result.index, "same_stop": result.same_stop,
    "report": result.report(),
    "runs": [{"accel": r.accel, "kind": r.stop.kind, "status": r.stop.status, "message": r.stop.message,
              "transactions": [txn(t) for t in r.transactions]} for r in (result.a, result.b)],
}
print("\\nRESULT " + json.dumps(out))  # after whatever the guests printed
"""


def differential(profile: Path, plugins: Sequence[str] = (), timeout: float = 20) -> dict[str, Any]:
    """``vmcore.diff.differential(profile)`` (KVM first, then tcg) in a child; the outcome as a dict."""
    spec = {"profile": str(profile), "plugins": list(plugins), "timeout": timeout}
    run = child([sys.executable, "-c", _DIFFERENTIAL, json.dumps(spec)])
    assert run.status == 0, run.stderr
    lines = [line for line in run.stdout.decode("latin-1").splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0][len("RESULT "):])


# --- a scripted vCPU: the KVM exit path without /dev/kvm --------------------------------------

PIO_DATA = 4096


class Closeable:
    """Stands in for the Kvm and Vm handles a KvmAccelerator closes (tests that script the vCPU)."""

    def close(self) -> None:
        pass


class ScriptedVcpu:
    """Stands in for vmcore.kvm.Vcpu: each run() applies the next scripted exit."""

    def __init__(self, script: list[Callable[[s.kvm_run, bytearray], None]]) -> None:
        self.mmap = bytearray(3 * 4096)
        self.run_struct = s.kvm_run.from_buffer(self.mmap)
        self.script = list(script)
        self.after: list[bytes] = []  # the PIO data page as the guest would see it, per exit
        self.regs = s.kvm_regs(rip=0x10, rax=0x1234)
        self.sregs = s.kvm_sregs()

    def run(self) -> None:
        self.after.append(bytes(self.mmap[PIO_DATA : PIO_DATA + 16]))
        step = self.script.pop(0) if self.script else hlt
        step(self.run_struct, self.mmap)

    def get_regs(self) -> s.kvm_regs:
        return self.regs

    def get_sregs(self) -> s.kvm_sregs:
        return self.sregs

    def close(self) -> None:
        pass


def hlt(run: s.kvm_run, _buf: bytearray) -> None:
    run.exit_reason = k.KVM_EXIT_HLT


def io(direction: int, port: int, size: int, data: bytes = b"", count: int = 1) -> Callable[[s.kvm_run, bytearray], None]:
    def step(run: s.kvm_run, buf: bytearray) -> None:
        run.exit_reason = k.KVM_EXIT_IO
        run.io.direction, run.io.port, run.io.size = direction, port, size
        run.io.count = count if direction == k.KVM_EXIT_IO_IN else len(data) // size
        run.io.data_offset = PIO_DATA
        buf[PIO_DATA : PIO_DATA + 16] = bytes(16)
        buf[PIO_DATA : PIO_DATA + len(data)] = data
    return step


def mmio(address: int, size: int, write: bytes | None = None) -> Callable[[s.kvm_run, bytearray], None]:
    def step(run: s.kvm_run, _buf: bytearray) -> None:
        run.exit_reason = k.KVM_EXIT_MMIO
        run.mmio.phys_addr, run.mmio.len = address, size
        run.mmio.is_write = int(write is not None)
        data = (write or b"").ljust(8, b"\0")
        ctypes.memmove(ctypes.addressof(run.mmio.data), data, 8)
    return step


def reason(code: int, fill: Callable[[s.kvm_run], None] = lambda run: None) -> Callable[[s.kvm_run, bytearray], None]:
    def step(run: s.kvm_run, _buf: bytearray) -> None:
        run.exit_reason = code
        fill(run)
    return step


# --- real-mode guests on several accelerators, one child process -------------------------------


def real_mode_profile(folder: Path, name: str, code: bytes, devices: str = "", console: str = "memory",
                      timeout: float = 20) -> Path:
    """A real-mode profile running ``code`` from RAM at 0, with debugcon, debug-exit and ``devices``."""
    (folder / f"{name}.bin").write_bytes(code)
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ncpu: {{mode: real, entry: 0x0}}\n"
        f"memory:\n  ram: {{base: 0x0, size: 4K, kind: ram, image: {name}.bin}}\n"
        f"devices:\n  console: {{type: debugcon, port: 0xF1, backend: {console}}}\n"
        f"  exit: {{type: debug-exit, port: 0x501}}\n{devices}"
        f"limits: {{timeout: {timeout}}}\n"
    )
    return path


ACCEL_RUNS_CHILD = """\
import importlib, json, sys
from vmcore.accel import RunLimits, create
from vmcore.machine import Machine
from vmcore.plugins import DeviceRegistry
from vmcore.profile import Profile


class Counting:
    '''The vCPU, counting how often the guest is entered (each return is an exit or a wake-up).'''

    def __init__(self, vcpu):
        self._vcpu = vcpu
        self.entries = 0

    def __getattr__(self, name):
        return getattr(self._vcpu, name)

    def run(self):
        self.entries += 1
        self._vcpu.run()


spec = json.loads(sys.argv[1])
registry = DeviceRegistry.default(plugins=[importlib.import_module(name) for name in spec["plugins"]])
for run in spec["runs"]:
    trace = []
    with Machine.build(Profile.load(spec["profile"]), registry) as machine:
        machine.set_tracer(trace.append)
        accel = create(run["accel"])
        vcpu = None
        if run["accel"] == "kvm":
            accel.coalesce = run.get("coalesce", True)
            accel.ioeventfds = run.get("ioeventfds", True)
            vcpu = accel.vcpu = Counting(accel.vcpu)
        print("RUNNING", file=sys.stderr, flush=True)
        stop = machine.run(accel, RunLimits(timeout=spec["timeout"]))
        result = {
            **run, "kind": stop.kind, "status": stop.status, "exits": stop.exits, "message": stop.message,
            "entries": vcpu.entries if vcpu is not None else None,
            "console": bytes(machine.devices["console"].output).hex(),
            "log": [list(entry) for entry in getattr(machine.devices.get("bell"), "log", [])],
            "trace": [[t.space.value, t.direction.value, t.address, t.size, t.value, t.device] for t in trace],
        }
    print("RESULT " + json.dumps(result), flush=True)
"""


def accel_runs(path: Path, runs: list[dict[str, Any]], plugins: Sequence[str],
               timeout: float = 20) -> list[dict[str, Any]]:
    """Each of ``runs`` (accel, coalesce, ioeventfds) on a fresh machine from ``path``, in one child."""
    spec = {"profile": str(path), "runs": runs, "timeout": timeout, "plugins": list(plugins)}
    result = child([sys.executable, "-c", ACCEL_RUNS_CHILD, json.dumps(spec)],
                   timeout=CHILD_TIMEOUT + len(runs) * timeout)
    assert result.status == 0, result.stderr
    lines = [line for line in result.stdout.decode().splitlines() if line.startswith("RESULT ")]
    assert len(lines) == len(runs), result.stdout
    return [json.loads(line[len("RESULT "):]) for line in lines]


class PtyReader:
    """What a child on the other side of a pty (``pty.fork``) prints, gathered as it comes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = bytearray()

    def wait_for(self, text: bytes, seconds: float = 20) -> bool:
        """Read until ``text`` has appeared (True) or ``seconds`` passed (False)."""
        import select

        deadline = time.monotonic() + seconds
        while text not in self.seen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.seen.extend(os.read(self.fd, 4096))
                except OSError:
                    break
        return text in self.seen

    def wait_exit(self, pid: int, seconds: float) -> int | None:
        """The child's exit code once it ends within ``seconds`` (reading what it prints meanwhile), else None."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            self.wait_for(b"\0never", 0.2)
        return None

    def close(self, pid: int) -> None:
        """Kill the child if it still runs, reap it, and close the pty."""
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass
        os.close(self.fd)


# --- snapshots ------------------------------------------------------------------------------------


def rewrite_snapshot(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a snapshot's header with ``change`` (given the header to edit in place), its
    checksum made again: a file that is whole, its content what a test wants."""
    import hashlib

    from vmcore.snapshot import MAGIC, read_snapshot

    header, data = read_snapshot(path, limit=1 << 32)
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    body = MAGIC + len(text).to_bytes(8, "little") + text + data
    path.write_bytes(body + hashlib.sha256(body).digest())


def as_if_from_kvm(header: dict[str, Any]) -> None:
    """A software-CPU snapshot made to look saved on KVM: its engine's own record dropped, so the
    vCPU can come back only through its portable form (vmcore.accel.portable)."""
    header["accelerator"] = "kvm"
    del header["cpu"]["engine"]
