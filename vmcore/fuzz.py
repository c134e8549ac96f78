"""The hostile guest: fuzzing one device model on the fake bus.

A guest can do anything its CPU can: access every width at any offset in and
around a device's ports and MMIO, let time pass, fill its RAM with garbage that
the device then takes for DMA descriptors, and (for an interrupt controller)
toggle IRQ inputs and take interrupts. Real hardware survives all of that, so a
device model must too. :func:`fuzz_device` plays such a guest against one device
type, each run on a fresh :class:`~vmcore.testing.FakeBus`, and reports what
broke:

- **exception**: anything escaping a device method (construction, ``regions()``,
  ``read``/``write``, a timer callback, ``set_irq``, ``pending``, ``acknowledge``,
  ``close``), ``SystemExit`` and other ``BaseException`` included, but a
  :class:`~vmcore.device.GuestExit` and ``KeyboardInterrupt`` (the user's: it stops
  the fuzzer). A ``GuestExit`` is
  legitimate (debug-exit, an i8042 reset request): the run goes on with a new
  instance, as a machine would be restarted;
- **out-of-range**: a read handler answering an N-byte access with anything but
  an int in ``0 .. 2**(8*N)-1``;
- **region**: ``regions()`` placing a region outside its address space, or two of
  the device's regions overlapping;
- **hang**: one access, IRQ change, acknowledge or slice of a clock advance taking
  more than ``timeout`` seconds of host time; a device stuck in a loop is
  interrupted there, and the traceback shows where;
- **bad-vector**: an interrupt controller's ``acknowledge()`` returning anything
  but a vector 0..255.

Two sources of choices drive the same guest. ``mode="hypothesis"`` draws every
choice from hypothesis, which shrinks a failing run to a minimal one; ``"random"``
draws from a :class:`random.Random` seeded per run (``f"{seed}/{run}"``), far
cheaper per transaction, for long runs. Either way a failure is then shrunk again
by deleting operations and simplifying values for as long as the *same* failure
reproduces (same kind; for an exception, the same type raised at the same line),
and reported as lines to replay by hand or paste into a fake-bus test::

    outb 0x70 0x32
    outb 0x71 0xff
    inb 0x71 -> 0x20

Properties that would reach host resources are replaced for the built-in types
(:data:`SAFE_PROPS`: uart16550 and debugcon write to memory, the RTC starts at a
fixed date so runs repeat); other types are built with their defaults plus the
properties given, and a type that cannot be built is reported, not fuzzed.

Hang detection interrupts the fuzzing thread from a watchdog thread with
``PyThreadState_SetAsyncExc`` (CPython), so it works off the main thread too, and
under a tracer or profiler (coverage.py, cProfile); it interrupts again while the
call goes on, so a device that catches the interrupt once is interrupted later, but
one that catches ``BaseException`` inside an endless loop cannot be stopped.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import ctypes
import importlib.util
import itertools
import logging
import random
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterator, Sequence

import attrs

from .bus import ACCESS_SIZES, SPACE_LIMITS, BusError, Region, Space
from .device import DeviceContext, PropertyError, build_config
from .faults import DeviceFault, GuestExit
from .irq import InterruptController, IrqLine
from .plugins import DeviceRegistry
from .testing import FakeBus

__all__ = [
    "SAFE_PROPS",
    "FuzzFailure",
    "FuzzReport",
    "Op",
    "assert_survives_fuzzing",
    "fuzz_all",
    "fuzz_device",
    "replay",
]


def scratch_disk(index: int = 0) -> str:
    """A 256 KiB zero-filled disk image in the temp folder, made once per process and ``index``, for disk devices.

    A device with several drives takes one image each (``index`` 0, 1, ...): two writable
    drives on one file is a configuration error.
    """
    path = _SCRATCH_DISKS.get(index)
    if path is None:
        import atexit
        import os
        import tempfile

        fd, path = tempfile.mkstemp(prefix=f"vmcore-fuzz-disk{index}-", suffix=".img")
        os.ftruncate(fd, 256 * 1024)
        os.close(fd)
        atexit.register(lambda: os.path.exists(path) and os.unlink(path))
        _SCRATCH_DISKS[index] = path
    return path


_SCRATCH_DISKS: dict[int, str] = {}

#: Properties that keep built-in types off host resources (the terminal, files, sockets)
#: and make runs repeatable. Only keys the type's Config has are used; a callable value is
#: called for the property's value when the device is fuzzed.
SAFE_PROPS: dict[str, dict[str, Any]] = {
    "debugcon": {"output": "memory"},
    "uart16550": {"backend": "memory"},
    # Not the host's clock, so a run replays identically; a minute before a leap day.
    "cmos-rtc": {"start": "2024-02-28T23:59:00"},
    # A throw-away image: the fuzzer's writes land there, never in a user's disk.
    "ide": {"image": scratch_disk},
    # A full primary channel and a secondary channel with only a slave: every kind of position.
    "piix-ide": {"primary_master": scratch_disk, "primary_slave": lambda: scratch_disk(1),
                 "secondary_slave": lambda: scratch_disk(2)},
    # The fake bus has 1 MiB of RAM named "ram" and no firmware ROM for the PCI side.
    "i440fx": {"bios": ""},
}

RAM_SIZE = 1 << 20  # the FakeBus default: 1 MiB of RAM at 0
PAGE = 4096
#: A clock advance runs in slices of at most this much machine time, each timed on its own:
#: a fast periodic timer doing honest work for a long advance is not a hang, a timer that
#: keeps re-arming itself at the same instant is.
STEP_SLICE_NS = 10_000_000
MAX_DISTINCT_FAILURES = 10

_MASKS = {size: (1 << (8 * size)) - 1 for size in ACCESS_SIZES}
_SUFFIX = {1: "b", 2: "w", 4: "l", 8: "q"}


# --- what the guest does ------------------------------------------------------------------


@attrs.frozen
class Op:
    """One thing the hostile guest does; ``str(op)`` is its line in a report.

    ``kind`` is ``read``/``write`` (``space``, ``address``, ``size``, ``value``),
    ``step`` (``value`` ns of machine time), ``irq`` (line ``address`` to level
    ``value``), ``ack`` (take the pending interrupt, if any) or ``fill`` (guest RAM
    at ``address`` gets ``data``).
    """

    kind: str
    address: int = 0
    size: int = 0
    value: int = 0
    space: Space = Space.PIO
    data: bytes = attrs.field(default=b"", repr=False)

    def __str__(self) -> str:
        kind = self.kind
        if kind in ("read", "write"):
            pio = self.space is Space.PIO
            verb = ("in" if pio else "read") if kind == "read" else ("out" if pio else "write")
            name = f"{verb}{_SUFFIX[self.size]} {self.address:#x}"
            return name if kind == "read" else f"{name} {_hex(self.value, self.size)}"
        if kind == "step":
            return f"step {self.value}{_human_ns(self.value)}"
        if kind == "irq":
            return f"irq {self.address} {'high' if self.value else 'low'}"
        if kind == "ack":
            return "acknowledge"
        return f"fill {self.address:#x} {_dump(self.data)}"


def _hex(value: int, size: int) -> str:
    return f"{value:#0{2 + 2 * size}x}"


def _human_ns(ns: int) -> str:
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= scale:
            return f"  ({ns / scale:g} {unit})"
    return ""


def _dump(data: bytes) -> str:
    if data and data.count(data[:1]) == len(data):
        return f"{len(data)} x {data[0]:#04x}"
    shown = " ".join(data[i : i + 4].hex() for i in range(0, min(len(data), 32), 4))
    return shown + (f" ... ({len(data)} bytes)" if len(data) > 32 else "")


class _Table:
    """A weighted choice drawn with one ``randrange``: the first entry is where hypothesis shrinks to."""

    __slots__ = ("cumulative", "items", "total")

    def __init__(self, *entries: tuple[int, Any]) -> None:
        self.items = [item for _, item in entries]
        self.cumulative = list(itertools.accumulate(weight for weight, _ in entries))
        self.total = self.cumulative[-1]

    def pick(self, rng: random.Random) -> Any:
        return self.items[bisect.bisect_right(self.cumulative, rng.randrange(self.total))]


#: Operation kinds and their weights; the first is where hypothesis shrinks an operation to
#: (``step 0``, which does nothing, so the shrinker can then delete it).
_OP_WEIGHTS = ((12, "step"), (32, "read"), (38, "write"), (2, "fill"), (3, "sweep"))
_CONTROLLER_WEIGHTS = ((10, "irq"), (5, "ack"))
_VALUE_WEIGHTS = ((2, "zero"), (3, "small"), (3, "ones"), (4, "bit"), (4, "echo"), (6, "random"), (2, "pointer"),
                  (2, "edge"))
_WHERE = _Table((5, "aligned"), (3, "inside"), (2, "around"))
_STEPS = _Table((1, "zero"), (4, "ns"), (4, "deadline"), (3, "us"), (2, "ms"), (1, "s"))
_PAGES = _Table((3, "zero"), (3, "low"), (2, "any"))
_FILLS = _Table((3, "random"), (3, "pointers"), (1, "ones"), (1, "zeros"))
_WORDS = _Table((2, "zero"), (3, "small"), (2, "bit"), (1, "ones"), (4, "pointer"), (2, "random"))
LOW_MEMORY = 0x10000  # where generated pointers mostly point; filled at the start of every run


def _pointer(rng: random.Random) -> int:
    """A guest-physical address in the fake RAM, mostly in the low 64K and 16-byte aligned (where descriptors live)."""
    if rng.randrange(4):
        return rng.randrange(LOW_MEMORY) & ~0xF
    return rng.randrange(RAM_SIZE) & ~0xF


def _swap(value: int, size: int) -> int:
    return int.from_bytes(value.to_bytes(size, "little"), "big")


def _word(r: random.Random, size: int) -> int:
    kind = _WORDS.pick(r)
    if kind == "zero":
        return 0
    if kind == "small":
        return r.randrange(65)
    if kind == "bit":
        return 1 << r.randrange(8 * size)
    if kind == "ones":
        return _MASKS[size]
    if kind == "pointer":
        return _pointer(r)
    return r.getrandbits(8 * size)


def ram_pattern(mode: str, seed: int, length: int = PAGE) -> bytes:
    """Garbage for guest RAM: ``random`` bytes, ``pointers`` (16-byte records of words that look
    like flags, lengths and RAM addresses, in either byte order), or all ``ones`` or ``zeros``."""
    if mode == "zeros":
        return bytes(length)
    if mode == "ones":
        return b"\xff" * length
    r = random.Random(seed)
    if mode == "random":
        return r.randbytes(length)
    # Records shaped like fw_cfg's FWCfgDmaAccess or a virtqueue descriptor (two 32-bit words and
    # a 64-bit one), drawn from a small pool so a page costs little to make.
    pool = []
    for _ in range(32):
        order = "big" if r.getrandbits(1) else "little"
        pool.append(_word(r, 4).to_bytes(4, order) + _word(r, 4).to_bytes(4, order) + _word(r, 8).to_bytes(8, order))
    return b"".join(r.choices(pool, k=-(-length // 16)))[:length]


def low_memory_pattern(seed: int) -> bytes:
    """The low 64K at the start of a run: each page garbage of a kind chosen by ``seed``."""
    r = random.Random(seed)
    return b"".join(ram_pattern(_FILLS.pick(r), r.getrandbits(32)) for _ in range(LOW_MEMORY // PAGE))


class _Guest:
    """The device as the guest sees it: its regions, and whether it is an interrupt controller."""

    def __init__(self, regions: Sequence[Region], controller: bool) -> None:
        self.regions = list(regions)
        self.controller = controller

    def for_run(self, rng: random.Random) -> _RunGuest:
        """This run's guest. Swarm testing (Groce et al., ISSTA 2012): each run leaves some kinds of
        operation, access sizes, values and regions out, so some runs never let time pass, or only
        write all ones with byte accesses, and reach states an even mix of everything rarely does.
        Every draw here shrinks to "keep it"."""
        ops = _OP_WEIGHTS + (_CONTROLLER_WEIGHTS if self.controller else ())
        kept = tuple(entry for entry in ops if rng.randrange(4) < 3) or ops
        sizes = tuple(size for size in ACCESS_SIZES if rng.randrange(3) < 2) or ACCESS_SIZES
        values = tuple(entry for entry in _VALUE_WEIGHTS if rng.randrange(3) < 2) or _VALUE_WEIGHTS
        regions = self.regions
        if len(regions) > 1:
            regions = [region for region in regions if rng.randrange(3) < 2] or regions
        return _RunGuest(regions, _Table(*kept), sizes, _Table(*values))


class _RunGuest:
    """Chooses the guest's next operation from ``rng`` (a random.Random, or hypothesis's)."""

    def __init__(self, regions: Sequence[Region], ops: _Table, sizes: Sequence[int], values: _Table) -> None:
        self.regions = regions
        self.ops = ops
        self.sizes = sizes
        self.values = values
        self.queue: collections.deque[Op] = collections.deque()  # the rest of a sweep

    def initial_fill(self, rng: random.Random) -> Op:
        return Op("fill", address=0, data=low_memory_pattern(rng.getrandbits(32)))

    def next(self, rng: random.Random, session: _Session) -> Op:
        if self.queue:
            return self.queue.popleft()
        kind = self.ops.pick(rng)
        if kind == "read" or kind == "write":
            return self._access(rng, kind, session)
        if kind == "step":
            return Op("step", value=self._step(rng, session))
        if kind == "irq":
            line = rng.randrange(16) if rng.randrange(10) else rng.randrange(16, 256)
            return Op("irq", address=line, value=rng.randrange(2))
        if kind == "ack":
            return Op("ack")
        if kind == "sweep":
            self._sweep(rng, session)
            return self.queue.popleft()
        return self.fill(rng)

    def fill(self, rng: random.Random) -> Op:
        where = _PAGES.pick(rng)
        page = 0 if where == "zero" else rng.randrange(1, 16) if where == "low" else rng.randrange(RAM_SIZE // PAGE)
        return Op("fill", address=page * PAGE, data=ram_pattern(_FILLS.pick(rng), rng.getrandbits(32)))

    def _access(self, rng: random.Random, kind: str, session: _Session) -> Op:
        region = self.regions[rng.randrange(len(self.regions))]
        size = self.sizes[rng.randrange(len(self.sizes))]
        where = _WHERE.pick(rng)
        if where == "around":
            offset = rng.randrange(-8, region.size + 8)
        else:
            offset = rng.randrange(region.size)
            if where == "aligned":
                offset -= offset % size
        limit = SPACE_LIMITS[region.space]
        address = min(max(region.base + offset, 0), limit - size)
        value = self._value(rng, size, session.recent) if kind == "write" else 0
        return Op(kind, address=address, size=size, value=value, space=region.space)

    def _sweep(self, rng: random.Random, session: _Session) -> None:
        """An index register and its data register (RTC, VGA, PCI config): for index i in a run,
        write i to one byte and then read, or write a value to, another (by default the next)."""
        region = self.regions[rng.randrange(len(self.regions))]
        index_at = rng.randrange(region.size)
        data_at = index_at + 1 if index_at + 1 < region.size and rng.randrange(4) else rng.randrange(region.size)
        first = 0 if rng.randrange(3) else rng.randrange(256)
        action = rng.randrange(3)  # 0: write one value everywhere, 1: a value each, 2: read
        value = self._value(rng, 1, session.recent)
        for i in range(rng.randrange(4, 129)):
            self.queue.append(Op("write", region.base + index_at, 1, (first + i) & 0xFF, region.space))
            if action == 2:
                self.queue.append(Op("read", region.base + data_at, 1, 0, region.space))
            else:
                data = value if action == 0 else self._value(rng, 1, session.recent)
                self.queue.append(Op("write", region.base + data_at, 1, data, region.space))

    def _value(self, rng: random.Random, size: int, recent: Sequence[int]) -> int:
        mask = _MASKS[size]
        kind = self.values.pick(rng)
        if kind == "zero":
            return 0
        if kind == "small":
            return rng.randrange(17)
        if kind == "ones":
            return mask
        if kind == "bit":
            return 1 << rng.randrange(8 * size)
        if kind == "echo" and recent:
            # What the device just returned: a status to write back, a count to reload.
            return recent[rng.randrange(len(recent))] & mask
        if kind == "pointer" and size >= 4:
            address = _pointer(rng)
            return _swap(address, size) if rng.randrange(2) else address
        if kind == "edge":
            return (mask >> 1, mask ^ (mask >> 1), mask - 1, (mask >> 1) + 2)[rng.randrange(4)]
        return rng.getrandbits(8 * size)

    @staticmethod
    def _step(rng: random.Random, session: _Session) -> int:
        kind = _STEPS.pick(rng)
        if kind == "zero":
            return 0
        if kind == "deadline":
            # Land just before, on, or just after the device's next timer.
            clock = session.bus.clock
            deadline = clock.next_deadline()
            if deadline is not None and deadline - clock.now() <= 10**9:
                return max(0, deadline - clock.now() + rng.randrange(-1, 2))
            kind = "ns"
        if kind == "ns":
            return rng.randrange(1, 1001)
        if kind == "us":
            return rng.randrange(1000, 10**6)
        if kind == "ms":
            return rng.randrange(10**6, 10**8)
        return rng.randrange(10**8, 10**9 + 1)


# --- running it: watchdog, sessions, problems -----------------------------------------------


class _Hang(BaseException):
    """The watchdog's interrupt, raised in the fuzzing thread wherever it is running.

    BaseException, so ``except Exception`` in a device does not eat it. The bus may still hand
    it on wrapped in a DeviceFault, and a device may catch it: the watchdog knows it sent one,
    so the call is a hang however it ended, and it sends another while the call goes on.
    """


class _Hung(Exception):
    def __init__(self, seconds: float, cause: BaseException | None) -> None:
        super().__init__(f"took more than {seconds:g} s")
        self.cause = cause


class _OutOfRange(Exception):
    def __init__(self, message: str, handler: str) -> None:
        super().__init__(message)
        self.handler = handler


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


def _interrupt_in(error: BaseException | None) -> _Hang | None:
    """The watchdog's interrupt, if ``error`` is it or carries it (a DeviceFault, or raised while handling it)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, _Hang):
            return error
        seen.add(id(error))
        error = error.error if isinstance(error, DeviceFault) else (error.__cause__ or error.__context__)
    return None


