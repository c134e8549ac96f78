"""Differential runs: the same profile on two accelerators, compared transaction by transaction.

Devices see only bus transactions, so if the guest behaves the same on KVM and
on the software CPU, both runs produce the same sequence of (space, address,
size, direction, value, device), and stop the same way. The first place where
they part is usually a CPU-emulation difference or a device that depends on
something it should not (wall-clock time, host state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import attrs

from .accel import RunLimits
from .bus import Transaction
from .machine import Machine
from .plugins import DeviceRegistry
from .profile import Profile
from .stop import StopReason

CONTEXT = 3  # common transactions shown before the first difference


@attrs.frozen
class RecordedRun:
    """One run with tracing on: its accelerator, its stop and every transaction."""

    accel: str
    stop: StopReason
    transactions: tuple[Transaction, ...]


def _key(txn: Transaction) -> tuple[object, ...]:
    return (txn.space, txn.address, txn.size, txn.direction, txn.value, txn.device)


@attrs.frozen
class Difference:
    """The outcome of comparing two recorded runs."""

    a: RecordedRun
    b: RecordedRun
    index: int | None  # first differing transaction, or None if the sequences match

    @property
    def same_stop(self) -> bool:
        return (self.a.stop.kind, self.a.stop.status) == (self.b.stop.kind, self.b.stop.status)

    @property
    def identical(self) -> bool:
        return self.index is None and self.same_stop

    @property
    def status(self) -> int:
        """The ``vmcore diff`` exit status: 0 identical runs that ended cleanly (``hlt`` or the guest's
        own exit), 1 runs that differ, and for identical runs that both stopped on a fault or a limit,
        that stop's status (4, 6, 10, ...: never 0 or 1), so agreeing on a failure is not a success.
        """
        if not self.identical:
            return 1
        stop = self.a.stop
        return stop.status if stop.is_fault else 0

    def report(self) -> str:
        a, b = self.a, self.b
        if self.identical:
            return (f"identical: {len(a.transactions)} transactions; both stopped with "
                    f"{a.stop.kind} (status {a.stop.status})")
        lines = []
        if self.index is None:
            lines.append(f"transactions identical ({len(a.transactions)}), but the stops differ:")
        else:
            i = self.index
            lines.append(f"first difference at transaction {i} (of {len(a.transactions)} on {a.accel}, "
                         f"{len(b.transactions)} on {b.accel}):")
            for j in range(max(0, i - CONTEXT), i):
                lines.append(f"    {j:6}  both: {a.transactions[j]}")
            for run in (a, b):
                here = str(run.transactions[i]) if i < len(run.transactions) else "(no more transactions)"
                lines.append(f"    {i:6}  {run.accel + ':':5} {here}")
        for run in (a, b):
            lines.append(f"  {run.accel} stopped with {run.stop.kind} (status {run.stop.status}): {run.stop.message}")
        return "\n".join(lines)


def compare(a: RecordedRun, b: RecordedRun) -> Difference:
    """Find the first transaction where ``a`` and ``b`` differ."""
    for i, (x, y) in enumerate(zip(a.transactions, b.transactions)):
        if _key(x) != _key(y):
            return Difference(a, b, i)
    if len(a.transactions) != len(b.transactions):
        return Difference(a, b, min(len(a.transactions), len(b.transactions)))
    return Difference(a, b, None)


def record(profile: Profile, accel: str, registry: DeviceRegistry | None = None,
           limits: RunLimits = RunLimits()) -> RecordedRun:
    """Build a fresh machine from ``profile``, run it on ``accel`` with tracing, and keep the trace."""
    trace: list[Transaction] = []
    with Machine.build(profile, registry) as machine:
        machine.set_tracer(trace.append)
        stop = machine.run(accel, limits)
        name = machine.accelerator.name if machine.accelerator else accel
    return RecordedRun(name, stop, tuple(trace))


def differential(profile: Profile | str | Path, accels: Iterable[str] = ("kvm", "tcg"),
                 registry: DeviceRegistry | None = None, limits: RunLimits = RunLimits()) -> Difference:
    """Run ``profile`` on two accelerators and compare the runs."""
    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    registry = registry if registry is not None else DeviceRegistry.default()
    first, second = accels
    return compare(record(profile, first, registry, limits), record(profile, second, registry, limits))
