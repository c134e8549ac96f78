"""Exit-cost benchmark: port writes and port reads on each accelerator, as ratios.

Each vmcore run goes through the whole path (accelerator -> bus -> device); it is
compared with a reference measured in the same run of this script, because these
machines are noisy:

* KVM: a minimal C KVM loop (bench/c/kvm_loop.c, built with gcc when present);
* software CPU: a bare unicorn loop with the same in/out hooks and no framework.

Usage: python bench/exits.py [--exits N] [--repeat R] [--out bench/results/exits.txt]
Results are printed and written to the output file. No thresholds are asserted here.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import attrs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from vmcore.accel import AcceleratorUnavailable, RunLimits  # noqa: E402
from vmcore.bus import Region, Space  # noqa: E402
from vmcore.device import Device  # noqa: E402
from vmcore.hookspecs import hookimpl  # noqa: E402
from vmcore.machine import Machine  # noqa: E402
from vmcore.plugins import DeviceRegistry  # noqa: E402
from vmcore.profile import Profile  # noqa: E402

GUESTS = {"write": REPO / "guest" / "pio_loop.bin", "read": REPO / "guest" / "pio_read_loop.bin"}
COUNT_OFFSET = 2  # the loop count: little-endian dword at offset 2 of both images


@attrs.frozen
class SinkConfig:
    port: int = 0x80


class Sink(Device):
    """Bench device at port 0x80: keeps the last byte written, answers reads with 0x5A."""

    type_name = "bench-sink"
    Config = SinkConfig
    last = 0

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 1, self.read, self.write, sizes=(1,))]

    def read(self, offset: int, size: int) -> int:
        return 0x5A

    def write(self, offset: int, size: int, value: int) -> None:
        self.last = value


class _Plugin:
    @hookimpl
    def vmcore_device_types(self) -> list[type]:
        return [Sink]


def patched_image(kind: str, exits: int, folder: Path) -> Path:
    data = bytearray(GUESTS[kind].read_bytes())
    data[COUNT_OFFSET : COUNT_OFFSET + 4] = exits.to_bytes(4, "little")
    path = folder / f"{kind}.bin"
    path.write_bytes(data)
    return path


def vmcore_run(image: Path, accel: str, registry: DeviceRegistry) -> tuple[int, float]:
    profile = Profile.from_yaml(
        f"cpu: {{mode: real}}\nmemory: {{ram: {{size: 4K, image: {image}}}}}\n"
        "devices: {sink: {type: bench-sink, port: 0x80}}\n"
    )
    with Machine.build(profile, registry) as machine:
        start = time.perf_counter()
        stop = machine.run(accel, RunLimits(timeout=120))
        elapsed = time.perf_counter() - start
    if stop.kind != "halted":
        raise RuntimeError(f"vmcore {accel}: {stop.summary()}")
    return stop.exits, elapsed


def c_kvm_run(binary: Path, image: Path) -> tuple[int, float]:
    out = subprocess.run([str(binary), str(image)], capture_output=True, text=True, timeout=120, check=True)
    exits, ns = out.stdout.split()
    return int(exits), int(ns) / 1e9


def bare_unicorn_run(image: Path) -> tuple[int, float]:
    import unicorn
    from unicorn import x86_const as X

    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_16)
    buf = mmap.mmap(-1, 4096)
    buf[: image.stat().st_size] = image.read_bytes()
    uc.mem_map_ptr(0, 4096, unicorn.UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(buf)))
    count = [0]
    last = [0]

    def on_in(_uc, port, size, _ud):  # type: ignore[no-untyped-def]
        count[0] += 1
        return 0x5A

    def on_out(_uc, port, size, value, _ud):  # type: ignore[no-untyped-def]
        count[0] += 1
        last[0] = value

    uc.hook_add(unicorn.UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(unicorn.UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    start = time.perf_counter()
    uc.emu_start(0, (1 << 64) - 1)
    return count[0], time.perf_counter() - start


def build_c_reference(folder: Path) -> Path | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    binary = folder / "kvm_loop"
    subprocess.run([gcc, "-O2", "-o", str(binary), str(HERE / "c" / "kvm_loop.c")], check=True)
    return binary


def best(samples: list[tuple[int, float]]) -> tuple[int, float]:
    """Median time per exit over the repeats (exits are the same in each)."""
    per_exit = statistics.median(t / n for n, t in samples)
    return samples[0][0], per_exit


def measure(name: str, repeat: int, func: Callable[[], tuple[int, float]]) -> tuple[int, float]:
    samples = [func() for _ in range(repeat)]
    exits, per_exit = best(samples)
    print(f"  {name:34} {exits:8} exits  {per_exit * 1e6:8.3f} us/exit", flush=True)
    return exits, per_exit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=50_000, help="loop iterations per run (default 50000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is kept")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "exits.txt")
    args = parser.parse_args()

    registry = DeviceRegistry.default(plugins=[_Plugin()])
    lines = [f"# bench/exits.py  {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.node()}  "
             f"python {platform.python_version()}  exits/run {args.exits}  median of {args.repeat}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        c_binary = build_c_reference(folder)
        for kind in ("write", "read"):
            image = patched_image(kind, args.exits, folder)
            print(f"port {kind} loop:")
            results: dict[str, float] = {}
            try:
                results["vmcore kvm"] = measure("vmcore, kvm", args.repeat, lambda: vmcore_run(image, "kvm", registry))[1]
                if c_binary is not None:
                    results["C kvm loop"] = measure("C KVM loop (reference)", args.repeat,
                                                    lambda: c_kvm_run(c_binary, image))[1]
            except (AcceleratorUnavailable, RuntimeError, subprocess.CalledProcessError) as exc:
                print(f"  KVM skipped: {exc}")
            results["vmcore tcg"] = measure("vmcore, tcg (unicorn)", args.repeat,
                                            lambda: vmcore_run(image, "tcg", registry))[1]
            results["bare unicorn"] = measure("bare unicorn hooks (reference)", args.repeat,
                                              lambda: bare_unicorn_run(image))[1]
            for name, value in results.items():
                lines.append(f"port-{kind}  {name:14} {value * 1e6:9.3f} us/exit")
            if "vmcore kvm" in results and "C kvm loop" in results:
                ratio = results["vmcore kvm"] / results["C kvm loop"]
                lines.append(f"port-{kind}  ratio vmcore-kvm / C-kvm-loop        {ratio:6.2f}x")
            ratio = results["vmcore tcg"] / results["bare unicorn"]
            lines.append(f"port-{kind}  ratio vmcore-tcg / bare-unicorn      {ratio:6.2f}x")
            if "vmcore kvm" in results:
                lines.append(f"port-{kind}  ratio vmcore-kvm / vmcore-tcg        "
                             f"{results['vmcore kvm'] / results['vmcore tcg']:6.2f}x")
    report = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print()
    print(report, end="")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
