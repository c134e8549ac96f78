"""virtio-rng (virtio 1.x, 5.4): the host's entropy for the guest, rate-limited.

One queue of device-writable buffers: each chain the driver makes available is filled
with entropy from the host (``os.urandom``, which never blocks once the kernel's pool is
initialised) and given back. ``rate`` bounds the bytes per second of machine time the
guest gets (a token bucket holding at most one second's worth), so a guest that asks for
entropy in a loop cannot make vmcore drain the host's; chains wait while the bucket is
empty and are served, in order, as it fills. Linux's driver is ``virtio-rng``
(``/dev/hwrng``).
"""

from __future__ import annotations

import os
import random
from typing import Callable

from vmcore.clock import Timer
from vmcore.device import DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.virtio import VirtioMmioConfig, VirtioMmioDevice, Virtqueue

#: The most bytes one chain gets at a time (Linux asks for 64 at most).
CHAIN_CAP = 64 * 1024
_SECOND = 1_000_000_000


@config
class VirtioRngConfig(VirtioMmioConfig):
    rate: int = prop(1 << 20, "Most entropy bytes per second of machine time the guest gets (0: no limit).",
                     validator=in_range(0, 1 << 40))
    seed: int = prop(0, "0: bytes from the host's entropy (os.urandom); else a stream repeatable from this "
                        "seed (runs that must repeat: replay, snapshot checks; never for a guest's keys).",
                     validator=in_range(0, (1 << 64) - 1))


class VirtioRng(VirtioMmioDevice):
    """virtio entropy device: fills the guest's buffers from the host's random source."""

    type_name = "virtio-rng"
    Config = VirtioRngConfig
    device_id = 4
    queue_sizes = (64,)
    class State(VirtioMmioDevice.State):
        """The transport's, the rate limiter's and, with a seed, the stream's position."""

        _tokens: float
        _stamp: int
        _refill: Timer
        _random: random.Random | None

    @classmethod
    def fuzz_props(cls, scratch: object) -> dict[str, int]:
        return {"seed": 1}  # the same bytes in every run: a failure the fuzzer finds can be replayed

    def __init__(self, config: VirtioRngConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self._random = random.Random(config.seed) if config.seed else None
        #: Where the bytes come from: ``source(n)`` returns n bytes (tests put a fixed one here).
        self.source: Callable[[int], bytes] = os.urandom if self._random is None else self._random.randbytes
        self._tokens = float(config.rate)
        self._stamp = ctx.clock.now()
        self._refill: Timer = ctx.clock.timer(lambda: self.notify(0))

    def serve(self, index: int, queue: Virtqueue) -> None:
        rate = self.config.rate
        while queue.pending():
            budget = CHAIN_CAP
            if rate:
                now = self.ctx.clock.now()
                self._tokens = min(float(rate), self._tokens + (now - self._stamp) * rate / _SECOND)
                self._stamp = now
                if self._tokens < 1:
                    # Come back once a full chain's worth (or what a second gives) has built up.
                    wanted = min(64, rate) - self._tokens
                    self._refill.mod(now + max(1, int(wanted * _SECOND / rate)))
                    return
                budget = min(budget, int(self._tokens))
            chain = queue.pop()
            if chain is None:
                return
            count = min(chain.writable_length, budget)
            written = chain.write(self.memory, 0, self.source(count)) if count else 0
            if rate:
                self._tokens -= written
            self.complete(queue, chain, written)

    def device_reset(self) -> None:
        self._refill.cancel()

    def close(self) -> None:
        self._refill.cancel()


@hookimpl
def vmcore_device_types() -> list[type]:
    return [VirtioRng]
