"""The ``vmcore`` command: what users see for devices, check, info and run errors.

Every command runs as a child process, so exit statuses and stderr are exactly what
a shell sees (and a hung child fails its test instead of hanging the suite).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.malformed_profiles import BUILD_ERRORS, PROFILE_ERRORS
from vmcore.kvm import Kvm, KvmUnavailable
from vmcore.stop import STATUS, StopReason

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
    assert section[0] == "debugcon  (vmcore_devices.debugcon, plugin debugcon)"
    assert "    Write-only debug console: each byte written to the port is output as is." in section
    assert "    port: int [0x0..0xffff] = 0xf1  I/O port the console listens on." in section
    assert "    readback: int [0x0..0xff] = 0xe9  Byte returned by reads (QEMU returns 0xE9)." in section
    backend = next(line for line in section if line.startswith("    backend: "))
    assert "choice [stdio|stderr|file|memory|socket|null] = 'stdio'" in backend
    assert any(line.startswith("    path: str = ''") for line in section)


def test_devices_lists_debug_exit_with_properties_defaults_and_docs(devices_output: str) -> None:
    section = _section(devices_output, "debug-exit")
    assert section[0] == "debug-exit  (vmcore_devices.debug_exit, plugin debug-exit)"
    assert any("a write of v exits with status (v << 1) | 1" in line for line in section)
    assert "    port: int [0x0..0xffff] = 0x501  First I/O port (QEMU's iobase)." in section
    assert any(line.startswith("    width: int = ") and "Number of ports claimed" in line for line in section)


def test_devices_are_listed_in_name_order(devices_output: str) -> None:
    names = [line.split()[0] for line in devices_output.splitlines() if line and not line.startswith(" ")]
    assert names == sorted(names)
    assert {"debugcon", "debug-exit"} <= set(names)


def test_devices_type_shows_only_that_type(devices_output: str) -> None:
    result = vmcore("devices", "uart16550")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == _section(devices_output, "uart16550") + [""]


def test_devices_type_shows_the_bounds_of_its_properties_in_their_notation() -> None:
    lines = vmcore("devices", "uart16550").stdout.splitlines()
    assert any(line.startswith("    port: int [0x0..0xfff8] = 0x3f8  ") for line in lines)  # a hex property
    assert any(line.startswith("    irq: int [0..15] = 4  ") for line in lines)
    assert any(line.startswith("    socket_mode: choice [server|client] = 'server'  ") for line in lines)
    assert any(line.startswith("    input: str = ''  file backend:") for line in lines)  # no bounds, no brackets


def test_devices_type_shows_a_register_map_with_its_fields() -> None:
    lines = vmcore("devices", "acpi-pm").stdout.splitlines()
    start = lines.index("    registers (offset, name, width, access, reset):")
    assert lines[start + 1].split()[:6] == ["+0x00", "PM1_STS", "16-bit", "w1c", "reset", "0x0"]
    assert any(line.split()[:3] == ["SLP_TYP", "bits", "12:10"] for line in lines[start:])
    assert "registers" not in vmcore("devices", "uart16550").stdout  # no map declared


def test_devices_unknown_type_is_one_line_naming_the_known_ones() -> None:
    result = vmcore("devices", "uart")
    assert result.returncode == 2
    assert result.stdout == ""
    message = one_line(result.stderr)
    assert message.startswith("vmcore: unknown device type 'uart' (did you mean 'uart16550'?); known types: ")
    assert {"debug-exit", "debugcon", "uart16550"} <= set(message.split("known types: ")[1].split(", "))


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


def test_verbose_after_the_command_says_why_the_machine_stopped() -> None:
    result = vmcore("run", "hello", "-v", "--accel", "tcg")
    assert result.returncode == 0
    assert result.stdout == "Hello\n"
    assert "(accelerator tcg, 6 exits, status 0)" in result.stderr


def test_without_verbose_a_clean_run_says_nothing_on_stderr() -> None:
    result = vmcore("run", "hello", "--accel", "tcg")
    assert (result.returncode, result.stdout, result.stderr) == (0, "Hello\n", "")


@pytest.mark.parametrize("command", ["run", "diff", "check", "devices", "info", "fuzz"])
def test_every_command_takes_verbose(command: str) -> None:
    from vmcore.cli import _parser

    assert _parser().parse_args([command, "-v"] + (["hello"] if command == "check" else [])).verbose
    assert not _parser().parse_args([command] + (["hello"] if command == "check" else [])).verbose


# --- usage -----------------------------------------------------------------------------------


def test_no_arguments_shows_usage() -> None:
    result = vmcore()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: vmcore")
    assert "{run,diff,check,replay,export-test,devices,info,fuzz}" in result.stderr
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
    assert "expected one of stdio, stderr, file, memory, socket, null, got 'nul'" in one_line(bad.stderr)


def test_a_profile_name_longer_than_the_host_allows_is_one_line() -> None:
    result = vmcore("check", "p" * 300)
    assert result.returncode == 2
    assert one_line(result.stderr) == f"vmcore: {'p' * 300}: cannot read the profile: File name too long"


# --- vmcore diff: the exit status --------------------------------------------------------------


def _stop(kind: str, status: int | None = None) -> StopReason:
    return StopReason(kind, f"stopped with {kind}", STATUS[kind] if status is None else status)


@pytest.mark.parametrize(("kvm", "tcg", "status"), [
    (("halted",), ("halted",), 0),
    (("exit", 85), ("exit", 85), 0),  # the guest's own status: the runs agree, and ended cleanly
    (("timeout",), ("timeout",), 6),
    (("max-exits",), ("max-exits",), 6),
    (("shutdown",), ("shutdown",), 4),
    (("device-error",), ("device-error",), 10),
    (("halted",), ("timeout",), 1),
    (("timeout",), ("shutdown",), 1),
], ids=["halted", "guest-exit", "both-timeout", "both-max-exits", "both-triple-fault", "both-device-error",
        "halted-vs-timeout", "timeout-vs-fault"])
def test_diff_status_is_0_clean_1_different_else_the_stop_both_runs_share(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        kvm: tuple, tcg: tuple, status: int) -> None:
    import vmcore.diff
    from vmcore import cli

    runs = vmcore.diff.compare(vmcore.diff.RecordedRun("kvm", _stop(*kvm), ()),
                               vmcore.diff.RecordedRun("tcg", _stop(*tcg), ()))
    monkeypatch.setattr(vmcore.diff, "differential", lambda *args, **kwargs: runs)
    assert cli.main(["diff", "hello"]) == status
    assert capsys.readouterr().out == runs.report() + "\n"


def test_diff_help_documents_the_exit_statuses() -> None:
    text = " ".join(vmcore("diff", "--help").stdout.split())
    assert "exit status: 0 when the runs are identical and ended cleanly" in text
    assert "1 when they differ" in text
    assert "both stopped on a fault or a limit, that stop's status (4 guest fault, 6 run limit" in text


# --- the command's exit: no interpreter teardown, nothing lost ----------------------------------

_COMMAND = """
import atexit, sys, threading, time
from vmcore.cli import command
atexit.register(lambda: print("exit handler ran", flush=True))
if "--thread" in sys.argv:
    sys.argv.remove("--thread")
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", flush=True))).start()
sys.stdout.write("buffered, not flushed: ")
command()
"""


@pytest.mark.parametrize("args, status", [(["run", "machines/hello.yaml"], 0),
                                          (["run", "no-such-profile.yaml"], STATUS["config-error"])])
def test_the_command_leaves_with_mains_status_after_the_exit_handlers_and_all_output(args, status) -> None:
    done = subprocess.run([sys.executable, "-c", _COMMAND, *args], capture_output=True, text=True,
                          cwd=REPO, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == status, done.stderr
    assert done.stdout.startswith("buffered, not flushed: ")
    assert done.stdout.rstrip().endswith("exit handler ran")
    assert ("Hello" in done.stdout) == (status == 0)


def test_the_command_waits_for_a_thread_still_running() -> None:
    done = subprocess.run([sys.executable, "-c", _COMMAND, "run", "machines/hello.yaml", "--thread"],
                          capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "thread finished" in done.stdout and "exit handler ran" in done.stdout


# --- the launcher: vmcore's modules imported with the collector paused ------------------------

_LAUNCH = """
import gc, sys
during_import = []  # a collection that starts while vmcore.cli is imported (before it defines command())
gc.callbacks.append(lambda phase, info: phase == "start" and during_import.append(
    "vmcore.cli" in sys.modules and getattr(sys.modules["vmcore.cli"], "command", None) is None))
{disable}
sys.argv = ["vmcore", "--help"]
{launch}
print(sum(during_import), gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)
"""
_THROUGH_MAIN = "from vmcore.__main__ import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
_DIRECT = "from vmcore.cli import command\ntry:\n    command()\nexcept SystemExit:\n    pass"


@pytest.mark.parametrize("disable, launch, expected", [
    ("", _THROUGH_MAIN, "0 True True"),  # nothing collected while importing; frozen; collecting again
    ("gc.disable()", _THROUGH_MAIN, "0 False True"),  # a collector the caller turned off stays off
])
def test_python_m_vmcore_imports_the_cli_without_collections_and_freezes_what_it_made(disable, launch,
                                                                                        expected) -> None:
    done = python(_LAUNCH.format(disable=disable, launch=launch))
    assert "usage: vmcore" in done.stdout, done.stderr
    assert done.stderr.split() == expected.split()


def test_imported_without_the_launcher_the_cli_is_collected_while_it_imports() -> None:
    # The comparison that shows the check above can fail: the same imports, the collector on.
    done = python(_LAUNCH.format(disable="", launch=_DIRECT))
    collections, enabled, frozen = done.stderr.split()
    assert int(collections) > 0 and enabled == "True" and frozen == "False", done.stderr


@pytest.mark.parametrize("argv", [
    ["run"], ["-v", "run", "pc-bios", "--accel", "tcg", "--set", "a=1", "--set", "b=2", "--timeout", "3"],
    ["run", "hello", "-v", "--snapshot", "s.bin", "--snapshot-after", "20"], ["diff", "hello", "--max-exits", "5"],
    ["check", "pc-bios", "--snapshot-selftest", "--seeds", "2"], ["replay", "r.json", "--timeout", "1"],
    ["export-test", "r.json", "--device", "com1", "--limit", "9"], ["devices"], ["devices", "i8259"], ["info"],
    ["fuzz", "uart16550", "--runs", "3", "--prop", "port=0x2f8", "--mode", "random"],
])
def test_the_parser_built_for_the_command_given_parses_as_the_whole_one(argv: list[str]) -> None:
    # main() adds only the named command's arguments (argparse's cost at every start-up).
    from vmcore.cli import _command_named, _parser

    assert vars(_parser(_command_named(argv)).parse_args(argv)) == vars(_parser().parse_args(argv))


def test_the_whole_parser_has_every_command_and_an_unknown_one_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    from vmcore.cli import COMMANDS, _command_named, _parser

    whole = _parser()
    subparsers = next(a for a in whole._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(subparsers.choices) == COMMANDS
    # A word that names no command builds the whole parser, whose error names every command.
    with pytest.raises(SystemExit):
        _parser(_command_named(["rnu", "hello"])).parse_args(["rnu", "hello"])
    error = capsys.readouterr().err
    assert "invalid choice: 'rnu'" in error and all(f"'{name}'" in error for name in COMMANDS)


_BUILD = """
import gc, sys
from vmcore import machine
counts = []
gc.callbacks.append(lambda phase, info: phase == "start" and counts.append(1))
real = machine.Machine._run
def run(self, *args, **kwargs):  # the guest's start: what the build cost in collections
    print(len(counts), gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr, flush=True)
    return real(self, *args, **kwargs)
