"""CPU accelerators: what the machine loop needs from a CPU, behind one interface.

An accelerator maps the guest's memory slots, loads a :class:`~vmcore.cpu.CpuState`
and runs the CPU, decoding what stops it. The loop around it, which turns every IO
and MMIO exit into a call on the port-IO or MMIO :class:`~vmcore.bus.Bus`, serves
timers and interrupts and enforces the limits, is the run core's
(:mod:`vmcore.accel.core`), the same for every accelerator.
"""

from __future__ import annotations

import abc
import logging
import math
from typing import TYPE_CHECKING, Callable

from ..bus import Bus
from ..clock import Clock
from ..irq import InterruptController
from ..cpu import CpuState
from ..immutable import Immutable
from ..memory import GuestMemory
from ..stop import StopReason

if TYPE_CHECKING:
    from ..timeline import Timeline
    from .core import Diversion, RunCore


log = logging.getLogger("vmcore.accel")


class AcceleratorUnavailable(Exception):
    """The accelerator cannot run on this host; str() says why and what to do."""


class RunLimits(Immutable):
    """Bounds on one run: wall-clock seconds and number of exits (None: unbounded); and after how
    many seconds of machine time a guest that keeps reading one register and getting one answer
    is said to be stuck (``vmcore.stuck``; None: never). Each is positive or None."""

    timeout: float | None = None
    max_exits: int | None = None
    stuck_after: float | None = 2.0
    #: Stop (kind "paused") at the first point after this many exits where every access made
    #: was served and none is under way: the software CPU at the next block start, KVM at the
    #: exit itself. A snapshot is saved there; max_exits stops at once, dropping what follows.
    pause_after: int | None = None
    #: As pause_after, at this machine time (ns) instead: the first such point after it (a guest
    #: in hlt is let wait for its interrupt first, so a restore never cuts a hlt short).
    pause_at: int | None = None
    #: As pause_after, after this many instructions of the guest: exactly there, with a virtual clock
    #: (vmcore.clock.VirtualClock, which counts them); a run on the host's clock refuses it.
    pause_at_instruction: int | None = None
    #: As pause_after, when the process receives this signal (SIGUSR1, say), on the main thread.
    pause_on_signal: int | None = None

    def __post_init__(self) -> None:
        # A timeout of 0 disarms the timer and a count of 0 is never reached: both would mean "unbounded".
        for name, value in zip(self._fields, self._values()):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive (or None for no limit), got {value!r}")


#: The vCPU for a report: registers, segments, the guest-physical address of the code at
#: RIP and up to 16 bytes of it (None where they cannot be read).
CpuSnapshot = tuple[dict[str, int], dict[str, dict[str, int]], "int | None", "bytes | None"]


