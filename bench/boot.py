"""Firmware boot benchmark: machines/pc-bios.yaml (SeaBIOS, then guest/bootsector.S) per accelerator.

For each accelerator, in the same process and interleaved: the wall time of whole
`vmcore run` processes (median of N) and, for the software CPU, of a Python process that
only imports what vmcore depends on (the floor no change in vmcore removes) and of boots
made in one process after a first (as tests boot machines); and one in-process run with a
tracer that stamps the boot's milestones (first PCI access, PAM opened, ATA IDENTIFY, PAM made
read-only, the boot sector's read, debug-exit) and counts the exits, and one under
cProfile that splits the time between the accelerator's engine, a halted guest's
waiting, the device models and vmcore's core (see time_split). Where QEMU is
installed, the same firmware and disk image booted by `qemu-system-x86_64 -M pc`
on the same accelerator is the reference (ratio = vmcore / QEMU), built as the profile builds
it: with a debug console on port 0x402 (isa-debugcon, to a null chardev), where SeaBIOS writes
its debug log (about 2,300 bytes, an `outb` each) once the port answers its probe. Without that
console SeaBIOS finds nothing at 0x402 and writes no log: the software CPU's boots are also
compared that way, the profile's debuglog device removed (`--set devices.debuglog=null`) and
QEMU without the console.

    python3 bench/boot.py [--repeat N] [--tcg-only] [--out bench/results/boot.txt]

The guest (guest/bootsector.S) waits for the BIOS's next timer tick (18.2 Hz) before it
exits, in both VMMs alike: each run's time includes up to 55 ms of that wait.

A whole process's time is mostly start-up for vmcore (Python, its libraries, vmcore's modules,
the machine's build) and QEMU alike; the firmware's own part is measured apart, in runs of
their own in the same rounds: the debug log is read through a pipe as it is written, and
SeaBIOS's span is the time from its first line ("SeaBIOS (version") to the line it prints
as it jumps to the boot sector ("Booting from 0000:7c00"), the same guest code in both VMMs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmcore.accel import RunLimits  # noqa: E402
from vmcore.accel.unicorn_layout import engine_name  # noqa: E402
from vmcore.bus import Direction, Space  # noqa: E402
from vmcore.machine import Machine  # noqa: E402
from vmcore.profile import Profile  # noqa: E402

PROFILE = ROOT / "machines" / "pc-bios.yaml"
FIRMWARE = Path("/usr/share/seabios/bios.bin")
DISK = ROOT / "guest" / "bootsector.bin"


def bytecode_env() -> dict[str, str]:
    """The environment of the measured ``vmcore run``: Python's bytecode cached, as an installed
    package runs (pip compiles it; an editable install writes it on first import). Where the
    host says PYTHONDONTWRITEBYTECODE, every run would compile vmcore's sources again (about
    40 ms): the cache goes to .cache/pycache instead of the source folders."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(ROOT / ".cache" / "pycache")
    return env


#: The profile's debug-log device removed, for the boots without SeaBIOS's debug log.
NO_DEBUGLOG = ("--set", "devices.debuglog=null")


def wait_at_most(process: subprocess.Popen, limit: float) -> int:  # type: ignore[type-arg]
    """``process``'s exit status, waited for in a blocking waitpid; killed once ``limit`` seconds pass.

    subprocess's own wait with a timeout polls instead, sleeping up to 50 ms between looks (1, 2,
    4, ... 32, then 50 ms): a process's time then comes back as the next of 113, 163, 213, 263
    ms, ... whatever it took (this bench's vmcore medians sat on 0.215 and 0.265 s because of it)."""
    watchdog = threading.Timer(limit, process.kill)
    watchdog.start()
    try:
        return process.wait()
    finally:
        watchdog.cancel()


