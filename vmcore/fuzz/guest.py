"""The hostile guest's choices: which operation comes next, and the garbage it puts in guest RAM."""

from __future__ import annotations

import bisect
import collections
import itertools
import random
import typing
from typing import Any, Sequence

from ..bus import ACCESS_SIZES, SPACE_LIMITS, Region
from .ops import ACCESS_MASKS, Op

if typing.TYPE_CHECKING:
    from .session import Session

RAM_SIZE = 1 << 20  # the FakeBus default: 1 MiB of RAM at 0
PAGE = 4096


class _Table:
    """A weighted choice drawn with one ``randrange``: the first entry is where hypothesis shrinks to."""

    __slots__ = ("cumulative", "items", "total")

    def __init__(self, *entries: tuple[int, Any]) -> None:
        self.items = [item for _, item in entries]
        self.cumulative = list(itertools.accumulate(weight for weight, _ in entries))
        self.total = self.cumulative[-1]

    def pick(self, rng: random.Random) -> Any:
        return self.items[bisect.bisect_right(self.cumulative, rng.randrange(self.total))]


#: Operation kinds and their weights; the first is where hypothesis shrinks an operation to
#: (``step 0``, which does nothing, so the shrinker can then delete it).
_OP_WEIGHTS = ((12, "step"), (32, "read"), (38, "write"), (2, "fill"), (3, "sweep"))
_CONTROLLER_WEIGHTS = ((10, "irq"), (5, "ack"))
_VALUE_WEIGHTS = ((2, "zero"), (3, "small"), (3, "ones"), (4, "bit"), (4, "echo"), (6, "random"), (2, "pointer"),
                  (2, "edge"))
_WHERE = _Table((5, "aligned"), (3, "inside"), (2, "around"))
_STEPS = _Table((1, "zero"), (4, "ns"), (4, "deadline"), (3, "us"), (2, "ms"), (1, "s"))
_PAGES = _Table((3, "zero"), (3, "low"), (2, "any"))
_FILLS = _Table((3, "random"), (3, "pointers"), (1, "ones"), (1, "zeros"))
_WORDS = _Table((2, "zero"), (3, "small"), (2, "bit"), (1, "ones"), (4, "pointer"), (2, "random"))
LOW_MEMORY = 0x10000  # where generated pointers mostly point; filled at the start of every run


def _pointer(rng: random.Random) -> int:
    """A guest-physical address in the fake RAM, mostly in the low 64K and 16-byte aligned (where descriptors live)."""
    if rng.randrange(4):
        return rng.randrange(LOW_MEMORY) & ~0xF
    return rng.randrange(RAM_SIZE) & ~0xF


def _swap(value: int, size: int) -> int:
    return int.from_bytes(value.to_bytes(size, "little"), "big")


def _word(r: random.Random, size: int) -> int:
    kind = _WORDS.pick(r)
    if kind == "zero":
        return 0
    if kind == "small":
        return r.randrange(65)
    if kind == "bit":
        return 1 << r.randrange(8 * size)
    if kind == "ones":
        return ACCESS_MASKS[size]
    if kind == "pointer":
        return _pointer(r)
    return r.getrandbits(8 * size)


