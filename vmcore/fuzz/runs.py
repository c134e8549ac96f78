"""Running operations on fresh instances: one run of the guest's choices, or a given sequence replayed."""

from __future__ import annotations

import random
from typing import Sequence

import attrs

from .guest import Guest
from .ops import Op
from .problems import Problem
from .session import Session, Target


@attrs.define
class Stats:
    """What a campaign did, for its report."""

    runs: int = 0
    transactions: int = 0
    clock_ns: int = 0


@attrs.define
class Found:
    """A failure seen: the ops since the last fresh instance, how many runs showed it, and (random mode) the first."""

    problem: Problem
    ops: tuple[Op, ...]
    run: int | None = None
    count: int = 1


def run_once(target: Target, guest: Guest, rng: random.Random, steps: int, stats: Stats) -> Found | None:
    """One run of ``steps`` operations; the ops since the last fresh instance if something broke."""
    stats.runs += 1
    session = Session(target)
    problem = session.start()
    if problem is not None:
        session.close()
        return Found(problem, ())
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
                return Found(problem, tuple(ops))
            if session.exit is not None:
                problem = session.close()
                if problem is not None:
                    return Found(problem, tuple(ops))
                session = Session(target)
                problem = session.start()
                if problem is not None:
                    return Found(problem, ())
                ops = []
        problem = session.close()
        return None if problem is None else Found(problem, tuple(ops))
    finally:
        session.close()


def run_ops(target: Target, ops: Sequence[Op], record: bool = False) -> tuple[Problem | None, int, list[str]]:
    """Run ``ops`` on a fresh instance: (the problem, how many ops ran, the report lines)."""
    session = Session(target)
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
                session = Session(target)
                problem = session.start()
                if problem is not None:
                    return problem, i + 1, lines
        problem = session.close()
        if problem is not None and record:
            lines.append("# close()")
        return problem, len(ops), lines
    finally:
        session.close()