class _Watchdog:
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
                    raise_(self._thread_id, _Hang)
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
        """``func(*args)``; _Hung if it took longer than the timeout (interrupted where it was, if still running)."""
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
            except _Hang:
                pass  # sent as the call ended, it landed in _end, not in the device: end again
        if interrupted:
            _restore_tracers(*tracers)
        if isinstance(error, KeyboardInterrupt):
            raise error
        if interrupted or time.monotonic() - start > self.timeout:
            interrupt = _interrupt_in(error)
            if interrupt is not None:
                _cut_at_tracers(interrupt, tracers)
            raise _Hung(self.timeout, interrupt) from None
        if error is not None:
            raise error
        return result


def _cut_at_tracers(interrupt: _Hang, tracers: tuple[Any, Any]) -> None:
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


@attrs.frozen
class _Problem:
    kind: str
    message: str
    signature: tuple[Any, ...]
    exception: str = ""
    traceback: str = ""


_HERE = __file__


def _format_tb(exc: BaseException) -> str:
    """The traceback from the first frame outside the fuzzer and the bus: where the device is."""
    frames = traceback.extract_tb(exc.__traceback__)
    keep = [f for f in frames if f.filename != _HERE and not f.filename.endswith(("vmcore/bus.py", "vmcore/clock.py"))]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(keep or frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()


def _where(exc: BaseException) -> tuple[str, int, str]:
    frames = traceback.extract_tb(exc.__traceback__)
    frame = frames[-1] if frames else None
    return (frame.filename, frame.lineno or 0, frame.name) if frame else ("?", 0, "?")


def _exception_problem(exc: BaseException, doing: str) -> _Problem:
    filename, lineno, func = _where(exc)
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return _Problem("exception", f"{text} (in {func}, {filename}:{lineno}, during {doing})",
                    ("exception", type(exc).__qualname__, filename, lineno), text, _format_tb(exc))


def _hang_problem(exc: _Hung, doing: str) -> _Problem:
    tb = ""
    if exc.cause is not None:
        tb = _format_tb(exc.cause).rsplit("\n", 1)[0] + "\n(interrupted there by the fuzzer's watchdog)"
    where = ""
    if exc.cause is not None:
        filename, lineno, func = _where(exc.cause)
        where = f"; interrupted in {func}, {filename}:{lineno}"
    return _Problem("hang", f"{doing} {exc}{where}", ("hang",), "", tb)


def _region_problem(message: str, exc: BaseException | None = None) -> _Problem:
    text = "" if exc is None else "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return _Problem("region", message + (f": {text}" if text else ""), ("region", message),
                    text, "" if exc is None else _format_tb(exc))


