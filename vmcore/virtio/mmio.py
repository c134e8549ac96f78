"""virtio over MMIO (virtio 1.x, section 4.2: the version 2 register layout), for device models.

:class:`VirtioMmioDevice` is the transport every virtio device here is built on: the
registers a driver finds the device by, negotiates features with, sets its queues up and
notifies it through, the interrupt, and the device-specific configuration space from
offset 0x100. A device type subclasses it with its ``device_id``, its queues' maximum
sizes, its feature bits and configuration bytes, and serves its queues in
:meth:`~VirtioMmioDevice.serve` with checked chains (:mod:`vmcore.virtio.queue`).

What a driver gets wrong is contained here: a queue it breaks (:class:`VirtqueueError`)
sets DEVICE_NEEDS_RESET and raises a configuration-change interrupt, is logged once, and
the device serves nothing more until the driver resets it; registers are 32-bit (other
widths read 0 and are ignored, logged once); features the device did not offer, or
virtio 1.x not accepted, leave FEATURES_OK clear, as the specification says.

QueueNotify is a doorbell (one per queue, matched by its index): on KVM an ioeventfd, so
a notify costs the guest no exit. A Linux guest finds the device through
``virtio_mmio.device=SIZE@BASE:IRQ`` on its command line (the ``linux`` loader adds one for
each such device, from :meth:`~VirtioMmioDevice.kernel_parameters`), or, where the kernel
was built without that parameter (Debian's), through the ACPI tables the machine then
writes (a DSDT device ``LNRO0005`` each, vmcore.acpi; the machine needs an ``acpi-pm``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from ..acpi import AcpiDevice
from ..bus import Doorbell, Region, Space
from ..device import Device, DeviceContext, config, in_range, prop
from .queue import Chain, Virtqueue, VirtqueueError

MAGIC = 0x74726976  # "virt"
VERSION = 2
VENDOR = 0x4F434D56  # "VMCO"
#: The window's size: the registers, then the configuration space from 0x100.
WINDOW = 0x200
CONFIG_OFFSET = 0x100

# Registers (4.2.2).
(MAGIC_VALUE, VERSION_REG, DEVICE_ID, VENDOR_ID, DEVICE_FEATURES, DEVICE_FEATURES_SEL, DRIVER_FEATURES,
 DRIVER_FEATURES_SEL, QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY, QUEUE_NOTIFY, INTERRUPT_STATUS,
 INTERRUPT_ACK, STATUS, QUEUE_DESC_LOW, QUEUE_DESC_HIGH, QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, QUEUE_DEVICE_LOW,
 QUEUE_DEVICE_HIGH, CONFIG_GENERATION) = (0x000, 0x004, 0x008, 0x00C, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034,
                                         0x038, 0x044, 0x050, 0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094,
                                         0x0A0, 0x0A4, 0x0FC)

#: The registers' names in the specification (4.2.2), by offset: what reports call them.
REGISTER_NAMES = {
    MAGIC_VALUE: "MagicValue", VERSION_REG: "Version", DEVICE_ID: "DeviceID", VENDOR_ID: "VendorID",
    DEVICE_FEATURES: "DeviceFeatures", DEVICE_FEATURES_SEL: "DeviceFeaturesSel", DRIVER_FEATURES: "DriverFeatures",
    DRIVER_FEATURES_SEL: "DriverFeaturesSel", QUEUE_SEL: "QueueSel", QUEUE_NUM_MAX: "QueueNumMax",
    QUEUE_NUM: "QueueNum", QUEUE_READY: "QueueReady", QUEUE_NOTIFY: "QueueNotify",
    INTERRUPT_STATUS: "InterruptStatus", INTERRUPT_ACK: "InterruptACK", STATUS: "Status",
    QUEUE_DESC_LOW: "QueueDescLow", QUEUE_DESC_HIGH: "QueueDescHigh", QUEUE_DRIVER_LOW: "QueueDriverLow",
    QUEUE_DRIVER_HIGH: "QueueDriverHigh", QUEUE_DEVICE_LOW: "QueueDeviceLow", QUEUE_DEVICE_HIGH: "QueueDeviceHigh",
    CONFIG_GENERATION: "ConfigGeneration",
}


def register_name(offset: int) -> str:
    """The register at ``offset`` in the window (``Status``, ``Config+0x8``, ``Status+2``), for reports."""
    if offset >= CONFIG_OFFSET:
        return f"Config+{offset - CONFIG_OFFSET:#x}"
    name = REGISTER_NAMES.get(offset & ~3)
    if name is None:
        return f"reserved {offset:#x}"
    return name + (f"+{offset & 3}" if offset & 3 else "")


# Device status bits (2.1).
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, DEVICE_NEEDS_RESET, FAILED = 1, 2, 4, 8, 64, 128
# Interrupt status bits (4.2.2): used buffers, configuration change.
USED_BUFFER, CONFIG_CHANGE = 1, 2
# Feature bits every device here offers (6): indirect descriptors, virtio 1.x.
F_INDIRECT_DESC = 1 << 28
F_VERSION_1 = 1 << 32


@config
class VirtioMmioConfig:
    """The transport's properties: every virtio-mmio device type's Config subclasses this."""

    base: int = prop(0xD000_0000, "Guest-physical base of the 512-byte register window.", hex=True,
                     validator=in_range(0, (1 << 64) - WINDOW))
    irq: int = prop(5, "Interrupt line (a level-triggered ISA IRQ on a PC).", validator=in_range(0, 23))


class VirtioMmioDevice(Device):
    """A virtio device on the MMIO transport; subclasses serve its queues.

    Set ``device_id`` (5: the device types), ``queue_sizes`` (each queue's maximum size) and
    ``features`` (the device-specific bits offered; VERSION_1 and INDIRECT_DESC are added), and
    implement :meth:`serve`; :meth:`config_space` gives the configuration bytes. A device
    answers a chain with :meth:`complete`, which also interrupts the driver when it asks.
    """

    device_id: ClassVar[int]
    queue_sizes: ClassVar[tuple[int, ...]]
    features: ClassVar[int] = 0
    class State:
        """What a snapshot keeps of the transport (vmcore.snapshot): its registers and each queue.
        A device type with state of its own subclasses this class, adding its fields."""

        status: int
        driver_features: int
        device_features_sel: int
        driver_features_sel: int
        queue_sel: int
        interrupt_status: int
        generation: int
        broken: str | None
        queues: list[Virtqueue]

    def __init__(self, config: Any, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.memory = ctx.memory
        self.line = ctx.irq(config.irq)
        self.queues = [Virtqueue(ctx.memory, size) for size in self.queue_sizes]
        self.offered = self.features | F_VERSION_1 | F_INDIRECT_DESC
        self._warned: set[str] = set()
        self._reset_transport()

    # --- what a device type provides ---------------------------------------------------------

    def serve(self, index: int, queue: Virtqueue) -> None:
        """The driver notified queue ``index``: take its chains (``queue.pop()``) and complete them."""
        raise NotImplementedError

    def config_space(self) -> bytes:
        """The device-specific configuration (read from offset 0x100); none by default."""
        return b""

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A driver's write to the configuration space; ignored by default (read-only fields)."""

    def device_reset(self) -> None:
        """The driver reset the device (status 0): drop what the device type keeps per session."""

    # --- the transport ------------------------------------------------------------------------

    def regions(self) -> Sequence[Region]:
        bells = tuple(Doorbell(QUEUE_NOTIFY, 4, index) for index in range(len(self.queues)))
        return [Region(Space.MMIO, self.config.base, WINDOW, self.read, self.write, sizes=(1, 2, 4),
                       name="virtio-mmio", doorbells=bells, label=register_name)]

    def acpi_devices(self) -> Sequence[AcpiDevice]:
        """For Linux kernels built without VIRTIO_MMIO_CMDLINE_DEVICES (Debian's): a DSDT device
        ``LNRO0005``, its window and IRQ, which ``virtio_mmio`` matches through ACPI."""
        return (AcpiDevice("LNRO0005", self.config.base, WINDOW, self.config.irq),)

    @classmethod
    def kernel_parameters(cls, config: Any) -> Sequence[str]:
        """How Linux finds the device: ``virtio_mmio.device=SIZE@BASE:IRQ`` (its virtio_mmio driver)."""
        return (f"virtio_mmio.device={WINDOW:#x}@{config.base:#x}:{config.irq}",)

    def reset(self) -> None:
        self._reset_transport()
        self.device_reset()

    def _reset_transport(self) -> None:
        self.status = 0
        self.driver_features = 0
        self.device_features_sel = self.driver_features_sel = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        self.generation = 0
        self.broken: str | None = None
        for queue in self.queues:
            queue.reset()
        self.line.lower()

    def read(self, offset: int, size: int) -> int:
        if offset >= CONFIG_OFFSET:
            data = self.config_space()[offset - CONFIG_OFFSET:offset - CONFIG_OFFSET + size]
            return int.from_bytes(data.ljust(size, b"\0"), "little")
        if size != 4 or offset % 4:
            self._warn("width", f"{size}-byte read of register {offset:#x}: virtio-mmio registers are 32-bit")
            return 0
        queue = self._selected()
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION_REG:
            return VERSION
        if offset == DEVICE_ID:
            return self.device_id
        if offset == VENDOR_ID:
            return VENDOR
        if offset == DEVICE_FEATURES:
            return (self.offered >> (32 * self.device_features_sel)) & 0xFFFFFFFF if self.device_features_sel < 2 else 0
        if offset == QUEUE_NUM_MAX:
            return 0 if queue is None else queue.max_size
        if offset == QUEUE_READY:
            return int(queue is not None and queue.ready)
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return self.status
        if offset == CONFIG_GENERATION:
            return self.generation
        return 0  # write-only registers and reserved offsets read 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= CONFIG_OFFSET:
            self.config_write(offset - CONFIG_OFFSET, size, value)
            return
        if size != 4 or offset % 4:
            self._warn("width", f"{size}-byte write of register {offset:#x}: virtio-mmio registers are 32-bit")
            return
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES:
            if self.driver_features_sel < 2 and not self.status & FEATURES_OK:
                shift = 32 * self.driver_features_sel
                self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | value << shift
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == QUEUE_NOTIFY:
            self.notify(value)
        elif offset == INTERRUPT_ACK:
            self.interrupt_status &= ~value
            self._update_line()
        elif offset == STATUS:
            self._set_status(value)
        elif offset in _QUEUE_FIELDS:
            self._queue_field(offset, value)

    def _selected(self) -> Virtqueue | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def _queue_field(self, offset: int, value: int) -> None:
        queue = self._selected()
        if queue is None:
            return
        if offset == QUEUE_READY:
            if not value:
                queue.ready = False
            elif not queue.ready:
                queue.indirect = bool(self.driver_features & F_INDIRECT_DESC)
                try:
                    queue.enable()
                except VirtqueueError as exc:
                    self._needs_reset(f"queue {self.queue_sel}: {exc}")
            return
        if queue.ready:
            return  # the driver may change a queue's set-up only while it is not ready (4.2.3.2)
        if offset == QUEUE_NUM:
            queue.size = value
        else:
            name, high = _QUEUE_FIELDS[offset]
            current = getattr(queue, name)
            setattr(queue, name, (current & 0xFFFFFFFF) | value << 32 if high
                    else (current & ~0xFFFFFFFF) | value)

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        if value & FEATURES_OK and not self.status & FEATURES_OK:
            if self.driver_features & ~self.offered or not self.driver_features & F_VERSION_1:
                value &= ~FEATURES_OK  # the driver reads it back and gives up (3.1.1)
        self.status = value | (self.status & DEVICE_NEEDS_RESET)

    def notify(self, index: int) -> None:
        """Serve queue ``index`` as the driver's notify does: only while the driver is running (DRIVER_OK),
        the queue is ready and no queue is broken; a VirtqueueError marks the device as needing reset.
        A device calls it too when it can serve again on its own (host input, a refilled budget)."""
        if self.broken is not None or not self.status & DRIVER_OK or index >= len(self.queues):
            return
        queue = self.queues[index]
        if not queue.ready:
            return
        try:
            self.serve(index, queue)
        except VirtqueueError as exc:
            self._needs_reset(f"queue {index}: {exc}")

    def complete(self, queue: Virtqueue, chain: Chain, written: int) -> None:
        """Give ``chain`` back as used, ``written`` bytes written, and interrupt if the driver asks."""
        queue.push(chain, written)
        if queue.wants_interrupt():
            self.interrupt_status |= USED_BUFFER
            self._update_line()

    def _needs_reset(self, reason: str) -> None:
        """The driver broke a queue: say so once, and serve nothing until it resets the device."""
        if self.broken is None:
            self.ctx.log.warning("%s: %s; the device needs a reset (DEVICE_NEEDS_RESET)", self.ctx.name, reason)
        self.broken = reason
        self.status |= DEVICE_NEEDS_RESET
        self.interrupt_status |= CONFIG_CHANGE
        self._update_line()

    def _update_line(self) -> None:
        self.line.set_level(bool(self.interrupt_status))

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self.ctx.log.warning("%s: %s (said once)", self.ctx.name, message)


#: Queue registers that set a ring's address: (Virtqueue attribute, high half?).
_QUEUE_FIELDS: dict[int, tuple[str, bool]] = {
    QUEUE_NUM: ("size", False), QUEUE_READY: ("ready", False),
    QUEUE_DESC_LOW: ("desc", False), QUEUE_DESC_HIGH: ("desc", True),
    QUEUE_DRIVER_LOW: ("avail", False), QUEUE_DRIVER_HIGH: ("avail", True),
    QUEUE_DEVICE_LOW: ("used", False), QUEUE_DEVICE_HIGH: ("used", True),
}
