"""The two sources of the guest's choices: a seeded random.Random per run, or hypothesis (which shrinks)."""

from __future__ import annotations

import random
from typing import Any

from .guest import Guest
from .runs import Found, Stats, run_once
from .session import Target

MAX_DISTINCT_FAILURES = 10  # distinct failures kept per campaign; further new ones are ignored


def random_search(target: Target, guest: Guest, runs: int, steps: int, seed: int, stats: Stats) -> list[Found]:
    found: dict[tuple[Any, ...], Found] = {}
    for run in range(runs):
        failure = run_once(target, guest, random.Random(f"{seed}/{run}"), steps, stats)
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


def hypothesis_search(target: Target, guest: Guest, runs: int, steps: int, seed: int,
                      stats: Stats) -> list[Found]:
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
    from hypothesis.errors import Flaky

    found: dict[tuple[Any, ...], Found] = {}
    chased: list[tuple[Any, ...]] = []  # the failure hypothesis is shrinking: the first one seen

    class _Falsified(Exception):
        pass

    @hypothesis_seed(seed)
    @settings(max_examples=runs, deadline=None, database=None, derandomize=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck),
              report_multiple_bugs=False, print_blob=False, verbosity=Verbosity.quiet)
    @given(st.randoms(note_method_calls=False, use_true_random=False))
    def search(rng: random.Random) -> None:
        failure = run_once(target, guest, rng, steps, stats)
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