machine.Machine._run = run
sys.argv = ["vmcore", "run", "pc-bios", "--accel", "tcg", "--set", "devices.debuglog=null", "--max-exits", "50"]
{launch}
"""


@pytest.mark.skipif(not Path("/usr/share/seabios/bios.bin").is_file(), reason="SeaBIOS is absent (apt-get install seabios)")
def test_the_command_builds_the_machine_without_collections_and_collects_once_the_guest_runs() -> None:
    through_main = python(_BUILD.format(launch="from vmcore.__main__ import main\nmain()"))
    assert through_main.stderr.split()[:3] == ["0", "True", "True"], through_main.stderr
    # The comparison that shows the check can fail: the same build with the collector on throughout.
    direct = python(_BUILD.format(launch="from vmcore.cli import main\nmain()"))
    collections, enabled, _frozen = direct.stderr.split()[:3]
    assert int(collections) > 0 and enabled == "True", direct.stderr


def test_the_parser_and_its_help_never_import_shutil(monkeypatch: pytest.MonkeyPatch) -> None:
    # argparse's own formatter imports shutil at every add_argument, for the terminal's width
    # (3-4 ms of a start-up): ours builds, parses and prints help without asking shutil.
    from vmcore import cli

    import types

    asked: list[str] = []
    spy = types.ModuleType("shutil")
    spy.get_terminal_size = lambda *args: asked.append("size") or os.terminal_size((80, 24))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shutil", spy)  # `import shutil` gives the spy
    parser = cli._parser("run")
    assert parser.parse_args(["run", "hello", "--accel", "tcg"]).accel == "tcg"
    run = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    assert "--snapshot-after" in run.format_help()
    assert asked == []
    # The comparison that shows the check can fail: argparse's formatter asks shutil.
    monkeypatch.setattr(cli, "_HelpFormatter", argparse.HelpFormatter)
    cli._parser("run")
    assert asked


@pytest.mark.parametrize("columns", [50, 100])
def test_help_is_as_wide_as_columns_says_as_with_argparses_own_formatter(columns: int) -> None:
    env = {**os.environ, "COLUMNS": str(columns)}
    ours = subprocess.run([sys.executable, "-m", "vmcore", "run", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)
    assert ours.returncode == 0, ours.stderr
    # Wrapped to COLUMNS - 2 (an option with its metavar is never cut: the usage's longest runs over at 50).
    assert max(len(line) for line in ours.stdout.splitlines() if "EXITS|TIME" not in line) <= columns - 2
    # argparse's HelpFormatter (shutil's width) lays the same parser out the same.
    script = ("import argparse, sys\nfrom vmcore import cli\n"
              "cli._HelpFormatter = argparse.HelpFormatter\nsys.argv = ['vmcore', 'run', '--help']\ncli.main()")
    theirs = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env=env)
    assert theirs.stdout == ours.stdout
