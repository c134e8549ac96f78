"""Differential runs: each guest on KVM and on the software CPU, compared transaction by transaction.

Every guest program in guest/ must give the same bus transactions and the same stop
on both accelerators (``vmcore.diff.differential``), and so must the small guests of
tests/tiny_guests.py. Then the comparison itself: a device whose answer depends on
how many machines the process built before (state leaking across machines) must be
caught at that very transaction, and a difference in how the runs stop alone must be
reported as such.

Each differential runs in a child process with a timeout. This module is also a
vmcore plugin (:func:`vmcore_device_types`): the children import it for the
``leaky`` and ``fragile`` device types.
"""

from __future__ import annotations

import functools
import importlib.util
import struct
from pathlib import Path
from typing import Any, ClassVar, Sequence

import attrs
import pytest

from tests.helpers import (DATA, REPO, differential, kvm_ignores_set_cpuid, kvm_refuses_pae_paging, skip_without_kvm,
                           vmcore)
from tests.tiny_guests import DIFFERENTIAL, TinyGuest, profile_for
from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.profile import Profile, ProfileError

pytestmark = pytest.mark.kvm

MACHINES = REPO / "machines"
LOOP_COUNT = 200  # instead of 100000: the loops' transactions are compared one by one


@pytest.fixture(autouse=True)
def _needs_kvm() -> None:
    skip_without_kvm()


