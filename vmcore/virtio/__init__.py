"""virtio for device models: the split virtqueue (:mod:`.queue`) and the MMIO transport (:mod:`.mmio`).

Device types built on them live in ``devices/`` (virtio-blk, virtio-console, virtio-rng);
a third-party device subclasses :class:`VirtioMmioDevice` the same way.
"""

from .mmio import VirtioMmioConfig, VirtioMmioDevice
from .queue import Buffer, Chain, Virtqueue, VirtqueueError

__all__ = ["Buffer", "Chain", "Virtqueue", "VirtqueueError", "VirtioMmioConfig", "VirtioMmioDevice"]
