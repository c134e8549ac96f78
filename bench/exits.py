"""Exit-cost benchmark: every kind of access on each accelerator, as ratios to references.

One run of this script measures, interleaved round by round (these machines are
noisy, so each reference runs next to what it is compared with):

* KVM, synchronous: port write, port read, MMIO write, MMIO read through vmcore
  (accelerator -> route -> bus -> device), against the C reference loop
  (bench/c/kvm_loop.c, built with gcc) and a bare Python loop (vmcore.kvm's
  Vcpu.run and kvm_run read in place, no bus, no devices);
* KVM, coalesced: port and MMIO writes to a posted region, per write, against the
  same references (the synchronous C loop is the target's yardstick; the C and
  bare Python loops with the same coalesced zone are shown too);
* unicorn: the same four accesses through vmcore's hooks, against a bare unicorn
  loop with the same hooks and no framework;
* start-up: wall time of ``vmcore run`` (the default profile, machines/hello.yaml)
  to "Hello" and to its exit, against ``python -c pass``.

The guests are made here, byte by byte: a real-mode loop of N accesses (port 0x80,
or MMIO at 0x2000, just past the 4 KiB of RAM), then ``hlt``.

Usage: python bench/exits.py [--exits N] [--repeat R] [--out bench/results/exits.txt]
Results are printed and written to the output file. No thresholds are asserted.
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
from typing import Callable, Literal, Sequence

import attrs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from boot import bytecode_env, wait_at_most  # noqa: E402 - bench/boot.py's: each measured process caches its bytecode
from vmcore.accel import AcceleratorUnavailable, RunLimits, create  # noqa: E402
from vmcore.accel.unicorn_layout import engine_name  # noqa: E402
from vmcore.bus import Region, Space  # noqa: E402
from vmcore.device import Device  # noqa: E402
from vmcore.hookspecs import hookimpl  # noqa: E402
from vmcore.machine import Machine  # noqa: E402
from vmcore.plugins import DeviceRegistry  # noqa: E402
from vmcore.profile import Profile  # noqa: E402

PORT = 0x80
MMIO = 0x2000  # outside the 4 KiB RAM slot: every access is an MMIO exit
RAM = 0x1000

# The access each loop repeats (16-bit real mode, DS = 0).
ACCESSES = {
    "port-write": bytes([0xE6, PORT]),                     # out %al, $0x80
    "port-read": bytes([0xE4, PORT]),                      # in $0x80, %al
    "mmio-write": bytes([0xA2]) + MMIO.to_bytes(2, "little"),  # mov %al, 0x2000
    "mmio-read": bytes([0xA0]) + MMIO.to_bytes(2, "little"),   # mov 0x2000, %al
}
TARGETS = {"kvm": 1.6, "coalesced": 0.6, "tcg": 1.5, "startup": 0.25}


def compute_guest(iterations: int) -> bytes:
    """A loop with no accesses at all (2 instructions per iteration), then hlt."""
    return (bytes([0x66, 0xB9]) + iterations.to_bytes(4, "little")  # mov $iterations, %ecx
            + bytes([0x66, 0x49, 0x75, 0xFC])              # dec %ecx; jnz back
            + bytes([0xF4, 0xEB, 0xFD]))                   # hlt; jmp to the hlt


def guest(kind: str, count: int) -> bytes:
    """``count`` accesses of ``kind``, then hlt."""
    access = ACCESSES[kind]
    body = access + bytes([0x66, 0x49])                   # dec %ecx
    return (bytes([0x66, 0xB9]) + count.to_bytes(4, "little")  # mov $count, %ecx
            + bytes([0x30, 0xC0])                          # xor %al, %al
            + body + bytes([0x75, (-(len(body) + 2)) & 0xFF])  # jnz back to the access
            + bytes([0xF4, 0xEB, 0xFD]))                   # hlt; jmp to the hlt


# --- the device vmcore runs ---------------------------------------------------------------


@attrs.frozen
class SinkConfig:
    space: Literal["pio", "mmio"] = "pio"
    base: int = PORT
    posted: bool = False


class Sink(Device):
    """Bench device: keeps the last value written, answers reads with 0x5A."""

    type_name = "bench-sink"
    Config = SinkConfig
    last = 0

    def regions(self) -> Sequence[Region]:
        if self.config.space == "pio":
            return [Region(Space.PIO, self.config.base, 1, self.read, self.write, sizes=(1,),
                           posted=self.config.posted)]
        return [Region(Space.MMIO, self.config.base, 8, self.read, self.write, posted=self.config.posted)]

    def read(self, offset: int, size: int) -> int:
        return 0x5A

    def write(self, offset: int, size: int, value: int) -> None:
        self.last = value


class _Plugin:
    @hookimpl
    def vmcore_device_types(self) -> list[type]:
        return [Sink]


# --- the runs: each returns (accesses, seconds) -------------------------------------------------

Run = Callable[[], tuple[int, float]]


def vmcore_run(image: Path, kind: str, accel: str, registry: DeviceRegistry, count: int,
               posted: bool = False) -> tuple[int, float]:
    space, base = ("pio", PORT) if kind.startswith("port") else ("mmio", MMIO)
    profile = Profile.from_yaml(
        f"cpu: {{mode: real}}\nmemory: {{ram: {{size: 4K, image: {image}}}}}\n"
        f"devices: {{sink: {{type: bench-sink, space: {space}, base: {base:#x}, posted: {str(posted).lower()}}}}}\n"
    )
    accelerator = create(accel)  # outside the timing, as the C loop opens KVM before its clock starts
    with Machine.build(profile, registry) as machine:
        start = time.perf_counter()
        stop = machine.run(accelerator, RunLimits(timeout=120))
        elapsed = time.perf_counter() - start
    if stop.kind != "halted":
        raise RuntimeError(f"vmcore {accel}: {stop.summary()}")
    # The guest's own count: the software CPU does not count MMIO accesses as exits.
    return count, elapsed


def c_kvm_run(binary: Path, image: Path, coalesce: str | None = None) -> tuple[int, float]:
    args = [str(binary), str(image)]
    if coalesce == "pio":
        args += ["pio", hex(PORT)]
    elif coalesce == "mmio":
        args += ["mmio", hex(MMIO)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    count, ns = out.stdout.split()
    return int(count), int(ns) / 1e9


def bare_kvm_run(image: bytes, coalesce: str | None = None) -> tuple[int, float]:
    """The least a Python VMM can do per exit with vmcore.kvm: KVM_RUN, read kvm_run, answer."""
    from vmcore.kvm import Kvm
    from vmcore.kvm import ioctl as k
    from vmcore.kvm import structs as s

    kvm = Kvm.open()
    vm = kvm.create_vm()
    mem = mmap.mmap(-1, RAM)
    mem[: len(image)] = image
    anchor = ctypes.c_char.from_buffer(mem)
    vm.set_user_memory_region(0, 0, RAM, ctypes.addressof(anchor))
    if coalesce is not None:
        vm.register_coalesced_mmio(PORT if coalesce == "pio" else MMIO, 1 if coalesce == "pio" else 8,
                                   coalesce == "pio")
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    sregs.cs.base = sregs.cs.selector = sregs.ds.base = sregs.ds.selector = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(s.kvm_regs(rip=0, rflags=2))
    whole = memoryview(vcpu.mmap)
    u8, u32 = whole.cast("B"), whole.cast("I")
    ring = kvm.check_extension(k.KVM_CAP_COALESCED_MMIO) * mmap.PAGESIZE  # byte offset of the ring
    slots = (mmap.PAGESIZE - 8) // 24
    direction = s.kvm_run.io.offset
    is_write = s.kvm_run.mmio.offset + s._exit_mmio.is_write.offset
    mmio_data = s.kvm_run.mmio.offset + s._exit_mmio.data.offset
    io_data = mmap.PAGESIZE  # KVM_PIO_PAGE_OFFSET
    run, EXIT_IO, EXIT_MMIO, EXIT_HLT = vcpu.run, k.KVM_EXIT_IO, k.KVM_EXIT_MMIO, k.KVM_EXIT_HLT
    count = sink = 0
    start = time.perf_counter()
    while True:
        run()
        if coalesce is not None:
            first, last = u32[ring // 4], u32[ring // 4 + 1]
            while first != last:
                sink = u8[ring + 8 + 24 * first + 16]  # the entry's first data byte
                first = (first + 1) % slots
                u32[ring // 4] = first
                count += 1
        reason = u32[2]
        if reason == EXIT_IO:
            if u8[direction]:
                sink = u8[io_data]
            else:
                u8[io_data] = 0x5A
        elif reason == EXIT_MMIO:
            if u8[is_write]:
                sink = u8[mmio_data]
            else:
                u8[mmio_data] = 0x5A
        elif reason == EXIT_HLT:
            break
        else:
            raise RuntimeError(f"bare kvm loop: exit {reason}")
        count += 1
    elapsed = time.perf_counter() - start
    assert sink in (0, 0x5A)
    u8.release()
    u32.release()
    whole.release()
    del anchor
    vcpu.close()
    vm.close()
    kvm.close()
    mem.close()
    return count, elapsed


def bare_unicorn_run(image: bytes) -> tuple[int, float]:
    """A unicorn loop with the same hooks vmcore installs and nothing behind them."""
    import unicorn
    from unicorn import x86_const as X

    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_16)
    buf = mmap.mmap(-1, RAM)
    buf[: len(image)] = image
    uc.mem_map_ptr(0, RAM, unicorn.UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(buf)))
    count = [0]
    last = [0]

    def on_in(_uc, port, size, _ud):  # type: ignore[no-untyped-def]
        count[0] += 1
        return 0x5A

    def on_out(_uc, port, size, value, _ud):  # type: ignore[no-untyped-def]
        count[0] += 1
        last[0] = value

    def on_read(_uc, offset, size, _ud):  # type: ignore[no-untyped-def]
        count[0] += 1
        return 0x5A

    def on_write(_uc, offset, size, value, _ud):  # type: ignore[no-untyped-def]
        count[0] += 1
        last[0] = value

    uc.hook_add(unicorn.UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(unicorn.UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    uc.mmio_map(MMIO, 0x1000, on_read, None, on_write, None)
    start = time.perf_counter()
    uc.emu_start(0, (1 << 64) - 1)
    return count[0], time.perf_counter() - start


def bare_unicorn_compute(image: bytes, instructions: int) -> tuple[int, float]:
    """The compute guest in one emu_start, as fast as unicorn goes (nothing can interrupt it)."""
    import unicorn

    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_16)
    uc.mem_map(0, RAM)
    uc.mem_write(0, image)
    start = time.perf_counter()
    uc.emu_start(0, (1 << 64) - 1)
    return instructions, time.perf_counter() - start


def startup_run(command: list[str]) -> tuple[float, float]:
    """Seconds until the command printed "Hello" (or exited, for one that prints nothing) and until it exited."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=bytecode_env())
    assert proc.stdout is not None
    first = proc.stdout.readline()
    hello = time.perf_counter() - start
    rest = proc.stdout.read()
    status = wait_at_most(proc, 60)  # not subprocess's polling wait, which adds up to a few ms
    done = time.perf_counter() - start
    if status != 0 or (first and first != b"Hello\n"):
        raise RuntimeError(f"{' '.join(command)}: status {status}, output {(first + rest)[:80]!r}")
    return hello, done


