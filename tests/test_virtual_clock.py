"""Virtual time (``clock: virtual``, vmcore.clock.VirtualClock): machine time made of the guest's
instructions on the software CPU, so a run repeats exactly, timers and the TSC included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, rewrite_snapshot
from vmcore.accel import RunLimits
from vmcore.clock import VirtualClock
from vmcore.machine import Machine
from vmcore.profile import Profile, ProfileError

needs_counting_engine = pytest.mark.skipif(
    "not __import__('vmcore.accel.unicorn', fromlist=['_engine_counts'])._engine_counts()",
    reason="the stock unicorn is installed: virtual time needs vmcore's engine build (scripts/build-engine)")


# --- the clock alone -----------------------------------------------------------------------------


def test_time_is_the_instructions_counted_and_the_device_accesses_charged() -> None:
    clock = VirtualClock(ns_per_instruction=2, ns_per_device_access=100)
    clock.start(1000)
    counted = [0]
    clock.slice(lambda: counted[0])
    counted[0] = 5
    assert clock.now() == 1010
    clock.charge(100)
    assert clock.now() == 1110
    clock.slice_done(7)
    assert (clock.now(), clock.instructions) == (1114, 7)
    clock.start(0)  # a second run goes on from where the first ended
    assert clock.now() == 1114


def test_a_slice_runs_to_the_next_timer_and_a_halt_skips_to_it() -> None:
    clock = VirtualClock(ns_per_instruction=3)
    fired: list[int] = []
    clock.call_at(100, lambda: fired.append(clock.now()))
    assert clock.budget(1_000) == 34  # ceil(100 / 3): the first instruction at or past the deadline
    assert clock.budget(10) == 10
    clock.slice(lambda: 34)
    clock.slice_done(34)
    clock.run_due()
    assert fired == [102]
    clock.call_at(5_000, lambda: fired.append(clock.now()))
    clock.skip_to(5_000)
    clock.run_due()
    assert fired == [102, 5_000]
    assert clock.budget(7) == 7  # nothing armed: the caller's bound


def test_its_power_on_time_is_fixed_not_the_hosts() -> None:
    assert VirtualClock().power_on_time() == VirtualClock.EPOCH


def test_the_profile_key_takes_host_or_virtual_and_virtual_refuses_kvm() -> None:
    base = "memory: {ram: {size: 4K}}\n"
    assert Profile.from_yaml(base).clock == "host"
    assert Profile.from_yaml(base + "clock: virtual\n").clock == "virtual"
    with pytest.raises(ProfileError, match=r"<string>:2: clock: expected one of .*host.*virtual"):
        Profile.from_yaml(base + "clock: wall\n")
    with pytest.raises(ProfileError, match=r"<string>:3: clock: virtual time is counted in instructions .* "
                                           r"needs accel: tcg"):
        Profile.from_yaml(base + "accel: kvm\nclock: virtual\n")


def test_an_accelerator_that_cannot_count_is_refused_with_a_config_error() -> None:
    from vmcore.accel.unicorn import UnicornAccelerator

    class NotCounting(UnicornAccelerator):
        def virtual_time_unavailable(self) -> str | None:
            return "this one cannot count"

    profile = Profile.load(REPO / "machines" / "hello.yaml", ("clock=virtual", "devices.console.backend=memory"))
    with Machine.build(profile) as machine:
        stop = machine.run(NotCounting())
    assert (stop.kind, stop.message) == ("config-error", "clock: virtual: this one cannot count")


# --- whole runs ----------------------------------------------------------------------------------


def _record(profile: Path, *overrides: str) -> dict[str, Any]:
    """One run with a virtual clock: every transaction and IRQ event with the machine time it
    happened at, the guest's output, the stop, the instructions run and the time it ended at."""
    events: list[tuple[Any, ...]] = []
    loaded = Profile.load(profile, ("clock=virtual", *overrides))
    with Machine.build(loaded) as machine:
        clock = machine.clock
        assert isinstance(clock, VirtualClock)
        machine.set_tracer(lambda txn: events.append((clock.now(), str(txn))))
        machine.set_irq_tracer(lambda event: events.append((clock.now(), str(event))))
        stop = machine.run("tcg", RunLimits(timeout=60))
        output = {name: bytes(device.output) for name, device in machine.devices.items()
                  if isinstance(getattr(device, "output", None), bytearray)}
        return {"stop": (stop.kind, stop.status), "events": events, "output": output,
                "instructions": clock.instructions, "end": clock.now()}


