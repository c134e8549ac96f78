"""Soak benchmark: each hostile guest family for minutes per accelerator, its memory and log measured.

Each family is a profile in machines/hostile/ whose guest loops for ever (guest/README.md)
and attacks one bound of issue 13:

* mmio-sweep: a new MMIO page on every access (unicorn's MMIO windows: no mapping per page);
* unclaimed-sweep: a new unclaimed port and MMIO address on every access (the bus's records and warnings);
* uart-flood: COM1 reads an endless host file while the guest never reads RBR (host input);
* pit-storm: PIT channel 0 at divisor 1, IRQ 0 taken (the IRQ log);
* fwcfg-bad-dma: fw-cfg DMA descriptors outside guest memory (the device's warnings);
* rtc-kick: the RTC's timer cancelled and re-armed on every write (the clock's queue).

Each run is a `vmcore run PROFILE --accel A --timeout SECONDS` child process. Its RSS
(VmRSS in /proc/PID/status) is taken after a warm-up second and then every half second;
the last sample before its time limit is the end (after it, the child writes its stop report). Its stderr is counted as it comes (not kept).
Targets (issue 13): RSS grows by less than 10 MiB over the run, stderr stays under 1 MiB,
and the guest is still running when the time limit stops it. The peak (VmHWM) is shown too:
a pile bounded only by a deadline (cancelled timers due up to a second ahead) is already
whole at the first sample and would not show as growth.

    python3 bench/soak.py [--seconds 600] [--accel kvm,tcg] [--families a,b] [--out bench/results/soak.txt]

Runs go one after another (default: 6 families x 2 accelerators x 10 minutes = 2 hours).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Callable

import attrs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOSTILE = ROOT / "machines" / "hostile"
MIB = 1 << 20
RSS_GROWTH_TARGET = 10 * MIB
STDERR_TARGET = 1 * MIB
WARM_UP = 1.0  # seconds before the start sample: imports, machine build and the first exits are done
SAMPLE_EVERY = 0.5
#: How long past its own time limit a child may take to stop before it is killed (and fails).
GRACE = 30.0
#: The endless host input for uart-flood: a sparse file reads as zeros and takes no disk.
FLOOD_INPUT_SIZE = 1 << 40


@attrs.frozen
class Family:
    """A hostile profile and the overrides (given the run's scratch folder) that make it endless."""

    name: str
    overrides: Callable[[Path], tuple[str, ...]] = lambda _scratch: ()


def _uart_flood(scratch: Path) -> tuple[str, ...]:
    source = scratch / "endless-input"
    if not source.exists():
        with open(source, "wb") as f:
            f.truncate(FLOOD_INPUT_SIZE)
    return (f"devices.com1.input={source}", f"devices.com1.path={scratch / 'com1-output'}")


FAMILIES = {
    family.name: family
    for family in (
        Family("mmio-sweep", lambda _scratch: ("cpu.registers.rbx=0",)),  # 0 passes: sweep for ever
        Family("unclaimed-sweep"),
        Family("uart-flood", _uart_flood),
        Family("pit-storm"),
        Family("fwcfg-bad-dma"),
        Family("rtc-kick"),
    )
}


@attrs.frozen
class Soak:
    """One family on one accelerator: what the child process did."""

    family: str
    accel: str
    seconds: float
    rss_start: int | None  # bytes; None if the child ended before the warm-up did
    rss_end: int | None
    rss_peak: int | None  # VmHWM at the last sample: a pile that is bounded only by a deadline shows here
    stderr_bytes: int
    stop: str  # the stop report's kind, or how the process ended
    detail: str  # its message, or the tail of stderr

    @property
    def growth(self) -> int | None:
        return None if self.rss_start is None or self.rss_end is None else self.rss_end - self.rss_start

    def failures(self) -> list[str]:
        """Why this run misses the targets (empty: it meets them)."""
        failed = []
        if self.stop != "timeout":
            failed.append(f"stopped early ({self.stop})")
        if self.growth is None:
            failed.append("no RSS samples")
        elif self.growth >= RSS_GROWTH_TARGET:
            failed.append(f"RSS grew {self.growth / MIB:.1f} MiB")
        if self.stderr_bytes >= STDERR_TARGET:
            failed.append(f"stderr {self.stderr_bytes} bytes")
        return failed


def rss(pid: int) -> tuple[int, int] | None:
    """The process's resident set and its peak so far in bytes (VmRSS, VmHWM), or None once it is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) * 1024  # "VmRSS:   12345 kB"
    except (FileNotFoundError, ProcessLookupError):
        return None
    if len(fields) < 2:
        return None  # a zombie has no memory lines
    return fields["VmRSS"], fields["VmHWM"]


class StderrCounter(threading.Thread):
    """Reads a child's stderr to the end: counts its bytes and keeps only the last few lines."""

    TAIL = 2048

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.count = 0
        self.tail = b""

    def run(self) -> None:
        while chunk := self.stream.read1(1 << 16):  # type: ignore[attr-defined]
            self.count += len(chunk)
            self.tail = (self.tail + chunk)[-self.TAIL:]


def soak(family: Family, accel: str, seconds: float, scratch: Path) -> Soak:
    report = scratch / f"{family.name}-{accel}.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "vmcore", "run", str(HOSTILE / f"{family.name}.yaml"), "--accel", accel,
               "--timeout", str(seconds), "--json-report", str(report)]
    for override in family.overrides(scratch):
        command += ["--set", override]
    start = time.monotonic()
    child = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    assert child.stderr is not None
    counter = StderrCounter(child.stderr)
    counter.start()
    rss_start = rss_end = rss_peak = None
    killed = False
    while child.poll() is None:
        elapsed = time.monotonic() - start
        if elapsed > seconds + GRACE:
            child.kill()
            killed = True
            break
        sample = rss(child.pid)
        # Only while the guest runs: past its time limit the child writes its stop report, whose
        # disassembly imports capstone (several MiB that are no growth of the run).
        if sample is not None and elapsed < seconds and child.poll() is None:
            if elapsed >= WARM_UP and rss_start is None:
                rss_start = sample[0]
            if rss_start is not None:
                rss_end, rss_peak = sample
        time.sleep(WARM_UP - elapsed if rss_start is None and elapsed < WARM_UP else SAMPLE_EVERY)
    status = child.wait()
    counter.join(timeout=10)
    wall = time.monotonic() - start
    tail = counter.tail.decode(errors="replace").strip().splitlines()
    if killed:
        stop, detail = "hung", f"killed {GRACE:.0f} s past its time limit"
    else:
        try:
            stopped = json.loads(report.read_text())
            stop, detail = stopped["kind"], stopped["message"]
        except (OSError, ValueError, KeyError):
            stop, detail = f"status {status}", tail[-1] if tail else "no report, nothing on stderr"
    return Soak(family.name, accel, wall, rss_start, rss_end, rss_peak, counter.count, stop, detail)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def table(runs: list[Soak], skipped: dict[str, str]) -> list[str]:
    lines = [f"{'family':16} {'accel':5} {'seconds':>7} {'RSS start':>9} {'RSS end':>8} {'growth':>7} "
             f"{'peak':>6} {'stderr B':>9}  {'stop':8} verdict"]
    for run in runs:
        failures = run.failures()
        verdict = "PASS" if not failures else "FAIL: " + "; ".join(failures)
        lines.append(f"{run.family:16} {run.accel:5} {run.seconds:7.1f} {_mib(run.rss_start):>9} "
                     f"{_mib(run.rss_end):>8} {_mib(run.growth):>7} {_mib(run.rss_peak):>6} {run.stderr_bytes:>9}  "
                     f"{run.stop:8} {verdict}")
    lines += [f"{accel} skipped: {reason}" for accel, reason in skipped.items()]
    early = [run for run in runs if run.stop != "timeout"]
    lines += [f"  {run.family} on {run.accel}: {run.detail}" for run in early]
    return lines