def timed_run(command: list[str], limit: float, **popen: object) -> tuple[float, int]:
    """Seconds ``command`` ran (its streams sent nowhere) and its exit status; -9 where it outlived
    ``limit`` seconds and was killed. QEMU's runs and vmcore's are waited for alike (wait_at_most)."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, **popen)  # type: ignore[call-overload]
    status = wait_at_most(process, limit)
    elapsed = time.monotonic() - start
    return elapsed, (-9 if elapsed >= limit and status < 0 else status)


def vmcore_run(accel: str, extra: tuple[str, ...] = ()) -> tuple[float, int]:
    return timed_run([sys.executable, "-m", "vmcore", "run", str(PROFILE), "--accel", accel, "--timeout", "20", *extra],
                     60, cwd=ROOT, env=bytecode_env())


#: What any `vmcore run` must import before it does anything of its own: the libraries its design
#: rests on (attrs classes, YAML profiles, pluggy, ctypes). unicorn's package is not among them:
#: vmcore loads its library itself (vmcore.accel.engine), a dlopen counted in vmcore's own time.
#: (The scan for device plugins is vmcore's own too, vmcore.plugins.entry_points: a few ms.)
FLOOR = "import argparse, ctypes, logging, attrs, yaml, pluggy"


def floor_run() -> float:
    """A Python process that only imports what `vmcore run` depends on: the part of its time no
    change inside vmcore can remove."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", FLOOR], check=True, env=bytecode_env(), cwd=ROOT)
    return time.monotonic() - start


def warm_boots(accel: str, count: int) -> list[float]:
    """Boots in one process after a first one (as the pytest plugin and scripts boot machines):
    Profile.load, Machine.build and run, each."""
    profile_args = ("devices.com1.backend=memory", "devices.debuglog.backend=memory")
    times = []
    for _ in range(count + 1):
        start = time.monotonic()
        with Machine.build(Profile.load(PROFILE, profile_args)) as machine:
            stop = machine.run(accel, RunLimits(timeout=20))
        if stop.status == 85:
            times.append(time.monotonic() - start)
    return times[1:]


#: SeaBIOS's first debug-log line, and the one it prints as it jumps to the boot sector.
FIRST_LINE, BOOT_LINE = b"SeaBIOS (version", b"Booting from 0000:7c00"


def firmware_span(command: list[str], **popen: object) -> tuple[float, float] | None:
    """Run ``command`` with its stdout (the debug log, alone) read as it comes: seconds from start to
    SeaBIOS's first line, and from there to the boot sector's jump; None where either line is missing."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, **popen)  # type: ignore[call-overload]
    assert process.stdout is not None
    first = boot = None
    tail = b""
    with process:
        while chunk := os.read(process.stdout.fileno(), 65536):
            now = time.monotonic()
            tail += chunk
            if first is None and FIRST_LINE in tail:
                first = now
            if boot is None and BOOT_LINE in tail:
                boot = now
            tail = tail[-len(BOOT_LINE):]
    if first is None or boot is None:
        return None
    return first - start, boot - first


def vmcore_span() -> tuple[float, float] | None:
    """firmware_span of ``vmcore run`` on the software CPU, its debug log on stdout and COM1 nowhere."""
    return firmware_span([sys.executable, "-m", "vmcore", "run", str(PROFILE), "--accel", "tcg", "--timeout", "20",
                          "--set", "devices.debuglog.backend=stdio", "--set", "devices.com1.backend=null"],
                         cwd=ROOT, env=bytecode_env())


def qemu_command(accel: str, folder: Path, debugcon: str | None = "null") -> list[str] | None:
    """QEMU -M pc as the profile builds it; ``debugcon``: the debug console's chardev backend (None: no
    console at 0x402)."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return None
    (folder / "sercon").write_bytes(b"\xf8\x03")
    (folder / "menu").write_bytes(b"\x00\x00")
    disk = folder / "disk.img"
    disk.write_bytes(DISK.read_bytes())
    command = [qemu, "-M", "pc", "-accel", accel, "-bios", str(FIRMWARE), "-nodefaults", "-display", "none",
               "-m", "32", "-drive", f"file={disk},format=raw,if=ide", "-serial", "null",
               "-device", "isa-debug-exit,iobase=0x501,iosize=1",
               "-fw_cfg", f"name=etc/sercon-port,file={folder / 'sercon'}",
               "-fw_cfg", f"name=etc/show-boot-menu,file={folder / 'menu'}"]
    if debugcon:  # the profile's debuglog device (vmcore sends it to stderr, here sent nowhere)
        command += ["-chardev", f"{debugcon},id=debuglog", "-device", "isa-debugcon,iobase=0x402,chardev=debuglog"]
    return command


