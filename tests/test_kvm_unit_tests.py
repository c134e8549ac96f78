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


def run_test(name: str, accel: str, timeout: float = 30) -> tuple[int, str, str]:
    kernel = kvm_unit_tests_suite() / "x86" / f"{name}.flat"
    run = vmcore("run", str(PROFILE), "--accel", accel, "--timeout", str(timeout), "--history", "0",
                 "--set", f"loader.kernel={kernel}", timeout=timeout + 30)
    return run.status, run.stdout.decode("latin-1"), run.stderr


@pytest.mark.parametrize("name, summary", [("dummy", "Dummy Hello World!"), ("setjmp", "SUMMARY: 10 tests")])
def test_passes_on_both_accelerators(accel: str, name: str, summary: str) -> None:
    status, out, err = run_test(name, accel)
    assert status == PASS, err
    assert summary in out and "FAIL" not in out


def test_realmode_passes_on_kvm() -> None:
    skip_without_kvm()
    status, out, err = run_test("realmode", "kvm")
    assert status == PASS, err
    assert "PASS: push/pop 1" in out and "FAIL" not in out  # realmode prints its checks, no SUMMARY line


@pytest.mark.xfail(strict=True, reason="the software CPU does not set RFLAGS.RF as hardware does yet (issue 15)")
def test_realmode_passes_on_the_software_cpu() -> None:
    status, out, _ = run_test("realmode", "tcg")
    assert status == PASS and "FAIL" not in out
