"""One device instance on its own fake bus, driven operation by operation under the watchdog."""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import threading
from typing import Any, Iterator

import attrs

from ..bus import SPACE_LIMITS, BusError, Region, Space
from ..faults import DeviceFault, GuestExit
from ..irq import InterruptController, IrqLine, LocalInterruptController
from ..pci import PciBus
from ..wiring import IrqLines, build_device, claim_regions
from ..testing import FakeBus
from .ops import ACCESS_MASKS, Op, hex_of_size
from .problems import Problem, exception_problem, hang_problem, region_problem
from .watchdog import Hung, Watchdog

#: A clock advance runs in slices of at most this much machine time, each timed on its own:
#: a fast periodic timer doing honest work for a long advance is not a hang, a timer that
#: keeps re-arming itself at the same instant is.
STEP_SLICE_NS = 10_000_000


class _OutOfRange(Exception):
    """A read handler's answer that does not fit the access (raised by the handler :func:`_checked` wraps)."""

    def __init__(self, message: str, handler: str) -> None:
        super().__init__(message)
        self.handler = handler


class _NoRecord(logging.Filter):
    """Drops the bus's unclaimed-access warnings raised by the fuzzing thread (it makes thousands on purpose)."""

    def __init__(self, thread_id: int) -> None:
        super().__init__()
        self.thread_id = thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread_id


@contextlib.contextmanager
def quiet_bus() -> Iterator[None]:
    """Silence the bus's warnings about this thread's accesses for the block."""
    bus_log = logging.getLogger("vmcore.bus")
    quiet = _NoRecord(threading.get_ident())
    bus_log.addFilter(quiet)
    try:
        yield
    finally:
        bus_log.removeFilter(quiet)


class Target:
    """One device type with its configuration: a fresh instance on a fresh fake bus per session."""

    def __init__(self, cls: type, name: str, props: dict[str, Any], config: Any, watchdog: Watchdog) -> None:
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