def qemu_run(accel: str, folder: Path, debugcon: bool = True) -> tuple[float, int] | None:
    command = qemu_command(accel, folder, "null" if debugcon else None)
    if command is None:
        return None
    return timed_run(command, 60)  # waited for as vmcore's runs are


def milestones(accel: str) -> tuple[dict[str, float], dict[str, int], str]:
    """One in-process boot with a tracer: seconds from build to each milestone, accesses by space."""
    start = time.monotonic()
    marks: dict[str, float] = {}
    counts = {"pio": 0, "mmio": 0, "pci": 0}

    def mark(name: str) -> None:
        marks.setdefault(name, time.monotonic() - start)

    def tracer(txn) -> None:  # type: ignore[no-untyped-def]
        counts[txn.space.value] += 1
        if txn.space is Space.PCI:
            mark("first PCI config access")
            if txn.direction is Direction.WRITE and txn.address & 0xFF == 0x58 and txn.size == 4:
                pam0 = (txn.value >> 8) & 0x30  # the dword at 0x58 holds PAM0 (the 0xF0000 segment) at 0x59
                mark("PAM opened (RAM read/write)" if pam0 == 0x30 else "PAM made read-only")
        elif txn.space is Space.PIO and txn.direction is Direction.WRITE:
            if txn.address == 0x1F7 and txn.value == 0xEC:
                mark("ATA IDENTIFY")
            elif txn.address == 0x1F7 and txn.value in (0x20, 0x21):
                mark("first sector read")
            elif txn.address == 0x501:
                mark("debug-exit")

    # The guest's console output would go to this process's stdout/stderr: send it nowhere.
    profile = Profile.load(PROFILE, ("devices.com1.backend=memory", "devices.debuglog.backend=memory"))
    machine = Machine.build(profile)
    with machine:
        mark("machine built")
        machine.set_tracer(tracer)
        stop = machine.run(accel, RunLimits(timeout=20))
    mark("run returned")
    return marks, counts, f"{stop.kind} status {stop.status} after {stop.exits} exits"


def time_split(accel: str) -> tuple[float, dict[str, float], str]:
    """One in-process boot under cProfile: its seconds, and own (not cumulative) time by where it was spent.

    The buckets: the accelerator's engine (the KVM_RUN ioctl: guest code and the exits'
    round trips through the kernel; unicorn's emu_start, called in vmcore.accel.engine: guest
    code translated and run),
    waiting (a halted guest sleeping until its next interrupt), vmcore's device models
    (devices/), vmcore's core (buses, accelerator loop, clock), and the rest. The
    profiler slows every Python call, so the Python buckets are overstated.
    """
    import cProfile
    import pstats

    profile = Profile.load(PROFILE, ("devices.com1.backend=memory", "devices.debuglog.backend=memory"))
    profiler = cProfile.Profile()
    with Machine.build(profile) as machine:
        start = time.monotonic()
        profiler.enable()
        stop = machine.run(accel, RunLimits(timeout=60))
        profiler.disable()
        elapsed = time.monotonic() - start
    buckets = dict.fromkeys(("engine", "waiting", "devices", "vmcore core", "other"), 0.0)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        if (name == "<built-in method fcntl.ioctl>" or "/unicorn/" in filename
                or filename.endswith("accel/engine.py")  # vmcore's calls into unicorn's library (ctypes)
                or (filename.endswith("kvm/system.py") and name == "run")):  # KVM_RUN, called through a partial
            bucket = "engine"
        elif "_thread.lock" in name or "select" in name or "sleep" in name:
            bucket = "waiting"
        elif filename.startswith(str(ROOT / "devices")):
            bucket = "devices"
        elif filename.startswith(str(ROOT / "vmcore")):
            bucket = "vmcore core"
        else:
            bucket = "other"
        buckets[bucket] += tottime
    return elapsed, buckets, f"{stop.kind} status {stop.status}"