class _NoRecord(logging.Filter):
    """Drops the bus's unclaimed-access warnings raised by the fuzzing thread (it makes thousands on purpose)."""

    def __init__(self, thread_id: int) -> None:
        super().__init__()
        self.thread_id = thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread_id


@contextlib.contextmanager
def _quiet_bus() -> Iterator[None]:
    bus_log = logging.getLogger("vmcore.bus")
    quiet = _NoRecord(threading.get_ident())
    bus_log.addFilter(quiet)
    try:
        yield
    finally:
        bus_log.removeFilter(quiet)


class _Target:
    """One device type with its configuration: a fresh instance on a fresh fake bus per session."""

    def __init__(self, cls: type, name: str, props: dict[str, Any], config: Any, watchdog: _Watchdog) -> None:
        self.cls = cls
        self.name = name
        self.props = props
        self.config = config
        self.watchdog = watchdog
        # The device's own log is not ours to print (it warns about the garbage it is fed).
        # A Logger of its own, not logging.getLogger(): nothing to register in the global tree.
        self.log = logging.Logger(f"vmcore.device.{name}")  # noqa: LOG001
        self.log.disabled = True
        self.regions: list[Region] = []
        self.controller = False


class _Session:
    """One device instance on its own FakeBus, driven op by op."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.call = target.watchdog.call
        self.bus = FakeBus(trace=False)
        self.bus.pio.device_errors = self.bus.mmio.device_errors = "stop"  # a device exception must surface
        # The device's IRQ lines, routed straight to the device when it is an interrupt controller
        # (as FakeBus and the machine route them). Not FakeBus's recorded lines: a counter at
        # 300 kHz pulses 600k times per second of machine time, and each change there costs a
        # Protocol isinstance check and a record.
        self.lines: dict[int, IrqLine] = {}
        self.device: Any = None
        self.controller: Any = None
        self.recent: collections.deque[int] = collections.deque(maxlen=8)
        self.exit: GuestExit | None = None
        self._closed = False

    def start(self) -> _Problem | None:
        """Build the device and claim its regions (read handlers checked for range)."""
        target, bus = self.target, self.bus
        ctx = DeviceContext(name=target.name, clock=bus.clock, memory=bus.memory, irq_line=self.irq, log=target.log)
        try:
            self.device = self.call(target.cls.create, target.config, ctx)
        except _Hung as exc:
            return _hang_problem(exc, "building the device")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit, GeneratorExit...: the device's, a failure like any other
            problem = _exception_problem(exc, "create()")
            return attrs.evolve(problem, kind="construction", message=f"cannot build it: {problem.message}")
        try:
            regions = list(self.call(self.device.regions))
        except _Hung as exc:
            return _hang_problem(exc, "regions()")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return _region_problem("regions() raised", exc)
        for region in regions:
            if not isinstance(region, Region):
                return _region_problem(f"regions() returned {region!r}, not a Region")
            limit = SPACE_LIMITS.get(region.space)
            if limit is None or region.size <= 0 or region.base < 0 or region.base + region.size > limit:
                return _region_problem(f"region {region.name or hex(region.base)} is outside its space")
        for region in regions:
            claim = self.bus.pio if region.space is Space.PIO else self.bus.mmio
            try:
                claim.claim(_checked(region), target.name)
            except BusError as exc:
                return _region_problem("regions overlap", exc)
        bus.devices[target.name] = self.device
        if isinstance(self.device, InterruptController):
            self.controller = self.device
            if getattr(self.device, "intr_changed", None) is None:
                self.device.intr_changed = _ignore  # as a machine would set it
        target.regions = target.regions or regions
        target.controller = self.controller is not None
        return None

    def execute(self, op: Op) -> tuple[str, _Problem | None]:
        """Run one op: (what it returned, for the report; the problem it showed, if any)."""
        bus = self.bus
        note = ""
        kind = op.kind
        try:
            if kind == "read":
                value = self.call((bus.pio if op.space is Space.PIO else bus.mmio).read, op.address, op.size)
                if not (isinstance(value, int) and 0 <= value <= _MASKS[op.size]):
                    return "", _Problem("out-of-range", f"{op}: the bus returned {value!r}", ("out-of-range", "bus"))
                self.recent.append(value)
                note = f" -> {_hex(value, op.size)}"
            elif kind == "write":
                self.call((bus.pio if op.space is Space.PIO else bus.mmio).write, op.address, op.size, op.value)
            elif kind == "step":
                left = op.value
                while True:
                    piece = min(left, STEP_SLICE_NS)
                    self.call(bus.clock.step, piece)
                    left -= piece
                    if left <= 0:
                        break
            elif kind == "irq":
                self.call(self.irq(op.address).set_level, bool(op.value))
            elif kind == "ack":
                controller = self.controller
                if controller is not None and self.call(controller.pending):
                    vector = self.call(controller.acknowledge)
                    if not (isinstance(vector, int) and 0 <= vector <= 0xFF):
                        return "", _Problem("bad-vector", f"acknowledge() returned {vector!r}, not a vector 0..255",
                                            ("bad-vector",))
                    note = f" -> vector {vector:#04x}"
                else:
                    note = "  (nothing pending)"
            else:
                # What the guest's CPU would store: only to memory that is there and writable
                # (a device such as the i440fx may have turned part of RAM into a hole or ROM).
                for slot in bus.memory:
                    start, end = max(slot.base, op.address), min(slot.end, op.address + len(op.data))
                    if start < end and not slot.readonly:
                        bus.memory.write(start, op.data[start - op.address : end - op.address])
        except GuestExit as exc:
            self.exit = exc
        except _Hung as exc:
            return "", _hang_problem(exc, str(op))
        except DeviceFault as fault:
            # The bus wraps what a handler raised (policy "stop"); the device's own exception is what counts.
            error = fault.error
            if isinstance(error, _OutOfRange):
                return "", _Problem("out-of-range", f"{op}: {error}", ("out-of-range", error.handler))
            return "", _exception_problem(error, str(op))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a timer callback, set_irq, pending, acknowledge: not behind the bus
            return "", _exception_problem(exc, str(op))
        if self.exit is not None:
            note += f"\n# guest exit (status {self.exit.status}: {self.exit.reason}); a new instance from here"
        return note, None

    def irq(self, number: int) -> IrqLine:
        line = self.lines.get(number)
        if line is None:
            line = self.lines[number] = IrqLine(number, self._irq_changed)
        return line

    def _irq_changed(self, number: int, level: bool) -> None:
        if self.controller is not None:
            self.controller.set_irq(number, level)

    def close(self) -> _Problem | None:
        if self._closed:
            return None
        self._closed = True
        problem = None
        close = getattr(self.device, "close", None)
        if close is not None:
            try:
                self.call(close)
            except GuestExit:
                pass
            except _Hung as exc:
                problem = _hang_problem(exc, "close()")
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                problem = _exception_problem(exc, "close()")
        with contextlib.suppress(Exception):
            self.bus.memory.close()
        return problem


def _ignore(_level: bool) -> None:
    pass


def _checked(region: Region) -> Region:
    """The region with its read handler wrapped: a value out of range for the access is a failure."""
    read = region.read
    if read is None:
        return region
    label = getattr(read, "__qualname__", repr(read))

    def checked_read(offset: int, size: int) -> int:
        value = read(offset, size)
        if not (isinstance(value, int) and 0 <= value <= _MASKS[size]):
            shown = f"{value:#x}" if isinstance(value, int) else repr(value)
            raise _OutOfRange(f"{label}(offset={offset:#x}, size={size}) returned {shown}, "
                              f"outside 0..{_MASKS[size]:#x}", label)
        return value

    return attrs.evolve(region, read=checked_read)


# --- runs, replays, shrinking ---------------------------------------------------------------


@attrs.define
class _Stats:
    runs: int = 0
    transactions: int = 0
    clock_ns: int = 0


@attrs.define
class _Found:
    problem: _Problem
    ops: tuple[Op, ...]
    run: int | None = None
    count: int = 1


def _run(target: _Target, guest: _Guest, rng: random.Random, steps: int, stats: _Stats) -> _Found | None:
    """One run of ``steps`` operations; the ops since the last fresh instance if something broke."""
    stats.runs += 1
    session = _Session(target)
    problem = session.start()
    if problem is not None:
        session.close()
        return _Found(problem, ())
    ops: list[Op] = []
    run_guest = guest.for_run(rng)
    try:
        for i in range(steps):
            op = run_guest.initial_fill(rng) if i == 0 else run_guest.next(rng, session)
            ops.append(op)
            _, problem = session.execute(op)
            stats.transactions += 1
            if op.kind == "step":
                stats.clock_ns += op.value
            if problem is not None:
                return _Found(problem, tuple(ops))
            if session.exit is not None:
                problem = session.close()
                if problem is not None:
                    return _Found(problem, tuple(ops))
                session = _Session(target)
                problem = session.start()
                if problem is not None:
                    return _Found(problem, ())
                ops = []
        problem = session.close()
        return None if problem is None else _Found(problem, tuple(ops))
    finally:
        session.close()


def _replay(target: _Target, ops: Sequence[Op], record: bool = False) -> tuple[_Problem | None, int, list[str]]:
    """Run ``ops`` on a fresh instance: (the problem, how many ops ran, the report lines)."""
    session = _Session(target)
    lines: list[str] = []
    problem = session.start()
    if problem is not None:
        session.close()
        return problem, 0, lines
    try:
        for i, op in enumerate(ops):
            note, problem = session.execute(op)
            if record:
                lines.extend(f"{op}{note}".split("\n"))
            if problem is not None:
                return problem, i + 1, lines
            if session.exit is not None:
                problem = session.close()
                if problem is not None:
                    return problem, i + 1, lines
                session = _Session(target)
                problem = session.start()
                if problem is not None:
                    return problem, i + 1, lines
        problem = session.close()
        if problem is not None and record:
            lines.append("# close()")
        return problem, len(ops), lines
    finally:
        session.close()


def _simpler(op: Op) -> Iterator[Op]:
    """Candidate replacements for ``op``, simplest first."""
    if op.kind == "write":
        # Whole bytes cleared first: the bus hands a wide write to byte registers byte by byte.
        cleared = [op.value & ~(0xFF << (8 * k)) for k in range(op.size)]
        lowest, highest = op.value & -op.value, 1 << max(op.value.bit_length() - 1, 0)
        for value in dict.fromkeys((0, *cleared, lowest, highest, op.value >> 1)):
            if value < op.value:
                yield attrs.evolve(op, value=value)
    if op.kind in ("read", "write"):
        for size in ACCESS_SIZES:
            if size < op.size:
                yield attrs.evolve(op, size=size, value=op.value & _MASKS[size])
    elif op.kind == "step" and op.value > 1:
        yield attrs.evolve(op, value=op.value // 2)
    elif op.kind == "fill" and len(op.data) > 1:
        half = len(op.data) // 2
        yield attrs.evolve(op, data=op.data[:half])
        yield attrs.evolve(op, address=op.address + half, data=op.data[half:])


def _shrink(target: _Target, ops: tuple[Op, ...], signature: tuple[Any, ...], deadline: float) -> tuple[Op, ...]:
    """Delete ops, then simplify them, while the same failure reproduces (or time runs out)."""

    def fails(candidate: Sequence[Op]) -> int:
        problem, ran, _ = _replay(target, candidate)
        return ran if problem is not None and problem.signature == signature else 0

    ran = fails(ops)
    if not ran:
        return ops  # does not reproduce alone (flaky, or needs host timing): report it as found
    ops = ops[:ran]
    chunk = max(1, len(ops) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        while i < len(ops) and time.monotonic() < deadline:
            candidate = ops[:i] + ops[i + chunk:]
            ran = fails(candidate)
            if ran:
                ops = candidate[:ran]
            else:
                i += chunk
        chunk //= 2
    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        for i in range(len(ops) - 1):
            if ops[i].kind == ops[i + 1].kind == "step":
                merged = attrs.evolve(ops[i], value=ops[i].value + ops[i + 1].value)
                candidate = ops[:i] + (merged,) + ops[i + 2:]
                ran = fails(candidate)
                if ran:
                    ops = candidate[:ran]
                    progress = True
                    break
        if progress:
            continue
        for i in range(len(ops)):
            for simpler in _simpler(ops[i]):
                if time.monotonic() >= deadline:
                    break
                candidate = ops[:i] + (simpler,) + ops[i + 1:]
                ran = fails(candidate)
                if ran:
                    ops = candidate[:ran]
                    progress = True
                    break
            if progress:
                break
    return ops


def _random_search(target: _Target, guest: _Guest, runs: int, steps: int, seed: int, stats: _Stats) -> list[_Found]:
    found: dict[tuple[Any, ...], _Found] = {}
    for run in range(runs):
        failure = _run(target, guest, random.Random(f"{seed}/{run}"), steps, stats)
        if failure is None:
            continue
        known = found.get(failure.problem.signature)
        if known is not None:
            known.count += 1
            if failure.problem.kind == "hang" and known.count >= 3:
                break  # each further run would likely spend `timeout` hanging again
        elif len(found) < MAX_DISTINCT_FAILURES:
            failure.run = run
            found[failure.problem.signature] = failure
    return list(found.values())


def _hypothesis_search(target: _Target, guest: _Guest, runs: int, steps: int, seed: int,
                       stats: _Stats) -> list[_Found]:
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
    from hypothesis.errors import Flaky

    found: dict[tuple[Any, ...], _Found] = {}
    chased: list[tuple[Any, ...]] = []  # the failure hypothesis is shrinking: the first one seen

    class _Falsified(Exception):
        pass

    @hypothesis_seed(seed)
    @settings(max_examples=runs, deadline=None, database=None, derandomize=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck),
              report_multiple_bugs=False, print_blob=False, verbosity=Verbosity.quiet)
    @given(st.randoms(note_method_calls=False, use_true_random=False))
    def search(rng: random.Random) -> None:
        failure = _run(target, guest, rng, steps, stats)
        if failure is None:
            return
        signature = failure.problem.signature
        known = found.get(signature)
        if known is None:
            if len(found) >= MAX_DISTINCT_FAILURES:
                return
            found[signature] = failure
        else:
            known.count += 1
            if len(failure.ops) < len(known.ops):
                known.ops = failure.ops
        if not chased:
            chased.append(signature)
        if signature == chased[0]:
            # Only the first failure is reported to hypothesis, so its shrinking cannot wander
            # off to another; the others are kept and shrunk afterwards.
            raise _Falsified()

    try:
        search()
    except _Falsified:
        pass
    except Flaky:
        # The failure did not come back when hypothesis replayed it (it hung on host timing,
        # or the device reads something outside the run): report it as first seen.
        if not found:
            raise
    return list(found.values())


# --- reports ----------------------------------------------------------------------------


@attrs.frozen
class FuzzFailure:
    """One way the device broke, with the shortest sequence found that reproduces it."""

    device: str
    kind: str  # exception, out-of-range, region, hang, bad-vector, construction
    message: str
    lines: tuple[str, ...]  # the reproducing sequence as it ran, one operation per line
    ops: tuple[Op, ...] = attrs.field(repr=False)  # the same, as values for :func:`replay`
    exception: str = ""  # "IndexError: list index out of range"
    traceback: str = ""
    occurrences: int = 1
    run: int | None = None  # random mode: the run (of the report's seed) that found it

    def describe(self, traceback: bool = True) -> str:
        """The failure, its reproducing sequence, and (``traceback=True``) the device's traceback."""
        out = [f"{self.device}: {self.kind}: {self.message}"]
        if self.occurrences > 1:
            out.append(f"  seen in {self.occurrences} runs")
        if self.kind not in ("construction", "region"):
            out.append(f"  reproduced from a fresh device by {len(self.ops)} operation{'s' * (len(self.ops) != 1)}:")
            out += [f"    {line}" for line in self.lines]
        if traceback and self.traceback:
            out += ["  " + line for line in self.traceback.splitlines()]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.describe()


