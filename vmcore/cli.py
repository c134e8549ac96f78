"""The ``vmcore`` command: run, check, devices, info."""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, NoReturn, Sequence

from .accel import RunLimits
from .bus import Transaction
from .irq import IrqEvent
from .machine import Machine, resolve_profile
from .plugins import DeviceRegistry, DeviceTypeError
from .profile import ProfileError, Where
from .stop import STATUS
from .units import parse_int

log = logging.getLogger("vmcore")


def _seconds_or_off(text: str) -> float | None:
    """Seconds, 0 for off (None)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a positive number of seconds, got {text}")
    return value or None


def _positive_seconds(text: str) -> float:
    # 0 would disarm the timer (and nan/inf make setitimer fail mid-run): reject them here.
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, like 10 or 0.5, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    if value > 1e9:  # timers overflow past this (the profile's limits.timeout has the same cap)
        raise argparse.ArgumentTypeError(f"must be at most 1e9 seconds, got {text!r}")
    return value


_TIME_UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _pause_limit(point: tuple[str, int] | None) -> dict[str, int]:
    """RunLimits' pause_after or pause_at for a --snapshot-after point (none without one)."""
    if point is None:
        return {}
    kind, value = point
    return {"exits": {"pause_after": value}, "time": {"pause_at": value},
            "instructions": {"pause_at_instruction": value}, "signal": {"pause_on_signal": value}}[kind]


#: Signals --snapshot-after takes: the two the user may send for their own purposes.
_PAUSE_SIGNALS = {"SIGUSR1": signal.SIGUSR1, "SIGUSR2": signal.SIGUSR2}


def _snapshot_point(text: str) -> tuple[str, int]:
    """``--snapshot-after``: ("exits", N) for a count, ("time", ns) for a time with its unit,
    ("instructions", N) for a count with ``insn``, ("signal", number) for SIGUSR1 or SIGUSR2."""
    if text.upper() in _PAUSE_SIGNALS:
        return "signal", int(_PAUSE_SIGNALS[text.upper()])
    if text.endswith("insn") and text[:-4].strip():
        return "instructions", _positive_count(text[:-4].strip())
    for unit in ("ms", "us", "ns", "s"):
        if text.endswith(unit) and text[:-len(unit)].strip():
            try:
                value = float(text[:-len(unit)])
            except ValueError:
                break
            if not (math.isfinite(value) and value > 0):
                break
            return "time", max(1, round(value * _TIME_UNITS[unit]))
    return "exits", _positive_count(text)


def _positive_count(text: str) -> int:
    # The run loop stops when the count *equals* the limit: 0 or less would never stop it.
    try:
        value = parse_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count like 1000 or 1M, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


VERBOSE_HELP = "log more, and always say why the machine stopped"
#: The exit status of a replay that did not go as recorded.
REPLAY_DIVERGED = 12

DIFF_STATUS = ("exit status: 0 when the runs are identical and ended cleanly (hlt or the guest's own exit); "
               "1 when they differ; when they are identical but both stopped on a fault or a limit, that stop's "
               "status (4 guest fault, 6 run limit, 10 device error, ...); 2 a configuration error; 8 when an "
               "accelerator is unusable.")


#: The commands, as the parser adds them.
COMMANDS = ("run", "diff", "check", "replay", "export-test", "devices", "info", "fuzz")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, the terminal's width found without importing shutil.

    argparse makes a formatter at every ``add_argument`` (to check the argument's metavar),
    and its own asks ``shutil.get_terminal_size``: importing shutil (and the compression
    modules it imports) cost every start-up 3-4 ms, for help a run never prints.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _terminal_columns() - 2 if width is None else width)