@needs_counting_engine
def test_a_seabios_boot_repeats_exactly_timers_and_interrupts_included() -> None:
    """SeaBIOS calibrates its TSC against the PIT, polls the PIT and the RTC, waits for the ATA
    drive's BSY timer and for a timer tick: on the host's clock no two boots see the same
    values; on a virtual clock every transaction, IRQ change and interrupt happens at the same
    machine time in both runs."""
    overrides = ("devices.com1.backend=memory", "devices.debuglog.backend=memory")
    first = _record(REPO / "machines" / "pc-bios.yaml", *overrides)
    second = _record(REPO / "machines" / "pc-bios.yaml", *overrides)
    assert first["stop"] == ("exit", 85)
    assert b"Booting from Hard Disk" in first["output"]["debuglog"]
    timed = [event for event in first["events"] if "irq  line 0" in event[1]]
    assert timed and len({when for when, _ in first["events"]}) > 1000  # time moved through the boot
    assert first["events"] == second["events"]
    assert first["output"] == second["output"]
    assert (first["instructions"], first["end"]) == (second["instructions"], second["end"])


@needs_counting_engine
def test_halted_waits_take_no_host_time_and_the_ticks_still_arrive_in_order(tmp_path: Path) -> None:
    """rm-timer halts between ten PIT ticks: with a virtual clock each hlt skips to the tick."""
    first = _record(REPO / "machines" / "rm-timer.yaml", "devices.console.backend=memory")
    second = _record(REPO / "machines" / "rm-timer.yaml", "devices.console.backend=memory")
    assert first["output"]["console"] == b"rm ticks: 10\n"
    ticks = [when for when, text in first["events"] if text.startswith("intr vector 0x08")]
    assert len(ticks) == 10 and ticks == sorted(ticks)
    assert first["events"] == second["events"] and first["end"] == second["end"]


@needs_counting_engine
def test_the_tsc_counts_machine_time_and_its_deadline_timer_fires_at_the_same_instruction() -> None:
    first = _record(REPO / "machines" / "tsc-deadline.yaml", "devices.console.backend=memory")
    second = _record(REPO / "machines" / "tsc-deadline.yaml", "devices.console.backend=memory")
    assert first["stop"] == second["stop"] and first["stop"][0] in ("exit", "halted")
    assert first["events"] == second["events"] and first["output"] == second["output"]
    assert first["instructions"] == second["instructions"]


# --- split runs: snapshot and restore on a virtual clock -----------------------------------------

_PC = (REPO / "machines" / "pc-bios.yaml", ("devices.com1.backend=memory", "devices.debuglog.backend=memory"))


def _timed_run(folder: Path, pause_after: int | None = None, restore: Path | None = None) -> tuple[list[Any], Any, Path | None]:
    """A pc-bios boot on a virtual clock: its events with their machine times, its stop, and the
    snapshot it saved where it paused (``pause_after`` exits), if it did."""
    events: list[tuple[int, str]] = []
    with Machine.build(Profile.load(_PC[0], ("clock=virtual", *_PC[1]))) as machine:
        if restore is not None:
            machine.restore_snapshot(restore)
        clock = machine.clock
        machine.set_tracer(lambda txn: events.append((clock.now(), str(txn))))
        machine.set_irq_tracer(lambda event: events.append((clock.now(), str(event))))
        stop = machine.run("tcg", RunLimits(timeout=60, pause_after=pause_after))
        snapshot = None
        if stop.kind == "paused":
            snapshot = folder / f"at{pause_after}.snap"
            machine.save_snapshot(snapshot)
        return events, stop, snapshot


