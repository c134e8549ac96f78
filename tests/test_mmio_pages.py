"""Any number of distinct MMIO pages, each access at its own address, on both accelerators (issue 13).

unicorn used to give every MMIO page its own region, made on first touch. QEMU keeps a
region's section number in the low 12 bits of a TLB entry, so past about 4,094 regions
accesses reached another page's callback, and every map and unmap re-rendered all of
them (tearing down 3,400 took 4.5 s). The software CPU now maps the MMIO side as a few
windows, the gaps between the memory slots. The guest is guest/mmio_sweep.S on
machines/hostile/mmio-sweep.yaml, with the tests' ``scratch`` register block at a far
page inside the sweep.

This module is also a vmcore plugin (:func:`vmcore_device_types`): the child processes
import it for the ``remapper`` device type.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import attrs
import pytest

from vmcore.accel.intercepts import SCRATCH_SIZE

from tests import helpers as scratch_plugin  # the ``scratch`` device type
from tests.helpers import differential, in_process, skip_without_kvm
from vmcore.accel import RunLimits
from vmcore.accel import unicorn as unicorn_accel
from vmcore.accel.unicorn import UnicornAccelerator
from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, prop
from vmcore.hookspecs import hookimpl
from vmcore.machine import Machine
from vmcore.memory import Overlay
from vmcore.plugins import DeviceRegistry
from vmcore.profile import Profile

REPO = Path(__file__).resolve().parent.parent
SWEEP_PROFILE = REPO / "machines" / "hostile" / "mmio-sweep.yaml"

PAGE = 0x1000
SWEEP = 0x10000000          # the profile's first page (rsi)
PAGES = 20_000              # far past the ~4,094 regions unicorn can tell apart
ACCESS_OFFSET = 0x800       # where in each page the guest writes and reads
INSIDE = (0x11000000, 0x11010000)  # the profile's RAM slot inside the sweep
DEVICE = 0x12000000         # the scratch block: page 8,192 of the sweep
BEFORE, AFTER = 0x5A5A0001, 0x5A5A0002  # what the guest writes to the device register
ALL_ONES = 0xFFFFFFFF


def sweep_profile(folder: Path, passes: int = 1) -> Path:
    """The hostile profile with PAGES pages, ``passes`` passes (0: for ever) and the scratch block at DEVICE."""
    profile = folder / "mmio-sweep-device.yaml"
    profile.write_text(
        f"extends: {SWEEP_PROFILE}\n"
        "name: mmio-sweep-device\n"
        f"cpu: {{registers: {{rcx: {PAGES}, rbx: {passes}, rdi: {DEVICE:#x}}}}}\n"
        "devices:\n"
        "  console: {backend: memory}\n"
        f"  scratch: {{type: scratch, base: {DEVICE:#x}}}\n"
    )
    return profile


def expected_mmio() -> list[list[Any]]:
    """Every MMIO transaction of one pass, in order: the device's, and a write and a read per swept page."""
    out: list[list[Any]] = [["mmio", "write", DEVICE, 4, BEFORE, "scratch"]]
    for i in range(PAGES):
        address = SWEEP + i * PAGE + ACCESS_OFFSET
        if INSIDE[0] <= address < INSIDE[1]:
            continue  # memory: no transaction
        out += [["mmio", "write", address, 4, address, None], ["mmio", "read", address, 4, ALL_ONES, None]]
    out += [["mmio", "read", DEVICE, 4, BEFORE, "scratch"],
            ["mmio", "write", DEVICE, 4, AFTER, "scratch"],
            ["mmio", "read", DEVICE, 4, AFTER, "scratch"]]
    return out


# --- every access at its own address -----------------------------------------------------------


def test_every_access_of_a_20000_page_sweep_reaches_its_own_address(accel: str, tmp_path: Path) -> None:
    result = in_process(sweep_profile(tmp_path), accel=accel, timeout=60)
    assert (result["kind"], result["console"]) == ("halted", "sweep ok\n"), result["message"]
    mmio = [t for t in result["trace"] if t[0] == "mmio"]
    assert mmio == expected_mmio()


def test_the_device_at_a_far_page_keeps_what_was_written_to_it(accel: str, tmp_path: Path) -> None:
    result = in_process(sweep_profile(tmp_path), accel=accel, timeout=60)
    assert result["scratch"] == AFTER.to_bytes(4, "little").hex() + "00" * 12


def test_the_sweep_runs_identically_on_kvm_and_tcg(tmp_path: Path) -> None:
    skip_without_kvm()
    result = differential(sweep_profile(tmp_path), ("tests.helpers",), timeout=60)
    assert result["identical"], result["report"]
    assert len(result["runs"][1]["transactions"]) == len(expected_mmio()) + len("sweep ok\n")


# --- the software CPU's map stays small ---------------------------------------------------------


def unicorn_regions(accel: UnicornAccelerator) -> list[tuple[int, int]]:
    """What unicorn maps, as (first, last) addresses."""
    return [(first, last) for first, last, _perms in accel.uc.mem_regions()]


#: What unicorn maps for the profile, as (first, last): its two slots and the MMIO windows, the
#: gaps between them cut at each power of two from 1 MiB (so that a map change near an address
#: unmaps little) up to the intercepts' scratch pages just below 2^52, and those pages; 37
#: regions however many pages the guest touches.
SCRATCH = (1 << 52) - SCRATCH_SIZE
MAP_BOUNDS = sorted({0, 0x10000, *INSIDE, *(1 << bit for bit in range(20, 52)), SCRATCH, 1 << 52})
MAP = [(first, end - 1) for first, end in zip(MAP_BOUNDS, MAP_BOUNDS[1:])]