def kvm_unavailable() -> str | None:
    """None when /dev/kvm opens, else why not (the bench then measures tcg only)."""
    from vmcore.kvm import Kvm

    return Kvm.unavailable()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="time limit of each run (default 600)")
    parser.add_argument("--accel", default="kvm,tcg", help="accelerators, comma-separated (default kvm,tcg)")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"families, comma-separated (default all: {','.join(FAMILIES)})")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.txt"))
    args = parser.parse_args()
    if args.seconds <= WARM_UP + SAMPLE_EVERY:
        parser.error(f"--seconds must be more than {WARM_UP + SAMPLE_EVERY} (the warm-up and one sample)")
    accels = [a for a in args.accel.split(",") if a]
    families = [f for f in args.families.split(",") if f]
    unknown = [a for a in accels if a not in ("kvm", "tcg")] + [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown accelerator or family: {', '.join(unknown)}")
    skipped: dict[str, str] = {}
    if "kvm" in accels and (reason := kvm_unavailable()) is not None:
        skipped["kvm"] = reason
        accels.remove("kvm")
    runs: list[Soak] = []
    with tempfile.TemporaryDirectory(prefix="vmcore-soak-") as folder:
        for name in families:
            for accel in accels:
                run = soak(FAMILIES[name], accel, args.seconds, Path(folder))
                runs.append(run)
                print(table([run], {})[1], flush=True)
    lines = [f"# bench/soak.py  {datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {platform.node()}  "
             f"python {platform.python_version()}  {args.seconds:g} s per run; RSS in MiB after a "
             f"{WARM_UP:g} s warm-up, at the last sample and its peak (VmHWM); targets: growth < {RSS_GROWTH_TARGET // MIB} MiB, "
             f"stderr < {STDERR_TARGET // MIB} MiB, stopped by the time limit", *table(runs, skipped)]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text, end="")
    print(f"written to {args.out}")
    return 0 if all(not run.failures() for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
