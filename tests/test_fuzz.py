"""vmcore.fuzz: the hostile guest finds planted bugs, shrinks them, and every built-in survives it.

Budgets are small and seeds fixed, so the file is quick and CI is repeatable; bench/fuzz.py
runs the long campaign.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import ClassVar, Sequence

import attrs
import pytest

from tests.helpers import RegsConfig
from vmcore.bus import Region, Space
from vmcore.device import Device, PropertyError, prop
from vmcore.fuzz import (SCRATCH_DISK_BYTES, FuzzScratch, Op, assert_survives_fuzzing, fuzz_all, fuzz_device,
                         replay)
from vmcore.hookspecs import hookimpl
from vmcore.plugins import DeviceRegistry

REPO = Path(__file__).resolve().parent.parent
FUZZ_SOURCES = sorted((REPO / "vmcore" / "fuzz").glob("*.py"))
BUILTINS = {"debugcon", "debug-exit", "i8259", "i8254", "cmos-rtc", "uart16550", "i8042", "fw-cfg"}
REGISTERED = DeviceRegistry.default().names()
SEED = 20261125


# --- devices to fuzz: one well-behaved, and one planted bug of each kind -----------------------


class Regs(Device):
    """Four byte registers that read back what was written: nothing to find."""

    type_name = "test-regs"
    Config = RegsConfig

    def __init__(self, config: RegsConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.regs = [0, 0, 0, 0]

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 4, self.read, self.write, sizes=(1,), name="regs")]

    def read(self, offset: int, size: int) -> int:
        return self.regs[offset]

    def write(self, offset: int, size: int, value: int) -> None:
        self.regs[offset] = value


class Planted(Regs):
    """Writing 0xFF to register 1 after register 0 was written indexes past the table."""

    type_name = "test-planted"

    def __init__(self, config: RegsConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.armed = False

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.armed = True
        if offset == 1 and value == 0xFF and self.armed:
            self.regs[value] = 1  # the bug
        self.regs[offset] = value


class Wide(Regs):
    """Register 2 reads 0x100 for a byte: out of range."""

    type_name = "test-wide"

    def read(self, offset: int, size: int) -> int:
        return 0x100 if offset == 2 else self.regs[offset]


class Stuck(Regs):
    """Writing a value with bit 7 set to register 3 spins forever."""

    type_name = "test-stuck"

    def write(self, offset: int, size: int, value: int) -> None:
        while offset == 3 and value & 0x80:
            pass
        self.regs[offset] = value


class Outside(Regs):
    """Claims ports past 0xFFFF."""

    type_name = "test-outside"

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, 0xFFFE, 4, self.read, self.write, name="regs")]


class NeedsHost(Regs):
    """Cannot be built without a host resource (as a device opening a file would fail)."""

    type_name = "test-needs-host"

    def __init__(self, config: RegsConfig, ctx) -> None:
        raise OSError("no such file: /dev/acme0")


class Dma(Regs):
    """Register 0 takes a guest-physical address (low byte first over four writes, the last one
    starts the transfer); a descriptor starting 0xFF in guest RAM makes it fail."""

    type_name = "test-dma"

    def write(self, offset: int, size: int, value: int) -> None:
        super().write(offset, size, value)
        if offset == 3:
            address = int.from_bytes(bytes(self.regs), "little") & 0xFFFF0
            if self.ctx.memory.read(address, 1) == b"\xff":
                raise ValueError(f"bad descriptor at {address:#x}")


class Exits(Regs):
    """Any write to register 3 ends the run (as debug-exit does); counts instances built."""

    type_name = "test-exits"
    built = 0

    def __init__(self, config: RegsConfig, ctx) -> None:
        super().__init__(config, ctx)
        type(self).built += 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 3:
            self.ctx.exit(1, "test-exits: register 3 written")
        super().write(offset, size, value)


class Controller(Regs):
    """An interrupt controller whose IRQ 13 input breaks it, and whose vectors are fine otherwise."""

    type_name = "test-controller"

    def __init__(self, config: RegsConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.intr_changed = None
        self.requests: set[int] = set()

    def set_irq(self, line: int, level: bool) -> None:
        if line == 13 and level:
            raise KeyError(line)
        if level:
            self.requests.add(line)

    def pending(self) -> bool:
        return bool(self.requests)

    def acknowledge(self) -> int:
        return 0x20 + self.requests.pop() % 16


class DeviceAbort(BaseException):
    """A device's own BaseException: neither Exception nor one of Python's."""


class Quits(Regs):
    """Register 3 written: a timer 1 us later raises ``exception`` (a timer callback is not behind the bus)."""

    type_name = "test-quits"
    exception: type[BaseException] = SystemExit

    def write(self, offset: int, size: int, value: int) -> None:
        super().write(offset, size, value)
        if offset == 3:
            self.ctx.clock.call_later(1000, self.quit)

    def quit(self) -> None:
        raise self.exception("register 3")


class QuitsReading(Regs):
    """Reading register 2 raises SystemExit, inside the bus's call of the handler."""

    type_name = "test-quits-reading"

    def read(self, offset: int, size: int) -> int:
        if offset == 2:
            raise SystemExit("register 2")
        return self.regs[offset]


