"""A device package written outside vmcore reaches every layer through the ``vmcore`` entry points.

The test writes a separate package, ``vmcore-scratchpad`` (module ``scratchpad``, its own
top-level name, not ``vmcore_devices.*``), into a temporary folder, installs it into a fresh venv
that sees vmcore and its dependencies through the system site-packages, and checks that

- ``python -m vmcore devices`` lists the new type with its module and properties;
- a YAML profile using the device boots on KVM and the guest prints what the device computed;
- the package's own fake-bus tests pass, which proves the ``fake_bus`` fixtures arrive in a
  third-party project through vmcore's ``pytest11`` entry point.

The package is the worked example of docs/device-guide.md: keep the two in step.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import kvm_unavailable


def _missing_tools() -> str | None:
    """Why this host cannot build and install a package into a venv, or None."""
    for module in ("venv", "pip", "setuptools"):
        if importlib.util.find_spec(module) is None:
            return f"the {module!r} module is not installed"
    version = importlib.metadata.version("setuptools")
    if int(version.split(".")[0]) < 61:
        return f"setuptools {version} is too old for PEP 621 metadata (61 or newer needed)"
    return None


pytestmark = pytest.mark.skipif(_missing_tools() is not None, reason=f"cannot install a package: {_missing_tools()}")

# Generous bounds: a hung child must fail the test, not hang the suite.
INSTALL_TIMEOUT = 180
RUN_TIMEOUT = 60


# --- the third-party package, file by file ---------------------------------------------------

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "vmcore-scratchpad"
version = "0.1.0"
description = "Scratch registers for vmcore: an example third-party device"
requires-python = ">=3.10"
dependencies = ["vmcore"]

# The name on the left is the plugin name; the module holds the @hookimpl.
[project.entry-points.vmcore]
scratch = "scratchpad.device"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

INIT = '''\
"""Scratch registers for vmcore: an example third-party device package."""
'''

DEVICE = '''\
"""Scratch registers: a small port-IO device to poke at from a guest.

Four byte registers from ``port`` on:

- offset 0, A: read/write.
- offset 1, B: read/write.
- offset 2, SUM: reads (A + B) mod 256; writes are ignored.
- offset 3, COUNT: a read returns the counter, then increments it (mod 256);
  a write loads it. When it wraps from 0xFF to 0 the device pulses ``irq``.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, in_range, prop
from vmcore.hookspecs import hookimpl

A, B, SUM, COUNT = range(4)
NREGS = 4


@attrs.frozen
class ScratchConfig:
    port: int = prop(0x510, "First of the four I/O ports.", hex=True, validator=in_range(0, 0x10000 - NREGS))
    start: int = prop(0, "Counter value at power-on and reset.", validator=in_range(0, 0xFF))
    irq: int = prop(5, "IRQ line pulsed when the counter wraps to 0.", validator=in_range(0, 15))


class Scratch(Device):
    """Scratch registers A and B, their sum, and a counter that counts its own reads."""

    type_name = "scratch"
    Config = ScratchConfig

    # Register state: plain attributes, no validators (they would run on every store).
    a: int
    b: int
    count: int

    def __init__(self, config: ScratchConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.wrap_irq = ctx.irq(config.irq)
        self.reset()

    def regions(self) -> Sequence[Region]:
        # Byte registers only: the bus splits wider accesses into byte accesses.
        return [Region(Space.PIO, self.config.port, NREGS, self.read, self.write, sizes=(1,), name="regs")]

    def reset(self) -> None:
        self.a = 0
        self.b = 0
        self.count = self.config.start

    def read(self, offset: int, size: int) -> int:
        if offset == A:
            return self.a
        if offset == B:
            return self.b
        if offset == SUM:
            return (self.a + self.b) & 0xFF
        value = self.count
        self.count = (value + 1) & 0xFF
        if self.count == 0:
            self.wrap_irq.pulse()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == A:
            self.a = value
        elif offset == B:
            self.b = value
        elif offset == COUNT:
            self.count = value
        # SUM is read-only: a write there is dropped.


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Scratch]
'''

PACKAGE_TESTS = '''\
"""Scratch registers on the fake bus: one test per documented behaviour."""

import pytest

from vmcore.bus import Direction
from vmcore.device import PropertyError

from scratchpad.device import Scratch

BASE = 0x520
A, B, SUM, COUNT = BASE, BASE + 1, BASE + 2, BASE + 3


@pytest.fixture
def scratch(fake_bus):
    return fake_bus.attach("scratch", port=BASE, start=7)


def test_type_is_found_through_the_vmcore_entry_point(device_registry):
    dtype = device_registry.get("scratch")
    assert dtype.cls is Scratch
    assert dtype.module == "scratchpad.device"
    assert [p.name for p in dtype.properties] == ["port", "start", "irq"]


