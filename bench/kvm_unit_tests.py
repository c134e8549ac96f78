"""kvm-unit-tests on each accelerator: the 28 x86 tests of ../shared/peers, a table of results.

Builds the pinned suite once (scripts/build-kvm-unit-tests, into .cache/kvm-unit-tests),
then runs each test as `vmcore run machines/kvm-unit-tests.yaml` with the test's kernel
(x86/<file>.flat) and its arguments from x86/unittests.cfg (``test_args``, or the
``-append`` of ``extra_params``) as the multiboot command line, on each accelerator, with
a time limit of 60 s (``--timeout``). A test passes when it leaves through debug-exit
with 0 (vmcore's status 1), is skipped when the status is 77 (it wrote 38: the suite's
SKIP, as its scripts/runtime.bash reads it; the note is its last line), and fails
otherwise; a failure's note is the first line of its serial output that says FAIL (or
an assert, or an unhandled exception), or else how the run stopped. The test's ``-cpu`` (model,
``+``/``-`` features, vendor) is the profile's CPU model (``cpu.model``/``features``/``vendor``);
a feature an accelerator refuses is dropped, as QEMU drops it with a warning, and the note
says so. Other QEMU options (``host-phys-bits``, more than one CPU) are noted, not emulated.

    python3 bench/kvm_unit_tests.py [--accel kvm,tcg] [--tests a,b] [--timeout 60] [--jobs 2]
                                    [--out bench/results/kvm-unit-tests.txt]

The 28 tests are the sections of x86/unittests.cfg that run on a plain PC (the VMX, SVM,
Hyper-V and vmexit micro-benchmark groups, the i386-only and KVM-only ones, and the tests
of features this host's CPU lacks (pks, lam, cet, rdpru, tsx-ctrl) and of kvmclock are
left out), plus ``dummy`` and ``vmexit_cpuid``: the set whose QEMU results
../shared/peers/README.md gives. No thresholds are asserted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import configparser
import datetime
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from vmcore.accel.unicorn_layout import engine_name  # noqa: E402
PROFILE = REPO / "machines" / "kvm-unit-tests.yaml"
TESTS = ("dummy", "setjmp", "realmode", "idt_test", "eventinj", "syscall", "umip", "sieve", "memory", "tsc",
         "tsc_adjust", "xsave", "smptest", "rmap_chain", "vmexit_cpuid", "intel_iommu", "la57", "x2apic", "xapic",
         "ioapic", "smap", "pku", "asyncpf", "emulator", "hypercall", "msr", "s3", "debug")
#: dummy is not a section of unittests.cfg: its file, no arguments.
EXTRA = {"dummy": {"file": "dummy.flat"}}

#: Why a test does not pass where the cause was found (the table adds it after the test's own
#: first error line). Only causes seen here; the others keep just their error line.
REASONS = {
    ("sieve", "tcg"): "on PyPI's unicorn wheel every RAM store takes the slow path (68 s for the engine alone); "
                      "vmcore's engine build (scripts/build-engine) runs it in about 40 s",
    ("sieve", "kvm"): "this host's KVM emulates guest code (about 16 M instructions/s): sieve's 300 MB of "
                      "byte stores take longer than 60 s (QEMU with this KVM does not pass it either)",
    ("syscall", "kvm"): "the #GP is the mov to SS right after SYSCALL, on selector 0x1e4: the SS value the test "
                        "kept in ESI across the SYSCALL did not survive it on this host's KVM (QEMU with this "
                        "KVM fails syscall too)",
    ("asyncpf", "kvm"): "the #GP is the wrmsr of MSR_KVM_ASYNC_PF_INT (0x4b564d06), refused by KVM with the "
                        "userspace irqchip",
    ("xapic", "tcg"): "the apic test assumes KVM: its PV-IPI check runs vmcall, #UD without KVM (QEMU's TCG "
                      "fails it too); it also wants 2 vCPUs",
    ("x2apic", "tcg"): "as xapic",
    ("xapic", "kvm"): "stops making progress at the PV-IPI vmcall (KVM_HC_SEND_IPI) on this host's KVM; the "
                      "test also wants 2 vCPUs",
    ("x2apic", "kvm"): "as xapic",
    ("intel_iommu", "kvm"): "needs a q35 machine with a VT-d IOMMU and QEMU's edu device, not modelled",
    ("intel_iommu", "tcg"): "as on kvm",
    ("emulator", "tcg"): "unicorn (QEMU 5.0's TCG) raises no #GP for a misaligned movaps",
    ("msr", "tcg"): "unicorn takes a non-canonical value in the machine-check bank MSRs without #GP",
    ("hypercall", "tcg"): "VMCALL is #UD without a hypervisor to take it (QEMU's TCG fails it too)",
    ("ioapic", "kvm"): "this host's KVM opens the interrupt window late: the second interrupt came 4 "
                       "instructions after the first one's iret (QEMU with this KVM fails ioapic too)",
    ("asyncpf", "tcg"): "wants -cpu host and KVM's asynchronous page faults: no KVM here",
    ("s3", "kvm"): "no ACPI tables (FACS) without firmware",
    ("s3", "tcg"): "as on kvm",
}
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


def build() -> Path:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "build-kvm-unit-tests")], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip() or "scripts/build-kvm-unit-tests failed")
    return Path(done.stdout.strip())


def test_specs(suite: Path) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(suite / "x86" / "unittests.cfg")
    specs = {name: dict(parser[name]) for name in parser.sections()}
    specs.update(EXTRA)
    return specs


def cmdline(spec: dict[str, str]) -> str:
    """The multiboot command line QEMU gives the test: the kernel's file name, then its arguments.

    The tests take the first word as argv[0] (QEMU's multiboot loader puts the file name
    there, as GRUB does), so without it the first argument would be lost.
    """
    args = ""
    if "test_args" in spec:
        args = " ".join(shlex.split(spec["test_args"]))
    else:
        words = shlex.split(spec.get("extra_params", ""))
        if "-append" in words and words.index("-append") + 1 < len(words):
            args = words[words.index("-append") + 1]
    return f"{spec['file']} {args}".strip()


def cpu_model(spec: dict[str, str]) -> tuple[str, list[str], str | None]:
    """QEMU's ``-cpu MODEL,+feat,-feat,vendor=V`` as (model, ["+feat", "-feat"], vendor).

    QEMU's other CPU properties (host-phys-bits, migratable, ...) have no profile key and are
    left out (the notes show the whole QEMU line).
    """
    words = shlex.split(spec.get("qemu_params", ""))
    if "-cpu" not in words or words.index("-cpu") + 1 >= len(words):
        return "max", [], None
    model, *props = words[words.index("-cpu") + 1].split(",")
    features = [p for p in props if p[:1] in "+-" and len(p) > 1]
    vendors = [p.split("=", 1)[1] for p in props if p.startswith("vendor=")]
    return model, features, vendors[0] if vendors else None


#: A feature the accelerator refused: vmcore's config error names it.
_REFUSED = re.compile(r"cpu\.features \+([\w.-]+): (.*)")


def run_one(suite: Path, name: str, spec: dict[str, str], accel: str, timeout: float) -> tuple[str, float, str]:
    """(result, seconds, note) of one test on one accelerator.

    The test's ``-cpu`` becomes the profile's CPU model. A ``+feature`` the accelerator
    cannot honour is a configuration error in vmcore; QEMU warns and runs without it, and so
    does this runner, saying so in the note.
    """
    kernel = suite / "x86" / spec["file"]
    if not kernel.is_file():
        return FAIL, 0.0, f"{spec['file']} was not built"
    model, features, vendor = cpu_model(spec)
    dropped: list[str] = []
    start = time.monotonic()
    while True:
        argv = [sys.executable, "-m", "vmcore", "run", str(PROFILE), "--accel", accel, "--timeout", str(timeout),
                "--history", "0", "--set", f"loader.kernel={kernel}", "--set", f"loader.cmdline={cmdline(spec)!r}",
                "--set", f"cpu.model={model}", "--set", f"cpu.features={','.join(features)!r}"]
        if vendor:
            argv += ["--set", f"cpu.vendor={vendor}"]
        try:
            done = subprocess.run(argv, capture_output=True, cwd=REPO, timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            return FAIL, time.monotonic() - start, "vmcore did not stop"
        err = done.stderr.decode("latin-1")
        refused = _REFUSED.search(err)
        if done.returncode != 2 or refused is None or f"+{refused[1]}" not in features:
            break
        features.remove(f"+{refused[1]}")
        dropped.append(f"ran without +{refused[1]} ({refused[2].strip()})")
    seconds = time.monotonic() - start
    out = done.stdout.decode("latin-1")
    status = done.returncode
    if status == 77:  # the guest wrote 77 >> 1: the suite's SKIP, as its scripts/runtime.bash reads it
        return SKIP, seconds, "; ".join([_last(out) or "skipped", *dropped])
    if status == 1:
        return PASS, seconds, "; ".join(dropped)
    note = _first(out, "FAIL") or _first(out, "assert") or _first(out, "Unhandled") or _stop_line(err)
    return FAIL, seconds, "; ".join([note or f"exit status {status}", *dropped])


def _first(text: str, word: str) -> str:
    for line in text.splitlines():
        if word in line:
            return line.strip()[:120]
    return ""


def _last(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("SUMMARY")]
    return lines[-1][:120] if lines else ""


def _stop_line(err: str) -> str:
    for line in err.splitlines():
        if line.startswith("vmcore: "):
            return line[len("vmcore: "):].strip()[:120]
    return ""


def notes(spec: dict[str, str]) -> str:
    wants = []
    if spec.get("qemu_params") or spec.get("extra_params", "").replace("-append", "").strip(" '\""):
        params = spec.get("qemu_params", "") + " " + re.sub(r"-append\s+('[^']*'|\"[^\"]*\"|\S+)", "",
                                                             spec.get("extra_params", ""))
        if params.strip():
            wants.append(f"QEMU: {params.strip()}")
    if spec.get("smp", "1") not in ("1", ""):
        wants.append(f"smp {spec['smp']}")
    return "; ".join(wants)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accel", default="kvm,tcg")
    parser.add_argument("--tests", default=",".join(TESTS))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "kvm-unit-tests.txt")
    args = parser.parse_args()
    suite = build()
    specs = test_specs(suite)
    accels = args.accel.split(",")
    names = args.tests.split(",")
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise SystemExit(f"unknown tests: {', '.join(unknown)}")
    results: dict[tuple[str, str], tuple[str, float, str]] = {}
    wall: dict[str, float] = {accel: 0.0 for accel in accels}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, suite, name, specs[name], accel, args.timeout): (name, accel)
                   for name in names for accel in accels}
        for future in concurrent.futures.as_completed(futures):
            name, accel = futures[future]
            results[name, accel] = future.result()
            wall[accel] += results[name, accel][1]
            print(f"{name:14s} {accel:4s} {results[name, accel][0]} {results[name, accel][1]:5.1f} s "
                  f"{results[name, accel][2]}", flush=True)
    lines = [f"# bench/kvm_unit_tests.py  {datetime.datetime.now():%Y-%m-%d %H:%M}  {platform.node()}  "
             f"python {platform.python_version()}  timeout {args.timeout:g} s  suite {suite}  "
             f"engine {engine_name()}",
             "", "| test | " + " | ".join(f"{a} | s" for a in accels) + " | notes |",
             "|---|" + "---|---|" * len(accels) + "---|"]
    for name in names:
        cells = []
        failures = []
        for accel in accels:
            result, seconds, note = results[name, accel]
            cells.append(f"{result} | {seconds:.1f}")
            reason = REASONS.get((name, accel)) if result != PASS else None
            if note or reason:
                failures.append(f"{accel}: {'; '.join(part for part in (note, reason) if part)}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'; '.join(failures + [notes(specs[name])]).strip('; ')} |")
    passed = {accel: sum(results[n, accel][0] == PASS for n in names) for accel in accels}
    skipped = {accel: sum(results[n, accel][0] == SKIP for n in names) for accel in accels}
    either = sum(any(results[n, a][0] == PASS for a in accels) for n in names)
    lines += ["", "passed: " + ", ".join(f"{a} {passed[a]} of {len(names)} ({skipped[a]} skipped)" for a in accels)
              + f"; on one or the other: {either}",
              "wall time of the whole run (sum of the runs' seconds): "
              + ", ".join(f"{a} {wall[a]:.0f} s" for a in accels)]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
