"""The virtqueue's chain parser against random descriptor tables: N chains, every outcome counted.

Each round writes a random descriptor table (16 entries), a random indirect table (a third
of them laid out in order, as Linux writes them, which the queue checks in bulk), random
heads and a random avail.idx into a 64 KiB guest RAM, then pops what the queue offers.
Every pop must give a chain whose buffers are all backed (device-writable ones writable),
no longer than its table and below 2**32 bytes in all, or raise VirtqueueError; anything
else (another exception, a broken promise) is a failure, printed with its seed. The
values are drawn so the interesting cases come up often: addresses near the RAM's end and
near 2**64, lengths near 2**32, nexts just past the table, indirect tables at a known place.

    python3 bench/virtqueue_fuzz.py [--chains 100000] [--seed 1] [--out bench/results/virtqueue-fuzz.txt]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import platform
import random
import struct
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmcore.memory import GuestMemory  # noqa: E402
from vmcore.virtio.queue import Chain, Virtqueue, VirtqueueError  # noqa: E402

SIZE = 16
RAM = 0x10000
DESC, AVAIL, USED, INDIRECT = 0x1000, 0x2000, 0x3000, 0x4000
_DESC = struct.Struct("<QIHH")


def _address(rng: random.Random) -> int:
    if rng.random() < 0.6:
        return 0x8000 + rng.randrange(0x4000)  # plain RAM
    return rng.choice((rng.randrange(RAM + 0x100), rng.randrange(1 << 64), (1 << 64) - 1 - rng.randrange(64),
                       RAM - rng.randrange(64), INDIRECT))


def _length(rng: random.Random) -> int:
    if rng.random() < 0.6:
        return rng.randrange(0x200)
    return rng.choice((rng.randrange(1 << 32), (1 << 32) - 1 - rng.randrange(64), 16 * rng.randrange(1, 9),
                       rng.randrange(0x4000)))


def _next(rng: random.Random) -> int:
    return rng.choice((rng.randrange(SIZE), rng.randrange(SIZE + 2), rng.randrange(1 << 16)))


def _flags(rng: random.Random) -> int:
    return rng.choice((rng.randrange(8), 1, 3, 2, 0))  # any mix, and often a plain chain


def _table(rng: random.Random, entries: int) -> bytes:
    return b"".join(_DESC.pack(_address(rng), _length(rng), _flags(rng), _next(rng)) for _ in range(entries))


def _in_order_table(rng: random.Random, entries: int) -> bytes:
    """An indirect table as Linux lays one out (each entry's next the one after it), which the queue
    checks in bulk; its buffers and flags random as elsewhere."""
    count = rng.randrange(1, entries + 1)
    rows = []
    for index in range(count):
        more = index < count - 1
        flags = rng.choice((0, 2, 2, 0, 8, 4)) | (1 if more else 0)
        rows.append(_DESC.pack(_address(rng), _length(rng), flags, index + 1 if more else rng.randrange(SIZE)))
    return b"".join(rows) + bytes(16 * (entries - count))


def _promised(chain: Chain, memory: GuestMemory) -> None:
    assert 0 <= chain.head < SIZE
    assert len(chain.readable) + len(chain.writable) <= SIZE
    assert chain.readable_length + chain.writable_length < 1 << 32
    for buffer in chain.readable + chain.writable:
        if buffer.length:
            memory.check_range(buffer.address, buffer.length, writing=buffer in chain.writable)


def round_(memory: GuestMemory, seed: int, outcomes: collections.Counter[str]) -> int:
    """One random queue; returns how many chains were popped (each counted in ``outcomes``)."""
    rng = random.Random(seed)
    memory.write(DESC, _table(rng, SIZE))
    memory.write(INDIRECT, _in_order_table(rng, 8) if rng.random() < 0.3 else _table(rng, 8))
    heads = [rng.randrange(SIZE) if rng.random() < 0.9 else rng.randrange(1 << 16) for _ in range(4)]
    memory.write(AVAIL, struct.pack("<HH4H", 0, 4 if rng.random() < 0.9 else rng.randrange(1 << 16), *heads))
    memory.write(USED, bytes(6 + 8 * SIZE))
    queue = Virtqueue(memory, SIZE, indirect=rng.random() < 0.8)
    queue.size, queue.desc, queue.avail, queue.used = SIZE, DESC, AVAIL, USED
    queue.enable()
    popped = 0
    for _ in range(4):
        try:
            chain = queue.pop()
        except VirtqueueError as exc:
            outcomes["refused: " + _reason(str(exc))] += 1
            return popped + 1
        if chain is None:
            return popped
        _promised(chain, memory)
        outcomes["a checked chain"] += 1
        queue.push(chain, 0)
        popped += 1
    return popped


def _reason(message: str) -> str:
    for key in ("a loop", "not below", "wraps", "guest RAM", "2**32", "one level deep", "not negotiated",
                "indirect and next", "multiple of 16", "device-readable after", "ahead of the used index"):
        if key in message:
            return key
    return message


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "virtqueue-fuzz.txt"))
    args = parser.parse_args()
    memory = GuestMemory()
    memory.add_slot("ram", 0, RAM)
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    start = time.monotonic()
    seed, done = args.seed * 1_000_003, 0
    while done < args.chains:
        try:
            done += round_(memory, seed, outcomes)
        except Exception:  # noqa: BLE001 - what the bench is for
            failures.append(f"seed {seed}: {traceback.format_exc(limit=3)}")
            done += 1
        seed += 1
    elapsed = time.monotonic() - start
    lines = [f"# bench/virtqueue_fuzz.py  {datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {platform.node()}  "
             f"python {platform.python_version()}  seed {args.seed}",
             f"{done} chains popped from {seed - args.seed * 1_000_003} random queues in {elapsed:.1f} s; "
             f"{len(failures)} uncaught"]
    lines += [f"  {count:8d}  {what}" for what, count in outcomes.most_common()]
    lines += failures[:10]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text, end="")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
