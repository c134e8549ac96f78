"""Shrinking: the shortest, simplest sequence of operations that still shows the same failure."""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import attrs

from ..bus import ACCESS_SIZES
from .ops import ACCESS_MASKS, Op
from .runs import run_ops
from .session import Target


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
                yield attrs.evolve(op, size=size, value=op.value & ACCESS_MASKS[size])
    elif op.kind == "step" and op.value > 1:
        yield attrs.evolve(op, value=op.value // 2)
    elif op.kind == "fill" and len(op.data) > 1:
        half = len(op.data) // 2
        yield attrs.evolve(op, data=op.data[:half])
        yield attrs.evolve(op, address=op.address + half, data=op.data[half:])


def shrink(target: Target, ops: tuple[Op, ...], signature: tuple[Any, ...], deadline: float) -> tuple[Op, ...]:
    """Delete ops, then simplify them, while the same failure reproduces (or time runs out)."""

    def fails(candidate: Sequence[Op]) -> int:
        problem, ran, _ = run_ops(target, candidate)
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