def _terminal_columns() -> int:
    """The columns shutil.get_terminal_size gives: $COLUMNS, else stdout's terminal's, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``only``: the command to be parsed, the only one added: argparse takes
    some 60 us an argument and 0.5 ms a command, and the commands not being run cost 5 ms of
    every start-up. None, or a word that names no command: every command (whose names and help
    the error for an unknown one lists)."""

    def wanted(command: str) -> bool:
        return only not in COMMANDS or only == command

    parser = argparse.ArgumentParser(prog="vmcore", description="A Python VMM for device models.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, **options: Any) -> argparse.ArgumentParser:
        command = commands.add_parser(name, formatter_class=_HelpFormatter, **options)
        # -v after the command too; SUPPRESS, so a command without it keeps what came before it.
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        return command

    if wanted("run"):
        run = add_command("run", help="boot a machine profile", epilog="with --accel both: " + DIFF_STATUS)
        run.add_argument("profile", nargs="?", default="hello", help="a profile path or bundled name (default: hello)")
        run.add_argument("--accel", choices=("kvm", "tcg", "auto", "both"),
                         help="CPU accelerator (default: the profile's); 'both' runs a differential comparison")
        run.add_argument("--trace", action="store_true", help="print every bus transaction to stderr")
        run.add_argument("--trace-file", metavar="FILE", help="write every bus transaction to FILE")
        run.add_argument("--perfetto", metavar="FILE",
                         help="write the run as a Perfetto timeline to FILE (vCPU runs, transactions and timers by "
                              "device, IRQ lines; opens in ui.perfetto.dev)")
        run.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS", help="stop after this much wall-clock time")
        run.add_argument("--max-exits", type=_positive_count, metavar="N", help="stop after N exits")
        run.add_argument("--snapshot", metavar="FILE",
                         help="save the machine to FILE where the run stops at --snapshot-after (vCPU, devices, "
                              "memory, time); --restore goes on from there")
        run.add_argument("--snapshot-after", type=_snapshot_point, metavar="EXITS|TIME|Ninsn|SIGUSR1",
                         help="the point --snapshot saves at: after this many exits, at this much machine time "
                              "(with a unit: 2s, 300ms, 50us), after this many instructions (2000000insn; needs "
                              "clock: virtual), or when the process gets SIGUSR1 (or SIGUSR2)")
        run.add_argument("--restore", metavar="FILE", help="go on from a snapshot of a machine of this profile")
        run.add_argument("--reload-on-change", action="store_true",
                         help="when a device's module file changes, import it again and rebuild the device from its "
                              "state under the running guest (vmcore.reload; each reload or refusal is said on stderr)")
        run.add_argument("--record", metavar="FILE",
                         help="record the run for 'vmcore replay' and 'vmcore export-test': its host input, with the "
                              "instruction each byte arrived at (on the host's clock: every reading of the clock, the "
                              "input at its reading), and every transaction and IRQ")
        run.add_argument("--monitor", action="store_true",
                         help="a Python REPL on the terminal into the running machine: vm.pause(), vm.registers(), ... "
                              "(no device may read the terminal meanwhile)")
        run.add_argument("--monitor-socket", metavar="PATH",
                         help="serve the monitor on a Unix socket at PATH: JSON lines, as QEMU's QMP "
                              "(pause, resume, registers, memory, devices, bus accesses, IRQs, quit; vmcore.monitor)")
        run.add_argument("--stuck-after", type=_seconds_or_off, default=2.0, metavar="SECONDS",
                         help="say so (once) when the guest keeps reading one device register and getting one "
                              "answer for this long in machine time, and what its loop waits for (default 2; 0: off)")
        run.add_argument("--history", type=int, default=16, metavar="N",
                         help="show the last N bus transactions in a fault report (default 16; 0 for none)")
        run.add_argument("--json-report", metavar="FILE",
                         help="also write the stop report as JSON to FILE ('-' for stdout)")
        run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                         help="override a profile value, e.g. --set devices.console.port=0xE9 (repeatable); "
                              "KEY=null removes the key, and a quoted VALUE is that text: "
                              "--set 'devices.com1.backend=\"null\"' gives the string null")

    if wanted("diff"):
        diff = add_command("diff", help="run a profile on KVM and on the software CPU and compare their transactions",
                           epilog=DIFF_STATUS)
        diff.add_argument("profile", nargs="?", default="hello", help="a profile path or bundled name (default: hello)")
        diff.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS", help="limit for each run")
        diff.add_argument("--max-exits", type=_positive_count, metavar="N", help="limit for each run")
        diff.add_argument("--show-output", action="store_true", help="let devices print to stdout during the runs")
        diff.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")

    if wanted("check"):
        check = add_command("check", help="validate a profile and build its machine without running it")
        check.add_argument("profile", help="a profile path or bundled name")
        check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
        check.add_argument("--snapshot-selftest", action="store_true",
                           help="check that each device type of the profile saves all of its state: saved at random "
                                "points of a hostile guest's run and loaded into a fresh one, it must go on the same")
        check.add_argument("--seeds", type=int, default=4, metavar="N", help="runs per device for --snapshot-selftest")

    if wanted("replay"):
        replay = add_command("replay", help="run a recording (vmcore run --record) again and compare it event by event",
                             epilog="exit status: the run's own when it went as recorded; "
                             f"{REPLAY_DIVERGED} when it diverged (the first difference on stderr); 2 for a recording "
                             "that cannot be replayed")
        replay.add_argument("recording", help="a file written by vmcore run --record")
        replay.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS", help="stop after this much wall-clock time")

    if wanted("export-test"):
        export = add_command("export-test",
                             help="write a recorded device's transactions as a pytest test on the fake bus")
        export.add_argument("recording", help="a file written by vmcore run --record")
        export.add_argument("--device", required=True, metavar="NAME", help="the device (its name in the profile)")
        export.add_argument("--out", metavar="FILE", help="the test module to write (default: test_NAME_recorded.py)")
        export.add_argument("--limit", type=_positive_count, default=20_000, metavar="N",
                            help="replay at most its first N transactions (default 20000)")

    if wanted("devices"):
        devices = add_command("devices", help="list device types with their properties")
        devices.add_argument("type", nargs="?", help="show only this device type")
    if wanted("info"):
        add_command("info", help="show the host's KVM capabilities")

    if wanted("fuzz"):
        fuzz = add_command("fuzz", help="drive a device type with a hostile guest and report what broke")
        fuzz.add_argument("device", nargs="?", help="a device type name (see 'vmcore devices')")
        fuzz.add_argument("--all", action="store_true", help="every installed device type")
        fuzz.add_argument("--runs", type=_positive_count, default=200, metavar="N", help="runs, each on a fresh device "
                          "(default 200)")
        fuzz.add_argument("--steps", type=_positive_count, default=50, metavar="N", help="operations per run (default 50)")
        fuzz.add_argument("--seed", type=parse_int, metavar="S", help="make the runs repeatable (default: a random seed, "
                          "printed with any failure)")
        fuzz.add_argument("--prop", action="append", default=[], metavar="KEY=VALUE", dest="props",
                          help="a device property, e.g. --prop port=0x2f8 (repeatable)")
        fuzz.add_argument("--mode", choices=("hypothesis", "random"),
                          help="where choices come from: hypothesis (shrinks best; the default when installed) or a "
                               "seeded random generator (cheaper, for long runs)")
        fuzz.add_argument("--hang-timeout", type=_positive_seconds, default=1.0, metavar="SECONDS",
                          help="an operation taking longer than this is a hang (default 1)")
    return parser