def build_c_reference(folder: Path) -> Path | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    binary = folder / "kvm_loop"
    subprocess.run([gcc, "-O2", "-o", str(binary), str(HERE / "c" / "kvm_loop.c")], check=True)
    return binary


# --- measuring ----------------------------------------------------------------------------------


def interleaved(runs: dict[str, Run], repeat: int) -> dict[str, float]:
    """Seconds per access of each run: the median of ``repeat`` rounds, the runs taking turns in each."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    counts: dict[str, int] = {}
    for _ in range(repeat):
        for name, func in runs.items():
            count, seconds = func()
            counts[name] = count
            samples[name].append(seconds / count)
    result = {}
    for name, values in samples.items():
        result[name] = statistics.median(values)
        print(f"  {name:28} {counts[name]:8} accesses  {result[name] * 1e6:8.3f} us each", flush=True)
    return result


def verdict(ratio: float, target: float) -> str:
    return f"(target <= {target}x: {'met' if ratio <= target else 'MISSED'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=20_000,
                        help="accesses per KVM run (default 20000; unicorn and coalesced runs do 10x)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per measurement; the median is kept")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "exits.txt")
    args = parser.parse_args()

    registry = DeviceRegistry.default(plugins=[_Plugin()])
    lines = [f"# bench/exits.py  {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.node()}  "
             f"python {platform.python_version()}  accesses/run {args.exits} (kvm), {10 * args.exits} "
             f"(coalesced, tcg)  median of {args.repeat} interleaved rounds  engine {engine_name()}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        c_binary = build_c_reference(folder)

        def image(kind: str, count: int) -> tuple[Path, bytes]:
            data = guest(kind, count)
            path = folder / f"{kind}-{count}.bin"
            path.write_bytes(data)
            return path, data

        try:
            create("kvm").close()
            kvm_reason = None
        except AcceleratorUnavailable as exc:
            kvm_reason = str(exc)
        c_sync: dict[str, float] = {}
        if kvm_reason is None:
            lines.append("")
            lines.append("# KVM, synchronous: us per exit; ratios to the C loop (target) and the bare Python loop")
            for kind in ACCESSES:
                path, data = image(kind, args.exits)
                print(f"kvm {kind}:")
                runs: dict[str, Run] = {
                    "vmcore kvm": lambda: vmcore_run(path, kind, "kvm", registry, args.exits),
                    "bare python kvm loop": lambda: bare_kvm_run(data),
                }
                if c_binary is not None:
                    runs["C kvm loop"] = lambda: c_kvm_run(c_binary, path)
                got = interleaved(runs, args.repeat)
                line = (f"kvm {kind:11} vmcore {got['vmcore kvm'] * 1e6:7.3f}  "
                        f"bare-python {got['bare python kvm loop'] * 1e6:7.3f}")
                if "C kvm loop" in got:
                    c_sync[kind] = got["C kvm loop"]
                    ratio = got["vmcore kvm"] / got["C kvm loop"]
                    line += (f"  C {got['C kvm loop'] * 1e6:7.3f}  vmcore/C {ratio:5.2f}x "
                             f"{verdict(ratio, TARGETS['kvm'])}")
                line += f"  vmcore/bare-python {got['vmcore kvm'] / got['bare python kvm loop']:5.2f}x"
                lines.append(line)

            lines.append("")
            lines.append("# KVM, coalesced (posted region): us per write; target measured against the synchronous C loop")
            for kind, zone in (("port-write", "pio"), ("mmio-write", "mmio")):
                path, data = image(kind, 10 * args.exits)
                print(f"kvm coalesced {kind}:")
                runs = {
                    "vmcore kvm coalesced": lambda: vmcore_run(path, kind, "kvm", registry, 10 * args.exits,
                                                                       posted=True),
                    "bare python coalesced": lambda: bare_kvm_run(data, zone),
                }
                if c_binary is not None:
                    runs["C coalesced"] = lambda: c_kvm_run(c_binary, path, zone)
                got = interleaved(runs, args.repeat)
                line = (f"kvm coalesced {kind:11} vmcore {got['vmcore kvm coalesced'] * 1e6:7.3f}  "
                        f"bare-python {got['bare python coalesced'] * 1e6:7.3f}")
                if "C coalesced" in got:
                    line += f"  C-coalesced {got['C coalesced'] * 1e6:7.3f}"
                if kind in c_sync:
                    ratio = got["vmcore kvm coalesced"] / c_sync[kind]
                    line += f"  vmcore/C-sync {ratio:5.2f}x {verdict(ratio, TARGETS['coalesced'])}"
                if "C coalesced" in got:
                    line += f"  vmcore/C-coalesced {got['vmcore kvm coalesced'] / got['C coalesced']:5.2f}x"
                lines.append(line)
        else:
            print(f"KVM skipped: {kvm_reason}")
            lines.append(f"# KVM skipped: {kvm_reason}")

        lines.append("")
        lines.append("# unicorn (tcg): us per access; ratio to a bare unicorn hook loop")
        for kind in ACCESSES:
            path, data = image(kind, 10 * args.exits)
            print(f"tcg {kind}:")
            got = interleaved({
                "vmcore tcg": lambda: vmcore_run(path, kind, "tcg", registry, 10 * args.exits),
                "bare unicorn hooks": lambda: bare_unicorn_run(data),
            }, args.repeat)
            ratio = got["vmcore tcg"] / got["bare unicorn hooks"]
            lines.append(f"tcg {kind:11} vmcore {got['vmcore tcg'] * 1e6:7.3f}  "
                         f"bare-unicorn {got['bare unicorn hooks'] * 1e6:7.3f}  vmcore/bare {ratio:5.2f}x "
                         f"{verdict(ratio, TARGETS['tcg'])}")
        # Guest code with no exits: what the software CPU's way of being stopped from other
        # threads costs (unicorn._Kicker: nothing per block on vmcore's engine build, a block
        # hook in every translated block on the stock wheel). Target (issue 16): >= 0.6x the speed.
        iterations = 10_000_000
        code = compute_guest(iterations)
        compute = Path(folder) / "compute.bin"
        compute.write_bytes(code)
        print("tcg compute:")
        got = interleaved({
            "vmcore tcg": lambda: vmcore_run(compute, "port-write", "tcg", registry, 2 * iterations),
            "bare unicorn": lambda: bare_unicorn_compute(code, 2 * iterations),
        }, args.repeat)
        speed = got['bare unicorn'] / got['vmcore tcg']
        lines.append(f"tcg compute      vmcore {1e-6 / got['vmcore tcg']:6.0f} M instr/s  "
                     f"bare-unicorn {1e-6 / got['bare unicorn']:6.0f} M instr/s  "
                     f"vmcore/bare speed {speed:4.2f}x (target >= 0.6x: {'met' if speed >= 0.6 else 'NOT met'})")

    print("start-up:")
    script = Path(sys.executable).with_name("vmcore")
    vmcore_cmd = [str(script), "run"] if script.exists() else [sys.executable, "-m", "vmcore", "run"]
    hello, done, bare = [], [], []
    for _ in range(max(args.repeat, 5)):
        to_hello, to_exit = startup_run(vmcore_cmd)
        hello.append(to_hello)
        done.append(to_exit)
        bare.append(startup_run([sys.executable, "-c", "pass"])[1])
    hello_s, done_s, bare_s = statistics.median(hello), statistics.median(done), statistics.median(bare)
    print(f"  {'vmcore run':28} to Hello {hello_s:.3f} s, to exit {done_s:.3f} s")
    print(f"  {'python -c pass':28} {bare_s:.3f} s")
    lines.append("")
    lines.append(f"# start-up: `{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(vmcore_cmd))}` "
                 f"(machines/hello.yaml) against `python -c pass`, median of {len(hello)}")
    lines.append(f"startup vmcore-run to Hello {hello_s:.3f} s  to exit {done_s:.3f} s  python -c pass {bare_s:.3f} s  "
                 f"adds {hello_s - bare_s:.3f} s (target <= {TARGETS['startup']} s: "
                 f"{'met' if hello_s - bare_s <= TARGETS['startup'] else 'MISSED'})")

    report = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print()
    print(report, end="")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