class Session:
    """One device instance on its own FakeBus, driven op by op."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.call = target.watchdog.call
        self.bus = FakeBus(trace=False)
        self.pci = PciBus(self.bus.pio, self.bus.mmio)
        self.bus.pio.device_errors = self.bus.mmio.device_errors = "stop"  # a device exception must surface
        # The device's IRQ lines, routed straight to the device when it is an interrupt controller
        # (as FakeBus and the machine route them). Not FakeBus's recorded lines: a counter at
        # 300 kHz pulses 600k times per second of machine time, and each change there costs a
        # Protocol isinstance check and a record.
        self.irq_lines = IrqLines()
        self.device: Any = None
        self.controller: Any = None
        self.recent: collections.deque[int] = collections.deque(maxlen=8)
        self.exit: GuestExit | None = None
        self._closed = False

    def start(self) -> Problem | None:
        """Build the device and claim its regions (read handlers checked for range)."""
        target, bus = self.target, self.bus
        try:
            # A PCI function gets its BARs placed as firmware would (pci.assign below), so the guest
            # reaches them; there is no host bridge, so config space stays out of its reach.
            self.device = self.call(functools.partial(
                build_device, target.cls, target.config, target.name, clock=bus.clock, memory=bus.memory,
                mmio=bus.mmio, irq_lines=self.irq_lines, pci=self.pci, log=target.log))
        except Hung as exc:
            return hang_problem(exc, "building the device")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit, GeneratorExit...: the device's, a failure like any other
            problem = exception_problem(exc, "create()")
            return attrs.evolve(problem, kind="construction", message=f"cannot build it: {problem.message}")
        made, problem = self._placing(self.device.regions, "regions()", "regions() raised")
        if problem is not None:
            return problem
        regions = list(made)
        for region in regions:
            if not isinstance(region, Region):
                return region_problem(f"regions() returned {region!r}, not a Region")
            limit = SPACE_LIMITS.get(region.space)
            if limit is None or region.size <= 0 or region.base < 0 or region.base + region.size > limit:
                return region_problem(f"region {region.name or hex(region.base)} is outside its space")
        try:
            claim_regions([_checked(region) for region in regions], target.name, bus.pio, bus.mmio)
        except BusError as exc:
            return region_problem("regions overlap", exc)
        bus.devices[target.name] = self.device
        _, problem = self._placing(self.pci.assign, "bar_region()", "placing its BARs raised")
        if problem is not None:
            return problem
        regions += self.pci.bar_regions()
        if isinstance(self.device, (InterruptController, LocalInterruptController)):
            self.controller = self.device
            if isinstance(self.device, InterruptController):
                self.irq_lines.route = self.device.set_irq
            if getattr(self.device, "intr_changed", None) is None:
                self.device.intr_changed = _ignore  # as a machine would set it
        target.regions = target.regions or regions
        target.controller = self.controller is not None
        return None

    def _placing(self, function: Any, name: str, failure: str) -> tuple[Any, Problem | None]:
        """Call what places the device's regions, under the watchdog: (its result, None) or (None, the problem)."""
        try:
            return self.call(function), None
        except Hung as exc:
            return None, hang_problem(exc, name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return None, region_problem(failure, exc)

    def execute(self, op: Op) -> tuple[str, Problem | None]:
        """Run one op: (what it returned, for the report; the problem it showed, if any)."""
        bus = self.bus
        note = ""
        kind = op.kind
        try:
            if kind == "read":
                value = self.call((bus.pio if op.space is Space.PIO else bus.mmio).read, op.address, op.size)
                if not (isinstance(value, int) and 0 <= value <= ACCESS_MASKS[op.size]):
                    return "", Problem("out-of-range", f"{op}: the bus returned {value!r}", ("out-of-range", "bus"))
                self.recent.append(value)
                note = f" -> {hex_of_size(value, op.size)}"
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
                        return "", Problem("bad-vector", f"acknowledge() returned {vector!r}, not a vector 0..255",
                                           ("bad-vector",))
                    note = f" -> vector {vector:#04x}"
                else:
                    note = "  (nothing pending)"
            else:
                # What the guest's CPU would store: only to memory that is there and writable
                # (a chipset device may have turned part of RAM into a hole or ROM).
                for slot in bus.memory:
                    start, end = max(slot.base, op.address), min(slot.end, op.address + len(op.data))
                    if start < end and not slot.readonly:
                        bus.memory.write(start, op.data[start - op.address : end - op.address])
        except GuestExit as exc:
            self.exit = exc
        except Hung as exc:
            return "", hang_problem(exc, str(op))
        except DeviceFault as fault:
            # The bus wraps what a handler raised (policy "stop"); the device's own exception is what counts.
            error = fault.error
            if isinstance(error, _OutOfRange):
                return "", Problem("out-of-range", f"{op}: {error}", ("out-of-range", error.handler))
            return "", exception_problem(error, str(op))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a timer callback, set_irq, pending, acknowledge: not behind the bus
            return "", exception_problem(exc, str(op))
        if self.exit is not None:
            note += f"\n# guest exit (status {self.exit.status}: {self.exit.reason}); a new instance from here"
        return note, None

    def irq(self, number: int) -> IrqLine:
        return self.irq_lines.line(number)

    def close(self) -> Problem | None:
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
            except Hung as exc:
                problem = hang_problem(exc, "close()")
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                problem = exception_problem(exc, "close()")
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
        if not (isinstance(value, int) and 0 <= value <= ACCESS_MASKS[size]):
            shown = f"{value:#x}" if isinstance(value, int) else repr(value)
            raise _OutOfRange(f"{label}(offset={offset:#x}, size={size}) returned {shown}, "
                              f"outside 0..{ACCESS_MASKS[size]:#x}", label)
        return value

    return region.evolve(read=checked_read)
