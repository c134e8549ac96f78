#!/usr/bin/env python3
"""Linux to its init: vmcore's software CPU against QEMU's TCG, same kernel, initramfs and command line.

    python3 bench/linux.py [--repeat 3] [--out bench/results/linux.txt]

Boots Debian's kernel with the busybox initramfs of scripts/fetch-linux (machines/linux.yaml)
and measures the wall time from starting the process until the console shows the initramfs's
marker ``vmcore-linux: init``, for ``vmcore run linux --accel tcg`` and for
``qemu-system-x86_64 -M pc -accel tcg -m 256M -kernel ... -initrd ... -append ...`` (where QEMU
is installed: Debian's qemu-system-x86), in interleaved rounds; the median of each and their
ratio (issue 16's target: vmcore <= 2x QEMU). The guest powers off right after the marker.
The kernel's own clock at the marker (the last printk timestamp before it) is reported too:
how much guest time each took.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from vmcore.accel.unicorn_layout import engine_name  # noqa: E402

MARKER = b"vmcore-linux: init"
CMDLINE = "console=ttyS0 vmcore.run=poweroff"
STAMP = re.compile(rb"\[\s*(\d+\.\d+)\]")


def to_marker(command: list[str], limit: float) -> tuple[float, float | None]:
    """Seconds from start until the marker appeared, and the guest's last printk time before it."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    seen = bytearray()
    try:
        while MARKER not in seen:
            if time.perf_counter() - start > limit:
                raise RuntimeError(f"no {MARKER.decode()!r} after {limit:g} s: {bytes(seen[-400:])!r}")
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    raise RuntimeError(f"ended before {MARKER.decode()!r}: {bytes(seen[-400:])!r}")
                seen += chunk
        elapsed = time.perf_counter() - start
    finally:
        proc.kill()
        proc.wait()
    stamps = STAMP.findall(bytes(seen[:seen.index(MARKER)]))
    return elapsed, float(stamps[-1]) if stamps else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds a boot may take")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "linux.txt")
    args = parser.parse_args()
    fetched = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch-linux")], capture_output=True,
                             text=True)
    if fetched.returncode != 0:
        print(fetched.stderr, file=sys.stderr)
        return 2
    cache = Path(fetched.stdout.strip())
    runs = {"vmcore tcg": [sys.executable, "-m", "vmcore", "run", str(REPO / "machines" / "linux.yaml"),
                           "--accel", "tcg", "--set", f"loader.cmdline={CMDLINE}"]}
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is not None:
        runs["QEMU tcg"] = [qemu, "-M", "pc", "-accel", "tcg", "-m", "256M", "-nodefaults", "-display", "none",
                            "-serial", "stdio", "-no-reboot", "-kernel", str(cache / "vmlinuz"),
                            "-initrd", str(cache / "initramfs.cpio"), "-append", CMDLINE]
    results: dict[str, list[tuple[float, float | None]]] = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, command in runs.items():
            results[name].append(to_marker(command, args.limit))
            print(f"{name}: {results[name][-1][0]:.2f} s", flush=True)
    lines = [f"# bench/linux.py  {datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {platform.node()}  "
             f"python {platform.python_version()}  median of {args.repeat} interleaved rounds  engine {engine_name()}",
             f"# kernel {cache / 'vmlinuz'}, initramfs {cache / 'initramfs.cpio'}, command line {CMDLINE!r}"]
    medians = {}
    for name, samples in results.items():
        medians[name] = statistics.median(s for s, _ in samples)
        guest = [g for _, g in samples if g is not None]
        uptime = f"; the kernel's clock at the marker {statistics.median(guest):.2f} s" if guest else ""
        lines.append(f"{name:10s} to init {medians[name]:6.2f} s (runs: "
                     f"{', '.join(f'{s:.2f}' for s, _ in samples)}){uptime}")
    if "QEMU tcg" in medians:
        ratio = medians["vmcore tcg"] / medians["QEMU tcg"]
        lines.append(f"vmcore/QEMU {ratio:.2f}x (target <= 2x: {'met' if ratio <= 2 else 'NOT met'})")
    else:
        lines.append("QEMU is not installed (apt-get install qemu-system-x86): no ratio")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
