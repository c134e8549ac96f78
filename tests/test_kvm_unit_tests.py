"""A few of kvm-unit-tests (../shared/peers) in the test run; bench/kvm_unit_tests.py runs the whole set.

Each test is its own multiboot kernel on machines/kvm-unit-tests.yaml; it reports on COM1
and leaves through debug-exit at 0xF4 with 0 when every check passed (vmcore's status 1).
The suite is built once into .cache/ (scripts/build-kvm-unit-tests); without its tarball
or a compiler these tests skip, with the reason.
"""

from __future__ import annotations

import pytest

from tests.helpers import REPO, kvm_unit_tests_suite, skip_without_kvm, vmcore

PROFILE = REPO / "machines" / "kvm-unit-tests.yaml"
PASS = 1  # debug-exit of 0: (0 << 1) | 1


def run_test(name: str, accel: str, timeout: float = 30, args: str = "", *overrides: str) -> tuple[int, str, str]:
    kernel = kvm_unit_tests_suite() / "x86" / f"{name}.flat"
    # The file name first, as QEMU's multiboot loader does: the tests read it as argv[0].
    run = vmcore("run", str(PROFILE), "--accel", accel, "--timeout", str(timeout), "--history", "0",
                 "--set", f"loader.kernel={kernel}", "--set", f"loader.cmdline={name}.flat {args}".strip(),
                 *(arg for override in overrides for arg in ("--set", override)), timeout=timeout + 30)
    return run.status, run.stdout.decode("latin-1"), run.stderr


@pytest.mark.parametrize("name, args, summary", [
    ("dummy", "", "Dummy Hello World!"),
    ("setjmp", "", "SUMMARY: 10 tests"),
    # vmexit_cpuid: finds pci-testdev through the i440FX's config ports, then times cpuid.
    ("vmexit", "cpuid", "pci-testdev at 0x18 membar e0000000 iobar c000"),
])
def test_passes_on_both_accelerators(accel: str, name: str, args: str, summary: str) -> None:
    status, out, err = run_test(name, accel, args=args)
    assert status == PASS, err + out[-3000:]
    assert summary in out and "FAIL" not in out


@pytest.mark.parametrize("name, summary", [
    # Exceptions, software and external interrupts through the IDT (faults while delivering
    # them, #NP, interrupt windows after sti and iret, self-IPIs, NMIs and their blocking).
    ("eventinj", "SUMMARY: 13 tests"),
    # XSAVE/XGETBV/XSETBV with the CPUID the software CPU offers (x87 and SSE state).
    ("xsave", "SUMMARY: 299 tests"),
    # SMAP and protection keys: QEMU 5.0's TCG has them; unicorn's own CPU model does not list
    # them, the software CPU offers them (unicorn.ENGINE_EXTRA).
    ("smap", "SUMMARY: 18 tests"),
    ("pku", "SUMMARY: 7 tests"),
    # Canonical bases: lgdt/lidt/ltr/lldt (the intercepts) and the MSRs that hold addresses;
    # CR4.LA57 refused in 64-bit mode.
    ("la57", "SUMMARY: 54 tests, 5 skipped"),
])
def test_passes_on_the_software_cpu(name: str, summary: str) -> None:
    status, out, err = run_test(name, "tcg")
    assert status == PASS, err + out[-3000:]
    assert summary in out and "FAIL" not in out


def test_syscall_passes_on_the_software_cpu_as_an_amd_opteron() -> None:
    """unittests.cfg runs syscall with -cpu Opteron_G1,vendor=AuthenticAMD: SYSCALL from 32-bit
    user code (compatibility mode, AMD only) and its single-step trap after SYSRET."""
    status, out, err = run_test("syscall", "tcg", 30, "", "cpu.model=Opteron_G1", "cpu.vendor=AuthenticAMD")
    assert status == PASS, err + out[-3000:]
    assert "PASS: syscall TF handling" in out and "SUMMARY: 2 tests" in out and "FAIL" not in out
    # As GenuineIntel (the software CPU's own vendor) the same SYSCALL is #UD.
    status, out, _ = run_test("syscall", "tcg", 30, "", "cpu.model=Opteron_G1", "cpu.vendor=GenuineIntel")
    assert status != PASS and "Unhandled exception 6 #UD" in out


def test_vmexit_drives_every_pci_testdev_test_on_the_software_cpu() -> None:
    """vmexit's pci-mem and pci-io walk the device's tests on both BARs, as lib/pci-testdev.c does."""
    status, out, err = run_test("vmexit", "tcg", args="pci-mem pci-io")
    assert status == PASS, err + out[-3000:]
    for bar, kind in (("mmio", "mem"), ("portio", "io")):
        for test in ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd"):
            assert f"{bar}-{test}:pci-{kind} " in out


def test_realmode_passes_on_kvm() -> None:
    skip_without_kvm()
    status, out, err = run_test("realmode", "kvm")
    assert status == PASS, err + out[-3000:]
    assert "PASS: push/pop 1" in out and "FAIL" not in out  # realmode prints its checks, no SUMMARY line


def test_realmode_passes_on_the_software_cpu() -> None:
    # Through the intercepts (vmcore.accel.intercepts): RF after a real-mode iret, smsw r32, and
    # the mov to/from CR0 of every switch into big real mode and back.
    status, out, err = run_test("realmode", "tcg", 60)
    assert status == PASS, err + out[-3000:]
    assert "PASS: rflags.rf" in out and "PASS: smsw" in out and "PASS: int 1" in out and "FAIL" not in out


def test_idt_test_passes_on_the_software_cpu() -> None:
    """A mov to CR4 with every bit set raises #GP (with RF in the frame), ud2 #UD."""
    status, out, err = run_test("idt_test", "tcg")
    assert status == PASS, err + out[-3000:]
    assert "PASS: Testing #GP rflags.rf" in out and "SUMMARY: 4 tests" in out and "FAIL" not in out


def test_umip_passes_on_the_software_cpu_with_umip_checked() -> None:
    """unittests.cfg runs umip with -cpu qemu64,+umip: sgdt, sidt, sldt, str and smsw at CPL 3 #GP."""
    status, out, err = run_test("umip", "tcg", 30, "", "cpu.model=qemu64", "cpu.features=+umip")
    assert status == PASS, err + out[-3000:]
    assert "UMIP=1, CPL=3" in out and "SUMMARY: 21 tests" in out and "FAIL" not in out
