"""Record and replay (``vmcore run --record``, ``vmcore replay``) and ``vmcore export-test``
(vmcore.record): host input gated and kept with the instruction it arrived at, a replay
compared event by event, and a device's recorded transactions as a fake-bus unit test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from vmcore.cli import main
from vmcore.machine import Machine
from vmcore.profile import Profile
from vmcore.record import Recorder, RecordingError, load

needs_counting_engine = pytest.mark.skipif(
    "not __import__('vmcore.accel.unicorn', fromlist=['_engine_counts'])._engine_counts()",
    reason="the stock unicorn is installed: virtual time needs vmcore's engine build (scripts/build-engine)")

ECHO = REPO / "machines" / "serial-echo.yaml"


def _echo_args(tmp_path: Path, text: bytes) -> list[str]:
    (tmp_path / "typed").write_bytes(text)
    return ["--set", "clock=virtual", "--set", "devices.com1.backend=file",
            "--set", f"devices.com1.path={tmp_path / 'screen'}", "--set", f"devices.com1.input={tmp_path / 'typed'}",
            "--set", "devices.console.backend=\"null\""]


def test_recording_needs_a_virtual_clock_or_one_that_keeps_its_readings() -> None:
    with Machine.build(Profile.load(REPO / "machines" / "hello.yaml", ("devices.console.backend=memory",))) as machine:
        with pytest.raises(RecordingError, match="--record needs clock: virtual, or a machine built with a "
                                                 "LoggedHostClock"):
            Recorder(machine, "hello", [])
    assert main(["run", "hello", "--record", "/nonexistent-folder/r.json", "--set", "clock=virtual"]) == 2
    for extra in (["--monitor-socket", "/tmp/never.sock"], ["--restore", "/tmp/never.snap"]):
        assert main(["run", "hello", "--record", "/tmp/r.json", "--set", "clock=virtual", *extra]) == 2


@needs_counting_engine
def test_a_run_with_host_input_replays_event_by_event_and_a_changed_input_diverges(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recording = tmp_path / "echo.rec"
    status = main(["run", str(ECHO), "--record", str(recording), *_echo_args(tmp_path, b"hi there\nq")])
    assert status == 35  # 'q': "bye", debug-exit 0x11
    screen = (tmp_path / "screen").read_bytes()
    assert b"there" in screen and b"bye" in screen  # (the first byte comes before the guest set its FIFO up)
    record = load(recording)
    typed = b"".join(bytes.fromhex(item[3]) for item in record["inputs"])
    assert typed == b"hi there\nq" and all(item[2] == "com1" for item in record["inputs"])
    assert record["stop"] == {"kind": "exit", "status": 35} and len(record["events"]) > 50

    # The replay reads no host input (the file is gone): the bytes come from the recording.
    (tmp_path / "typed").unlink()
    (tmp_path / "typed").write_bytes(b"something else entirely")
    capsys.readouterr()
    assert main(["replay", str(recording)]) == 35
    said = capsys.readouterr().err
    assert "replayed as recorded" in said, said

    # Another byte in the recording: the guest echoes it, and the replay says where that began.
    changed = json.loads(recording.read_text())
    first = changed["inputs"][0]
    typed_first = bytes.fromhex(first[3])
    at = typed_first.index(b"t")  # a byte the guest echoes (the first one it never sees)
    first[3] = (typed_first[:at] + b"T" + typed_first[at + 1:]).hex()
    recording.write_text(json.dumps(changed))
    assert main(["replay", str(recording)]) == 12
    said = capsys.readouterr().err
    assert "the replay diverged at event" in said and "com1" in said, said


def test_a_damaged_or_foreign_recording_is_refused_in_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cases = {"garbage": b"\x00\x01 not json", "foreign": b'{"format": "something"}',
             "future": b'{"format": "vmcore recording", "version": 99}',
             "damaged": b'{"format": "vmcore recording", "version": 1, "profile": "hello"}'}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert main(["replay", str(path)]) == 2
        said = capsys.readouterr().err.strip().splitlines()
        assert len(said) == 1 and said[0].startswith(f"vmcore: replay: {path}"), said
    assert main(["replay", str(tmp_path / "missing")]) == 2
    assert "cannot read it" in capsys.readouterr().err


@needs_counting_engine
def test_a_changed_profile_is_refused_before_the_replay_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text((REPO / "machines" / "hello.yaml").read_text().replace("../guest", str(REPO / "guest")))
    recording = tmp_path / "r.rec"
    assert main(["run", str(profile), "--record", str(recording), "--set", "clock=virtual",
                 "--set", "devices.console.backend=\"null\""]) == 0
    profile.write_text(profile.read_text() + "\n# a comment changes nothing\n")
    assert main(["replay", str(recording)]) == 0
    profile.write_text(profile.read_text().replace("port: 0xF1", "port: 0xF2"))
    assert main(["replay", str(recording)]) == 2
    assert "builds another machine than the one recorded" in capsys.readouterr().err


@needs_counting_engine
def test_export_test_writes_a_fake_bus_test_that_passes_and_fails_when_the_device_changes(tmp_path: Path) -> None:
    recording = tmp_path / "boot.rec"
    assert main(["run", "pc-bios", "--record", str(recording), "--set", "clock=virtual",
                 "--set", "devices.com1.backend=\"null\"", "--set", "devices.debuglog.backend=\"null\""]) == 85
    test_file = tmp_path / "test_pit_recorded.py"
    assert main(["export-test", str(recording), "--device", "pit", "--out", str(test_file)]) == 0
    source = test_file.read_text()
    assert "def test_pit_answers_as_recorded(fake_bus):" in source
    compile(source, str(test_file), "exec")
    transactions = source.count("'pio', 'read'") + source.count("'pio', 'write'")
    assert transactions > 20  # SeaBIOS programs and reads the PIT
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    # An answer edited (as a developer marks where the recorded one was the bug): the test fails there.
    first_read = next(line for line in source.splitlines() if "'pio', 'read'" in line)
    parts = first_read.rstrip("),").split(", ")
    edited = first_read.replace(f", {parts[-1]}),", f", {int(parts[-1], 16) ^ 0x1:#x}),")
    test_file.write_text(source.replace(first_read, edited, 1))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 1 and "transaction" in run.stdout, run.stdout


@needs_counting_engine
def test_export_test_refuses_a_device_whose_answers_come_from_elsewhere(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    recording = tmp_path / "echo.rec"
    assert main(["run", str(ECHO), "--record", str(recording), *_echo_args(tmp_path, b"xyz q")]) == 35
    capsys.readouterr()
    out = tmp_path / "test_com1.py"
    assert main(["export-test", str(recording), "--device", "com1", "--out", str(out)]) == 2
    said = capsys.readouterr().err
    assert "answers otherwise" in said and "host input" in said, said
    assert not out.exists()
    assert main(["export-test", str(recording), "--device", "nosuch", "--out", str(out)]) == 2
    assert "no device 'nosuch'" in capsys.readouterr().err


@needs_counting_engine
def test_input_typed_while_the_guest_runs_is_replayed_at_the_instruction_it_arrived_at(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes sent over the UART's socket at moments the host decides: each commit lands at some
    instruction of the guest's run; the replay puts each at the same one, so every IRQ and
    transaction after it happens at the same machine time."""
    from tests.helpers import serial_echo

    recording = tmp_path / "typed.rec"
    received, status = serial_echo("tcg", tmp_path, [(b"", b"echo ready\n"), (b"ab", b"ab"), (b"cd", b"cd"), (b"q", b"qbye\n")],
                                   "--set", "clock=virtual", "--record", str(recording))
    assert status == 35, received
    record = load(recording)
    arrived = [int(item[0]) for item in record["inputs"]]
    assert b"".join(bytes.fromhex(item[3]) for item in record["inputs"]) == b"abcdq"
    assert len(arrived) >= 3 and arrived == sorted(arrived) and arrived[0] > 0
    capsys.readouterr()
    assert main(["replay", str(recording)]) == 35
    said = capsys.readouterr().err
    assert "replayed as recorded" in said, said


