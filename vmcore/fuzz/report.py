"""What a fuzzing campaign reports: each failure with its reproducing sequence, and the totals."""

from __future__ import annotations

from typing import Any

import attrs

from .ops import Op


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
