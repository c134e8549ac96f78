"""The monitor (vmcore.monitor): a running machine driven through its JSON-lines socket."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import REPO, PtyReader, child_env
from tests.tiny_guests import SPIN, TinyGuest, profile_for


class Client:
    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.reader = self.sock.makefile("rb")

    def raw(self, line: bytes) -> dict:  # type: ignore[type-arg]
        self.sock.sendall(line + b"\n")
        return json.loads(self.reader.readline())

    def __call__(self, command: str, **arguments: object) -> object:
        answer = self.raw(json.dumps({"execute": command, "arguments": arguments}).encode())
        assert "return" in answer, answer
        return answer["return"]


@contextlib.contextmanager
def _monitored(profile: Path, accel: str, path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, Client]]:  # type: ignore[type-arg]
    """A ``vmcore run`` of ``profile`` with its monitor socket at ``path``, and a client of it; the
    run is killed if it outlives the block."""
    run = subprocess.Popen([sys.executable, "-m", "vmcore", "run", str(profile), "--accel", accel,
                            "--monitor-socket", str(path), *extra], cwd=REPO, env=child_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield run, Client(path)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def test_pause_inspect_change_and_quit_a_running_guest(accel: str, tmp_path: Path) -> None:
    profile = profile_for(SPIN, tmp_path)  # jmp $ at 0, a debug console at 0xF1
    profile.write_text(profile.read_text().replace("backend: memory", f"backend: file, path: {tmp_path / 'con'}"))
    path = tmp_path / "monitor.sock"
    run = subprocess.Popen([sys.executable, "-m", "vmcore", "run", str(profile), "--accel", accel,
                            "--monitor-socket", str(path)], cwd=REPO, env=child_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        monitor = Client(path)
        assert monitor("status")["running"] is True  # type: ignore[index]
        assert {"name": "console", "type": "debugcon"} in monitor("devices")  # type: ignore[operator]
        monitor("pause")
        first = monitor("status")
        time.sleep(0.2)
        assert monitor("status") == first and first["running"] is False  # type: ignore[index]  # time stopped
        regs = monitor("registers")
        assert regs["rip"] == 0 and monitor("registers") == regs  # type: ignore[index]  # the spin, standing
        monitor("write-memory", address=0x800, data="c0ffee")
        assert monitor("read-memory", address=0x7FF, length=5) == "00c0ffee00"
        monitor("bus-write", space="pio", address=0xF1, size=1, value=ord("m"))  # through the console
        assert monitor("bus-read", space="pio", address=0x1234, size=1) == 0xFF  # unclaimed: all ones
        monitor("irq", line=4, level=1)
        monitor("set-registers", registers={"rax": 0x1234, "rbx": 7})
        regs = monitor("registers")
        assert (regs["rax"], regs["rbx"], regs["rip"]) == (0x1234, 7, 0)  # type: ignore[index]
        assert monitor("device", name="console")["type"] == "debugcon"  # type: ignore[index]
        monitor("resume")
        assert monitor("status")["running"] is True  # type: ignore[index]
        errors = [monitor.raw(b'{"execute": "nonsense"}'), monitor.raw(b"not json"),
                  monitor.raw(b'{"execute": "read-memory", "arguments": {"address": 0, "length": 100000}}'),
                  monitor.raw(b'{"execute": "read-memory", "arguments": {"address": 16777216, "length": 4}}')]
        assert all("error" in answer for answer in errors), errors
        assert "unknown command" in errors[0]["error"] and "outside every memory slot" in errors[3]["error"]
        overlong = monitor.raw(b'{"execute": "status", "pad": "' + b"x" * 200_000 + b'"}')
        assert "longer than" in overlong["error"] and monitor("status")["running"] is True  # type: ignore[index]
        refused = monitor.raw(b'{"execute": "set-registers", "arguments": {"registers": {"cr3": 0}}}')
        assert "'cr3' is not one of" in refused["error"]
        monitor("quit")
        out, err = run.communicate(timeout=20)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert (tmp_path / "con").read_bytes() == b"m"
    assert not path.exists()  # the socket is removed at the run's end


# A loop of three instructions: inc bx (0), inc cx (1), jmp 0 (2); 16-bit counters.
COUNT_LOOP = TinyGuest("count_loop", bytes([0x43, 0x41, 0xEB, 0xFC]))
# For single steps: inc ebx (0), inc cx (2), jmp 0 (3). EBX counts in 32 bits: resumed for
# 0.1 s the loop runs millions of times, which a 16-bit BX would wrap.
STEP_LOOP = TinyGuest("step_loop", bytes([0x66, 0x43, 0x41, 0xEB, 0xFB]))
_NEXT = {0: 2, 2: 3, 3: 0}


def test_step_runs_one_instruction_of_a_paused_guest(accel: str, tmp_path: Path) -> None:
    with _monitored(profile_for(STEP_LOOP, tmp_path), accel, tmp_path / "monitor.sock") as (run, monitor):
        refused = monitor.raw(b'{"execute": "step"}')
        assert "pause the machine first" in refused["error"]
        monitor("pause")
        regs = monitor("registers")
        if accel == "kvm":
            answer = monitor.raw(b'{"execute": "step"}')
            if "error" in answer:
                pytest.skip(f"this host's KVM does not single-step: {answer['error']}")
            steps = [answer["return"]]
        else:
            steps = [monitor("step")]
        steps += [monitor("step") for _ in range(8)]
        for before, after in zip([regs, *steps], steps):
            assert after["rip"] == _NEXT[before["rip"]], (before, after)  # type: ignore[index]
            # Each instruction did what it does, once: bx counts the steps from 0, cx those from 1.
            assert after["rbx"] - before["rbx"] == (before["rip"] == 0)  # type: ignore[index,operator]
            assert after["rcx"] - before["rcx"] == (before["rip"] == 2)  # type: ignore[index,operator]
        assert monitor("status")["running"] is False  # type: ignore[index]  # paused again after each
        monitor("resume")
        time.sleep(0.1)
        monitor("pause")
        assert monitor("registers")["rbx"] > steps[-1]["rbx"] + 100  # type: ignore[index,operator]  # ran on
        monitor("quit")
        run.communicate(timeout=20)
    assert run.returncode == 0


def test_a_snapshot_from_the_monitor_goes_on_where_it_was_taken(accel: str, tmp_path: Path) -> None:
    """The step loop (inc bx; inc cx; jmp) keeps bx - cx at 0 or 1: saved from the paused monitor
    with counts set high and restored in a new process, it goes on from those counts."""
    profile, snap = profile_for(COUNT_LOOP, tmp_path), tmp_path / "loop.snap"
    with _monitored(profile, accel, tmp_path / "a.sock") as (run, monitor):
        assert "pause the machine first" in monitor.raw(b'{"execute": "snapshot", "arguments": {"path": "x"}}')["error"]
        monitor("pause")
        # Counts no run from 0 reaches in a test's time: the restored guest must start from them.
        monitor("set-registers", registers={"rbx": 1 << 40, "rcx": 1 << 40})
        answer = monitor.raw(json.dumps({"execute": "snapshot", "arguments": {"path": str(snap)}}).encode())
        monitor("quit")
        run.communicate(timeout=20)
    assert answer["return"]["bytes"] == snap.stat().st_size > 0  # type: ignore[index]
    with _monitored(profile, accel, tmp_path / "b.sock", "--restore", str(snap)) as (again, monitor):
        monitor("pause")
        regs = monitor("registers")
        monitor("quit")
        again.communicate(timeout=20)
    assert regs["rbx"] >> 16 == regs["rcx"] >> 16 == (1 << 24)  # type: ignore[index,operator]  # 16-bit counters
    assert (regs["rbx"] - regs["rcx"]) & 0xFFFF in (0, 1)  # type: ignore[index,operator]


def test_the_time_limit_stops_while_the_machine_is_paused(tmp_path: Path) -> None:
    path = tmp_path / "monitor.sock"
    run = subprocess.Popen([sys.executable, "-m", "vmcore", "run", str(profile_for(SPIN, tmp_path)), "--accel", "tcg",
                            "--timeout", "3", "--monitor-socket", str(path)], cwd=REPO, env=child_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        monitor = Client(path)
        monitor("pause")
        started = time.monotonic()
        time.sleep(3.5)  # longer than the whole limit
        assert monitor("status")["running"] is False  # type: ignore[index]
        monitor("resume")
        resumed = time.monotonic()
        time.sleep(0.5)
        assert run.poll() is None and monitor("status")["running"] is True  # type: ignore[index]  # the guest runs on
        _out, err = run.communicate(timeout=20)  # the rest of the limit runs out now
        ended = time.monotonic()
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 6, err  # a limit was reached
    assert b"no stop after 3 s" in err
    assert ended - resumed > 1.0 and ended - started > 4.5  # it ran 3 s in all, the pause aside


def test_a_socket_path_that_cannot_be_served_is_one_line(tmp_path: Path) -> None:
    profile = profile_for(SPIN, tmp_path)
    done = subprocess.run([sys.executable, "-m", "vmcore", "run", str(profile), "--accel", "tcg",
                           "--monitor-socket", str(tmp_path / "no" / "such" / "m.sock")],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("vmcore: --monitor-socket ") and len(done.stderr.strip().splitlines()) == 1


def test_the_monitor_repl_on_a_terminal(tmp_path: Path) -> None:
    """vmcore run --monitor through a pty: pause, look, change, quit."""
    import os
    import pty

    profile = profile_for(SPIN, tmp_path)
    pid, fd = pty.fork()
    if pid == 0:  # the child: vmcore with the pty as its terminal
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "vmcore", "run", str(profile), "--accel", "tcg",
                                   "--monitor"], child_env())
    reader = PtyReader(fd)
    seen, wait_for = reader.seen, reader.wait_for

    def ask(line: bytes, answer: bytes) -> None:
        start = len(seen)
        os.write(fd, line + b"\n")
        assert wait_for(answer), bytes(seen[start:])
        assert wait_for(b">>> ")

    try:
        assert wait_for(b"vmcore monitor: the machine runs") and wait_for(b">>> "), bytes(seen)
        ask(b"vm.pause(); vm.status()['running']", b"False")
        ask(b"hex(vm.registers()['rip'])", b"'0x0'")
        ask(b"hex(vm.step()['rip'])", b"'0x0'")  # jmp $: one step lands where it was
        ask(b"vm.write_memory(0x900, b'hi'); vm.read_memory(0x900, 2)", b"b'hi'")
        ask(b"vm.read('pio', 0x1234, 1)", b"255")
        ask(b"vm.set_registers(rcx=41); vm.registers()['rcx'] + 1", b"42")
        ask(b"vm.resume(); vm.status()['running']", b"True")
        os.write(fd, b"vm.quit()\n")
        assert reader.wait_exit(pid, 20) == 0, bytes(seen[-300:])
    finally:
        reader.close(pid)


def test_the_repl_is_refused_where_a_device_reads_the_terminal(tmp_path: Path) -> None:
    profile = profile_for(SPIN, tmp_path, devices="  com1: {type: uart16550, backend: stdio}\n")
    done = subprocess.run([sys.executable, "-m", "vmcore", "run", str(profile), "--accel", "tcg", "--monitor"],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--monitor: device com1 reads the terminal" in done.stderr


def test_a_devices_state_shows_its_register_map_by_name(fake_bus) -> None:  # type: ignore[no-untyped-def]
    from vmcore.monitor import _state

    pm = fake_bus.attach("acpi-pm")
    fake_bus.outw(0x602, 0x0120)
    state = _state(pm)
    assert state["type"] == "acpi-pm"
    assert state["registers"] == {"PM1_STS": 0, "PM1_EN": 0x0120, "PM1_CNT": 1, "PM_TMR": 0}