def ram_pattern(mode: str, seed: int, length: int = PAGE) -> bytes:
    """Garbage for guest RAM: ``random`` bytes, ``pointers`` (16-byte records of words that look
    like flags, lengths and RAM addresses, in either byte order), or all ``ones`` or ``zeros``."""
    if mode == "zeros":
        return bytes(length)
    if mode == "ones":
        return b"\xff" * length
    r = random.Random(seed)
    if mode == "random":
        return r.randbytes(length)
    # Records shaped like common DMA descriptors (two 32-bit words, say control and length, and a
    # 64-bit address), drawn from a small pool so a page costs little to make.
    pool = []
    for _ in range(32):
        order = "big" if r.getrandbits(1) else "little"
        pool.append(_word(r, 4).to_bytes(4, order) + _word(r, 4).to_bytes(4, order) + _word(r, 8).to_bytes(8, order))
    return b"".join(r.choices(pool, k=-(-length // 16)))[:length]


def low_memory_pattern(seed: int) -> bytes:
    """The low 64K at the start of a run: each page garbage of a kind chosen by ``seed``."""
    r = random.Random(seed)
    return b"".join(ram_pattern(_FILLS.pick(r), r.getrandbits(32)) for _ in range(LOW_MEMORY // PAGE))


class Guest:
    """The device as the guest sees it: its regions, and whether it is an interrupt controller."""

    def __init__(self, regions: Sequence[Region], controller: bool) -> None:
        self.regions = list(regions)
        self.controller = controller

    def for_run(self, rng: random.Random) -> _RunGuest:
        """This run's guest. Swarm testing (Groce et al., ISSTA 2012): each run leaves some kinds of
        operation, access sizes, values and regions out, so some runs never let time pass, or only
        write all ones with byte accesses, and reach states an even mix of everything rarely does.
        Every draw here shrinks to "keep it"."""
        ops = _OP_WEIGHTS + (_CONTROLLER_WEIGHTS if self.controller else ())
        kept = tuple(entry for entry in ops if rng.randrange(4) < 3) or ops
        sizes = tuple(size for size in ACCESS_SIZES if rng.randrange(3) < 2) or ACCESS_SIZES
        values = tuple(entry for entry in _VALUE_WEIGHTS if rng.randrange(3) < 2) or _VALUE_WEIGHTS
        regions = self.regions
        if len(regions) > 1:
            regions = [region for region in regions if rng.randrange(3) < 2] or regions
        return _RunGuest(regions, _Table(*kept), sizes, _Table(*values))


class _RunGuest:
    """Chooses the guest's next operation from ``rng`` (a random.Random, or hypothesis's)."""

    def __init__(self, regions: Sequence[Region], ops: _Table, sizes: Sequence[int], values: _Table) -> None:
        self.regions = regions
        self.ops = ops
        self.sizes = sizes
        self.values = values
        self.queue: collections.deque[Op] = collections.deque()  # the rest of a sweep

    def initial_fill(self, rng: random.Random) -> Op:
        return Op("fill", address=0, data=low_memory_pattern(rng.getrandbits(32)))

    def next(self, rng: random.Random, session: Session) -> Op:
        if self.queue:
            return self.queue.popleft()
        kind = self.ops.pick(rng)
        if kind == "read" or kind == "write":
            return self._access(rng, kind, session)
        if kind == "step":
            return Op("step", value=self._step(rng, session))
        if kind == "irq":
            line = rng.randrange(16) if rng.randrange(10) else rng.randrange(16, 256)
            return Op("irq", address=line, value=rng.randrange(2))
        if kind == "ack":
            return Op("ack")
        if kind == "sweep":
            self._sweep(rng, session)
            return self.queue.popleft()
        return self.fill(rng)

    def fill(self, rng: random.Random) -> Op:
        where = _PAGES.pick(rng)
        page = 0 if where == "zero" else rng.randrange(1, 16) if where == "low" else rng.randrange(RAM_SIZE // PAGE)
        return Op("fill", address=page * PAGE, data=ram_pattern(_FILLS.pick(rng), rng.getrandbits(32)))

    def _access(self, rng: random.Random, kind: str, session: Session) -> Op:
        region = self.regions[rng.randrange(len(self.regions))]
        size = self.sizes[rng.randrange(len(self.sizes))]
        where = _WHERE.pick(rng)
        if where == "around":
            offset = rng.randrange(-8, region.size + 8)
        else:
            offset = rng.randrange(region.size)
            if where == "aligned":
                offset -= offset % size
        limit = SPACE_LIMITS[region.space]
        address = min(max(region.base + offset, 0), limit - size)
        value = self._value(rng, size, session.recent) if kind == "write" else 0
        return Op(kind, address=address, size=size, value=value, space=region.space)

    def _sweep(self, rng: random.Random, session: Session) -> None:
        """An index register and its data register (CMOS, VGA, PCI configuration): for index i in a run,
        write i to one byte and then read, or write a value to, another (by default the next)."""
        region = self.regions[rng.randrange(len(self.regions))]
        index_at = rng.randrange(region.size)
        data_at = index_at + 1 if index_at + 1 < region.size and rng.randrange(4) else rng.randrange(region.size)
        first = 0 if rng.randrange(3) else rng.randrange(256)
        action = rng.randrange(3)  # 0: write one value everywhere, 1: a value each, 2: read
        value = self._value(rng, 1, session.recent)
        for i in range(rng.randrange(4, 129)):
            self.queue.append(Op("write", region.base + index_at, 1, (first + i) & 0xFF, region.space))
            if action == 2:
                self.queue.append(Op("read", region.base + data_at, 1, 0, region.space))
            else:
                data = value if action == 0 else self._value(rng, 1, session.recent)
                self.queue.append(Op("write", region.base + data_at, 1, data, region.space))

    def _value(self, rng: random.Random, size: int, recent: Sequence[int]) -> int:
        mask = ACCESS_MASKS[size]
        kind = self.values.pick(rng)
        if kind == "zero":
            return 0
        if kind == "small":
            return rng.randrange(17)
        if kind == "ones":
            return mask
        if kind == "bit":
            return 1 << rng.randrange(8 * size)
        if kind == "echo" and recent:
            # What the device just returned: a status to write back, a count to reload.
            return recent[rng.randrange(len(recent))] & mask
        if kind == "pointer" and size >= 4:
            address = _pointer(rng)
            return _swap(address, size) if rng.randrange(2) else address
        if kind == "edge":
            return (mask >> 1, mask ^ (mask >> 1), mask - 1, (mask >> 1) + 2)[rng.randrange(4)]
        return rng.getrandbits(8 * size)

    @staticmethod
    def _step(rng: random.Random, session: Session) -> int:
        kind = _STEPS.pick(rng)
        if kind == "zero":
            return 0
        if kind == "deadline":
            # Land just before, on, or just after the device's next timer.
            clock = session.bus.clock
            deadline = clock.next_deadline()
            if deadline is not None and deadline - clock.now() <= 10**9:
                return max(0, deadline - clock.now() + rng.randrange(-1, 2))
            kind = "ns"
        if kind == "ns":
            return rng.randrange(1, 1001)
        if kind == "us":
            return rng.randrange(1000, 10**6)
        if kind == "ms":
            return rng.randrange(10**6, 10**8)
        return rng.randrange(10**8, 10**9 + 1)