def test_a_and_b_read_back_what_was_written(fake_bus, scratch):
    fake_bus.outb(A, 0x12)
    fake_bus.outb(B, 0x34)
    assert (fake_bus.inb(A), fake_bus.inb(B)) == (0x12, 0x34)


def test_sum_is_a_plus_b_modulo_256(fake_bus, scratch):
    fake_bus.outb(A, 0xF0)
    fake_bus.outb(B, 0x20)
    assert fake_bus.inb(SUM) == 0x10


def test_sum_ignores_writes(fake_bus, scratch):
    fake_bus.outb(SUM, 0x99)
    assert fake_bus.inb(SUM) == 0


def test_counter_starts_at_start_and_increments_on_each_read(fake_bus, scratch):
    assert [fake_bus.inb(COUNT) for _ in range(3)] == [7, 8, 9]


def test_counter_write_loads_it(fake_bus, scratch):
    fake_bus.outb(COUNT, 0x40)
    assert fake_bus.inb(COUNT) == 0x40
    assert fake_bus.inb(COUNT) == 0x41


def test_counter_wrap_pulses_the_irq_line(fake_bus, scratch):
    fake_bus.outb(COUNT, 0xFE)
    fake_bus.inb(COUNT)
    assert fake_bus.irq_events == []
    fake_bus.inb(COUNT)  # returns 0xFF; the counter wraps to 0
    assert fake_bus.irq_events == [(0, 5, True), (0, 5, False)]
    assert fake_bus.inb(COUNT) == 0


def test_word_write_is_split_into_a_then_b(fake_bus, scratch):
    fake_bus.outw(A, 0x1928)
    assert (fake_bus.inb(A), fake_bus.inb(B)) == (0x28, 0x19)
    assert fake_bus.inb(SUM) == 0x41
    assert fake_bus.inw(A) == 0x1928


def test_access_running_past_the_last_register_is_unclaimed_there(fake_bus, scratch):
    # COUNT answers the low byte; port BASE + 4 belongs to nobody and reads as all ones.
    assert fake_bus.inw(COUNT) == 0xFF07
    assert fake_bus.pio.unclaimed == {(Direction.READ, BASE + 4): 1}


def test_reset_restores_power_on_state(fake_bus, scratch):
    fake_bus.outw(A, 0xFFFF)
    fake_bus.inb(COUNT)
    scratch.reset()
    assert [fake_bus.inb(port) for port in (A, B, SUM, COUNT)] == [0, 0, 0, 7]


