"""Hostile guests (issue 13): each family in machines/hostile/ run briefly on both accelerators.

Every guest there loops for ever as committed (bench/soak.py runs them for minutes); here
each gets a count patched into its binary (the dword at offset 2, guest/README.md) or a
short time limit, and the test asserts the bound its family is about: the machine's
bookkeeping, the log it writes and what it takes from the host stay small however long
the guest keeps at it, and the run ends the way it should.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import pytest

from vmcore.accel import RunLimits
from vmcore.bus import UNCLAIMED_KEPT, UNCLAIMED_WARNINGS, Direction
from vmcore.machine import IRQ_LOG_LENGTH, Machine
from vmcore.profile import Profile

REPO = Path(__file__).resolve().parent.parent
HOSTILE = REPO / "machines" / "hostile"
GUEST = REPO / "guest"
#: Where each hostile guest keeps its loop count (0: for ever).
COUNT_OFFSET = 2
#: What vmcore may hold of a host input the guest never reads: the RX FIFO plus "a small
#: buffer" (issue 13); far below what an unbounded reader takes from a fast source.
HOST_INPUT_HELD = 1 << 20


def guest_image(profile_name: str) -> Path:
    """The committed binary a hostile profile boots: machines/hostile/a-b.yaml runs guest/a_b.bin."""
    return GUEST / f"{profile_name.replace('-', '_')}.bin"


def hostile(name: str, tmp_path: Path, count: int, *overrides: str) -> Profile:
    """machines/hostile/NAME.yaml with its guest's loop count patched to ``count``."""
    image = bytearray(guest_image(name).read_bytes())
    struct.pack_into("<I", image, COUNT_OFFSET, count)
    patched = tmp_path / guest_image(name).name
    patched.write_bytes(image)
    return Profile.load(HOSTILE / f"{name}.yaml", (f"memory.ram.image={patched}", *overrides))


def log_bytes(records: list[logging.LogRecord]) -> int:
    """What these records print on stderr as `vmcore run` formats them ("vmcore: message")."""
    return sum(len(f"vmcore: {record.getMessage()}\n".encode()) for record in records)


# --- the corpus ------------------------------------------------------------------------------------

PROFILES = sorted(HOSTILE.glob("*.yaml"))
#: The families whose guest keeps its count at offset 2 (the MMIO page sweep takes its own in EBX).
COUNTED = ("unclaimed-sweep", "uart-flood", "pit-storm", "fwcfg-bad-dma", "rtc-kick")
#: What makes a profile loop for ever where it does not as committed (bench/soak.py sets the same).
ENDLESS = {"mmio-sweep": ("cpu.registers.rbx=0",)}


@pytest.mark.parametrize("name", COUNTED)
def test_counted_hostile_guest_keeps_its_count_at_offset_2_and_loops_for_ever_as_committed(name: str) -> None:
    image = guest_image(name).read_bytes()
    assert image[:2] == b"\xeb\x04"  # jmp over the count, in 16- and 32-bit code alike
    assert struct.unpack_from("<I", image, COUNT_OFFSET)[0] == 0


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_hostile_guest_runs_until_the_time_limit_without_a_fault(path: Path, accel: str) -> None:
    with Machine.build(Profile.load(path, ENDLESS.get(path.stem, ()))) as machine:
        stop = machine.run(accel, RunLimits(timeout=0.3))
    assert stop.kind == "timeout", stop.report()


# --- unclaimed accesses ----------------------------------------------------------------------------


