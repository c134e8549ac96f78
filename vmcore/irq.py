"""Interrupt request lines as devices see them."""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol, runtime_checkable

from .immutable import Immutable

#: Receives (line number, new level) whenever a line changes; a pulse is 1 then 0.
IrqSink = Callable[[int, bool], None]


class IrqEvent(Immutable):
    """An interrupt as a trace shows it (``Machine.set_irq_tracer``): an IRQ line changing level
    (``kind`` "line": ``number`` the line, ``value`` the new level, ``devices`` the devices that
    drive it), or the CPU taking an interrupt (``kind`` "vector": ``value`` the vector,
    ``devices`` the controller that answered the acknowledge cycle)."""

    kind: str
    number: int
    value: int
    devices: tuple[str, ...]
    time: int  # machine time, ns

    def __str__(self) -> str:
        who = "/".join(self.devices) if self.devices else "(no device)"
        if self.kind == "line":
            return f"irq  line {self.number} -> {self.value} {who}"
        return f"intr vector {self.value:#04x} <- {who}"


class IrqLine:
    """One interrupt line a device drives: level (raise/lower) or edge (pulse).

    The machine connects the line to the interrupt controller in use; on the fake
    bus a recorder sits there. The device never knows which.
    """

    __slots__ = ("number", "level", "_sink")

    def __init__(self, number: int, sink: IrqSink | None = None) -> None:
        self.number = number
        self.level = False
        self._sink = sink

    def set_level(self, level: bool) -> None:
        """Drive the line to ``level``; only changes reach the controller."""
        level = bool(level)
        if level != self.level:
            self.level = level
            if self._sink is not None:
                self._sink(self.number, level)

    def raise_(self) -> None:
        """Assert the line (level-triggered use). Named with ``_``: ``raise`` is a keyword."""
        self.set_level(True)

    def lower(self) -> None:
        """Deassert the line."""
        self.set_level(False)

    def pulse(self) -> None:
        """An edge: raise then lower (for edge-triggered inputs such as ISA IRQs)."""
        self.set_level(True)
        self.set_level(False)

    def __repr__(self) -> str:
        return f"IrqLine({self.number}, level={int(self.level)})"


@runtime_checkable
class InterruptController(Protocol):
    """A device that takes IRQ lines in and raises the CPU's INTR (e.g. the i8259 PIC).

    The machine (or the fake bus) routes every :class:`IrqLine` change to
    :meth:`set_irq`, and the CPU side polls :meth:`pending` and calls
    :meth:`acknowledge` (the INTA cycle) when it takes the interrupt.
    """

    #: Set by the machine: called with the new INTR level whenever it changes, so the
    #: CPU can be kicked out of a run to take the interrupt.
    intr_changed: Callable[[bool], None] | None

    def set_irq(self, line: int, level: bool) -> None:
        """An input line changed level."""

    def pending(self) -> bool:
        """True while the INTR output to the CPU is asserted."""

    def acknowledge(self) -> int:
        """The INTA cycle: return the vector to deliver and update in-service state."""


@runtime_checkable
class LocalInterruptController(Protocol):
    """The CPU's own interrupt controller (a local APIC): it raises INTR and answers the INTA cycle.

    It takes no IRQ lines itself: the machine wires the board's interrupt controller (the
    8259 pair) to it with :meth:`connect_external`, and the CPU then asks this one, which
    offers its own interrupts and passes the external one on (LINT0 in ExtINT mode).
    """

    intr_changed: Callable[[bool], None] | None

    def connect_external(self, controller: InterruptController) -> None:
        """Take ``controller``'s INTR as an input; its INTA cycle goes through this one."""

    def pending(self) -> bool:
        """True while INTR to the CPU is asserted."""

    def acknowledge(self) -> int:
        """The INTA cycle: the vector to deliver."""

    # Optionally, NMIs: ``take_nmi() -> bool`` (whether one waits; taking clears it) and a
    # ``nmi_raised`` callback attribute the machine sets, called when one is latched; and
    # model-specific registers (ModelSpecificRegisters below), such as IA32_APIC_BASE.


@runtime_checkable
class ModelSpecificRegisters(Protocol):
    """Registers a device shows the CPU as MSRs (the local APIC's IA32_APIC_BASE).

    The CPU side (vmcore.accel) routes rdmsr/wrmsr of :meth:`msr_indices` here, on each
    accelerator that can trap them, and raises #GP(0) where :meth:`read_msr` returns None or
    :meth:`write_msr` False. Checks that depend on the CPU (reserved address bits above its
    MAXPHYADDR, features its CPUID lacks) are the CPU side's; the device checks the rest.
    """

    def msr_indices(self) -> tuple[int, ...]:
        """The MSRs this device answers."""

    def read_msr(self, index: int) -> int | None:
        """The MSR's value, or None for #GP."""

    def write_msr(self, index: int, value: int) -> bool:
        """Take a write; False for #GP (and nothing changed)."""


@runtime_checkable
class IoInterruptController(Protocol):
    """An interrupt controller that takes IRQ lines and sends messages to local APICs (an I/O APIC)."""

    def set_irq(self, line: int, level: bool) -> None:
        """An input pin changed level."""

    def connect_local(self, apic: Any) -> None:
        """Send interrupts to ``apic`` (a local APIC model); connecting one twice changes nothing."""


def implements(obj: Any, protocol: type) -> bool:
    """``isinstance(obj, protocol)`` for the runtime-checkable protocols here: whether ``obj`` has
    every member the protocol names. typing's own check walks the protocol's classes again at
    every call (about 20 us on Python 3.11); a machine makes some 90 of them as it is built and
    starts running."""
    return all(hasattr(obj, name) for name in _members(protocol))


@functools.cache
def _members(protocol: type) -> tuple[str, ...]:
    """The names ``protocol`` declares: its methods and annotated attributes."""
    names = set(vars(protocol).get("__annotations__", {}))
    names.update(name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_"))
    return tuple(sorted(names))