#: What puts the garbage collector back to work (vmcore.__main__ pauses it): as the guest starts
#: (``run``), once the arguments are read (any other command); None once done or where nothing paused it.
_resume_collector: Callable[[], None] | None = None


def _collect_again() -> None:
    global _resume_collector
    resume, _resume_collector = _resume_collector, None
    if resume is not None:
        resume()


def command(resume_collector: Callable[[], None] | None = None) -> NoReturn:
    """The ``vmcore`` command (its console script and ``python -m vmcore``): :func:`main`, then
    the process ends without tearing the interpreter down. ``resume_collector``: called as the
    guest starts (``run``) or once the arguments are read (the rest), or as main() leaves.

    Freeing every module and object at exit, with the collector's passes, takes about 50 ms
    after a run: a sixth of a firmware boot's ``vmcore run`` (bench/boot.py). Everything a
    run opened is closed by then (devices, their backends, the terminal), so once the exit
    handlers have run (logging's flush, a coverage measurement's save) and stdout and stderr
    are flushed, ``os._exit`` leaves. Where another thread still runs, or the handlers cannot
    be run first, the ordinary exit waits for it.
    """
    global _resume_collector
    _resume_collector = resume_collector
    try:
        status = main()
    finally:
        _collect_again()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None or threading.active_count() > 1:
        sys.exit(status)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a reader gone, a stream closed: nothing left to send
            pass
    os._exit(status)