class Accelerator(abc.ABC):
    """One vCPU on some CPU backend: everything the machine and the run core use of one is declared here.

    A backend runs the CPU and decodes its exits; the loop around it, the accessors that
    take an access to its device, the limits and the waiting are the run core's
    (:mod:`vmcore.accel.core`), written once for every backend.
    """

    name: str
    #: The vCPU as it was when a device raised inside the CPU backend, if the backend took it
    #: then (the software CPU may run on to the end of a block before it stops); else None.
    fault_snapshot: CpuSnapshot | None = None

    @abc.abstractmethod
    def setup(self, memory: GuestMemory, state: CpuState) -> None:
        """Map every slot of ``memory`` and load the start state."""

    def run(self, pio: Bus, mmio: Bus, limits: RunLimits, clock: Clock | None = None,
            controller: InterruptController | None = None) -> StopReason:
        """Run the guest until it stops; device exceptions other than GuestExit propagate to the caller.

        ``clock``'s timers fire on time during the run (the loop is woken for them),
        and ``controller``'s INTR is delivered to the guest when it can take it.
        """
        from .core import RunCore

        return RunCore(self, pio, mmio, limits, clock, controller).run()

    def virtual_time_unavailable(self) -> str | None:
        """Why this accelerator cannot run a machine whose clock is virtual (None: it can). Virtual
        time is made of the instructions the guest executed, which only a CPU that counts them has."""
        return f"{self.name} runs the guest at the host's pace; virtual time needs the software CPU (accel: tcg)"

    def time_stamp_counter(self) -> tuple[Callable[[], int], Callable[[], int]] | None:
        """The guest's TSC as two functions: its value now (on the vCPU thread, during a run) and
        its rate in Hz (vmcore.tsc binds devices to them). None where the backend cannot tell."""
        return None

    # --- what the run core calls ---------------------------------------------------------

    @abc.abstractmethod
    def begin(self, core: "RunCore") -> Callable[[], int]:
        """Prepare a run on ``core``'s buses and accessors; the function that runs the CPU to its next exit.

        That function returns an exit kind (:mod:`vmcore.accel.core`) with the access in
        ``core.exit``, and raises :class:`~vmcore.accel.core.CpuStop` for a stop of its own.
        """

    @abc.abstractmethod
    def end(self) -> None:
        """Undo :meth:`begin` (called however the run ended)."""

    @abc.abstractmethod
    def offer_interrupt(self, controller: InterruptController) -> bool:
        """Deliver the controller's pending interrupt if the guest can take it now; True when delivered."""

    def running_controller(self) -> tuple[InterruptController | None] | None:
        """During a run, (the CPU's interrupt controller,); None between runs."""
        core = getattr(self, "_core", None)
        return None if core is None else (core.controller,)

    def rebind_controller(self, controller: InterruptController | None) -> None:
        """During a run, make ``controller`` the CPU's (RunCore.rebind); between runs nothing holds it."""
        core = getattr(self, "_core", None)
        if core is not None:
            core.rebind(controller)

    def controller_changed(self, controller: InterruptController | None) -> None:
        """During a run: the CPU's interrupt controller is now ``controller`` (RunCore.rebind, after a
        hot reload); a backend that kept the old one (for CR8, the TPR) takes the new one."""

    def inject_nmi(self) -> None:
        """Deliver an NMI: taken whatever IF says, then none until the guest's next iret (SDM 6.7.1)."""
        raise NotImplementedError(f"{self.name}: NMIs are not supported")

    @abc.abstractmethod
    def interrupts_enabled(self) -> bool:
        """The guest's IF: whether an interrupt can end its ``hlt``."""

    #: False where ``enter`` goes on past accesses (the software CPU calls the accessors from
    #: inside its run): the core then kicks it when an access raises INTR, to offer it at once.
    returns_per_access = True

    @abc.abstractmethod
    def kick(self) -> None:
        """From any thread: make ``enter`` come back (YIELD) soon, so timers and input are served."""

    def between_instructions(self) -> bool:
        """Whether the access just served ended its instruction (not one element of a ``rep
        ins/outs`` or half of a split MMIO access that the backend serves one by one): a pause
        point waits until it is."""
        return True

    def deadline_changed(self, deadline: int) -> None:
        """A timer was armed before all others, on the machine's thread, while the clock is
        virtual: the running slice of guest code must end by ``deadline`` (ns of machine time)."""

    @abc.abstractmethod
    def end_run(self) -> None:
        """From any thread or an access: the run is over (a limit); no more accesses, come back at once."""

    def diversion(self) -> "Diversion":
        """The run's :class:`~vmcore.accel.core.Diversion` (by default one that never diverts)."""
        from .core import Diversion

        return Diversion()

    def abort(self, exc: BaseException) -> None:
        """A device access ended the run with ``exc`` (GuestExit, DeviceFault, Ctrl-C): by default, raise it.

        A backend whose accesses are callbacks from its CPU stops the CPU and raises it after.
        """
        raise exc

    def flush(self) -> None:
        """Deliver, through the core's accessors, the writes the guest queued without an exit (posted, rung)."""

    @abc.abstractmethod
    def snapshot(self) -> CpuSnapshot:
        """The vCPU now, for fault reports."""

    #: Where the run core records the vCPU's runs and halts (vmcore.timeline.Timeline), or None.
    timeline: "Timeline | None" = None

    #: Set by :meth:`request_step`; the run core calls it once the instruction has run.
    step_done: Callable[[], None] | None = None

    def request_step(self, done: Callable[[], None]) -> None:
        """Between runs of the CPU (the monitor's paused machine): from the next entry on, run
        one instruction and come back (STEPPED, or HALT for a ``hlt``), where the run core calls
        ``done`` before anything else. An instruction that makes an exit has it served first."""
        raise AcceleratorUnavailable(f"{self.name} cannot single-step")

    def set_registers(self, values: dict[str, int]) -> None:
        """Write general-purpose registers (``rax``..``r15``, ``rip``, ``rflags``) between runs (the monitor)."""
        raise AcceleratorUnavailable(f"{self.name} cannot write registers")

    def save_cpu(self) -> dict:  # type: ignore[type-arg]
        """The vCPU between runs, JSON-ready, for a snapshot (vmcore.snapshot)."""
        raise AcceleratorUnavailable("cannot save its vCPU in a snapshot yet (the software CPU can: --accel tcg)")

    def restore_cpu(self, saved: dict) -> None:  # type: ignore[type-arg]
        """After :meth:`setup`, before the run: the vCPU as :meth:`save_cpu` saved it."""
        raise AcceleratorUnavailable("cannot restore a vCPU from a snapshot yet (the software CPU can: --accel tcg)")

    def stop_reason(self, kind: str, message: str) -> StopReason:
        """A stop with the vCPU's registers and code at RIP, for the report."""
        registers, segments, code_address, code = self.snapshot()
        return StopReason.of(kind, message, registers=registers, segments=segments,
                             code_address=code_address, code=code)

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