def _load_guest_build() -> Any:
    # guest/ is not a package: load the script by path.
    spec = importlib.util.spec_from_file_location("vmcore_guest_build", REPO / "guest" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCES = _load_guest_build().SOURCES


# --- which profile boots which guest program ----------------------------------------------


@functools.cache
def bundled_profiles() -> dict[Path, Path]:
    """Image path -> the bundled profile (machines/*.yaml) that loads it."""
    found: dict[Path, Path] = {}
    for path in sorted(MACHINES.glob("*.yaml")):
        try:
            profile = Profile.load(path)
        except ProfileError:
            continue  # e.g. one that needs a plugin; guests it boots need a case below
        for slot in profile.memory:
            if slot.image is not None:
                found.setdefault(slot.image, path)
    return found


def loop_profile(name: str, folder: Path) -> Path:
    """pio_loop/pio_read_loop with LOOP_COUNT iterations, on the real-mode base profile."""
    image = bytearray(SOURCES[name].binary.read_bytes())
    assert struct.unpack_from("<I", image, 2) == (100000,), "the loop count is no longer at offset 2"
    struct.pack_into("<I", image, 2, LOOP_COUNT)
    (folder / f"{name}.bin").write_bytes(image)
    profile = folder / f"{name}.yaml"
    profile.write_text(f"extends: {MACHINES / 'base' / 'real-mode.yaml'}\n"
                       f"name: {name}\n"
                       f"memory:\n  ram: {{image: {name}.bin}}\n")
    return profile


#: Hostile guests that sweep for ever as committed, with the profile that boots them; the
#: differential runs them a fixed number of times (their count is at offset 2).
COUNTED_HOSTILE = {"unclaimed_sweep": "unclaimed-sweep.yaml", "fwcfg_bad_dma": "fwcfg-bad-dma.yaml"}


def counted_hostile_profile(name: str, folder: Path, count: int = 300) -> Path:
    image = bytearray(SOURCES[name].binary.read_bytes())
    assert struct.unpack_from("<I", image, 2) == (0,), "the sweep count is no longer at offset 2"
    struct.pack_into("<I", image, 2, count)
    (folder / f"{name}.bin").write_bytes(image)
    profile = folder / f"{name}.yaml"
    profile.write_text(f"extends: {MACHINES / 'hostile' / COUNTED_HOSTILE[name]}\n"
                       f"memory:\n  ram: {{image: {name}.bin}}\n")
    return profile


def profile_and_plugins(name: str, folder: Path) -> tuple[Path, tuple[str, ...]]:
    if name in ("pio_loop", "pio_read_loop"):
        return loop_profile(name, folder), ()
    if name == "mmio":
        return DATA / "mmio.yaml", ("tests.helpers",)  # the scratch device it needs
    if name == "mmio_sweep":
        return MACHINES / "hostile" / "mmio-sweep.yaml", ()  # hostile guests have a folder of their own
    if name in COUNTED_HOSTILE:
        return counted_hostile_profile(name, folder), ()
    if name == "mmio_unaligned":
        from tests.test_bus_hostile import unaligned_profile

        return unaligned_profile(folder), ("tests.test_bus_hostile",)  # its recording devices
    if name == "one_irq":
        from tests.test_machine_clock import build_alarm_profile

        return build_alarm_profile(folder), ("tests.test_machine_clock",)  # its build-alarm device
    profile = bundled_profiles().get(SOURCES[name].binary)
    if profile is None:
        pytest.fail(f"guest program {name!r} has no profile in machines/ and no case in {__name__}")
    return profile, ()


# --- every guest program, and the small guests of test_accel_tcg ----------------------------


#: Guests a firmware boots rather than vmcore: their traces hold the firmware's probing, which
#: depends on timing (PIT calibration, timer interrupts), so the two runs differ by design.
#: tests/test_seabios.py boots them on both accelerators and checks what they print.
FIRMWARE_BOOTED = {"bootsector"}
#: Hostile guests driven by host time or host input (a PIT at divisor 1, RTC update timers, a
#: flood of host bytes, a TSC deadline polled for): how many interrupts or bytes arrive between
#: two guest accesses depends on the host, so traces differ by design. tests/test_hostile.py
#: (tests/accel/test_apic_cpu.py for tsc_deadline) runs them on both accelerators.
HOST_TIMED = {"pit_storm", "rtc_kick", "uart_flood", "tsc_deadline"}
#: Guests that run an instruction their CPU model leaves out: the software CPU faults as a
#: processor without it would, while under KVM the processor runs it (hardware cannot hide an
#: instruction). tests/test_cpu_model.py checks each accelerator.
MODEL_BOUND = {"popcnt_probe"}


@pytest.mark.parametrize("name", sorted(set(SOURCES) - FIRMWARE_BOOTED - HOST_TIMED - MODEL_BOUND))
def test_guest_program_runs_identically_on_kvm_and_tcg(name: str, tmp_path: Path) -> None:
    if name == "cpuid_dump" and (reason := kvm_ignores_set_cpuid()) is not None:
        pytest.skip(reason)
    if name == "smc" and (reason := kvm_refuses_pae_paging()) is not None:
        pytest.skip(reason)
    profile, plugins = profile_and_plugins(name, tmp_path)
    result = differential(profile, plugins)
    assert result["report"].startswith("identical:"), result["report"]
    assert result["identical"]
    assert [run["accel"] for run in result["runs"]] == ["kvm", "tcg"]
    if name in ("pio_loop", "pio_read_loop"):
        assert len(result["runs"][0]["transactions"]) == LOOP_COUNT


@pytest.mark.parametrize("guest", DIFFERENTIAL, ids=[g.name for g in DIFFERENTIAL])
def test_small_guest_runs_identically_on_kvm_and_tcg(guest: TinyGuest, tmp_path: Path) -> None:
    result = differential(profile_for(guest, tmp_path))
    assert result["report"].startswith("identical:"), result["report"]
    assert result["identical"]


# Known differences of the software CPU's ROM-write replay: the faulting attempt and the
# replay each run the whole instruction. KVM completes the instruction once.
ROM_FROM_DEVICE = (
    TinyGuest("movsb_mmio_to_rom", rom=True, code=bytes([
        0xBE, 0x00, 0x20,    # mov si, 0x2000      no slot there: an (unclaimed) MMIO read
        0xBF, 0x00, 0x01,    # mov di, 0x100       into the ROM
        0xFC,                # cld
        0xA4,                # movsb               tcg reads the source twice (attempt + replay)
        0xF4,                # hlt
    ]), data={0x100: b"\x5a"}),
    TinyGuest("insb_to_rom", rom=True, code=bytes([
        0xBF, 0x00, 0x01,    # mov di, 0x100
        0xBA, 0xF1, 0x00,    # mov dx, 0xF1        debugcon reads 0xE9
        0xFC,                # cld
        0x6C,                # insb                tcg probes the store first: ROM write of 0, then the read
        0xF4,                # hlt
    ]), data={0x100: b"\x5a"}),
)


@pytest.mark.xfail(strict=True, reason="tcg replays a ROM store whole: its device read is repeated or reordered")
@pytest.mark.parametrize("guest", ROM_FROM_DEVICE, ids=[g.name for g in ROM_FROM_DEVICE])
def test_rom_store_of_a_device_read_runs_identically(guest: TinyGuest, tmp_path: Path) -> None:
    result = differential(profile_for(guest, tmp_path))
    assert result["identical"], result["report"]


# --- planted differences --------------------------------------------------------------------


@attrs.frozen
class PortConfig:
    port: int = prop(0xF2, "I/O port.", validator=in_range(0, 0xFFFF))


class Leaky(Device):
    """A port that answers 'A' on the first machine built in a process, 'B' on the second...

    The bug planted: an instance counter on the class, i.e. state shared across machines.
    """

    type_name = "leaky"
    Config = PortConfig
    built: ClassVar[int] = 0

    def __init__(self, config: PortConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.answer = ord("A") + Leaky.built
        Leaky.built += 1

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 1, self.read, None, name="data")]

    def read(self, offset: int, size: int) -> int:
        return self.answer


