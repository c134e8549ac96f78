"""Long fuzzing campaign: every built-in device type against the hostile guest, plain random mode.

Each device gets at least ``--transactions`` operations (default 100000), split evenly
over several run lengths (``--steps``, default 50,2000): short runs restart often from
power-on, long ones get deep into a device's state. The RTC's end-of-9999 bug took long
runs to show: in 20 campaigns of 100000 transactions on the unfixed model, runs of 500
operations found it twice, runs of 2000 seven times. The default seed is fixed, so the
committed results can be reproduced; pass ``--seed`` (and more ``--transactions``) to
explore new ground.

Usage: python bench/fuzz.py [--transactions N] [--steps 50,2000] [--seed S]
                            [--devices a,b] [--out bench/results/fuzz.txt]
Results are printed and written to the output file, each failure with its minimal
reproducing sequence; the exit status is 1 when anything broke.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from vmcore.fuzz import fuzz_device  # noqa: E402
from vmcore.plugins import DeviceRegistry  # noqa: E402

BUILTINS = ("cmos-rtc", "debug-exit", "debugcon", "fw-cfg", "i8042", "i8254", "i8259", "uart16550")


def _steps(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected run lengths like 50,2000, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"run lengths must be positive, got {text!r}")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=100_000, help="at least this many per device "
                        "(default 100000)")
    parser.add_argument("--steps", type=_steps, default=[50, 2000], help="run lengths, comma-separated; the "
                        "transactions are split evenly over them (default 50,2000)")
    parser.add_argument("--seed", type=int, default=1, help="campaign seed (default 1)")
    parser.add_argument("--devices", default=",".join(BUILTINS), help="comma-separated device types (default: "
                        "the built-ins)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds one operation may take (default 1)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fuzz.txt")
    args = parser.parse_args()

    registry = DeviceRegistry.default()
    names = [name for name in args.devices.split(",") if name]
    share = -(-args.transactions // len(args.steps))
    header = (f"# bench/fuzz.py  {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.node()}  "
              f"python {platform.python_version()}  random mode  seed {args.seed}  "
              f"run lengths {','.join(map(str, args.steps))}  >= {args.transactions} transactions/device")
    columns = f"{'device':12} {'transactions':>12} {'runs':>6} {'seconds':>8} {'machine-s':>10} {'failures':>8}"
    lines = [header, columns]
    details: list[str] = []
    broken = False
    for name in names:
        transactions = runs = clock_ns = 0
        failures = []
        started = time.monotonic()
        for steps in args.steps:
            report = fuzz_device(name, runs=-(-share // steps), steps=steps, seed=args.seed, registry=registry,
                                 mode="random", timeout=args.timeout)
            transactions += report.transactions
            runs += report.runs
            clock_ns += report.clock_ns
            failures += report.failures
            for failure in report.failures:
                details.append(f"# run length {steps}:\n{failure}")
        seconds = time.monotonic() - started
        broken = broken or bool(failures)
        line = f"{name:12} {transactions:>12} {runs:>6} {seconds:>8.1f} {clock_ns / 1e9:>10.1f} {len(failures):>8}"
        lines.append(line)
        print(line, flush=True)
    report_text = "\n".join(lines + details) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report_text)
    print()
    print(report_text, end="")
    print(f"written to {args.out}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