class QuitsBuilding(Regs):
    """Cannot be built: its constructor raises SystemExit."""

    type_name = "test-quits-building"

    def __init__(self, config: RegsConfig, ctx) -> None:
        raise SystemExit("no, thanks")


@attrs.frozen
class DeclaresConfig:
    port: int = prop(0x600, "First of four byte registers.", hex=True)
    image: str = prop("/srv/acme/disk.img", "A host disk image the device writes.")
    notes: str = prop("/srv/acme/notes.txt", "A host file the device writes.")


class Declares(Regs):
    """Declares the scratch resources to fuzz it with, in place of a user's files."""

    type_name = "test-declares"
    Config = DeclaresConfig
    built_with: ClassVar[list[DeclaresConfig]] = []  # every Config an instance was built with

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        return {"image": scratch.disk(5), "notes": str(scratch.folder() / "notes.txt")}

    def __init__(self, config: DeclaresConfig, ctx) -> None:
        super().__init__(config, ctx)
        Declares.built_with.append(config)


class DeclaresTypo(Regs):
    """Declares a fuzzing property its Config does not have."""

    type_name = "test-declares-typo"

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        return {"prot": "0x700"}


# --- every built-in survives ------------------------------------------------------------------


def test_every_builtin_type_is_registered_and_so_fuzzed() -> None:
    assert BUILTINS <= set(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_registered_type_survives_random_fuzzing(name: str) -> None:
    report = fuzz_device(name, runs=30, steps=40, seed=SEED, mode="random")
    assert report.ok, str(report)
    assert (report.runs, report.transactions) == (30, 1200)  # a GuestExit starts a new instance, never ends a run
    assert report.clock_ns > 0


@pytest.mark.parametrize("name", REGISTERED)
def test_registered_type_survives_hypothesis_fuzzing(name: str) -> None:
    report = fuzz_device(name, runs=15, steps=40, seed=SEED, mode="hypothesis")
    assert report.ok, str(report)
    assert report.runs == 15


def test_fuzz_all_reports_every_registered_type() -> None:
    reports = fuzz_all(runs=2, steps=10, seed=1, mode="random")
    assert [r.device for r in reports] == REGISTERED
    assert all(r.ok for r in reports), "\n".join(map(str, reports))


def test_the_same_seed_gives_the_same_campaign() -> None:
    one, two = (fuzz_device("i8254", runs=10, steps=40, seed=5, mode="random") for _ in range(2))
    assert (one.transactions, one.clock_ns) == (two.transactions, two.clock_ns)


def test_builtins_get_properties_that_keep_them_off_the_host() -> None:
    report = fuzz_device("uart16550", runs=1, steps=5, seed=1, mode="random")
    assert report.props == {"backend": "memory"}
    report = fuzz_device("uart16550", {"port": "0x2f8"}, runs=1, steps=5, seed=1, mode="random")
    assert report.props == {"backend": "memory", "port": "0x2f8"}


# --- the properties a type declares for fuzzing ----------------------------------------------


def test_a_type_is_built_with_the_properties_it_declares_for_fuzzing() -> None:
    Declares.built_with.clear()
    report = fuzz_device(Declares, runs=3, steps=5, seed=1, mode="random")
    assert report.ok, str(report)
    scratch = FuzzScratch()
    assert report.props == {"image": scratch.disk(5), "notes": str(scratch.folder() / "notes.txt")}
    assert Declares.built_with  # the probe and each run
    assert {(c.image, c.notes) for c in Declares.built_with} == {(report.props["image"], report.props["notes"])}


def test_the_callers_properties_win_over_the_declared_ones() -> None:
    Declares.built_with.clear()
    report = fuzz_device(Declares, {"notes": "elsewhere.txt"}, runs=1, steps=5, seed=1, mode="random")
    assert report.props["notes"] == "elsewhere.txt"
    assert {c.notes for c in Declares.built_with} == {"elsewhere.txt"}


def test_replay_builds_the_type_with_its_declared_properties() -> None:
    Declares.built_with.clear()
    assert replay(Declares, [Op("write", 0x600, 1, 7)]) == ["outb 0x600 0x07", "ok"]
    assert {c.image for c in Declares.built_with} == {FuzzScratch().disk(5)}


def test_a_declared_property_the_type_does_not_have_is_a_construction_failure() -> None:
    report = fuzz_device(DeclaresTypo, runs=3, steps=5, seed=1, mode="random")
    [failure] = report.failures
    assert failure.kind == "construction"
    assert "prot" in failure.message
    assert report.runs == 0


def test_a_scratch_disk_is_zero_filled_and_one_per_index() -> None:
    scratch = FuzzScratch()
    first, again, second = scratch.disk(0), scratch.disk(0), scratch.disk(1)
    assert first == again != second
    assert Path(second).read_bytes() == bytes(SCRATCH_DISK_BYTES)


def test_the_scratch_folder_is_one_folder_in_the_temp_folder() -> None:
    folder = FuzzScratch().folder()
    assert folder == FuzzScratch().folder()
    assert folder.is_dir()
    assert folder.parent == Path(tempfile.gettempdir())


def test_the_fuzzer_names_no_builtin_device_type() -> None:
    registry = DeviceRegistry.default()
    builtins = [name for name in REGISTERED if registry.get(name).cls.__module__.startswith("vmcore_devices.")]
    assert set(builtins) >= BUILTINS
    for source in FUZZ_SOURCES:
        text = source.read_text(encoding="utf-8")
        named = [name for name in builtins if f'"{name}"' in text or f"'{name}'" in text]
        assert not named, f"{source.name} names built-in types {named}: they declare fuzz_props instead"


# --- what it finds, and how short the reproduction is -------------------------------------


@pytest.mark.parametrize("mode", ["hypothesis", "random"])
def test_planted_bug_is_found_with_a_short_reproducing_sequence(mode: str) -> None:
    report = fuzz_device(Planted, runs=100, steps=40, seed=SEED, mode=mode)
    assert report.summary().endswith(", 1 failure")
    [failure] = report.failures
    assert failure.kind == "exception"
    assert failure.exception == "IndexError: list assignment index out of range"
    assert "self.regs[value] = 1  # the bug" in failure.traceback
    # Register 0 written, then 0xFF into register 1: two byte writes, or one word write doing both.
    assert failure.lines in (("outb 0x600 0x00", "outb 0x601 0xff"), ("outw 0x600 0xff00",)), failure.lines
    assert replay(Planted, failure.ops)[-1].startswith("exception: IndexError")


def test_failure_report_shows_the_sequence_and_the_traceback() -> None:
    report = fuzz_device(Planted, runs=100, steps=40, seed=SEED, mode="hypothesis")
    text = str(report)
    assert text.startswith("test-planted: ")
    assert "reproduced from a fresh device by" in text
    assert "    " + report.failures[0].lines[-1] in text.splitlines()
    assert "Traceback (most recent call last):" in text


def test_read_value_out_of_range_is_flagged() -> None:
    report = fuzz_device(Wide, runs=30, steps=20, seed=SEED, mode="random")
    [failure] = report.failures
    assert failure.kind == "out-of-range"
    assert "Wide.read(offset=0x2, size=1) returned 0x100, outside 0..0xff" in failure.message
    assert len(failure.ops) == 1 and failure.ops[0].kind == "read"


def test_region_outside_its_space_is_flagged_without_fuzzing() -> None:
    report = fuzz_device(Outside, runs=5, seed=1)
    [failure] = report.failures
    assert failure.kind == "region"
    assert "outside the space" in failure.message
    assert report.runs == 0


def test_hang_is_interrupted_and_shows_where() -> None:
    report = fuzz_device(Stuck, runs=30, steps=40, seed=SEED, mode="random", timeout=0.2, shrink_seconds=5)
    [failure] = report.failures
    assert failure.kind == "hang"
    assert "took more than 0.2 s" in failure.message
    assert "while offset == 3 and value & 0x80:" in failure.traceback
    assert failure.lines in (("outb 0x603 0x80",), ("outw 0x602 0x8000",), ("outl 0x600 0x80000000",)), failure.lines


def test_garbage_in_guest_ram_reaches_a_dma_device() -> None:
    report = fuzz_device(Dma, runs=200, steps=40, seed=SEED, mode="random")
    [failure] = report.failures
    assert failure.exception.startswith("ValueError: bad descriptor at")
    assert any(line.startswith("fill ") for line in failure.lines), failure.lines


def test_irq_lines_and_acknowledge_reach_an_interrupt_controller() -> None:
    report = fuzz_device(Controller, runs=50, steps=40, seed=SEED, mode="hypothesis")
    [failure] = report.failures
    assert failure.exception == "KeyError: 13"
    assert failure.lines == ("irq 13 high",)


def test_guest_exit_is_not_a_failure_and_a_new_instance_goes_on() -> None:
    Exits.built = 0
    report = fuzz_device(Exits, runs=20, steps=40, seed=SEED, mode="random")
    assert report.ok, str(report)
    assert report.transactions == 20 * 40
    assert Exits.built > 20 + 1  # the probe, one per run, and one after each exit


def test_a_type_that_cannot_be_built_is_reported_not_fuzzed() -> None:
    report = fuzz_device(NeedsHost, runs=5, seed=1)
    [failure] = report.failures
    assert failure.kind == "construction"
    assert "OSError: no such file: /dev/acme0" in failure.message
    assert report.runs == 0


@pytest.mark.parametrize("exception", [SystemExit, GeneratorExit, DeviceAbort])
def test_a_device_raising_a_base_exception_is_a_failure_naming_it_and_the_op(exception: type[BaseException]) -> None:
    device = type(f"Quits{exception.__name__}", (Quits,), {"exception": exception})
    report = fuzz_device(device, runs=30, steps=40, seed=SEED, mode="random")
    [failure] = report.failures
    assert (failure.device, failure.kind) == ("test-quits", "exception")
    assert failure.exception.endswith(f"{exception.__name__}: register 3"), failure.exception
    assert "(in quit, " in failure.message and ", during step " in failure.message, failure.message
    assert failure.lines[-1].startswith("step "), failure.lines
    assert any(line.startswith(("outb 0x603 ", "outw 0x602 ", "outl 0x600 ")) for line in failure.lines), failure.lines


def test_system_exit_from_a_read_handler_is_a_failure_naming_the_access() -> None:
    report = fuzz_device(QuitsReading, runs=30, steps=20, seed=SEED, mode="random")
    [failure] = report.failures
    assert (failure.device, failure.kind, failure.exception) == ("test-quits-reading", "exception",
                                                                 "SystemExit: register 2")
    assert failure.message.endswith(f"during {failure.lines[-1]})"), failure.message
    [op] = failure.ops  # one read whose bytes take in register 2
    assert op.kind == "read" and op.address <= 0x602 < op.address + op.size, failure.lines


def test_system_exit_while_building_is_a_construction_failure() -> None:
    report = fuzz_device(QuitsBuilding, runs=5, seed=1)
    [failure] = report.failures
    assert (failure.device, failure.kind) == ("test-quits-building", "construction")
    assert "SystemExit: no, thanks" in failure.message
    assert report.runs == 0


def test_keyboard_interrupt_from_a_device_stops_the_fuzzer() -> None:
    device = type("QuitsKeyboardInterrupt", (Quits,), {"exception": KeyboardInterrupt})
    with pytest.raises(KeyboardInterrupt, match="register 3"):
        fuzz_device(device, runs=30, steps=40, seed=SEED, mode="random")


def test_a_bad_property_from_the_caller_is_an_error() -> None:
    with pytest.raises(PropertyError, match="prot: unknown property"):
        fuzz_device(Regs, {"prot": 1}, runs=1)


def test_op_lines_read_like_qtest() -> None:
    assert str(Op("write", 0x3F9, 1, 0xFF)) == "outb 0x3f9 0xff"
    assert str(Op("read", 0x70, 2)) == "inw 0x70"
    assert str(Op("write", 0xFEE00000, 4, 1, Space.MMIO)) == "writel 0xfee00000 0x00000001"
    assert str(Op("step", value=1_500_000)) == "step 1500000  (1.5 ms)"
    assert str(Op("irq", 4, value=1)) == "irq 4 high"
    assert str(Op("fill", 0x1000, data=b"\xff" * 4096)) == "fill 0x1000 4096 x 0xff"


# --- for plugin authors --------------------------------------------------------------------


def test_assert_survives_fuzzing_passes_a_sound_third_party_device() -> None:
    report = assert_survives_fuzzing(Regs, runs=20, steps=30, seed=1)
    assert report.device == "test-regs" and report.ok


def test_assert_survives_fuzzing_fails_with_the_report() -> None:
    with pytest.raises(AssertionError) as info:
        assert_survives_fuzzing(Planted, runs=100, steps=40, seed=SEED)
    assert "test-planted: exception: IndexError" in str(info.value)
    assert "reproduced from a fresh device by" in str(info.value)


# --- the command -------------------------------------------------------------------------


def vmcore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcore", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_cli_fuzz_prints_the_summary_and_exits_0() -> None:
    result = vmcore("fuzz", "debugcon", "--runs", "5", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "debugcon: 5 runs, 250 transactions, 0 failures\n"
    assert result.stderr == ""


def test_cli_fuzz_unknown_type_exits_2_with_one_line() -> None:
    result = vmcore("fuzz", "nosuch")
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("vmcore: unknown device type 'nosuch'; known types: ")


def test_cli_fuzz_suggests_a_near_name() -> None:
    result = vmcore("fuzz", "debugcom")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "(did you mean 'debugcon'?)" in line


def test_cli_fuzz_bad_prop_exits_2_with_one_line() -> None:
    result = vmcore("fuzz", "uart16550", "--prop", "prot=0x2f8")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "prot: unknown property (did you mean 'port'?)" in line


class _PlantedPlugin:
    @staticmethod
    @hookimpl
    def vmcore_device_types() -> list[type]:
        return [Planted]


def test_cli_fuzz_failure_prints_the_sequence_and_exits_1(monkeypatch, capsys) -> None:
    from vmcore import cli

    default = DeviceRegistry.default.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(DeviceRegistry, "default",
                        classmethod(lambda cls, plugins=(): default(cls, plugins=[*plugins, _PlantedPlugin])))
    status = cli.main(["fuzz", "test-planted", "--runs", "100", "--steps", "40", "--seed", str(SEED)])
    out = capsys.readouterr().out
    assert status == 1
    assert out.startswith("test-planted: ")
    assert "test-planted: exception: IndexError: list assignment index out of range" in out
    assert "Traceback" not in out  # only with -v
    assert f"  again: vmcore fuzz test-planted --runs 100 --steps 40 --seed {SEED} --mode hypothesis" in out


#: A child that runs ``vmcore fuzz`` with the test-quits device installed as a plugin.
_CLI_WITH_QUITS = """
import sys
from tests.test_fuzz import Quits
from vmcore import cli
from vmcore.hookspecs import hookimpl
from vmcore.plugins import DeviceRegistry

class QuitsPlugin:
    @staticmethod
    @hookimpl
    def vmcore_device_types():
        return [Quits]

default = DeviceRegistry.default.__func__
DeviceRegistry.default = classmethod(lambda cls, plugins=(): default(cls, plugins=[*plugins, QuitsPlugin]))
sys.exit(cli.main(sys.argv[1:]))
"""


def test_cli_fuzz_reports_a_device_raising_system_exit_and_exits_1() -> None:
    result = subprocess.run([sys.executable, "-c", _CLI_WITH_QUITS, "fuzz", "test-quits", "--runs", "30", "--steps",
                             "40", "--seed", str(SEED), "--mode", "random"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("test-quits: 30 runs, "), result.stdout
    assert "test-quits: exception: SystemExit: register 3 (in quit, " in result.stdout, result.stdout
    assert f"  again: vmcore fuzz test-quits --runs 30 --steps 40 --seed {SEED} --mode random" in result.stdout


def test_cli_fuzz_all_fuzzes_every_registered_type() -> None:
    result = vmcore("fuzz", "--all", "--runs", "2", "--steps", "5", "--seed", "1", "--mode", "random")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == REGISTERED