class Fragile(Device):
    """A port whose write works on the first machine built in a process and raises on the next."""

    type_name = "fragile"
    Config = PortConfig
    built: ClassVar[int] = 0

    def __init__(self, config: PortConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.broken = Fragile.built > 0
        Fragile.built += 1

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 1, None, self.write, name="data")]

    def write(self, offset: int, size: int, value: int) -> None:
        if self.broken:
            raise RuntimeError("state left over from the previous machine")


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Leaky, Fragile]


READ_PORT = TinyGuest("read_port", code=bytes([
    0xB0, 0x76, 0xE6, 0xF1,  # mov al, 'v'; out 0xF1, al      transaction 0
    0xB0, 0x3D, 0xE6, 0xF1,  # mov al, '='; out 0xF1, al      transaction 1
    0xE4, 0xF2,              # in al, 0xF2                    transaction 2: the leaky read
    0xE6, 0xF1,              # out 0xF1, al                   transaction 3: what it answered
    0xB0, 0x0A, 0xE6, 0xF1,  # mov al, 10; out 0xF1, al       transaction 4
    0xF4,                    # hlt
]))

WRITE_PORT = TinyGuest("write_port", code=bytes([
    0xB0, 0x21,              # mov al, '!'
    0xE6, 0xF2,              # out 0xF2, al                   raises on the second machine only
    0xF4,                    # hlt
]))


def test_device_state_leaking_across_machines_is_caught_at_its_read(tmp_path: Path) -> None:
    result = differential(profile_for(READ_PORT, tmp_path, "  leaky: {type: leaky}\n"), ("tests.test_diff",))
    assert not result["identical"]
    assert result["index"] == 2
    kvm, tcg = result["runs"]
    assert kvm["transactions"][2] == ["pio", "read", 0xF2, 1, ord("A"), "leaky"]
    assert tcg["transactions"][2] == ["pio", "read", 0xF2, 1, ord("B"), "leaky"]
    report = result["report"].splitlines()
    assert report[0] == "first difference at transaction 2 (of 5 on kvm, 5 on tcg):"
    assert [line.split()[:2] for line in report[1:3]] == [["0", "both:"], ["1", "both:"]]
    assert report[3].split() == ["2", "kvm:", "pio", "read", "0x000000f2/1", "<-", "0x41", "leaky"]
    assert report[4].split() == ["2", "tcg:", "pio", "read", "0x000000f2/1", "<-", "0x42", "leaky"]
    assert report[5:] == ["  kvm stopped with halted (status 0): the guest executed hlt",
                          "  tcg stopped with halted (status 0): the guest executed hlt"]


def test_runs_that_differ_only_in_how_they_stop_say_so(tmp_path: Path) -> None:
    result = differential(profile_for(WRITE_PORT, tmp_path, "  fragile: {type: fragile}\n"), ("tests.test_diff",))
    assert not result["identical"]
    assert result["index"] is None and not result["same_stop"]
    report = result["report"].splitlines()
    assert report == [
        "transactions identical (1), but the stops differ:",
        "  kvm stopped with halted (status 0): the guest executed hlt",
        ("  tcg stopped with device-error (status 10): device 'fragile' raised RuntimeError: "
         "state left over from the previous machine during a pio write of 1 byte at 0xf2 (value 0x21)"),
    ]


# --- the command line -------------------------------------------------------------------------

HELLO_IDENTICAL = b"identical: 6 transactions; both stopped with halted (status 0)\n"
SPIN = TinyGuest("spin", code=bytes([0xEB, 0xFE]))  # jmp $: never an exit


def test_cli_differential_of_runs_that_both_time_out_exits_with_the_timeout_status(tmp_path: Path) -> None:
    run = vmcore("diff", str(profile_for(SPIN, tmp_path)), "--timeout", "1")
    assert run.status == 6, run.stderr
    assert run.stdout == b"identical: 0 transactions; both stopped with timeout (status 6)\n"


@pytest.mark.parametrize("argv", [("diff", "hello"), ("run", "--accel", "both", "hello")],
                         ids=["diff", "run-accel-both"])
def test_cli_differential_of_hello_prints_one_line_and_no_guest_output(argv: tuple[str, ...]) -> None:
    run = vmcore(*argv)
    assert run.status == 0, run.stderr
    assert run.stdout == HELLO_IDENTICAL  # "Hello" from the two runs is not shown