@pytest.mark.parametrize("direct", [True, False], ids=["c-callbacks", "binding-callbacks"])
def test_unicorn_maps_the_slots_and_the_gaps_between_them_however_many_pages_are_touched(
        tmp_path: Path, direct: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Callbacks registered with unicorn's C library (the default) or, where that library is
    # not the one known, through the binding's public calls: the guest sees the same.
    monkeypatch.setattr(unicorn_accel._Callbacks, "direct", direct)
    accel = UnicornAccelerator()
    registry = DeviceRegistry.default(plugins=[scratch_plugin])
    with Machine.build(Profile.load(sweep_profile(tmp_path)), registry) as machine:
        stop = machine.run(accel, RunLimits(timeout=60))
        assert stop.kind == "halted", stop.report()
        assert machine.devices["console"].output == b"sweep ok\n"
        assert unicorn_regions(accel) == MAP
        assert (accel._callbacks._lib is not None) == direct  # type: ignore[union-attr]


def test_an_endless_sweep_stops_at_its_time_limit_and_tears_down_at_once(tmp_path: Path) -> None:
    accel = UnicornAccelerator()
    registry = DeviceRegistry.default(plugins=[scratch_plugin])
    machine = Machine.build(Profile.load(sweep_profile(tmp_path, passes=0)), registry)
    try:
        start = time.monotonic()
        stop = machine.run(accel, RunLimits(timeout=1.0))
        ran = time.monotonic() - start
        assert stop.kind == "timeout", stop.report()
        assert unicorn_regions(accel) == MAP  # thousands of pages touched, none mapped on its own
    finally:
        start = time.monotonic()
        machine.close()
        closed = time.monotonic() - start
    # Generous bounds: the per-page map took 4.5 s to tear down 3,400 pages.
    assert ran < 3.0
    assert closed < 1.0


# --- the map changing under an MMIO access --------------------------------------------------------


@attrs.frozen
class RemapperConfig:
    base: int = prop(0x400000, "MMIO address of its 8-byte register.", hex=True)
    show: int = prop(0x500000, "Where the ``spare`` slot's bytes (4 KiB) are shown.", hex=True)


class Remapper(Device):
    """A chipset-like register: bit 0 of its byte 0 lays the ``spare`` slot's bytes over ``show``, or removes them."""

    type_name = "remapper"
    Config = RemapperConfig

    def __init__(self, config: RemapperConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.overlay: Overlay = ctx.memory.overlay("remapped", config.show, PAGE)

    def regions(self) -> Sequence[Region]:
        return [Region(Space.MMIO, self.config.base, 8, None, self.write, name="control")]

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0:
            return  # the rest of the register holds nothing
        if value & 1:
            self.overlay.show(self.ctx.memory.block("spare"))
        else:
            self.overlay.hide()


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Remapper]


# Long mode (the first 4 GiB identity-mapped). The register, the window it maps and the
# MMIO gap around both are one unicorn window, which the write's map change replaces while
# its callback runs; unicorn makes the 8-byte write as two 4-byte ones, so the region must
# outlive the first. The store right after it must land in the memory it mapped.
REMAP_GUEST = bytes([
    0x48, 0xC7, 0xC0, 0x01, 0x00, 0x00, 0x00,        # mov rax, 1
    0x48, 0x89, 0x04, 0x25, 0x00, 0x00, 0x40, 0x00,  # mov [0x400000], rax   spare's bytes at 0x500000
    0xC6, 0x04, 0x25, 0x00, 0x00, 0x50, 0x00, 0x42,  # mov byte [0x500000], 0x42  memory now: no MMIO
    0x8A, 0x04, 0x25, 0x00, 0x00, 0x30, 0x00,        # mov al, [0x300000]     spare at home: the same byte
    0xE6, 0xF1,                                      # out 0xF1, al           0x42
    0xF4,                                            # hlt
])


def bytes_written(trace: list[list[Any]]) -> dict[int, list[int]]:
    """Each MMIO address written, with every byte value it received (a split write's parts are put together)."""
    out: dict[int, list[int]] = {}
    for space, direction, address, size, value, _device in trace:
        if space == "mmio" and direction == "write":
            for i in range(size):
                out.setdefault(address + i, []).append((value >> (8 * i)) & 0xFF)
    return out


def test_memory_mapped_by_an_mmio_write_is_there_for_the_next_instruction(accel: str, tmp_path: Path) -> None:
    (tmp_path / "remap.bin").write_bytes(REMAP_GUEST)
    profile = tmp_path / "remap.yaml"
    profile.write_text(
        "name: remap\n"
        "cpu: {mode: long, entry: 0x1000, registers: {rsp: 0x8000}}\n"
        "memory:\n"
        "  ram: {base: 0x0, size: 2M, image: remap.bin, offset: 0x1000}\n"
        "  spare: {base: 0x300000, size: 4K}\n"
        "devices:\n"
        "  console: {type: debugcon, port: 0xF1, backend: memory}\n"
        "  remapper: {type: remapper}\n"
    )
    result = in_process(profile, accel=accel, plugins=("tests.test_mmio_pages",))
    assert (result["kind"], result["console"]) == ("halted", "B"), result["message"]
    # The register got each byte of the write once (unicorn abandons the instruction on the
    # stop that follows the map change and replays it without the device); 0x500000 was memory.
    assert bytes_written(result["trace"]) == {0x400000 + i: [1 if i == 0 else 0] for i in range(8)}