def test_unclaimed_sweep_keeps_bounded_records_and_warnings_and_counts_every_access(
        accel: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sweep = UNCLAIMED_KEPT + 2000  # new addresses per direction, on each bus: past what is kept
    caplog.set_level(logging.WARNING)
    with Machine.build(hostile("unclaimed-sweep", tmp_path, sweep)) as machine:
        stop = machine.run(accel, RunLimits(timeout=60))
        buses = (machine.pio, machine.mmio)
        assert stop.kind == "halted", stop.report()
        for bus in buses:
            assert len(bus.unclaimed) <= UNCLAIMED_KEPT
            # Nothing is lost from the count: a write and a read at each address swept.
            assert sum(bus.unclaimed.values()) + bus.unclaimed_elsewhere == 2 * sweep
            assert {direction for direction, _ in bus.unclaimed} == {Direction.READ, Direction.WRITE}
    warnings = [r for r in caplog.records if r.name == "vmcore.bus"]
    # Each bus warns about its first addresses one by one, then says once that it only counts.
    assert len(warnings) <= 2 * (UNCLAIMED_WARNINGS + 1)
    assert log_bytes(caplog.records) < 16 * 1024


# --- host input the guest never reads --------------------------------------------------------------


def bytes_read_from(path: Path) -> int:
    """How far this process has read into ``path``: the offset of its open descriptors (Linux /proc)."""
    offsets = [0]
    target = os.path.realpath(path)  # what /proc shows: symbolic links resolved
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    offsets.append(int(info.readline().split()[1]))  # "pos:\t<offset>"
        except OSError:
            continue  # closed meanwhile
    return max(offsets)


def test_uart_with_endless_host_input_and_a_guest_that_never_reads_takes_only_what_fits(
        accel: str, tmp_path: Path) -> None:
    # A sparse file: endless zeros for the run (as /dev/zero in the issue), no disk used.
    source = tmp_path / "endless-input"
    with open(source, "wb") as f:
        f.truncate(1 << 36)
    profile = hostile("uart-flood", tmp_path, 0, f"devices.com1.input={source}",
                      f"devices.com1.path={tmp_path / 'com1-output'}")
    with Machine.build(profile) as machine:
        stop = machine.run(accel, RunLimits(timeout=0.7))
        taken = bytes_read_from(source)  # before close: the input is still open
        uart = machine.devices["com1"]
        assert stop.kind == "timeout", stop.report()
        assert len(uart.rx) == 16  # the input did arrive: the guest's FIFO is full
        assert 16 <= taken <= HOST_INPUT_HELD


# --- interrupt lines -------------------------------------------------------------------------------


def test_pit_at_divisor_1_keeps_the_irq_log_bounded_while_counting_every_change(
        accel: str, tmp_path: Path) -> None:
    ticks = IRQ_LOG_LENGTH  # each tick is two line changes: past what the log keeps
    with Machine.build(hostile("pit-storm", tmp_path, ticks)) as machine:
        stop = machine.run(accel, RunLimits(timeout=60))
        assert stop.kind == "halted", stop.report()
        assert len(machine.irq_log) <= IRQ_LOG_LENGTH
        assert machine.irq_changes[0] >= 2 * ticks


# --- fw-cfg DMA --------------------------------------------------------------------------------------


def test_fw_cfg_bad_dma_descriptors_are_all_counted_and_logged_in_a_few_lines(
        accel: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    descriptors = 20_000
    caplog.set_level(logging.WARNING)
    with Machine.build(hostile("fwcfg-bad-dma", tmp_path, descriptors)) as machine:
        stop = machine.run(accel, RunLimits(timeout=60))
        assert stop.kind == "halted", stop.report()
        assert machine.devices["fwcfg"].bad_dma == descriptors
    lines = [r for r in caplog.records if r.name == "vmcore.device.fwcfg"]
    assert 1 <= len(lines) <= 20  # the first few, one per power of ten, the total at close
    assert log_bytes(caplog.records) < 4096


# --- timers ------------------------------------------------------------------------------------------


def test_a_timer_re_armed_on_every_guest_write_leaves_no_pile_of_cancelled_timers(
        accel: str, tmp_path: Path) -> None:
    kicks = 20_000  # each cancels the RTC's update timer and schedules one up to a second away
    with Machine.build(hostile("rtc-kick", tmp_path, kicks)) as machine:
        stop = machine.run(accel, RunLimits(timeout=60))
        assert stop.kind == "halted", stop.report()
        # Two live timers (the RTC's next update, the PIT's next tick) and few cancelled ones beside them.
        assert 2 <= machine.clock.pending() <= 16
