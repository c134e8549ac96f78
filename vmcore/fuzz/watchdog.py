"""Hang detection: a watchdog thread that interrupts a device call running longer than a timeout.

It interrupts the fuzzing thread from a watchdog thread with
``PyThreadState_SetAsyncExc`` (CPython), so it works off the main thread too, and
under a tracer or profiler (coverage.py, cProfile); it interrupts again while the
call goes on, so a device that catches the interrupt once is interrupted later, but
one that catches ``BaseException`` inside an endless loop cannot be stopped.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from typing import Any, Callable

from ..faults import DeviceFault


class Hang(BaseException):
    """The watchdog's interrupt, raised in the fuzzing thread wherever it is running.

    BaseException, so ``except Exception`` in a device does not eat it. The bus may still hand
    it on wrapped in a DeviceFault, and a device may catch it: the watchdog knows it sent one,
    so the call is a hang however it ended, and it sends another while the call goes on.
    """


class Hung(Exception):
    def __init__(self, seconds: float, cause: BaseException | None) -> None:
        super().__init__(f"took more than {seconds:g} s")
        self.cause = cause


_AsyncRaise = Callable[[int, type], int]


def _async_raiser() -> _AsyncRaise | None:
    """PyThreadState_SetAsyncExc(thread id, exception type): raise in another thread at its next check.

    Only ever called with an exception. Called with NULL ("cancel the pending one") it marks the
    interpreter's eval breaker as set with nothing to deliver, and nothing ever unsets it: every
    thread then handles "pending work" at every check, and under a tracer or profiler CPython 3.11
    re-runs the check at a function's first instruction without moving on, so the thread spins
    there forever (the fuzzer under coverage.py never ended, and no signal handler could run).
    """
    try:
        return ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
            ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
    except (AttributeError, OSError):
        return None  # not CPython: slow calls are still caught once they return


def _let_pending_interrupt_land() -> None:
    """Pass the interpreter's pending-work check: an interrupt still on its way is raised here."""
    for _ in range(2):  # a backward jump: the check
        pass


def _interrupt_in(error: BaseException | None) -> Hang | None:
    """The watchdog's interrupt, if ``error`` is it or carries it (a DeviceFault, or raised while handling it)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Hang):
            return error
        seen.add(id(error))
        error = error.error if isinstance(error, DeviceFault) else (error.__cause__ or error.__context__)
    return None


class Watchdog:
    """Times each device call; interrupts one that runs longer than ``timeout`` seconds, again
    every ``timeout`` while it goes on (the device may catch the interrupt), and never once it ended."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()  # one decision at a time: interrupt the call, or end it
        self._thread_id = 0  # the thread making the call being timed
        self._deadline: float | None = None  # when the call being timed is due an interrupt; None: no call
        self._interrupted = False  # an interrupt was sent during the call being timed
        self._stop = threading.Event()
        self._raise = _async_raiser()
        self._thread: threading.Thread | None = None
        if self._raise is not None:
            self._thread = threading.Thread(target=self._watch, name="vmcore-fuzz-watchdog", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        raise_ = self._raise
        assert raise_ is not None
        while not self._stop.wait(min(0.05, self.timeout / 4)):
            with self._lock:
                deadline = self._deadline
                if deadline is not None and time.monotonic() >= deadline:
                    raise_(self._thread_id, Hang)
                    self._interrupted = True
                    self._deadline = deadline + self.timeout

    def _begin(self) -> None:
        with self._lock:
            self._thread_id = threading.get_ident()
            self._interrupted = False
            self._deadline = time.monotonic() + self.timeout

    def _end(self) -> bool:
        """Stop timing the call: whether it was interrupted.

        An interrupt sent just before may not have landed yet (the call ended first): it lands
        in here, at the latest on the way out, and nowhere once this has returned.
        """
        with self._lock:
            self._deadline = None  # from here the watchdog sends nothing more
            interrupted = self._interrupted
        if interrupted:
            _let_pending_interrupt_land()
        return interrupted

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)``; Hung if it took longer than the timeout (interrupted where it was, if still running)."""
        tracers = sys.gettrace(), sys.getprofile()
        start = time.monotonic()
        self._begin()
        result: Any = None
        error: BaseException | None = None
        try:
            result = func(*args)
        except BaseException as exc:  # the device's own, or the interrupt (bare, or wrapped by the bus)
            error = exc
        while True:
            try:
                interrupted = self._end()
                break
            except Hang:
                pass  # sent as the call ended, it landed in _end, not in the device: end again
        if interrupted:
            _restore_tracers(*tracers)
        if isinstance(error, KeyboardInterrupt):
            raise error
        if interrupted or time.monotonic() - start > self.timeout:
            interrupt = _interrupt_in(error)
            if interrupt is not None:
                _cut_at_tracers(interrupt, tracers)
            raise Hung(self.timeout, interrupt) from None
        if error is not None:
            raise error
        return result


def _cut_at_tracers(interrupt: Hang, tracers: tuple[Any, Any]) -> None:
    """End the interrupt's traceback before the trace or profile function it landed in, if it
    did: the report shows where the device was, not the tracer."""
    codes = {getattr(getattr(tracer, "__func__", tracer), "__code__", None) for tracer in tracers} - {None}
    tb = interrupt.__traceback__
    while codes and tb is not None and tb.tb_next is not None:
        if tb.tb_next.tb_frame.f_code in codes:
            tb.tb_next = None
            return
        tb = tb.tb_next


def _restore_tracers(trace: Any, profile: Any) -> None:
    """Put back a Python trace or profile function the interrupt removed: CPython drops one that
    raises, and the interrupt may land inside it (coverage.py's Python tracer, a debugger)."""
    if trace is not None and sys.gettrace() is None:
        sys.settrace(trace)
    if profile is not None and sys.getprofile() is None:
        sys.setprofile(profile)