def _splits_match_the_whole_boot(folder: Path, examples: int, edit: Any = None) -> None:
    """A pc-bios boot saved at exit counts hypothesis picks (each snapshot given to ``edit``, if
    any) and restored in a new machine: the two halves make exactly the whole boot's events, each
    at the same machine time, and end as it ends."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    whole, stop, _ = _timed_run(folder)
    assert (stop.kind, stop.status) == ("exit", 85)
    accesses = sum(1 for _when, text in whole if not text.startswith(("irq", "intr", "pci")))

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.integers(min_value=1, max_value=accesses - 1))
    def split(after: int) -> None:
        first, paused, snapshot = _timed_run(folder, pause_after=after)
        assert paused.kind == "paused" and snapshot is not None
        if edit is not None:
            edit(snapshot)
        second, end, _ = _timed_run(folder, restore=snapshot)
        joined = first + second
        differs = next((i for i, (a, b) in enumerate(zip(joined, whole)) if a != b), None)
        assert differs is None, f"split after {after} exits: event {differs} {joined[differs]} != {whole[differs]}"
        assert len(joined) == len(whole) and (end.kind, end.status) == ("exit", 85)

    split()


@needs_counting_engine
def test_a_boot_split_anywhere_by_a_snapshot_is_the_whole_boot_to_the_nanosecond(tmp_path: Path) -> None:
    """Item 2 of snapshots, for every device of the PC (i440fx, piix3, piix-ide, i8259, i8254,
    cmos-rtc, i8042, uart16550, fw-cfg, debugcon, debug-exit): a field a device left out of its
    State shows as the first event that differs."""
    _splits_match_the_whole_boot(tmp_path, examples=6)


@needs_counting_engine
def test_a_vcpu_brought_back_through_its_portable_form_goes_on_as_the_whole_boot(tmp_path: Path) -> None:
    """The form a vCPU moves between accelerators in (vmcore.accel.portable): the engine's own
    record of the vCPU dropped (as a KVM snapshot has none), restored from the registers, segment
    caches, x87/SSE state and events alone (hflags worked out again by the engine)."""
    _splits_match_the_whole_boot(tmp_path, examples=5,
                                 edit=lambda snapshot: rewrite_snapshot(snapshot, lambda h: h["cpu"].pop("engine")))


@needs_counting_engine
def test_a_snapshot_after_n_instructions_is_taken_exactly_there(tmp_path: Path) -> None:
    whole, _stop, _ = _timed_run(tmp_path)
    first: list[tuple[int, str]] = []
    with Machine.build(Profile.load(_PC[0], ("clock=virtual", *_PC[1]))) as machine:
        clock = machine.clock
        assert isinstance(clock, VirtualClock)
        machine.set_tracer(lambda txn: first.append((clock.now(), str(txn))))
        machine.set_irq_tracer(lambda event: first.append((clock.now(), str(event))))
        stop = machine.run("tcg", RunLimits(timeout=60, pause_at_instruction=2_000_000))
        assert (stop.kind, stop.message) == ("paused", "paused after 2000000 instructions")
        assert clock.instructions == 2_000_000
        machine.save_snapshot(tmp_path / "insn.snap")
    second, end, _ = _timed_run(tmp_path, restore=tmp_path / "insn.snap")
    assert first + second == whole and (end.kind, end.status) == ("exit", 85)


def test_a_snapshot_after_n_instructions_needs_the_virtual_clock(tmp_path: Path) -> None:
    from tests.helpers import vmcore

    run = vmcore("run", "hello", "--accel", "tcg", "--snapshot", str(tmp_path / "x.snap"),
                 "--snapshot-after", "1000insn")
    assert run.status == 2 and "needs clock: virtual" in run.stderr, run.stderr
    assert not (tmp_path / "x.snap").exists()


def test_sigusr1_saves_a_snapshot_of_a_guest_that_never_stops(tmp_path: Path) -> None:
    import signal

    from tests.helpers import signal_a_spinning_guest, vmcore
    from tests.tiny_guests import SPIN, profile_for

    profile, snap = profile_for(SPIN, tmp_path), tmp_path / "spin.snap"
    status, err = signal_a_spinning_guest(profile, signal.SIGUSR1, "--snapshot", str(snap), "--snapshot-after", "SIGUSR1")
    assert status == 0 and b"saved the machine" in err, err
    again = vmcore("run", str(profile), "--accel", "tcg", "--restore", str(snap), "--timeout", "0.5")
    assert again.status == 6 and "timeout" in again.stderr  # it spins on from where it was saved