def _command_named(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names (its first word that is not an option), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser(_command_named(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="vmcore: %(message)s", stream=sys.stderr)
    if args.command != "run" or args.accel == "both":
        _collect_again()
    try:
        if args.command == "run":
            return _diff(args) if args.accel == "both" else _run(args)
        if args.command == "diff":
            return _diff(args)
        if args.command == "check":
            return _check(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "export-test":
            return _export_test(args)
        if args.command == "devices":
            return _devices(args.type)
        if args.command == "fuzz":
            return _fuzz(args)
        return _info()
    except (ProfileError, DeviceTypeError) as exc:
        print(f"vmcore: {exc}", file=sys.stderr)
        return STATUS["config-error"]
    except BrokenPipeError:
        # The reader went away (e.g. `vmcore devices | head`): not an error worth a traceback.
        sys.stdout = None  # type: ignore[assignment]
        return 0


def _profile_path(name: str) -> Path:
    """A profile path or bundled name as a path; a name the host cannot look up is a ProfileError."""
    try:
        return resolve_profile(name)
    except OSError as exc:  # e.g. a name longer than the host allows (ENAMETOOLONG)
        raise ProfileError(Where(name), "", f"cannot read the profile: {exc.strerror or exc}") from None


def _build(profile_name: str, overrides: list[str], record: bool = False) -> Machine:
    from .profile import Profile

    profile = Profile.load(_profile_path(profile_name), overrides)
    if record:
        from .record import recording_clock

        return Machine.build(profile, clock=recording_clock(profile))
    return Machine.build(profile)


def _fan_out(sinks: list[Callable[[Any], None]]) -> Callable[[Any], None]:
    """One tracer that hands each event to every sink (the sink itself where there is one)."""
    if len(sinks) == 1:
        return sinks[0]

    def each(event: Any) -> None:
        for sink in sinks:
            sink(event)

    return each


def _replay(args: argparse.Namespace) -> int:
    from .profile import Profile
    from .record import Replay, RecordingError, load, replayed_clock

    try:
        record = load(args.recording)
        machine = Machine.build(Profile.load(Path(record["profile"]), record["overrides"]), clock=replayed_clock(record))
    except RecordingError as exc:
        print(f"vmcore: replay: {exc}", file=sys.stderr)
        return STATUS["config-error"]
    with machine:
        try:
            replay = Replay(machine, record)
            transaction_sink, irq_sink = replay.attach()
            machine.set_tracer(transaction_sink)
            machine.set_irq_tracer(irq_sink)
        except RecordingError as exc:
            print(f"vmcore: replay: {args.recording}: {exc}", file=sys.stderr)
            return STATUS["config-error"]
        # On the accelerator it was recorded on (a recording on the host's clock may be KVM's).
        stop = machine.run(record.get("accelerator"), RunLimits(timeout=args.timeout))
    sys.stdout.flush()
    verdict = replay.verdict(stop)
    if verdict is not None:
        print(f"vmcore: replay: {args.recording}: {verdict}", file=sys.stderr)
        return REPLAY_DIVERGED
    print(f"vmcore: replay: {args.recording}: replayed as recorded: {replay.seen} events, "
          f"{len(record['inputs'])} inputs, {stop.kind} (status {stop.status})", file=sys.stderr)
    return stop.status


def _export_test(args: argparse.Namespace) -> int:
    from .profile import Profile
    from .record import RecordingError, export_test, identifier, load

    out = Path(args.out or f"test_{identifier(args.device)}_recorded.py")
    try:
        record = load(args.recording)
        profile = Profile.load(Path(record["profile"]), record["overrides"])
        source = export_test(record, args.device, DeviceRegistry.default(),
                             {spec.name: spec for spec in profile.devices}, limit=args.limit)
    except (RecordingError, DeviceTypeError) as exc:
        print(f"vmcore: export-test: {exc}", file=sys.stderr)
        return STATUS["config-error"]
    problem = _report_path_problem(str(out))
    if problem:
        print(f"vmcore: export-test: {out}: {problem}", file=sys.stderr)
        return STATUS["config-error"]
    out.write_text(source, encoding="utf-8")
    print(f"vmcore: export-test: wrote {out}: device {args.device}, {source.count(chr(10))} lines", file=sys.stderr)
    return 0


def _report_path_problem(path: str) -> str:
    """Why the JSON report could not be written to ``path`` ("" when it could), without touching it.

    Checked before the run, so a run is not wasted on a report that cannot be kept; the file
    itself is only opened once there is a report to write.
    """
    target = Path(path)
    if target.is_dir():
        return "is a directory"
    folder = target.parent
    if not folder.is_dir():
        return f"its folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder"
    if target.exists() or target.is_symlink():
        return "" if os.access(target, os.W_OK) else "is not writable"
    return "" if os.access(folder, os.W_OK | os.X_OK) else f"its folder {folder} is not writable"


def _run(args: argparse.Namespace) -> int:
    if args.json_report and args.json_report != "-":
        problem = _report_path_problem(args.json_report)
        if problem:
            print(f"vmcore: --json-report {args.json_report}: {problem}", file=sys.stderr)
            return STATUS["config-error"]
    if (args.snapshot is None) != (args.snapshot_after is None):
        print("vmcore: --snapshot FILE and --snapshot-after EXITS go together", file=sys.stderr)
        return STATUS["config-error"]
    if args.snapshot:
        problem = _report_path_problem(args.snapshot)
        if problem:
            print(f"vmcore: --snapshot {args.snapshot}: {problem}", file=sys.stderr)
            return STATUS["config-error"]
        point, where = args.snapshot_after
        if point == "exits" and args.max_exits is not None and args.max_exits <= where:
            print("vmcore: --max-exits ends the run before --snapshot-after", file=sys.stderr)
            return STATUS["config-error"]
    if args.record:
        problem = _report_path_problem(args.record)
        if problem or args.restore or args.monitor or args.monitor_socket:
            why = problem or ("a replay starts where the profile does, not from a snapshot (--restore)" if args.restore
                              else "what the monitor does to the machine is not recorded (--monitor)")
            print(f"vmcore: --record {args.record}: {why}", file=sys.stderr)
            return STATUS["config-error"]
    try:
        machine = _build(args.profile, args.overrides, record=bool(args.record))
    except BaseException:
        _collect_again()
        raise
    recorder = None
    if args.record:
        from .record import Recorder, RecordingError

        try:
            recorder = Recorder(machine, str(_profile_path(args.profile).resolve()), args.overrides)
        except RecordingError as exc:
            machine.close()
            print(f"vmcore: {exc}", file=sys.stderr)
            return STATUS["config-error"]
    if args.restore:
        from .snapshot import SnapshotError

        try:
            machine.restore_snapshot(args.restore)
        except SnapshotError as exc:
            machine.close()
            print(f"vmcore: --restore: {exc}", file=sys.stderr)
            return STATUS["config-error"]
    trace_out: IO[str] | None = None
    with machine:
        if args.trace_file:
            try:
                trace_out = open(args.trace_file, "w", encoding="utf-8")
            except OSError as exc:
                print(f"vmcore: cannot open the trace file: {exc}", file=sys.stderr)
                return STATUS["config-error"]
        elif args.trace:
            trace_out = sys.stderr
        sinks: list[Callable[[Transaction], None]] = []
        irq_sinks: list[Callable[[IrqEvent], None]] = []
        if recorder is not None:
            transaction_sink, irq_sink = recorder.attach()
            sinks.append(transaction_sink)
            irq_sinks.append(irq_sink)
        if trace_out is not None:
            out = trace_out

            def tracer(txn: Transaction | IrqEvent) -> None:
                out.write(f"{txn}\n")

            sinks.append(tracer)
            irq_sinks.append(tracer)
        if sinks:
            machine.set_tracer(_fan_out(sinks))
            machine.set_irq_tracer(_fan_out(irq_sinks))
        if args.history > 0:
            machine.keep_history(args.history)
        perfetto_out: IO[bytes] | None = None
        if args.perfetto:
            try:
                perfetto_out = open(args.perfetto, "wb")
            except OSError as exc:
                print(f"vmcore: --perfetto {args.perfetto}: {exc.strerror or exc}", file=sys.stderr)
                return STATUS["config-error"]
            from .timeline import Timeline

            machine.set_timeline(Timeline(perfetto_out, f"vmcore {machine.profile.name}"))
        server = monitor = None
        if args.monitor:
            from .chardev import StdioBackend

            reader = next((name for name, device in machine.devices.items()
                           if isinstance(getattr(device, "backend", None), StdioBackend)), None)
            if reader is not None:
                print(f"vmcore: --monitor: device {reader} reads the terminal (backend: stdio); give it another "
                      f"backend, or use --monitor-socket", file=sys.stderr)
                return STATUS["config-error"]
        if args.monitor or args.monitor_socket:
            from .monitor import Monitor, MonitorServer, start_console

            monitor = Monitor(machine)  # one, for the terminal and the socket alike
            if args.monitor_socket:
                try:
                    server = MonitorServer(monitor, args.monitor_socket)
                except OSError as exc:
                    print(f"vmcore: --monitor-socket {args.monitor_socket}: {exc.strerror or exc}", file=sys.stderr)
                    return STATUS["config-error"]
            if args.monitor:
                start_console(monitor)
        watcher = None
        if args.reload_on_change:
            from .reload import ReloadWatcher

            watcher = ReloadWatcher(machine, lambda said: print(f"vmcore: {said}", file=sys.stderr, flush=True))
        try:
            # The collector resumes as the guest starts: what the build and set-up made is frozen first.
            stop = machine.run(args.accel, RunLimits(timeout=args.timeout, max_exits=args.max_exits,
                                                     stuck_after=args.stuck_after, **_pause_limit(args.snapshot_after)),
                               ready=_collect_again)
        finally:
            if watcher is not None:
                watcher.close()
            if server is not None:
                server.close()
            if trace_out is not None and trace_out is not sys.stderr:
                trace_out.close()
            if perfetto_out is not None:
                perfetto_out.close()
        accel = machine.accelerator.name if machine.accelerator else "none"
        if recorder is not None:
            try:
                size = recorder.save(args.record, stop)
            except (RecordingError, OSError) as exc:
                print(f"vmcore: --record {args.record}: {exc}", file=sys.stderr)
                return STATUS["host-error"]
            if args.verbose:
                print(f"vmcore: recorded {len(recorder.events)} events and {len(recorder.inputs)} inputs to "
                      f"{args.record} ({size} bytes)", file=sys.stderr)
        if args.snapshot and stop.kind == "paused":
            from .accel import AcceleratorUnavailable
            from .snapshot import SnapshotError

            started = time.monotonic()
            try:
                size = machine.save_snapshot(args.snapshot)
            except (SnapshotError, AcceleratorUnavailable, OSError) as exc:
                print(f"vmcore: --snapshot {args.snapshot}: {accel}: {exc}", file=sys.stderr)
                return STATUS["host-error"]
            sys.stdout.flush()
            print(f"vmcore: saved the machine after {stop.exits} exits to {args.snapshot} ({size} bytes, "
                  f"{time.monotonic() - started:.3f} s)", file=sys.stderr)
            return 0
    sys.stdout.flush()
    if stop.is_fault:
        print(f"vmcore: {stop.report()}", file=sys.stderr)
        if args.verbose and "traceback" in stop.detail:
            print(stop.detail["traceback"], file=sys.stderr)
    elif args.verbose or stop.kind == "reset":
        print(f"vmcore: {stop.summary()} (accelerator {accel}, {stop.exits} exits, status {stop.status})",
              file=sys.stderr)
    if args.json_report:
        import json

        text = json.dumps({"accelerator": accel, **stop.to_json()}, indent=2)
        if args.json_report == "-":
            print(text)
        else:
            try:
                with open(args.json_report, "w", encoding="utf-8") as out_file:
                    out_file.write(text + "\n")
            except OSError as exc:  # changed during the run, or the disk filled up
                print(f"vmcore: --json-report {args.json_report}: cannot write the report: "
                      f"{exc.strerror or exc}", file=sys.stderr)
                return STATUS["config-error"]
    return stop.status & 0xFF


def _diff(args: argparse.Namespace) -> int:
    """Exit with :attr:`vmcore.diff.Difference.status`: 0 match, 1 differ (like diff(1)), else the shared stop's."""
    import contextlib
    import io
    import os

    from .diff import differential
    from .profile import Profile

    profile = Profile.load(_profile_path(args.profile), args.overrides)
    # `vmcore diff` has no --stuck-after: the detector's default there.
    limits = RunLimits(timeout=args.timeout, max_exits=args.max_exits,
                       stuck_after=getattr(args, "stuck_after", RunLimits().stuck_after))
    quiet = contextlib.nullcontext()
    if not getattr(args, "show_output", False):
        # Devices writing to stdout would print every line twice; the transactions hold it all.
        devnull = io.TextIOWrapper(open(os.devnull, "wb"))
        quiet = contextlib.redirect_stdout(devnull)  # type: ignore[assignment]
    with quiet:
        result = differential(profile, registry=None, limits=limits)
    for run in (result.a, result.b):
        if run.stop.kind == "host-error":
            # One side could not run at all (e.g. no KVM): that is no comparison.
            print(f"vmcore: diff needs both accelerators; {run.accel}: {run.stop.message}", file=sys.stderr)
            return STATUS["host-error"]
    print(result.report())
    return result.status


def _check(args: argparse.Namespace) -> int:
    machine = _build(args.profile, args.overrides)
    with machine:
        profile = machine.profile
        print(f"{profile.name}: ok ({profile.path})")
        state = machine.state
        print(f"  cpu: {state.mode} mode, entry {state.registers['rip']:#x}, accel {profile.accel}")
        homes = machine.memory.home_slots()
        for slot in homes:
            kind = "rom" if slot.readonly else "ram"
            print(f"  memory {slot.name}: {slot.base:#x}..{slot.end - 1:#x} {kind}")
        windows = list(machine.memory)
        if [(w.base, w.size, w.readonly) for w in windows] != [(h.base, h.size, h.readonly) for h in homes]:
            # A device decodes part of it (the i440fx's PAM): what the guest sees at power-on.
            for window in windows:
                kind = "rom" if window.readonly else "ram"
                print(f"  map {window.base:#x}..{window.end - 1:#x} {kind} ({window.name} "
                      f"+{window.offset:#x})")
        for bus in (machine.pio, machine.mmio):
            for region, owner in bus.claims():
                print(f"  {bus.space.value} {region.base:#x}..{region.end - 1:#x} {owner}"
                      f"{' (' + region.name + ')' if region.name else ''}")
        types = sorted({spec.type for spec in profile.devices})
    return _snapshot_selftest(types, args.seeds) if args.snapshot_selftest else 0


def _snapshot_selftest(types: list[str], seeds: int) -> int:
    """Each device type, built as ``vmcore fuzz`` builds it (its fuzz_props: nothing of the host's),
    saved and loaded at random points of ``seeds`` hostile runs (vmcore.snapshot.check_device)."""
    from .snapshot import STEPS, check_device

    failed = False
    for name in types:
        problems: list[object] = []
        for seed in range(seeds):
            problems = list(check_device(name, seed=seed))
            if problems:
                break
        if problems:
            failed = True
            print(f"  snapshot {name}: {problems[0]}", flush=True)
        else:
            print(f"  snapshot {name}: ok ({seeds} runs of {STEPS} operations, each saved and loaded at 5 points)",
                  flush=True)
    return 1 if failed else 0


def _devices(name: str | None) -> int:
    """Every device type, or the one named (an unknown name is a DeviceTypeError naming the known ones)."""
    from .regmap import registers_of  # here only: a run does without it

    registry = DeviceRegistry.default()
    for dtype in [registry.get(name)] if name else registry:
        print(f"{dtype.name}  ({dtype.module}, plugin {dtype.plugin})")
        for line in dtype.doc.splitlines():
            print(f"    {line}")
        for p in dtype.properties:
            # What a value may be: one of the choices, or within the validator's bounds.
            allowed = "|".join(p.choices) if p.choices else p.bounds_text()
            print(f"    {p.name}: {p.type}{f' [{allowed}]' if allowed else ''} = {p.default_text()}  {p.doc}")
        registers = registers_of(dtype.cls)
        if registers is not None and name:  # the register table, with one type
            print("    registers (offset, name, width, access, reset):")
            for line in registers.describe():
                print(f"      {line}")
        print()
    return 0


def _info() -> int:
    from .kvm import Kvm, KvmUnavailable


    try:
        kvm = Kvm.open()
    except KvmUnavailable as exc:
        print(f"vmcore: {exc}", file=sys.stderr)
        return STATUS["host-error"]
    with kvm:
        print(f"{kvm.path}: KVM API version {kvm.api_version}, vcpu mmap size {kvm.vcpu_mmap_size}")
        for name, value in sorted(kvm.capabilities().items()):
            print(f"  {name:28} {value}")
    return 0


def _fuzz(args: argparse.Namespace) -> int:
    """Exit 0 when every device survived, 1 when one broke, 2 for an unknown type or a bad property."""
    import random

    from .device import PropertyError
    from .fuzz import fuzz_device

    if bool(args.device) == bool(args.all):
        print("vmcore: fuzz: name one device type, or give --all", file=sys.stderr)
        return STATUS["config-error"]
    props = {}
    for item in args.props:
        key, equals, value = item.partition("=")
        if not (key and equals):
            print(f"vmcore: fuzz: --prop {item!r}: expected KEY=VALUE", file=sys.stderr)
            return STATUS["config-error"]
        props[key] = value
    if props and args.all:
        print("vmcore: fuzz: --prop needs one device type, not --all", file=sys.stderr)
        return STATUS["config-error"]
    registry = DeviceRegistry.default()
    names = registry.names() if args.all else [registry.get(args.device).name]  # unknown: DeviceTypeError
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    broken = False
    for name in names:
        try:
            report = fuzz_device(name, props or None, runs=args.runs, steps=args.steps, seed=seed, registry=registry,
                                 mode=args.mode, timeout=args.hang_timeout)
        except PropertyError as exc:
            print(f"vmcore: fuzz: {name}: {exc}", file=sys.stderr)
            return STATUS["config-error"]
        print(report.summary(), flush=True)
        for failure in report.failures:
            print(failure.describe(traceback=args.verbose), flush=True)
        if report.failures:
            broken = True
            again = " ".join(f"--prop {key}={value}" for key, value in props.items())
            print(f"  again: vmcore fuzz {name} --runs {args.runs} --steps {args.steps} --seed {seed} "
                  f"--mode {report.mode}{' ' + again if again else ''}", flush=True)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
