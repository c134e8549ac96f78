"""vmcore/fuzz/watchdog.py's hang detection holds under a tracer, a profiler and load, and leaves nothing behind.

A hang that the watchdog fails to interrupt never ends, and no in-process timeout can end it
(the interpreter spins where no signal handler runs), so each hang here runs in a child
process (tests/fuzz_hang_child.py) with a hard timeout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from vmcore.fuzz.watchdog import Hang, Hung, Watchdog, _async_raiser

pytestmark = pytest.mark.skipif(_async_raiser() is None, reason="needs CPython's PyThreadState_SetAsyncExc")

REPO = Path(__file__).resolve().parent.parent
CHILD = REPO / "tests" / "fuzz_hang_child.py"
HARD_TIMEOUT = 120  # seconds; a hang detected takes a few


#: coverage.py's tracers: the C one (what pytest-cov runs on CPython 3.11; it goes through the
#: same hook as any profiler) and the Python one (a trace function the interrupt may land in).
COVERAGE_CORES = {"coverage": "ctrace", "coverage-pytrace": "pytrace"}
NO_COVERAGE = pytest.mark.skipif(importlib.util.find_spec("coverage") is None, reason="coverage is not installed")


def fuzz_in_child(device: str, tracer: str = "none", load: int = 0, tmp_path: Path | None = None) -> dict[str, Any]:
    """Fuzz ``device`` in a child under ``tracer`` with ``load`` spinning threads; its JSON report."""
    coverage_core = COVERAGE_CORES.get(tracer)
    command = [sys.executable, str(CHILD), device, "none" if coverage_core else tracer, str(load)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if coverage_core:
        assert tmp_path is not None
        env["COVERAGE_CORE"] = coverage_core
        command[1:2] = ["-m", "coverage", "run", f"--data-file={tmp_path / '.coverage'}", str(CHILD)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HARD_TIMEOUT, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


STUCK_LOOP = ("while offset == 3 and value & 0x80:", "pass  # spinning")
STUBBORN_LOOP = ("while True:", "pass  # spinning again after the first interrupt")


def assert_hang_found_where_it_spins(report: dict[str, Any], loop: tuple[str, str]) -> None:
    """One hang, its traceback ending in ``loop`` (its condition or its body: a tracer may see either)."""
    [failure] = report["failures"]
    assert failure["kind"] == "hang", failure
    assert "took more than 0.2 s" in failure["message"]
    assert "; interrupted in write, " in failure["message"], failure["message"]
    lines = [line.strip() for line in failure["traceback"].splitlines()]
    innermost = max(i for i, line in enumerate(lines) if line.startswith('File "'))
    assert lines[innermost + 1] in loop, failure["traceback"]
    assert lines[-1] == "(interrupted there by the fuzzer's watchdog)"
    assert failure["lines"] in (["outb 0x603 0x80"], ["outw 0x602 0x8000"], ["outl 0x600 0x80000000"]), failure


TRACERS = [pytest.param("coverage", marks=NO_COVERAGE), pytest.param("coverage-pytrace", marks=NO_COVERAGE),
           "cprofile", "setprofile", "settrace"]


@pytest.mark.parametrize("tracer", TRACERS)
def test_hang_is_interrupted_and_shows_where_under_a_tracer(tracer: str, tmp_path: Path) -> None:
    report = fuzz_in_child("stuck", tracer, tmp_path=tmp_path)
    assert report["traced"]
    assert_hang_found_where_it_spins(report, STUCK_LOOP)


@pytest.mark.parametrize(("tracer", "device"), [pytest.param("coverage-pytrace", "stuck", marks=NO_COVERAGE),
                                                ("settrace", "stuck"), ("setprofile", "polling")])
def test_a_python_tracer_the_interrupt_lands_in_is_put_back(tracer: str, device: str, tmp_path: Path) -> None:
    # CPython drops a trace or profile function that raises, and the interrupt mostly lands in
    # it: in a trace function on every line, in a profile function on every call.
    report = fuzz_in_child(device, tracer, tmp_path=tmp_path)
    assert report["traced"] and report["tracer_kept"]
    [failure] = report["failures"]
    assert failure["kind"] == "hang"


def test_hang_is_interrupted_under_load() -> None:
    # Three threads spinning for the interpreter lock with the fuzzing thread and the watchdog.
    report = fuzz_in_child("stuck", load=3)
    assert_hang_found_where_it_spins(report, STUCK_LOOP)


def test_a_device_that_catches_the_interrupt_is_interrupted_again() -> None:
    report = fuzz_in_child("stubborn")
    assert_hang_found_where_it_spins(report, STUBBORN_LOOP)


def test_an_interrupt_sent_as_the_call_ends_lands_inside_the_watchdog() -> None:
    # The race, played out by hand: the watchdog decides to interrupt just as the call returns,
    # while the caller waits for the watchdog's lock to end the call.
    watchdog = Watchdog(timeout=60)  # its own thread stays quiet here
    caller = threading.get_ident()
    returning, holding = threading.Event(), threading.Event()

    def interrupt_as_it_returns() -> None:
        returning.wait()
        with watchdog._lock:
            holding.set()
            time.sleep(0.1)  # the caller is now blocked on the lock, ending the call
            assert watchdog._raise is not None
            watchdog._raise(caller, Hang)
            watchdog._interrupted = True

    def device_call() -> None:
        returning.set()
        holding.wait(10)

    racer = threading.Thread(target=interrupt_as_it_returns)
    racer.start()
    try:
        with pytest.raises(Hung):
            watchdog.call(device_call)
        total = 0
        for i in range(100_000):  # checks for pending interrupts all the way: none is left to land
            total += i
    finally:
        racer.join()
        watchdog.close()
    assert total == 4_999_950_000


def test_a_call_within_the_timeout_is_never_interrupted() -> None:
    watchdog = Watchdog(timeout=0.2)
    try:
        assert [watchdog.call(time.sleep, 0.01) for _ in range(20)] == [None] * 20
        time.sleep(0.5)  # past the last call's deadline: the watchdog must not interrupt this
    finally:
        watchdog.close()