@needs_counting_engine
def test_a_recording_stays_bounded_and_its_replay_compares_what_it_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import vmcore.record

    monkeypatch.setattr(vmcore.record, "MAX_EVENTS", 40)
    recording = tmp_path / "short.rec"
    assert main(["run", "pc-bios", "--record", str(recording), "--set", "clock=virtual",
                 "--set", 'devices.com1.backend="null"', "--set", 'devices.debuglog.backend="null"']) == 85
    record = load(recording)
    assert len(record["events"]) == 40 and record["dropped"] > 5000
    capsys.readouterr()
    assert main(["replay", str(recording)]) == 85  # the 40 kept compared; the rest ran on unrecorded
    assert "replayed as recorded" in capsys.readouterr().err


@needs_counting_engine
def test_more_host_input_than_a_recording_keeps_is_said_not_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import vmcore.record

    monkeypatch.setattr(vmcore.record, "MAX_INPUT", 4)
    recording = tmp_path / "typed.rec"
    assert main(["run", str(ECHO), "--record", str(recording), *_echo_args(tmp_path, b"hi there\nq")]) == 8
    assert "--record " in (said := capsys.readouterr().err) and "more than 4 bytes of host input" in said, said
    assert not recording.exists()


# --- on the host's clock ----------------------------------------------------------------------------


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_a_run_on_the_hosts_clock_replays_where_its_timers_came_in_hlt(accel: str, tmp_path: Path) -> None:
    """rm-timer takes ten PIT ticks, each awaited in hlt, on the host's clock: recorded (every reading
    of the clock, where the vCPU came back without an exit) and replayed on the same accelerator,
    its events come again at the same machine times."""
    from tests.helpers import skip_without_kvm, vmcore

    if accel == "kvm":
        skip_without_kvm()
    recording = tmp_path / "rm.rec"
    recorded = vmcore("run", "rm-timer", "--accel", accel, "--record", str(recording))
    assert recorded.status == 39 and recorded.stdout == b"rm ticks: 10\n", recorded.stderr
    record = load(recording)
    assert record["clock"] == "host" and record["accelerator"] == accel and len(record["readings"]) > 80
    replayed = vmcore("replay", str(recording))
    assert replayed.status == 39 and replayed.stdout == b"rm ticks: 10\n", replayed.stderr
    assert "replayed as recorded: 80 events" in replayed.stderr

    # A reading moved: the PIT's count read back differs, and the replay says where.
    changed = json.loads(recording.read_text())
    changed["readings"] = [value + 50_000 if i > len(changed["readings"]) // 2 and value >= 0 else value
                           for i, value in enumerate(changed["readings"])]
    recording.write_text(json.dumps(changed))
    moved = vmcore("replay", str(recording))
    assert moved.status == 12 and "the replay diverged at event" in moved.stderr, moved.stderr


