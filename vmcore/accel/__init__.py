"""CPU accelerators: what the machine loop needs from a CPU, behind one interface.

An accelerator maps the guest's memory slots, loads a :class:`~vmcore.cpu.CpuState`,
and runs until something stops the machine, turning every IO and MMIO exit into
a call on the port-IO or MMIO :class:`~vmcore.bus.Bus`.
"""

from __future__ import annotations

import abc
import logging
import math

import attrs

from ..bus import Bus
from ..clock import Clock
from ..irq import InterruptController
from ..cpu import CpuState
from ..memory import GuestMemory
from ..stop import StopReason


log = logging.getLogger("vmcore.accel")


class AcceleratorUnavailable(Exception):
    """The accelerator cannot run on this host; str() says why and what to do."""


def _positive(_instance: object, attribute: attrs.Attribute, value: float | None) -> None:  # type: ignore[type-arg]
    # A timeout of 0 disarms the timer and a count of 0 is never reached: both would mean "unbounded".
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be positive (or None for no limit), got {value!r}")


@attrs.frozen
class RunLimits:
    """Bounds on one run: wall-clock seconds and number of exits (None: unbounded)."""

    timeout: float | None = attrs.field(default=None, validator=_positive)
    max_exits: int | None = attrs.field(default=None, validator=_positive)


#: The vCPU for a report: registers, segments, the guest-physical address of the code at
#: RIP and up to 16 bytes of it (None where they cannot be read).
CpuSnapshot = tuple[dict[str, int], dict[str, dict[str, int]], "int | None", "bytes | None"]


class Accelerator(abc.ABC):
    """One vCPU on some CPU backend: everything the machine uses of one is declared here."""

    name: str
    #: The vCPU as it was when a device raised inside the CPU backend, if the backend took it
    #: then (the software CPU may run on to the end of a block before it stops); else None.
    fault_snapshot: CpuSnapshot | None = None

    @abc.abstractmethod
    def setup(self, memory: GuestMemory, state: CpuState) -> None:
        """Map every slot of ``memory`` and load the start state."""

    @abc.abstractmethod
    def run(self, pio: Bus, mmio: Bus, limits: RunLimits, clock: Clock | None = None,
            controller: InterruptController | None = None) -> StopReason:
        """Run the guest until it stops; device exceptions propagate to the caller.

        ``clock``'s timers fire on time during the run (the loop is woken for them),
        and ``controller``'s INTR is delivered to the guest when it can take it.
        """

    @abc.abstractmethod
    def snapshot(self) -> CpuSnapshot:
        """The vCPU now, for fault reports."""

    def set_irq_line(self, line: int, level: bool) -> None:
        """Drive an input of an in-kernel interrupt controller (KVM's irqchip; others have none)."""
        raise AcceleratorUnavailable(f"{self.name} has no in-kernel interrupt controller")

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend."""


def create(name: str, kernel_irqchip: bool = False, kernel_pit: bool = False) -> Accelerator:
    """An accelerator by profile name: ``kvm``, ``tcg`` (unicorn) or ``auto``.

    ``auto`` takes KVM when /dev/kvm opens and a VM can be created, else the
    software CPU, and logs which it chose and why. ``kernel_irqchip`` (KVM only)
    puts the PIC/IOAPIC, and ``kernel_pit`` the PIT, in the kernel.
    """
    if kernel_irqchip and name == "tcg":
        raise AcceleratorUnavailable("irqchip: kernel needs KVM; the software CPU uses irqchip: userspace")
    if name == "kvm" or (name == "auto" and kernel_irqchip):
        from .kvm import KvmAccelerator

        return KvmAccelerator.open(kernel_irqchip=kernel_irqchip, kernel_pit=kernel_pit)
    if name == "tcg":
        from .unicorn import UnicornAccelerator

        return UnicornAccelerator()
    if name == "auto":
        from .kvm import KvmAccelerator

        try:
            accel: Accelerator = KvmAccelerator.open()
        except AcceleratorUnavailable as exc:
            from .unicorn import UnicornAccelerator  # imported only when needed: it costs start-up time

            log.warning("accelerator auto: using tcg (software CPU) because KVM is unusable: %s", exc)
            return UnicornAccelerator()
        log.info("accelerator auto: using kvm")
        return accel
    raise AcceleratorUnavailable(f"unknown accelerator {name!r}; expected kvm, tcg or auto")