def kvm_unavailable() -> str | None:
    """None when /dev/kvm opens, else why not (the bench then measures tcg only)."""
    from vmcore.kvm import Kvm

    return Kvm.unavailable()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "boot.txt"))
    parser.add_argument("--tcg-only", action="store_true", help="leave KVM out (its boots take seconds here)")
    args = parser.parse_args()
    if not FIRMWARE.is_file():
        print(f"{FIRMWARE} is absent: sudo apt-get install seabios", file=sys.stderr)
        return 2
    accels = ["tcg"] + ([] if args.tcg_only or kvm_unavailable() else ["kvm"])
    lines = [f"# bench/boot.py  {datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {platform.node()}  "
             f"python {platform.python_version()} ({'venv ' if sys.prefix != sys.base_prefix else ''}{sys.executable})  "
             f"median of {args.repeat} interleaved rounds  engine {engine_name()}"]
    times: dict[str, list[tuple[float, int]]] = {a: [] for a in accels}
    qemu_times: dict[str, list[float]] = {a: [] for a in accels}
    floors: list[float] = []
    # Each round's vmcore/QEMU ratio of the two runs made back to back: this host's speed swings
    # within seconds, and a ratio of neighbours cancels that where a ratio of medians does not.
    paired: dict[str, list[float]] = {a: [] for a in accels}
    # The software CPU's boots without the debug log (both VMMs), in the same rounds.
    quiet: list[tuple[float, int]] = []
    quiet_qemu: list[float] = []
    quiet_paired: list[float] = []
    # SeaBIOS's own span in each VMM (firmware_span), back to back in each round.
    spans: list[tuple[float, float]] = []
    qemu_spans: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        for accel in accels:  # not measured: bytecode written, files in the page cache
            vmcore_run(accel)
            qemu_run(accel, Path(folder))
        for _ in range(args.repeat):
            floors.append(floor_run())
            for accel in accels:
                times[accel].append(vmcore_run(accel))
                reference = qemu_run(accel, Path(folder))
                if reference is not None and reference[1] == 85:
                    qemu_times[accel].append(reference[0])
                    if times[accel][-1][1] == 85:
                        paired[accel].append(times[accel][-1][0] / reference[0])
            quiet.append(vmcore_run("tcg", NO_DEBUGLOG))
            reference = qemu_run("tcg", Path(folder), debugcon=False)
            if reference is not None and reference[1] == 85:
                quiet_qemu.append(reference[0])
                if quiet[-1][1] == 85:
                    quiet_paired.append(quiet[-1][0] / reference[0])
            command = qemu_command("tcg", Path(folder), "stdio")
            span, qemu_span = vmcore_span(), None if command is None else firmware_span(command)
            if span is not None and qemu_span is not None:
                spans.append(span)
                qemu_spans.append(qemu_span)
    for accel in accels:
        runs = times[accel]
        ok = [t for t, status in runs if status == 85]
        line = f"{accel} vmcore run: {len(ok)}/{len(runs)} boots reached status 85"
        if ok:
            line += f"; median {statistics.median(ok):.3f} s"
        if qemu_times[accel]:
            q = statistics.median(qemu_times[accel])
            line += f"; QEMU -M pc median {q:.3f} s"
            if ok:
                line += f"; vmcore/QEMU {statistics.median(ok) / q:.2f}x"
        lines.append(line)
        if paired[accel]:
            ratios = sorted(paired[accel])
            lines.append(f"  each round's vmcore/QEMU (runs back to back): median {statistics.median(ratios):.2f}x, "
                         f"from {ratios[0]:.2f}x to {ratios[-1]:.2f}x; {sum(r <= 2 for r in ratios)} of "
                         f"{len(ratios)} rounds at or under 2x")
        if accel == "tcg" and quiet_qemu:
            ok_quiet = [t for t, status in quiet if status == 85]
            ratios = sorted(quiet_paired)
            line = (f"  without SeaBIOS's debug log (vmcore {' '.join(NO_DEBUGLOG)}, QEMU without isa-debugcon): "
                    f"{len(ok_quiet)}/{len(quiet)} boots reached status 85")
            if ok_quiet:
                line += (f"; median {statistics.median(ok_quiet):.3f} s; QEMU median {statistics.median(quiet_qemu):.3f} s; "
                         f"vmcore/QEMU {statistics.median(ok_quiet) / statistics.median(quiet_qemu):.2f}x")
            lines.append(line)
            if ratios:
                lines.append(f"    each round's ratio: median {statistics.median(ratios):.2f}x, from {ratios[0]:.2f}x "
                             f"to {ratios[-1]:.2f}x; {sum(r <= 2 for r in ratios)} of {len(ratios)} rounds at or under 2x")
        if accel == "tcg" and qemu_times[accel]:
            q = statistics.median(qemu_times[accel])
            floor = statistics.median(floors)
            own = f"; above it, vmcore's own {statistics.median(ok) - floor:.3f} s" if ok else ""
            lines.append(f"  python floor (only the libraries vmcore imports, {len(floors)} runs): median "
                         f"{floor:.3f} s = {floor / q:.2f}x QEMU's whole boot{own}")
            warm = warm_boots(accel, args.repeat)
            if warm:
                lines.append(f"  in one process, boots after the first (build and run, {len(warm)}): median "
                             f"{statistics.median(warm):.3f} s; vmcore/QEMU {statistics.median(warm) / q:.2f}x")
                least = floor + statistics.median(warm)
                lines.append(f"  the floor and a boot in one process together (what a fresh process would take if "
                             f"vmcore's modules, first build and engine set-up cost nothing): {least:.3f} s = "
                             f"{least / q:.2f}x QEMU")
        if accel == "tcg" and spans:
            ratios = sorted(span[1] / qemu[1] for span, qemu in zip(spans, qemu_spans))
            lines.append(f"  SeaBIOS's own span, its first debug line to its jump to the boot sector ({len(spans)} "
                         f"runs each, debug log through a pipe): vmcore {statistics.median(s[1] for s in spans):.3f} s, "
                         f"QEMU {statistics.median(s[1] for s in qemu_spans):.3f} s; each round's ratio median "
                         f"{statistics.median(ratios):.2f}x, from {ratios[0]:.2f}x to {ratios[-1]:.2f}x")
            lines.append(f"    before that first line: vmcore {statistics.median(s[0] for s in spans):.3f} s (Python, "
                         f"vmcore, the machine's build), QEMU {statistics.median(s[0] for s in qemu_spans):.3f} s")
        failed = [status for _t, status in runs if status != 85]
        if failed:
            lines.append(f"  failed runs ended with process status {failed}")
        marks, counts, stop = milestones(accel)
        lines.append(f"  one traced run ({stop}); accesses {counts}; seconds from start:")
        lines.extend(f"    {name:28} {seconds:7.3f}" for name, seconds in sorted(marks.items(), key=lambda kv: kv[1]))
        elapsed, buckets, stop = time_split(accel)
        total = sum(buckets.values()) or 1.0
        lines.append(f"  one profiled run ({stop}, {elapsed:.3f} s under cProfile); own time by where it went:")
        lines.extend(f"    {name:28} {seconds:7.3f} s  {100 * seconds / total:4.0f}%" for name, seconds in buckets.items())
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text, end="")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
