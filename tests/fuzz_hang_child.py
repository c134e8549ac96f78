"""A hanging device fuzzed in a child process, under a tracer or load, for tests/test_fuzz_watchdog.py.

Run as ``python tests/fuzz_hang_child.py DEVICE TRACER LOAD`` (or under ``coverage run``):
DEVICE is ``stuck``, ``stubborn`` or ``polling``, TRACER is ``none``, ``settrace``, ``setprofile`` or
``cprofile`` (coverage installs its own before this runs), LOAD is how many threads spin
alongside. Prints one JSON line: the failures found, and whether the tracer is still on.
A hang here must end the child, not the test run: the parent kills it after a hard timeout,
and faulthandler shows where it was stuck first.
"""

from __future__ import annotations

import faulthandler
import json
import sys
import threading
from typing import Any, Sequence

import attrs

from vmcore.bus import Region, Space
from vmcore.device import Device, prop
from vmcore.fuzz import fuzz_device

DUMP_AFTER = 50  # seconds; the parent's hard timeout is longer, so a stuck child shows where it is


@attrs.frozen
class RegsConfig:
    port: int = prop(0x600, "First of four byte registers.", hex=True)


class Stuck(Device):
    """Writing a value with bit 7 set to register 3 spins forever."""

    type_name = "test-stuck"
    Config = RegsConfig

    def __init__(self, config: RegsConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.regs = [0, 0, 0, 0]

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 4, self.read, self.write, sizes=(1,), name="regs")]

    def read(self, offset: int, size: int) -> int:
        return self.regs[offset]

    def write(self, offset: int, size: int, value: int) -> None:
        while offset == 3 and value & 0x80:
            pass  # spinning
        self.regs[offset] = value


class Stubborn(Stuck):
    """As Stuck, but it catches the first interrupt and spins on."""

    type_name = "test-stubborn"

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 3 and value & 0x80:
            try:
                while True:
                    pass  # until the first interrupt
            except BaseException:  # the point: a device that eats the interrupt
                pass
            while True:
                pass  # spinning again after the first interrupt
        self.regs[offset] = value


class Polling(Stuck):
    """As Stuck, but its loop polls a status method: a profile function sees every call."""

    type_name = "test-polling"

    def write(self, offset: int, size: int, value: int) -> None:
        while offset == 3 and value & 0x80 and not self.ready():
            pass  # polling
        self.regs[offset] = value

    def ready(self) -> bool:
        return False


DEVICES = {"stuck": Stuck, "stubborn": Stubborn, "polling": Polling}


def _trace(frame: Any, event: str, arg: Any) -> Any:
    return _trace


def _profile(frame: Any, event: str, arg: Any) -> None:
    pass


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def main(device: str, tracer: str, load: int) -> None:
    faulthandler.dump_traceback_later(DUMP_AFTER, exit=True)
    stop = threading.Event()
    spinners = [threading.Thread(target=_spin, args=(stop,), daemon=True) for _ in range(load)]
    for spinner in spinners:
        spinner.start()
    profiler = None
    if tracer == "settrace":
        sys.settrace(_trace)
    elif tracer == "setprofile":
        sys.setprofile(_profile)
    elif tracer == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    before = sys.gettrace(), sys.getprofile()
    report = fuzz_device(DEVICES[device], runs=30, steps=40, seed=20261125,
                         mode="random", timeout=0.2, shrink_seconds=5)
    after = sys.gettrace(), sys.getprofile()
    if profiler is not None:
        profiler.disable()
    elif tracer == "settrace":
        sys.settrace(None)
    elif tracer == "setprofile":
        sys.setprofile(None)
    stop.set()
    failures = [{"kind": f.kind, "message": f.message, "lines": f.lines, "traceback": f.traceback}
                for f in report.failures]
    print(json.dumps({"failures": failures, "traced": before != (None, None), "tracer_kept": after == before}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
