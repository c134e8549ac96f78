"""Register maps against hand-written handlers: what one register access costs each way.

Two versions of one device (acpi-pm's PM1 control register, 16 bits, read and written at its
width): hand-written ``read``/``write`` handlers that shift and mask, as the device had them,
and a :class:`vmcore.regmap.RegisterMap` declaring the same register. Timed in one process: the
handler alone, and the whole access through a ``Bus`` (what a guest's access runs). Each round
times the two versions back to back (which goes first alternates) and takes their ratio; the
ratio reported is the median of those (this host's speed swings within a second, and a ratio
of neighbours cancels it where medians of separate times did not: runs of the old form read
1.03x to 1.46x for the same code). Target (issue 18): a register access through a map costs at most 1.2x a
hand-written one.

    python3 bench/regmap.py [--rounds 31] [--accesses 50000] [--out bench/results/regmap.txt]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmcore.bus import Bus, Region, Space  # noqa: E402
from vmcore.regmap import Reg, RegisterMap  # noqa: E402

PORT = 0x604
SCI_EN, SLP_EN = 1, 1 << 13


class Hand:
    """PM1 control, by hand: byte lanes shifted and masked in each handler."""

    def __init__(self) -> None:
        self.control = SCI_EN

    def read(self, offset: int, size: int) -> int:
        return (self.control >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        mask = ((1 << (8 * size)) - 1) << (8 * offset)
        value = (self.control & ~mask | value << (8 * offset) & mask) & 0xFFFF
        self.control = (value & ~SLP_EN) | SCI_EN

    def regions(self) -> list[Region]:
        return [Region(Space.PIO, PORT, 2, self.read, self.write, sizes=(1, 2), name="pm1a-control")]


class Mapped:
    """The same register, declared."""

    registers = RegisterMap(Reg(0x0, "PM1_CNT", 2, "rw", reset=SCI_EN, on_write="_written"))

    def __init__(self) -> None:
        self.regs = self.registers.bind(self)

    def _written(self, value: int) -> int:
        return (value & ~SLP_EN) | SCI_EN

    def regions(self) -> list[Region]:
        return self.regs.regions(Space.PIO, PORT, sizes=(1, 2))


def timed(read: object, write: object, address: int, count: int, kind: str) -> float:
    """Seconds per access: ``kind`` "read", or "write" (values that never set SLP_EN)."""
    start = time.perf_counter()
    if kind == "read":
        for _ in range(count):
            read(address, 2)  # type: ignore[operator]
    else:
        for k in range(count):
            write(address, 2, k & 0x1C00)  # type: ignore[operator]
    return (time.perf_counter() - start) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--accesses", type=int, default=50_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "regmap.txt"))
    args = parser.parse_args()
    hand, mapped = Hand(), Mapped()
    buses = {}
    for name, device in (("hand", hand), ("map", mapped)):
        bus = Bus(Space.PIO)
        for region in device.regions():
            bus.claim(region, name)
        buses[name] = bus
    handler = {"hand": (hand.read, hand.write, 0), "map": (mapped.regs.read, mapped.regs.write, 0)}
    pairs = [(where, kind) for kind in ("read", "write") for where in ("handler", "bus")]
    times: dict[tuple[str, str, str], list[float]] = {(name, where, kind): [] for where, kind in pairs
                                                      for name in ("hand", "map")}
    ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    for round_ in range(args.rounds):
        for where, kind in pairs:
            took = {}
            for name in ("hand", "map") if round_ % 2 == 0 else ("map", "hand"):
                if where == "handler":
                    read, write, address = handler[name]
                else:
                    read, write, address = buses[name].read, buses[name].write, PORT
                took[name] = timed(read, write, address, args.accesses, kind)
                times[(name, where, kind)].append(took[name])
            ratios[(where, kind)].append(took["map"] / took["hand"])
    got = {case: statistics.median(value) * 1e9 for case, value in times.items()}
    lines = [f"# bench/regmap.py  {datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {platform.node()}  "
             f"python {platform.python_version()}  {args.rounds} rounds of {args.accesses} accesses per version; "
             "times: medians; map/hand: the median of each round's ratio of neighbours",
             "# PM1 control (16 bits) at its width; the write's side effect (SLP_EN reads 0, SCI_EN stays set) "
             "is inline by hand, a method (on_write) in the map"]
    for kind in ("read", "write"):
        for where in ("handler", "bus"):
            hand_ns, map_ns = got[("hand", where, kind)], got[("map", where, kind)]
            ratio = statistics.median(ratios[(where, kind)])
            verdict = f"  (target <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})" if where == "bus" else ""
            lines.append(f"{kind:5} {where:8} hand-written {hand_ns:7.1f} ns  register map {map_ns:7.1f} ns  "
                         f"map/hand {ratio:.2f}x{verdict}")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