def test_a_replay_on_the_hosts_clock_says_why_a_guest_that_reads_its_own_time_diverged(tmp_path: Path) -> None:
    """SeaBIOS measures the CPU's speed with the TSC (the host's, never recorded): the replay's
    debug log prints another frequency, and the replay names it and why."""
    from tests.helpers import vmcore

    recording = tmp_path / "bios.rec"
    recorded = vmcore("run", "pc-bios", "--accel", "tcg", "--record", str(recording),
                      "--set", "devices.com1.backend=\"null\"", "--set", "devices.debuglog.backend=\"null\"")
    assert recorded.status == 85, recorded.stderr
    replayed = vmcore("replay", str(recording))
    assert replayed.status == 12, replayed.stderr
    assert "the replay diverged at event" in replayed.stderr and "read no time of its own (TSC)" in replayed.stderr


def test_a_recording_that_read_the_clock_more_than_it_keeps_is_said_not_saved(tmp_path: Path) -> None:
    from vmcore.accel import RunLimits
    from vmcore.clock import LoggedHostClock

    clock = LoggedHostClock(limit=50)  # rm-timer reads it some 170 times
    profile = Profile.load(REPO / "machines" / "rm-timer.yaml", ("devices.console.backend=memory",))
    with Machine.build(profile, clock=clock) as machine:
        recorder = Recorder(machine, "rm-timer", [])
        transactions, irqs = recorder.attach()
        machine.set_tracer(transactions)
        machine.set_irq_tracer(irqs)
        stop = machine.run("tcg", RunLimits(timeout=30))
        assert stop.status == 39 and len(clock.readings) == 50 and clock.overflow
        with pytest.raises(RecordingError, match="read the host's clock more than 50 times"):
            recorder.save(tmp_path / "r.rec", stop)
    assert not (tmp_path / "r.rec").exists()