def test_port_range_must_fit_in_the_port_space(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("scratch", port=0xFFFE)
    assert info.value.key == "port"
    assert "0x0..0xfffc" in info.value.message
'''

#: Real-mode flat binary, loaded at 0 and entered at 0 (CS base 0, IP 0).
#: It writes A and B with one 16-bit OUT, prints SUM and two counter reads, and halts.
GUEST = bytes(
    [
        0xB8, 0x28, 0x19,  # mov $0x1928, %ax     AL = 0x28 for A, AH = 0x19 for B
        0xBA, 0x20, 0x05,  # mov $0x520, %dx      the scratch device's first port (A)
        0xEF,              # out %ax, %dx         16 bits: the bus splits it into A then B
        0x42,              # inc %dx
        0x42,              # inc %dx              0x522: SUM
        0xEC,              # in %dx, %al          AL = 0x28 + 0x19 = 0x41, 'A'
        0xE6, 0xF1,        # out %al, $0xF1       debugcon
        0x42,              # inc %dx              0x523: COUNT
        0xEC,              # in %dx, %al          AL = start (7), counter becomes 8
        0x04, 0x30,        # add $'0', %al
        0xE6, 0xF1,        # out %al, $0xF1       '7'
        0xEC,              # in %dx, %al          AL = 8
        0x04, 0x30,        # add $'0', %al
        0xE6, 0xF1,        # out %al, $0xF1       '8'
        0xB0, 0x0A,        # mov $'\n', %al
        0xE6, 0xF1,        # out %al, $0xF1
        0xF4,              # 1: hlt               a halt ends the run with status 0
        0xEB, 0xFD,        # jmp 1b
    ]
)

PROFILE = """\
name: scratch-demo
accel: kvm
cpu:
  mode: real
  entry: 0x0
memory:
  ram: {base: 0x0, size: 4K, kind: ram, image: scratch-demo.bin}
devices:
  console: {type: debugcon, port: 0xF1}
  scratch: {type: scratch, port: 0x520, start: 7}
limits:
  timeout: 10
"""


# --- helpers -----------------------------------------------------------------------------------


def _write_package(root: Path) -> Path:
    files = {
        "pyproject.toml": PYPROJECT,
        "src/scratchpad/__init__.py": INIT,
        "src/scratchpad/device.py": DEVICE,
        "tests/test_scratch.py": PACKAGE_TESTS,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Options meant for the outer pytest run must not reach the package's own test run.
    env.pop("PYTEST_ADDOPTS", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(args: list[str | Path], cwd: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_child_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def _venv_site_packages(python: Path) -> Path:
    proc = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], python.parent)
    assert proc.returncode == 0, _explain(proc)
    return Path(proc.stdout.strip())


def _make_venv(folder: Path) -> Path:
    """A venv that sees this interpreter's packages (pluggy, attrs, pytest, editable vmcore, pip)."""
    # No pip of its own (ensurepip is the slow part): the system pip runs as the venv's python
    # and installs into the venv.
    proc = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", folder], folder.parent)
    assert proc.returncode == 0, _explain(proc)
    python = folder / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # We run inside a venv ourselves: --system-site-packages reaches the base interpreter,
        # not this venv, so hand the new venv our site-packages (their .pth files included).
        dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
        line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs)
        (_venv_site_packages(python) / "_vmcore_outer_site.pth").write_text(line + "\n", encoding="utf-8")
    return python


def _offline_build_blocker() -> str | None:
    """Why the setuptools here cannot build a wheel without fetching anything, or None."""
    version = importlib.metadata.version("setuptools")
    major, minor = (int(part) for part in version.split(".")[:2])
    # bdist_wheel moved into setuptools in 70.1; before that it comes from the 'wheel' package.
    if (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None:
        return None
    return f"setuptools {version} builds wheels only with the 'wheel' package, which is not installed"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's python, the package source folder) once the package is installed."""
    root = tmp_path_factory.mktemp("thirdparty")
    package = _write_package(root / "vmcore-scratchpad")
    python = _make_venv(root / "venv")
    pip = [python, "-m", "pip", "install", "--no-deps", "--no-cache-dir"]
    blocker = _offline_build_blocker()
    if blocker is None:
        # The package needs nothing but setuptools to build, and we have it: no index needed.
        proc = _run(pip + ["--no-build-isolation", "--no-index", package], root, timeout=INSTALL_TIMEOUT)
    else:
        # pip fetches setuptools>=61 (the package's build requirement) from the configured index.
        proc = _run(pip + ["--retries", "1", package], root, timeout=INSTALL_TIMEOUT)
        if proc.returncode != 0 and "No matching distribution found for setuptools" in proc.stdout + proc.stderr:
            pytest.skip(f"cannot build the package: {blocker}, and no package index serves setuptools>=61")
    assert proc.returncode == 0, _explain(proc)
    return python, package


# --- the checks ----------------------------------------------------------------------------------


def test_vmcore_devices_lists_the_plugin_type_with_module_and_properties(installed: tuple[Path, Path]) -> None:
    python, package = installed
    proc = _run([python, "-m", "vmcore", "devices"], package.parent)
    assert proc.returncode == 0, _explain(proc)
    lines = proc.stdout.splitlines()
    assert "scratch  (scratchpad.device, plugin scratch)" in lines
    block = lines[lines.index("scratch  (scratchpad.device, plugin scratch)"):]
    block = block[: block.index("")]
    assert "    Scratch registers A and B, their sum, and a counter that counts its own reads." in block
    assert "    port: int [0x0..0xfffc] = 0x510  First of the four I/O ports." in block
    assert "    start: int [0..255] = 0  Counter value at power-on and reset." in block
    assert "    irq: int [0..15] = 5  IRQ line pulsed when the counter wraps to 0." in block
    # The built-ins are still there, beside the plugin.
    assert any(line.startswith("debugcon  (vmcore_devices.debugcon,") for line in lines)


@pytest.mark.kvm
def test_profile_with_the_plugin_device_checks_and_boots_on_kvm(installed: tuple[Path, Path]) -> None:
    python, package = installed
    folder = package.parent / "machine"
    folder.mkdir(exist_ok=True)
    (folder / "scratch-demo.bin").write_bytes(GUEST)
    profile = folder / "scratch-demo.yaml"
    profile.write_text(PROFILE, encoding="utf-8")

    check = _run([python, "-m", "vmcore", "check", profile], folder)
    assert check.returncode == 0, _explain(check)
    assert "  pio 0x520..0x523 scratch (regs)" in check.stdout.splitlines()

    reason = kvm_unavailable()
    if reason is not None:
        pytest.skip(f"booting needs /dev/kvm: {reason}")
    boot = _run([python, "-m", "vmcore", "run", profile], folder)
    assert (boot.returncode, boot.stdout) == (0, "A78\n"), _explain(boot)
    assert boot.stderr == "", _explain(boot)


def test_the_packages_own_fake_bus_tests_pass_in_the_venv(installed: tuple[Path, Path]) -> None:
    python, package = installed
    proc = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", package / "tests"], package)
    assert proc.returncode == 0, _explain(proc)
    assert "11 passed" in proc.stdout, _explain(proc)
