"""The API: fuzz one device type (or all), replay a sequence, assert a device survives."""

from __future__ import annotations

import importlib.util
import random
import time
from typing import Any, Sequence

from ..device import PropertyError, build_config
from ..plugins import DeviceRegistry
from .guest import Guest
from .ops import Op
from .problems import exception_problem
from .report import FuzzFailure, FuzzReport
from .runs import Found, Stats, run_ops
from .scratch import FuzzScratch
from .search import hypothesis_search, random_search
from .session import Session, Target, quiet_bus
from .shrink import shrink
from .watchdog import Watchdog


def _resolve(device: str | type, registry: DeviceRegistry | None) -> tuple[type, str]:
    if isinstance(device, str):
        registry = registry if registry is not None else DeviceRegistry.default()
        return registry.get(device).cls, device  # DeviceTypeError names near matches
    return device, getattr(device, "type_name", device.__name__)


def _props_for(cls: type, props: dict[str, Any] | None) -> dict[str, Any]:
    """The type's own fuzzing properties (``fuzz_props``, if it has one), then the caller's."""
    declared = getattr(cls, "fuzz_props", None)
    safe = dict(declared(FuzzScratch())) if declared is not None else {}
    return {**safe, **(props or {})}


def _failure(target: Target, found: Found, deadline: float) -> FuzzFailure:
    ops = found.ops
    problem = found.problem
    if ops:
        ops = shrink(target, ops, problem.signature, deadline)
        replayed, _, lines = run_ops(target, ops, record=True)
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
    properties the type declares for fuzzing (its ``fuzz_props``). Each of ``runs`` runs builds a fresh instance on
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
    merged = _props_for(cls, props)
    started = time.monotonic()
    stats = Stats()
    watchdog = Watchdog(timeout)
    try:
        with quiet_bus():
            failures = _fuzz(cls, name, props, merged, mode, runs, steps, seed, watchdog, stats, shrink_seconds)
    finally:
        watchdog.close()
    return FuzzReport(name, merged, mode, seed, stats.runs, stats.transactions, stats.clock_ns,
                      time.monotonic() - started, failures)


def _fuzz(cls: type, name: str, props: dict[str, Any] | None, merged: dict[str, Any], mode: str, runs: int,
          steps: int, seed: int, watchdog: Watchdog, stats: Stats, shrink_seconds: float) -> tuple[FuzzFailure, ...]:
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
        problem = exception_problem(exc, "building its Config")
        return (FuzzFailure(name, "construction", problem.message, (), (), problem.exception, problem.traceback),)
    target = Target(cls, name, merged, config, watchdog)
    probe = Session(target)
    problem = probe.start()
    problem = probe.close() or problem
    if problem is not None:
        # Nothing to fuzz: it cannot be built, or its regions cannot be placed.
        return (FuzzFailure(name, problem.kind, problem.message, (), (), problem.exception, problem.traceback),)
    guest = Guest(target.regions, target.controller)
    search = hypothesis_search if mode == "hypothesis" else random_search
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
    merged = _props_for(cls, props)
    watchdog = Watchdog(timeout)
    try:
        with quiet_bus():
            target = Target(cls, name, merged, build_config(cls.Config, merged), watchdog)
            problem, _, lines = run_ops(target, ops, record=True)
    finally:
        watchdog.close()
    return [*lines, "ok" if problem is None else f"{problem.kind}: {problem.message}"]