@attrs.frozen
class FuzzReport:
    """What :func:`fuzz_device` did to one device type and what broke."""

    device: str
    props: dict[str, Any]
    mode: str
    seed: int
    runs: int
    transactions: int
    clock_ns: int  # machine time advanced, over all runs
    seconds: float
    failures: tuple[FuzzFailure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        n = len(self.failures)
        return f"{self.device}: {self.runs} runs, {self.transactions} transactions, {n} failure{'s' * (n != 1)}"

    def __str__(self) -> str:
        props = ", ".join(f"{k}={v!r}" for k, v in self.props.items()) or "defaults"
        details = (f"  {self.mode} mode, seed {self.seed}, properties: {props}; "
                   f"machine time advanced {self.clock_ns / 1e9:.3f} s; {self.seconds:.1f} s of host time")
        out = [self.summary(), details]
        out += [str(failure) for failure in self.failures]
        return "\n".join(out)


# --- the API ----------------------------------------------------------------------------


def _resolve(device: str | type, registry: DeviceRegistry | None) -> tuple[type, str]:
    if isinstance(device, str):
        registry = registry if registry is not None else DeviceRegistry.default()
        return registry.get(device).cls, device  # DeviceTypeError names near matches
    return device, getattr(device, "type_name", device.__name__)


def _props_for(cls: type, name: str, props: dict[str, Any] | None) -> dict[str, Any]:
    fields = {f.name for f in attrs.fields(cls.Config)} if attrs.has(getattr(cls, "Config", None)) else set()
    safe = {k: (v() if callable(v) else v) for k, v in SAFE_PROPS.get(name, {}).items() if k in fields}
    return {**safe, **(props or {})}


def _failure(target: _Target, found: _Found, deadline: float) -> FuzzFailure:
    ops = found.ops
    problem = found.problem
    if ops:
        ops = _shrink(target, ops, problem.signature, deadline)
        replayed, _, lines = _replay(target, ops, record=True)
        if replayed is not None and replayed.signature == problem.signature:
            problem = replayed  # the message and traceback of the minimal sequence
    else:
        lines = []
    return FuzzFailure(target.name, problem.kind, problem.message, tuple(lines), tuple(ops), problem.exception,
                       problem.traceback, found.count, found.run)


def fuzz_device(device: str | type, props: dict[str, Any] | None = None, *, runs: int = 200, steps: int = 50,
                seed: int | None = None, registry: DeviceRegistry | None = None, mode: str | None = None,
                timeout: float = 1.0, shrink_seconds: float = 30.0) -> FuzzReport:
    """Play a hostile guest against one device type and report what broke.

    ``device`` is a registered type name or a device class; ``props`` are added to the
    safe defaults (:data:`SAFE_PROPS`). Each of ``runs`` runs builds a fresh instance on
    a fresh FakeBus and does ``steps`` operations. ``seed`` makes the whole thing
    repeatable (None: a random one, shown in the report). ``mode`` is ``"hypothesis"``
    (the default when hypothesis is installed) or ``"random"``. ``timeout``: host
    seconds one operation may take before it is a hang. ``shrink_seconds``: the time
    allowed for shrinking the failures found.

    Raises DeviceTypeError for an unknown type name and PropertyError for a bad
    property in ``props``; a type that cannot be built with its defaults is reported
    as a ``construction`` failure.
    """
    if runs < 1 or steps < 1:
        raise ValueError(f"runs and steps must be positive, got runs={runs}, steps={steps}")
    if mode is None:
        mode = "hypothesis" if importlib.util.find_spec("hypothesis") is not None else "random"
    if mode not in ("hypothesis", "random"):
        raise ValueError(f"mode must be 'hypothesis' or 'random', got {mode!r}")
    if seed is None:
        seed = random.SystemRandom().getrandbits(32)
    cls, name = _resolve(device, registry)
    merged = _props_for(cls, name, props)
    started = time.monotonic()
    stats = _Stats()
    watchdog = _Watchdog(timeout)
    try:
        with _quiet_bus():
            failures = _fuzz(cls, name, props, merged, mode, runs, steps, seed, watchdog, stats, shrink_seconds)
    finally:
        watchdog.close()
    return FuzzReport(name, merged, mode, seed, stats.runs, stats.transactions, stats.clock_ns,
                      time.monotonic() - started, failures)


def _fuzz(cls: type, name: str, props: dict[str, Any] | None, merged: dict[str, Any], mode: str, runs: int,
          steps: int, seed: int, watchdog: _Watchdog, stats: _Stats, shrink_seconds: float) -> tuple[FuzzFailure, ...]:
    try:
        config = build_config(cls.Config, merged)
    except PropertyError as exc:
        if props and exc.key.replace("-", "_") in {k.replace("-", "_") for k in props}:
            raise  # the caller's own property: their mistake, not the device's
        return (FuzzFailure(name, "construction", f"cannot build it with properties {merged}: {exc}", (), (),
                            f"PropertyError: {exc}"),)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a Config that is not an attrs class, a broken validator
        problem = _exception_problem(exc, "building its Config")
        return (FuzzFailure(name, "construction", problem.message, (), (), problem.exception, problem.traceback),)
    target = _Target(cls, name, merged, config, watchdog)
    probe = _Session(target)
    problem = probe.start()
    problem = probe.close() or problem
    if problem is not None:
        # Nothing to fuzz: it cannot be built, or its regions cannot be placed.
        return (FuzzFailure(name, problem.kind, problem.message, (), (), problem.exception, problem.traceback),)
    guest = _Guest(target.regions, target.controller)
    search = _hypothesis_search if mode == "hypothesis" else _random_search
    found = search(target, guest, runs, steps, seed, stats)
    deadline = time.monotonic() + shrink_seconds
    return tuple(_failure(target, f, deadline) for f in found)


def fuzz_all(registry: DeviceRegistry | None = None, **kw: Any) -> list[FuzzReport]:
    """:func:`fuzz_device` for every registered type, in name order (keywords as there, but no ``props``)."""
    if "props" in kw:
        raise TypeError("fuzz_all() takes no props: properties belong to one device type")
    registry = registry if registry is not None else DeviceRegistry.default()
    return [fuzz_device(dtype.name, registry=registry, **kw) for dtype in registry]


def assert_survives_fuzzing(device: str | type, props: dict[str, Any] | None = None, **kw: Any) -> FuzzReport:
    """For a device's own tests: fuzz it and fail with the report if anything broke::

        def test_scratch_survives_a_hostile_guest():
            assert_survives_fuzzing(Scratch, runs=50, seed=1)
    """
    __tracebackhide__ = True
    report = fuzz_device(device, props, **kw)
    if not report.ok:
        raise AssertionError(f"the device did not survive fuzzing:\n{report}")
    return report


def replay(device: str | type, ops: Sequence[Op], props: dict[str, Any] | None = None, *,
           registry: DeviceRegistry | None = None, timeout: float = 1.0) -> list[str]:
    """Run ``ops`` (a :attr:`FuzzFailure.ops`) on a fresh instance; the report lines, the last
    one saying what broke (``"ok"`` when nothing did)."""
    cls, name = _resolve(device, registry)
    merged = _props_for(cls, name, props)
    watchdog = _Watchdog(timeout)
    try:
        with _quiet_bus():
            target = _Target(cls, name, merged, build_config(cls.Config, merged), watchdog)
            problem, _, lines = _replay(target, ops, record=True)
    finally:
        watchdog.close()
    return [*lines, "ok" if problem is None else f"{problem.kind}: {problem.message}"]
