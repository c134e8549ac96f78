"""The ``vmcore`` command: what users see for devices, check, info and run errors.

Every command runs as a child process, so exit statuses and stderr are exactly what
a shell sees (and a hung child fails its test instead of hanging the suite).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_profile import BUILD_ERRORS, PROFILE_ERRORS
from vmcore.kvm import Kvm, KvmUnavailable

REPO = Path(__file__).resolve().parent.parent


def vmcore(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcore", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- vmcore devices ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def devices_output() -> str:
    result = vmcore("devices")
    assert result.returncode == 0
    assert result.stderr == ""
    return result.stdout


def _section(output: str, name: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}  ("))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] == ""), len(lines))
    return lines[start:end]


def test_devices_lists_debugcon_with_properties_defaults_and_docs(devices_output: str) -> None:
    section = _section(devices_output, "debugcon")
    assert section[0] == "debugcon  (devices.debugcon, plugin debugcon)"
    assert "    Write-only debug console: each byte written to the port is output as is." in section
    assert "    port: int = 0xf1  I/O port the console listens on." in section
    assert "    readback: int = 0xe9  Byte returned by reads (QEMU returns 0xE9)." in section
    output = next(line for line in section if line.startswith("    output: "))
    assert "[stdout|stderr|file|memory] = 'stdout'" in output
    assert any(line.startswith("    path: str = ''") for line in section)


def test_devices_lists_debug_exit_with_properties_defaults_and_docs(devices_output: str) -> None:
    section = _section(devices_output, "debug-exit")
    assert section[0] == "debug-exit  (devices.debug_exit, plugin debug-exit)"
    assert any("a write of v exits with status (v << 1) | 1" in line for line in section)
    assert "    port: int = 0x501  First I/O port (QEMU's iobase)." in section
    assert any(line.startswith("    width: int = ") and "Number of ports claimed" in line for line in section)


def test_devices_are_listed_in_name_order(devices_output: str) -> None:
    names = [line.split()[0] for line in devices_output.splitlines() if line and not line.startswith(" ")]
    assert names == sorted(names)
    assert {"debugcon", "debug-exit"} <= set(names)


# --- vmcore check on malformed profiles ----------------------------------------------------

_CHECK_CASES = {"yaml-syntax", "empty-file", "unknown-top-level-key", "overlapping-slots", "duplicate-key",
                "device-missing-type", "unknown-device-type", "device-port-out-of-range", "device-ports-overlap"}
_CASES = [case for case in PROFILE_ERRORS + BUILD_ERRORS if case[0] in _CHECK_CASES]


def test_check_cases_exist() -> None:
    assert {case[0] for case in _CASES} == _CHECK_CASES


@pytest.mark.parametrize(("name", "text", "line", "fragments"), _CASES, ids=[c[0] for c in _CASES])
def test_check_malformed_profile_is_one_line_with_file_and_line(
        tmp_path: Path, name: str, text: str, line: int, fragments: list[str]) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    result = vmcore("check", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    message = one_line(result.stderr)
    assert message.startswith(f"vmcore: {path}:{line}: ")
    for fragment in fragments:
        assert fragment in message


def test_check_bad_override_names_the_command_line() -> None:
    result = vmcore("check", "hello", "--set", "devices.console.port=0x10000")
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert message.startswith("vmcore: <command line: devices.console.port=0x10000>: devices.console.port:")


def test_check_malformed_override() -> None:
    result = vmcore("check", "hello", "--set", "cpu.entry")
    assert result.returncode == 2
    assert "KEY.PATH=VALUE" in one_line(result.stderr)


# --- vmcore info ---------------------------------------------------------------------------


def _kvm_reason() -> str | None:
    try:
        Kvm.open().close()
    except KvmUnavailable as exc:
        return str(exc)
    return None


def test_info_reports_the_api_version_or_why_kvm_is_unusable() -> None:
    result = vmcore("info")
    reason = _kvm_reason()
    if reason is None:
        assert result.returncode == 0, result.stderr
        first = result.stdout.splitlines()[0]
        assert first.startswith("/dev/kvm: KVM API version 12,")
        assert "user_memory" in result.stdout
    else:
        assert result.returncode == 8
        assert result.stdout == ""
        assert one_line(result.stderr) == f"vmcore: {reason}"


def test_info_without_kvm_is_status_8_and_one_line() -> None:
    # Point the default device at a path that does not exist, whatever this host has.
    result = python(
        "import sys\n"
        "from vmcore.kvm import system\n"
        "real = system.Kvm.open.__func__\n"
        "system.Kvm.open = classmethod(lambda cls, path=None, **kw: real(cls, '/nonexistent/kvm', **kw))\n"
        "from vmcore.cli import main\n"
        "sys.exit(main(['info']))\n"
    )
    assert result.returncode == 8
    assert result.stdout == ""
    message = one_line(result.stderr)
    assert message.startswith("vmcore: ") and "/nonexistent/kvm" in message


# --- vmcore run: errors before any CPU runs -------------------------------------------------


def test_run_missing_profile_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = vmcore("run", str(missing))
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_line(result.stderr) == f"vmcore: {missing}: no such profile file"


def test_run_unknown_profile_name(tmp_path: Path) -> None:
    result = vmcore("run", "no-such-machine", cwd=tmp_path)
    assert result.returncode == 2
    assert "no profile named 'no-such-machine'" in one_line(result.stderr)


def test_run_malformed_profile(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("memory:\n  ram: {size: 4K}\ncpu:\n  mode: reel\n")
    result = vmcore("run", str(path))
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(f"vmcore: {path}:4: cpu.mode:")


def test_run_unknown_accelerator_choice() -> None:
    result = vmcore("run", "hello", "--accel", "qemu")
    assert result.returncode == 2
    assert "invalid choice: 'qemu'" in result.stderr


def test_run_tcg_boots_hello_on_the_software_cpu() -> None:
    result = vmcore("-v", "run", "hello", "--accel", "tcg")
    assert result.returncode == 0
    assert result.stdout == "Hello\n"
    assert "(accelerator tcg, 6 exits, status 0)" in result.stderr


# --- usage -----------------------------------------------------------------------------------


def test_no_arguments_shows_usage() -> None:
    result = vmcore()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: vmcore")
    assert "{run,diff,check,devices,info,fuzz}" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_commands() -> None:
    result = vmcore("--help")
    assert result.returncode == 0
    for command in ("run", "check", "devices", "info"):
        assert command in result.stdout


# --- vmcore run: --json-report and --set, checked before the run -----------------------------


@pytest.mark.parametrize(("target", "problem"), [
    (".", "is a directory"),
    ("missing/report.json", "its folder {tmp}/missing does not exist"),
    ("file.txt/report.json", "{tmp}/file.txt is not a folder"),
])
def test_an_unusable_json_report_path_fails_before_the_run(tmp_path: Path, target: str, problem: str) -> None:
    (tmp_path / "file.txt").write_text("keep")
    path = tmp_path / target
    result = vmcore("run", "hello", "--accel", "tcg", "--json-report", str(path))
    assert result.returncode == 2
    assert result.stdout == ""  # the guest never ran: it prints Hello
    assert one_line(result.stderr) == f"vmcore: --json-report {path}: {problem.format(tmp=tmp_path)}"
    assert (tmp_path / "file.txt").read_text() == "keep"


@pytest.mark.parametrize(("existing", "problem"), [
    (False, "its folder {tmp} is not writable"),
    (True, "is not writable"),
])
def test_a_json_report_path_without_write_permission_fails_before_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        existing: bool, problem: str) -> None:
    from vmcore import cli

    path = tmp_path / "report.json"
    if existing:
        path.write_text("old")
    # Tests may run as root, whom permission bits do not stop: answer as the kernel would a user.
    monkeypatch.setattr(cli.os, "access", lambda *args, **kwargs: False)
    assert cli.main(["run", "hello", "--json-report", str(path)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"vmcore: --json-report {path}: {problem.format(tmp=tmp_path)}\n")
    if existing:
        assert path.read_text() == "old"
    else:
        assert not path.exists()


def test_the_json_report_file_is_not_touched_when_the_profile_fails(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("previous report")
    result = vmcore("run", "hello", "--json-report", str(report), "--set", "cpu.mode=reel")
    assert result.returncode == 2
    assert report.read_text() == "previous report"


def test_the_json_report_is_written_after_the_run(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = vmcore("run", "hello", "--accel", "tcg", "--json-report", str(report))
    assert result.returncode == 0
    assert '"kind": "halted"' in report.read_text()


def test_run_help_says_how_to_give_the_string_null_to_set() -> None:
    help_text = " ".join(vmcore("run", "--help").stdout.split())
    assert "KEY=null removes the key" in help_text
    assert "--set 'devices.com1.backend=\"null\"' gives the string null" in help_text


def test_check_with_a_quoted_null_gives_the_uart_the_null_backend(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("memory:\n  ram: {size: 4K}\ndevices:\n  com1: {type: uart16550, backend: memory}\n")
    result = vmcore("check", str(path), "--set", 'devices.com1.backend="null"')
    assert result.returncode == 0, result.stderr
    bad = vmcore("check", str(path), "--set", 'devices.com1.backend="nul"')
    assert "expected one of stdio, file, memory, socket, null, got 'nul'" in one_line(bad.stderr)


def test_a_profile_name_longer_than_the_host_allows_is_one_line() -> None:
    result = vmcore("check", "p" * 300)
    assert result.returncode == 2
    assert one_line(result.stderr) == f"vmcore: {'p' * 300}: cannot read the profile: File name too long"
