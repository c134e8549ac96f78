"""virtio-blk read throughput inside Linux: vmcore's software CPU against QEMU-TCG, one image, one run.

The same Debian kernel and initramfs (scripts/fetch-linux) boot twice on each side, with
a 64 MiB raw image as a virtio-mmio block device: vmcore's machines/linux-virtio.yaml, and
QEMU's ``-M microvm`` (its virtio-mmio machine, ACPI on) with ``-device virtio-blk-device``.
/init loads the virtio modules and runs the guest's blkbench (guest/linux/blkbench.c,
O_DIRECT reads timed inside the guest): sequential 1 MiB reads of the whole image, then
random 4 KiB reads. Reported: MB/s of each, median of ``--repeat`` boots, and
vmcore/QEMU (the target: at least 0.5x).

    python3 bench/virtio.py [--repeat 5] [--out bench/results/virtio.txt]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmcore.accel.unicorn_layout import engine_name  # noqa: E402

PROFILE = ROOT / "machines" / "linux-virtio.yaml"
IMAGE_MIB = 64
#: Sequential reads go over the image this many times: one pass (64 MiB, under 0.1 s on either
#: side) swung by 2x between boots with a timer tick or a host hiccup.
PASSES = 8
RANDOM_READS = 20000
COMMAND = f"vmcore.run=vcmd:blkbench,/dev/vda,seq,{IMAGE_MIB * PASSES};blkbench,/dev/vda,rand,{RANDOM_READS}"
RESULT = re.compile(r"blkbench: (seq|rand) (\d+) bytes in ([\d.]+) s = ([\d.]+) MB/s")


def results(output: str) -> dict[str, float]:
    return {match[1]: float(match[4]) for match in RESULT.finditer(output)}


def vmcore_run(image: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "vmcore", "run", str(PROFILE), "--accel", "tcg",
                           "--set", f"devices.disk.image={image}", "--set", "devices.disk.readonly=true",
                           "--set", "devices.hvc.backend=memory",
                           "--set", f"loader.cmdline=console=ttyS0 {COMMAND}"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900, cwd=ROOT)
    return results(done.stdout)


def qemu_run(image: Path, cache: Path) -> dict[str, float] | None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return None
    # microvm has no HPET and no PM timer: when the kernel's quick PIT calibration of the TSC
    # fails under TCG on a busy host ("tsc: Unable to calibrate against PIT") it has no other
    # reference and stops there, about one boot in three here. Telling it the TSC's rate skips
    # that; TCG's TSC is the host's, so the guest's clock (blkbench times itself with it) is right.
    khz = host_tsc_khz()
    command = [qemu, "-M", "microvm,acpi=on", "-accel", "tcg", "-m", "256M", "-nodefaults", "-display", "none",
               "-no-reboot", "-serial", "stdio", "-kernel", str(cache / "vmlinuz"),
               "-initrd", str(cache / "initramfs.cpio"),
               "-append", f"console=ttyS0 {'' if khz is None else f'tsc_early_khz={khz} '}{COMMAND}",
               "-drive", f"id=disk,file={image},format=raw,if=none,readonly=on",
               "-device", "virtio-blk-device,drive=disk"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    except subprocess.TimeoutExpired:
        return {}  # a lost run, counted
    return results(done.stdout)


def warm(image: Path) -> None:
    """Read the image once, so that each side finds it in the host's page cache (this host's memory
    is managed from outside: a file left alone a while may have to come from disk again)."""
    with image.open("rb") as source:
        while source.read(1 << 20):
            pass


def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz (vmcore.tsc measures it), or None where it cannot."""
    try:
        from vmcore.accel.unicorn import host_tsc

        return host_tsc().hz() // 1000
    except Exception:  # noqa: BLE001 - no rate: QEMU calibrates as it would anyway
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "virtio.txt"))
    args = parser.parse_args()
    fetched = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch-linux")], capture_output=True, text=True)
    if fetched.returncode != 0:
        print(fetched.stderr, file=sys.stderr)
        return 2
    cache = Path(fetched.stdout.strip())
    runs: dict[str, dict[str, list[float]]] = {"vmcore": {}, "qemu": {}}
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "disk.img"
        with image.open("wb") as out:
            out.write(os.urandom(IMAGE_MIB << 20))
            os.fsync(out.fileno())  # written back now, not while a run reads it
        lost = {"vmcore": 0, "qemu": 0}
        for _ in range(args.repeat):
            for name, run in (("vmcore", lambda: vmcore_run(image)), ("qemu", lambda: qemu_run(image, cache))):
                warm(image)
                got = run()
                if got is not None and len(got) < 2:
                    lost[name] += 1
                for kind, rate in (got or {}).items():
                    runs[name].setdefault(kind, []).append(rate)
    lines = [f"# bench/virtio.py  {datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {platform.node()}  "
             f"python {platform.python_version()}  median of {args.repeat}  engine {engine_name()}",
             f"# Debian's kernel, {IMAGE_MIB} MiB raw image as virtio-blk over virtio-mmio; blkbench in the guest "
             f"(O_DIRECT): seq = 1 MiB reads of the whole image, {PASSES} times; rand = {RANDOM_READS} reads of 4 KiB"]
    lines.append(f"# boots with no result: vmcore {lost['vmcore']}, QEMU {lost['qemu']} (of {args.repeat} each)")
    failed = False
    for kind, label in (("seq", "sequential 1 MiB reads"), ("rand", "random 4 KiB reads")):
        mine, theirs = runs["vmcore"].get(kind), runs["qemu"].get(kind)
        line = f"{label:24}"
        line += f" vmcore {statistics.median(mine):8.2f} MB/s ({len(mine)} runs)" if mine else " vmcore: no result"
        failed |= not mine
        if theirs:
            line += f"  QEMU-TCG microvm {statistics.median(theirs):8.2f} MB/s ({len(theirs)} runs)"
            if mine:
                ratio = statistics.median(mine) / statistics.median(theirs)
                line += f"  vmcore/QEMU {ratio:.2f}x (target >= 0.5x: {'met' if ratio >= 0.5 else 'NOT met'})"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text, end="")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
