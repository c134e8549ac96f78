"""A machine: memory, buses and devices built from a profile, run on an accelerator.

:meth:`Machine.build` does everything that needs no CPU (what ``vmcore check``
runs); :meth:`Machine.run` then picks an accelerator, loads the start state and
runs until the guest stops.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import stat
import traceback
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .accel import Accelerator, AcceleratorUnavailable, RunLimits, create
from .bus import Bus, BusError, Direction, Region, Space, Transaction
from .chardev import HostFile
from .clock import Clock, HostClock, VirtualClock
from .cpu import CpuSetupError, CpuState, start_state, tables_size
from .cpu_model import CpuModelError
from .device import PropertyError, resolve_paths
from .faults import DeviceFault, GuestExit, GuestReset, obey
from .irq import InterruptController, IoInterruptController, IrqEvent, LocalInterruptController, implements
from .memory import GuestMemory, GuestMemoryError
from .tsc import TimeStampCounter
from .pci import PciBus
from .plugins import DeviceRegistry, DeviceTypeError
from .profile import DeviceSpec, Profile, ProfileError, Where
from .stop import StopReason
from .wiring import IrqLines, build_device, claim_regions, controller_of, cpu_interrupts, irq_route

if TYPE_CHECKING:
    from .timeline import Timeline

log = logging.getLogger("vmcore.machine")

#: How many of the latest IRQ line changes :attr:`Machine.irq_log` keeps (a PIT at divisor 1
#: changes a line millions of times a minute).
IRQ_LOG_LENGTH = 4096


class RomRegion:
    """Catches guest writes to a ROM slot (MMIO exits on KVM): logged once, dropped."""

    def __init__(self, name: str, memory: GuestMemory, base: int) -> None:
        self.name = name
        self.memory = memory
        self.base = base
        self.dropped = 0

    def read(self, offset: int, size: int) -> int:
        return self.memory.read_int(self.base + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if self.dropped == 0:
            log.warning("guest write to ROM slot %r at %#x (size %d) dropped", self.name, self.base + offset, size)
        self.dropped += 1


class Machine:
    """Memory slots, the two buses and the device instances of one profile."""

    def __init__(self, profile: Profile, memory: GuestMemory, pio: Bus, mmio: Bus,
                 devices: dict[str, Any], clock: Clock, irq_lines: IrqLines,
                 state: CpuState, pci: PciBus | None = None) -> None:
        self.profile = profile
        #: PCI bus 0 (config accesses are traced with the buses' transactions).
        self.pci = pci
        self.memory = memory
        self.pio = pio
        self.mmio = mmio
        self.devices = devices
        self.clock = clock
        #: The guest's time-stamp counter as devices see it: bound to the accelerator while it runs.
        self.tsc = TimeStampCounter(clock)
        #: The IRQ lines devices drive (vmcore.wiring.IrqLines); each change is logged below,
        #: then routed to the controller or KVM's irqchip once the machine runs.
        self.irq_lines = irq_lines
        irq_lines.record = self._record_irq
        self.state = state
        self.accelerator: Accelerator | None = None
        self._started = False  # devices' start() ran (see _start_devices)
        #: The latest IRQ line changes, oldest first: (machine time ns, line, level).
        self.irq_log: collections.deque[tuple[int, int, bool]] = collections.deque(maxlen=IRQ_LOG_LENGTH)
        #: How many times each IRQ line changed level since the machine was built.
        self.irq_changes: collections.Counter[int] = collections.Counter()
        #: (device, exception type name) -> timer callback faults contained under ``continue``.
        self.timer_faults: dict[tuple[str, str], int] = {}
        clock.on_error = self._timer_failed
        self._tracer: Callable[[Transaction], None] | None = None
        self._irq_tracer: Callable[[IrqEvent], None] | None = None
        self.timeline: Timeline | None = None  # see set_timeline
        #: A snapshot to go on from in the next run (see restore_snapshot): its header and memory.
        self._restored: tuple[dict[str, Any], bytes] | None = None
        #: The CPU's last accesses, for fault reports (see keep_history and Bus.history).
        self.history: collections.deque[tuple[Bus, Direction, int, int, int]] | None = None
        #: What a run undoes as it ends, besides its own (see replace_controller).
        self._after_run: list[Callable[[], None]] = []
        pio.device_errors = mmio.device_errors = profile.device_errors

    # --- building ------------------------------------------------------------------

    @classmethod
    def build(cls, profile: Profile, registry: DeviceRegistry | None = None, clock: Clock | None = None) -> "Machine":
        """Create memory, load images, build and wire devices; no CPU yet.

        Every problem is a ProfileError naming the file, line and key. ``clock``: the machine's
        (a recording's or a replay's, vmcore.record); by default the profile's.
        """
        registry = registry if registry is not None else DeviceRegistry.default()
        memory = GuestMemory()
        pio, mmio = Bus(Space.PIO), Bus(Space.MMIO)
        pci = PciBus(pio, mmio)
        if clock is None:
            clock = VirtualClock() if profile.clock == "virtual" else HostClock()
        irq_lines = IrqLines()
        image_sizes: dict[str, int] = {}  # bytes loaded into each slot, for placing the CPU tables
        devices: dict[str, Any] = {}
        try:
            for spec in profile.memory:
                try:
                    memory.add_slot(spec.name, spec.base, spec.size, spec.readonly)
                except (GuestMemoryError, OSError) as exc:
                    raise ProfileError(spec.where, f"memory.{spec.name}", str(exc)) from None
                if spec.image is not None:
                    image = spec.read_image()  # bounded: it fits the slot
                    memory.load(spec.base + spec.offset, image)
                    image_sizes[spec.name] = len(image)
                if spec.readonly:
                    rom = RomRegion(spec.name, memory, spec.base)
                    mmio.claim(Region(Space.MMIO, spec.base, spec.size, rom.read, rom.write, name="rom"),
                               f"rom:{spec.name}")
            configs = [(spec, *_device_config(spec, registry)) for spec in profile.devices]
            # What a Linux kernel needs on its command line to find devices (virtio-mmio's windows),
            # unless the machine describes them in ACPI tables (it has their acpi-pm): not both, or
            # a kernel that takes both finds each device twice.
            acpi = any(hasattr(dtype.cls, "pm_blocks") for _spec, dtype, _config in configs)
            parameters = [] if acpi else [
                parameter for _spec, dtype, config in configs
                for parameter in getattr(dtype.cls, "kernel_parameters", lambda _config: ())(config)]
            state, firmware_tables = _cpu_state(profile, memory, image_sizes, parameters)
            machine = cls(profile, memory, pio, mmio, devices, clock, irq_lines, state, pci)

            for spec, dtype, config in configs:
                key = f"devices.{spec.name}"
                try:
                    device = build_device(dtype.cls, config, spec.name, clock=clock, memory=memory, mmio=mmio,
                                          irq_lines=irq_lines, pci=pci, tsc=machine.tsc)
                except PropertyError as exc:  # e.g. a host path the device checked and refused
                    raise _property_error(spec, exc) from None
                except (ValueError, TypeError, OSError) as exc:
                    raise ProfileError(spec.where, key, f"device {spec.type!r} could not be created: {exc}") from None
                devices[spec.name] = device
                regions = list(device.regions())
                for region in regions:
                    if region.space is Space.MMIO:
                        _check_mmio_clear_of_memory(region, spec.name, key, spec.where, profile, memory)
                try:
                    claim_regions(regions, spec.name, pio, mmio)
                except BusError as exc:
                    raise ProfileError(spec.where, key, str(exc)) from None
            _check_host_outputs(profile, devices)
            if firmware_tables:
                _write_mp_table(memory, devices)
                _write_acpi_tables(profile, memory, devices)
        except BaseException:
            for device in devices.values():
                _close_quietly(device)
            memory.close()
            raise
        return machine

    @property
    def controller(self) -> InterruptController | None:
        """The device that takes IRQ lines (irqchip userspace), if the profile has one."""
        if self.profile.irqchip in ("none", "kernel"):
            return None
        return controller_of(self.devices.values())

    def _record_irq(self, number: int, level: bool) -> None:
        now = self.clock.now()
        self.irq_log.append((now, number, level))
        self.irq_changes[number] += 1
        tracer = self._irq_sink()
        if tracer is not None:
            tracer(IrqEvent("line", number, int(level), self.irq_lines.owners(number), now))

    def _irq_sink(self) -> Callable[[IrqEvent], None] | None:
        """Where interrupts go: the IRQ tracer, the timeline, both or neither."""
        tracer, timeline = self._irq_tracer, self.timeline
        if timeline is None:
            return tracer
        if tracer is None:
            return timeline.interrupt

        def both(event: IrqEvent) -> None:
            tracer(event)
            timeline.interrupt(event)

        return both

    def _timer_failed(self, callback: Callable[[], None], exc: BaseException) -> None:
        """A device's timer (or posted) callback raised: obey ``device_errors`` as the buses do.

        ``stop`` raises a :class:`DeviceFault` that ends the run with a report naming the
        device; ``continue`` logs it once per device and kind of error, and counts it.
        """
        owner = _callback_owner(callback, exc, self.devices)
        if owner is None:  # no device's code: vmcore's own error, reported as an internal one
            if isinstance(exc, Exception):
                raise exc
            raise RuntimeError(f"a timer callback raised {type(exc).__name__}: {exc}") from exc
        obey(self.profile.device_errors, DeviceFault(owner, "timer", "callback", 0, 0, None, exc),
             self.timer_faults, log)

    # --- running --------------------------------------------------------------------

    def set_tracer(self, tracer: Callable[[Transaction], None] | None) -> None:
        """Record every bus transaction (both spaces) through ``tracer``."""
        self._tracer = tracer
        self._install_tracer()

    def set_irq_tracer(self, tracer: Callable[[IrqEvent], None] | None) -> None:
        """Record interrupts through ``tracer``: every IRQ line change, with the devices that drive
        the line, and every interrupt the CPU takes (the vector its controller answered), from the
        next run on. Deliveries inside KVM's own irqchip (``irqchip: kernel``) are not seen."""
        self._irq_tracer = tracer

    def reload_device(self, name: str) -> str:
        """Re-import device ``name``'s module and rebuild it from its saved state, under a running
        guest (vmcore.reload: on the machine's thread, between exits or from the paused monitor).
        Returns what was done; a ReloadError leaves the running device as it was."""
        from .reload import reload_device

        return reload_device(self, name)

    def save_snapshot(self, path: str | Path) -> int:
        """Save the machine into ``path`` between runs (after a run stopped, or from the paused
        monitor): the vCPU, every device's state (vmcore.snapshot), guest memory (pages that are
        not all zero, compressed), the IRQ lines and machine time. Returns the file's size."""
        from .snapshot import SnapshotError, save_device, write_snapshot  # here: a run needs none of it

        if self.accelerator is None:
            raise SnapshotError("the machine has not run: there is no vCPU to save")
        header = {
            "profile": self.profile.name,
            "accelerator": self.accelerator.name,
            "time_ns": self.clock.now(),
            "cpu": self.accelerator.save_cpu(),
            "devices": {name: save_device(device) for name, device in self.devices.items()},
            "irq": {str(line.number): line.level for line in self.irq_lines},
        }
        return write_snapshot(path, header, [(block.name, block.view, block.readonly)
                                             for block in self.memory.blocks()])

    def restore_snapshot(self, path: str | Path) -> None:
        """Give this machine, built from the profile the snapshot was made with and not yet run,
        the saved state; the next run goes on from there. A snapshot that does not fit (another
        profile's devices or memory, a changed image, a corrupt file) is a SnapshotError, raised
        before anything of the machine changed."""
        from .snapshot import SnapshotError, check_memory, check_state, load_device, read_snapshot

        if self._started:
            raise SnapshotError("the machine has run already: restore into a machine just built")
        blocks = self.memory.blocks()
        header, data = read_snapshot(path, limit=2 * sum(block.size for block in blocks) + (64 << 20))
        types = {name: getattr(device, "type_name", type(device).__name__) for name, device in self.devices.items()}
        saved = header.get("devices")
        if not isinstance(saved, dict) or {name: state.get("type") if isinstance(state, dict) else None
                                           for name, state in saved.items()} != types:
            raise SnapshotError(f"{path}: its devices are not this machine's ({', '.join(sorted(types))})")
        for name, device in self.devices.items():
            check_state(device, saved[name])  # every one before any is loaded: a refusal changes nothing
        check_memory(header, {block.name: (block.view, block.readonly) for block in blocks}, len(data))
        try:
            levels = {int(number): bool(level) for number, level in header["irq"].items()}
            int(header["time_ns"])
            if not isinstance(header["cpu"], dict):
                raise TypeError("the vCPU is not an object")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SnapshotError(f"{path}: its header is not a snapshot's ({type(exc).__name__}: {exc})") from None
        for name, device in self.devices.items():
            load_device(device, saved[name])
        for number, level in levels.items():
            self.irq_lines.line(number).level = level
        self._restored = (header, data)  # memory and the vCPU when the run sets the vCPU up

    def set_timeline(self, timeline: Timeline | None) -> None:
        """Record the next runs on ``timeline`` (vmcore.timeline: a Perfetto trace): the vCPU's
        runs and halts, every bus transaction and timer by device, IRQ line levels and the
        interrupts the CPU takes. None: off."""
        self.timeline = timeline
        self._install_tracer()

    def keep_history(self, count: int) -> None:
        """Keep the CPU's last ``count`` accesses (both buses, in order) for fault reports, from the
        next run on (0: none; a tuple an access, kept by the run core's accessors)."""
        self.history = collections.deque(maxlen=count) if count > 0 else None
        self.pio.history = self.mmio.history = self.history

    def recent_transactions(self) -> list[Transaction]:
        """The kept accesses (see keep_history), oldest first, each named after the device that
        claims its address now."""
        return [bus.transaction(direction, address, size, value)
                for bus, direction, address, size, value in self.history or ()]

    def _install_tracer(self) -> None:
        tracer = self._tracer
        sinks = [sink for sink in (tracer, self.timeline.transaction if self.timeline is not None else None)
                 if sink is not None]
        combined: Callable[[Transaction], None] | None = None
        if len(sinks) == 1:
            combined = sinks[0]
        elif sinks:
            def combined(txn: Transaction) -> None:
                for sink in sinks:
                    sink(txn)
        self.pio.set_tracer(combined)
        self.mmio.set_tracer(combined)
        if self.pci is not None:
            # Config accesses go in the trace only when a tracer asked for them: the history
            # for fault reports keeps bus transactions alone.
            self.pci.tracer = tracer

    def run(self, accel: str | Accelerator | None = None, limits: RunLimits = RunLimits(),
            ready: Callable[[], None] | None = None) -> StopReason:
        """Run until the guest stops; never raises for guest or device faults.

        Devices open their host files first (``start()``); one that cannot (a socket path in
        use, a FIFO output with no reader) raises a ProfileError naming the property.
        ``ready`` is called once the accelerator is set up and the devices started, before the
        guest's first instruction (the vmcore command resumes the garbage collector there).
        """
        kernel_irqchip = self.profile.irqchip == "kernel"
        if isinstance(accel, Accelerator):
            self.accelerator = accel
        else:
            name = accel or self.profile.accel
            if self.clock.virtual and name == "auto":
                name = "tcg"  # only the software CPU counts instructions
            try:
                self.accelerator = create(name, kernel_irqchip, self.profile.kernel_pit)
            except AcceleratorUnavailable as exc:
                return StopReason.of("host-error", str(exc))
        if self.clock.virtual and (why := self.accelerator.virtual_time_unavailable()) is not None:
            return StopReason.of("config-error", f"clock: virtual: {why}")
        controller = None if kernel_irqchip else self.controller
        if kernel_irqchip:
            self.irq_lines.route = self.accelerator.set_irq_line
        elif (route := irq_route(self.devices.values(), controller)) is not None:
            # The 8259 pair and any I/O APIC, as a PC wires them.
            self.irq_lines.route = route
            # Lines that went high while the machine was built reach the controllers now.
            for line in self.irq_lines:
                if line.level:
                    route(line.number, True)
        limits = limits.evolve(
            timeout=limits.timeout if limits.timeout is not None else self.profile.limits.timeout,
            max_exits=limits.max_exits if limits.max_exits is not None else self.profile.limits.max_exits,
        )
        # The CPU's INTR: a local APIC device (the IRQ-line controller on its LINT0), or that controller.
        cpu = None if self.profile.irqchip in ("none", "kernel") else cpu_interrupts(self.devices.values(), controller)
        state = self.state.evolve(local_apic=implements(cpu, LocalInterruptController), model=self.profile.cpu.model)
        try:
            self.accelerator.setup(self.memory, state)
            if self._restored is not None:
                # Memory only now: setting the vCPU up reads the tables the loader wrote, which
                # the guest's memory may have put other things in since.
                from .snapshot import SnapshotError, load_memory

                header, data = self._restored
                saved_on = header.get("accelerator")
                if saved_on != self.accelerator.name:
                    # Another accelerator's vCPU comes over in its portable form (vmcore.accel.portable).
                    moved = header["cpu"].get("portable")
                    if not isinstance(moved, dict):
                        return StopReason.of("config-error", f"the snapshot's vCPU was saved on {saved_on} without "
                                             f"a portable form; restore it with --accel {saved_on}")
                    if "refused" in moved:
                        return StopReason.of("config-error", f"the snapshot's vCPU cannot move from {saved_on} to "
                                             f"{self.accelerator.name}: {moved['refused']}")
                try:
                    load_memory(header, data, {block.name: (block.view, block.readonly)
                                               for block in self.memory.blocks()})
                    self.accelerator.restore_cpu(header["cpu"])
                except (SnapshotError, KeyError, TypeError, ValueError) as exc:
                    # Checked as far as it can be before (the file whole, its fit): what is left is
                    # a file made to look whole. The run refuses to start.
                    return StopReason.of("config-error", f"the snapshot cannot be restored: {exc}")
        except CpuModelError as exc:
            return StopReason.of("config-error", f"{self.accelerator.name}: {exc}")
        except (AcceleratorUnavailable, OSError) as exc:
            return StopReason.of("host-error", f"{self.accelerator.name}: {exc}")
        self._start_devices()
        if ready is not None:
            ready()
        # t=0 is the guest's first instruction: timers armed while building and starting
        # (8-70 ms) count from here, so none fires before the guest could set up its PIC.
        # A restored machine goes on from the time it was saved at.
        self.clock.start(int(self._restored[0]["time_ns"]) if self._restored is not None else 0)
        self._restored = None
        undo = self._trace_deliveries(cpu)
        timeline = self.timeline
        self.accelerator.timeline = timeline
        if timeline is not None:
            owner = _timer_owners(self.devices)

            def fired(callback: Callable[[], None]) -> None:
                timeline.timer(owner(callback), callback)

            self.clock.timer_fired = fired
        try:
            stop = self._run(limits, cpu)
        finally:
            undo()
            while self._after_run:
                self._after_run.pop()()
            self.clock.timer_fired = None
            if timeline is not None:
                timeline.close()
        for bus in (self.pio, self.mmio):
            summary = bus.unclaimed_summary()
            if summary is not None:
                log.warning("%s", summary)
        return self._finish(stop)

    def replace_controller(self, old: Any, new: Any) -> None:
        """Wire ``new``, a reloaded interrupt controller (vmcore.reload), where ``old`` was: the IRQ
        lines' routing (the 8259 pair and the I/O APICs), the local APIC's LINT0 and the I/O APICs'
        links to it, and, during a run, the CPU's own controller (RunCore.rebind) with its
        interrupt deliveries traced as before."""
        devices = list(self.devices.values())
        for device in devices:  # the links the old one had: an I/O APIC's locals, a local APIC's EOI listeners
            if implements(device, IoInterruptController) and old in getattr(device, "locals", ()):
                device.locals.remove(old)
            listeners = getattr(device, "eoi_listeners", None)
            if listeners is not None:
                listeners[:] = [listener for listener in listeners if getattr(listener, "__self__", None) is not old]
        if hasattr(old, "intr_changed"):
            old.intr_changed = None
        if self.profile.irqchip in ("none", "kernel"):
            return
        lines = self.controller
        route = irq_route(devices, lines)
        if route is not None:
            self.irq_lines.route = route
        cpu = cpu_interrupts(devices, lines)  # connects LINT0 and the I/O APICs again
        running = self.accelerator.running_controller() if self.accelerator is not None else None
        if running is not None and running[0] is not cpu:
            if "acknowledge" in vars(running[0]):  # its deliveries were traced: the new one's are
                del running[0].acknowledge
                self._after_run.append(self._trace_deliveries(cpu))
            self.accelerator.rebind_controller(cpu)

    def _trace_deliveries(self, controller: Any) -> Callable[[], None]:
        """With an IRQ tracer, have the CPU's controller's acknowledge cycle (every accelerator calls
        it as the CPU takes an interrupt) recorded for this run; returns what undoes that."""
        tracer = self._irq_sink()
        if tracer is None or controller is None:
            return lambda: None
        name = next((n for n, device in self.devices.items() if device is controller), type(controller).__name__)
        acknowledge, clock = controller.acknowledge, self.clock

        def traced() -> int:
            vector = acknowledge()
            if vector >= 0:  # negative: nothing was pending after all, nothing delivered
                tracer(IrqEvent("vector", 0, vector, (name,), clock.now()))
            return vector

        try:
            controller.acknowledge = traced  # an instance attribute over the method, for this run only
        except AttributeError:  # a controller with __slots__: its line changes are traced all the same
            log.warning("%s: its interrupt deliveries cannot be traced (no instance attributes)", name)
            return lambda: None

        def undo() -> None:
            vars(controller).pop("acknowledge", None)  # gone already if the controller was replaced

        return undo

    def _start_devices(self) -> None:
        """Let each device open its host files: only now, so building (``vmcore check``) opens none."""
        if self._started:
            return
        self._started = True
        specs = {spec.name: spec for spec in self.profile.devices}
        for name, device in self.devices.items():
            start = getattr(device, "start", None)
            if start is None:
                continue
            spec = specs[name]
            try:
                start()
            except PropertyError as exc:  # a live socket, a FIFO with no reader...
                raise _property_error(spec, exc) from None
            except (ValueError, TypeError, OSError) as exc:
                raise ProfileError(spec.where, f"devices.{name}", f"device {spec.type!r} could not start: {exc}") from None

    def _run(self, limits: RunLimits, controller: Any) -> StopReason:
        assert self.accelerator is not None
        counter = self.accelerator.time_stamp_counter()
        if self.clock.virtual:
            # The software CPU's TSC counts the same instructions, one tick per ns (see VirtualClock).
            self.tsc.bind(self.clock.now, lambda: 1_000_000_000)
        elif counter is not None:
            self.tsc.bind(*counter)
        try:
            return self.accelerator.run(self.pio, self.mmio, limits, self.clock, controller)
        except GuestExit as exc:
            return StopReason(kind="reset" if isinstance(exc, GuestReset) else "exit", message=exc.reason,
                              status=exc.status)
        except KeyboardInterrupt:
            return StopReason.of("interrupted", "stopped by the user (SIGINT, or Ctrl-A x at the terminal)")
        except DeviceFault as fault:
            return self._with_cpu(StopReason.of(
                "device-error", str(fault),
                detail={"device": fault.device, "transaction": _transaction_text(fault), "traceback": fault.traceback}))
        except OSError as exc:
            if _find_device(exc.__traceback__, self.devices) is not None:
                return self._with_cpu(self._device_error(exc))  # e.g. a device's output file failed
            return StopReason.of("host-error", f"{self.accelerator.name}: {exc}")
        except BaseException as exc:  # a device timer raised (SystemExit too), or vmcore itself: a report
            return self._with_cpu(self._device_error(exc))

    def _with_cpu(self, stop: StopReason) -> StopReason:
        """Add the vCPU's registers and code at RIP to a stop that did not come with them."""
        if stop.registers is not None or self.accelerator is None:
            return stop
        try:
            taken = self.accelerator.fault_snapshot
            registers, segments, code_address, code = taken if taken is not None else self.accelerator.snapshot()
        except Exception as exc:  # the report must not fail on a half-torn-down CPU
            log.debug("no CPU snapshot for the report: %s", exc)
            return stop
        return stop.evolve(registers=registers, segments=segments, code_address=code_address, code=code)

    def _finish(self, stop: StopReason) -> StopReason:
        """Every stop names its profile and, when kept, the transactions that led to it."""
        path = self.profile.path
        profile = f"{self.profile.name} ({path})" if path else self.profile.name
        history = tuple(str(txn) for txn in self.recent_transactions())
        return stop.evolve(profile=profile, transactions=history)

    def _device_error(self, exc: BaseException) -> StopReason:
        tb = exc.__traceback__
        culprit = _find_device(tb, self.devices)
        detail = {"traceback": "".join(traceback.format_exception(type(exc), exc, tb))}
        if culprit is None:
            # No device method on the stack: the fault is vmcore's or the accelerator's own.
            return StopReason.of("host-error", f"vmcore internal error: {type(exc).__name__}: {exc}", detail=detail)
        return StopReason.of("device-error", f"device {culprit!r} raised {type(exc).__name__}: {exc}", detail=detail)

    def unclaimed(self) -> list[tuple[Space, Direction, int, int]]:
        """Every unclaimed (or rejected) access: (space, direction, address, count)."""
        out = []
        for bus in (self.pio, self.mmio):
            out.extend((bus.space, d, a, n) for (d, a), n in sorted(bus.unclaimed.items(), key=lambda kv: kv[0][1]))
        return out

    def close(self) -> None:
        for device in self.devices.values():
            _close_quietly(device)
        if self.accelerator is not None:
            self.accelerator.close()
            self.accelerator = None
        self.memory.close()

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _device_config(spec: Any, registry: DeviceRegistry) -> tuple[Any, Any]:
    """A device's type and validated Config; a ProfileError names what is wrong."""
    key = f"devices.{spec.name}"
    try:
        dtype = registry.get(spec.type)
    except DeviceTypeError as exc:
        raise ProfileError(spec.prop_where["type"], f"{key}.type", str(exc)) from None
    # Host paths in a profile are relative to the file that sets them.
    folders = {key: Path(where.file).parent for key, where in spec.prop_where.items() if where.line and where.file}
    try:
        return dtype, dtype.config(resolve_paths(dtype.cls.Config, spec.props, folders))
    except PropertyError as exc:
        where = spec.prop_where.get(exc.key, spec.where)
        sub = f"{key}.{exc.key}" if exc.key else key
        raise ProfileError(where, sub, exc.message) from None


def _cpu_state(profile: Profile, memory: GuestMemory, image_sizes: dict[str, int],
               kernel_parameters: Sequence[str] = ()) -> tuple[CpuState, bool]:
    """The start state, and whether the loaded kernel expects firmware's tables (BootInfo.firmware_tables);
    ``image_sizes``: the bytes loaded into each slot (a /proc file's stat says 0); ``kernel_parameters``:
    what the devices add to a Linux kernel's command line."""
    cpu = profile.cpu
    mode, entry, registers = cpu.mode, cpu.entry, dict(cpu.registers)
    loaded: tuple[tuple[int, int, str], ...] = ()
    firmware_tables = False
    if profile.loader is not None:
        # A kernel image decides where to start and in which mode (multiboot: 32-bit, EAX/EBX set).
        from .loader import LoaderError, load_kernel

        try:
            boot = load_kernel(profile.loader, memory, kernel_parameters)
        except LoaderError as exc:
            loader = profile.loader
            where = loader.initrd_where if exc.key == "loader.initrd" and loader.initrd_where else loader.where
            raise ProfileError(where, exc.key, str(exc)) from None
        mode = boot.mode or mode
        entry = boot.entry
        registers.update(boot.registers)
        loaded = boot.regions
        firmware_tables = boot.firmware_tables
        log.info("loader: %s", boot.description)
    tables = cpu.tables
    need = tables_size(mode)
    if need and tables is None:
        tables = _default_tables(profile, need, mode, image_sizes, loaded)
    if need and tables is not None:
        _check_tables(profile, tables, need, image_sizes)
        for start, end, what in loaded:
            if start < tables + need and tables < end:
                raise ProfileError(cpu.where, "cpu.tables", f"{tables:#x}..{tables + need - 1:#x} overlaps {what} "
                                   f"({start:#x}..{end - 1:#x}); set cpu.tables elsewhere")
    try:
        return start_state(mode, entry, registers, memory, tables), firmware_tables
    except CpuSetupError as exc:
        raise ProfileError(cpu.where, "cpu.tables", str(exc)) from None


def _apics(devices: dict[str, Any]) -> Any:
    """The machine's local and I/O APIC as firmware tables name them (``vmcore.acpi.Apics``), or
    None without both."""
    from .acpi import Apics

    lapic = next((d for d in devices.values() if getattr(d, "type_name", "") == "lapic"), None)
    ioapic = next((d for d in devices.values() if getattr(d, "type_name", "") == "ioapic"), None)
    if lapic is None or ioapic is None:
        return None
    lapic_id, ioapic_id = lapic.config.apic_id, ioapic.config.apic_id
    if ioapic_id == lapic_id:
        ioapic_id = (lapic_id + 1) & 0xF  # IDs are shared between local and I/O APICs: as QEMU numbers them
    return Apics(lapic_id, lapic.config.base, ioapic_id, ioapic.config.base)


def _timer_owners(devices: dict[str, Any]) -> Callable[[Callable[[], None]], str | None]:
    """A function naming the device a timer callback belongs to (for the timeline): the object of a
    bound method, or an object a closure holds, when it is a device or one of its parts (an
    attribute of it, or an item of a list or tuple attribute); None when it is neither."""
    owners: dict[int, str] = {}
    for name, device in devices.items():
        owners[id(device)] = name
        for value in getattr(device, "__dict__", {}).values():
            for part in value if isinstance(value, (list, tuple)) else (value,):
                if not isinstance(part, (int, float, str, bytes, bool, type(None))):
                    owners.setdefault(id(part), name)

    def owner(callback: Callable[[], None]) -> str | None:
        held = [getattr(callback, "__self__", None)]
        for cell in getattr(callback, "__closure__", None) or ():
            try:
                held.append(cell.cell_contents)
            except ValueError:  # a cell not filled yet
                pass
        return next((owners[id(obj)] for obj in held if obj is not None and id(obj) in owners), None)

    return owner


def _write_mp_table(memory: GuestMemory, devices: dict[str, Any]) -> None:
    """An MP table of the interrupt wiring (vmcore.mptable) where the machine has a local APIC and
    an I/O APIC: what firmware would leave for an OS that finds its I/O APIC that way."""
    apics = _apics(devices)
    if apics is None:
        return
    from .mptable import MP_BASE, mp_table  # here only: most machines have no I/O APIC

    table = mp_table(lapic_id=apics.lapic_id, lapic_base=apics.lapic_base, ioapic_id=apics.ioapic_id,
                     ioapic_base=apics.ioapic_base)
    try:
        memory.write(MP_BASE, table)
    except GuestMemoryError:
        log.warning("no RAM at %#x for the MP table: the OS will not find the I/O APIC", MP_BASE)


def _write_acpi_tables(profile: Profile, memory: GuestMemory, devices: dict[str, Any]) -> None:
    """ACPI tables (vmcore.acpi) where a device describes itself for them and the machine has the
    acpi-pm device their FADT points at; the MADT names its APICs (as the MP table does)."""
    from .acpi import ACPI_BASE, AcpiError, acpi_tables

    described, first = [], None
    for spec in profile.devices:
        items = getattr(devices[spec.name], "acpi_devices", lambda: ())()
        described += items
        first = first or (spec if items else None)
    if first is None:
        return
    where, key = first.where, f"devices.{first.name}"
    pm = next((device for device in devices.values() if hasattr(device, "pm_blocks")), None)
    if pm is None:
        return  # no ACPI without its fixed registers: the devices were put on the kernel's command line
    try:
        memory.write(ACPI_BASE, acpi_tables(described, pm.pm_blocks(), _apics(devices)))
    except AcpiError as exc:
        raise ProfileError(where, key, str(exc)) from None
    except GuestMemoryError:
        log.warning("no RAM at %#x for the ACPI tables: the OS will not find its virtio devices", ACPI_BASE)


def _default_tables(profile: Profile, need: int, mode: str, image_sizes: dict[str, int],
                    loaded: tuple[tuple[int, int, str], ...] = ()) -> int:
    """Top of the lowest RAM slot, below 4 GiB, clear of every image; else just below what the
    loader placed there (a Linux initrd sits at the top of RAM)."""
    for slot in sorted(profile.memory, key=lambda s: s.base):
        if slot.kind != "ram" or slot.base + slot.size > 1 << 32:
            continue
        image_end = slot.base + slot.offset + image_sizes.get(slot.name, 0)
        tops = [slot.base + slot.size] + sorted((start & ~0xFFF for start, _end, _what in loaded), reverse=True)
        for top in tops:
            candidate = (top - need) & ~0xFFF
            clear = all(end <= candidate or candidate + need <= start for start, end, _what in loaded)
            if clear and candidate >= image_end and candidate >= slot.base and top <= slot.base + slot.size:
                return candidate
    raise ProfileError(
        profile.cpu.where, "cpu.tables",
        f"{mode} mode needs {need // 1024}K of RAM below 4G for the GDT"
        f"{' and page tables' if mode == 'long' else ''}, free of images; add RAM or set cpu.tables",
    )


def _check_tables(profile: Profile, tables: int, need: int, image_sizes: dict[str, int]) -> None:
    for slot in profile.memory:
        if slot.base <= tables and tables + need <= slot.base + slot.size:
            if slot.kind != "ram":
                break
            if slot.image is not None:
                start = slot.base + slot.offset
                end = start + image_sizes.get(slot.name, 0)
                if start < tables + need and tables < end:
                    raise ProfileError(profile.cpu.where, "cpu.tables",
                                       f"{tables:#x}..{tables + need - 1:#x} overlaps the image of slot {slot.name!r}")
            return
    raise ProfileError(profile.cpu.where, "cpu.tables",
                       f"{tables:#x}..{tables + need - 1:#x} must lie inside one RAM slot ({need // 1024}K needed)")


def _check_mmio_clear_of_memory(region: Region, owner: str, key: str, where: Where, profile: Profile,
                                memory: GuestMemory) -> None:
    """Refuse an MMIO region where a memory slot answers: the guest's accesses never exit there.

    Only ranges a device decodes itself (overlays, e.g. the i440fx's PAM segments) may
    lie over a slot: there the memory can be switched off or made read-only.
    """
    for slot in memory.home_slots():
        uncovered = [(max(slot.base, region.base), min(slot.end, region.end))]
        for overlay in memory.overlays():  # cut each overlay out: what is left below, what above
            uncovered = [(a, b) for start, end in uncovered
                         for a, b in ((start, min(end, overlay.base)), (max(start, overlay.end), end)) if a < b]
        uncovered = [(start, end) for start, end in uncovered if start < end]
        if uncovered:
            start, end = uncovered[0]
            slot_where = next((s.where for s in profile.memory if s.name == slot.name), None)
            raise ProfileError(
                where, key, f"mmio range {region.base:#x}..{region.end - 1:#x} of {owner} lies over memory slot "
                f"{slot.name!r} ({slot.base:#x}..{slot.end - 1:#x}{f', {slot_where}' if slot_where else ''}): "
                f"the guest's accesses to {start:#x}..{end - 1:#x} reach the memory, never the device")


def _property_error(spec: DeviceSpec, exc: PropertyError) -> ProfileError:
    """A device's PropertyError against the profile line that set the property."""
    where = spec.prop_where.get(exc.key, spec.where)
    return ProfileError(where, f"devices.{spec.name}.{exc.key}" if exc.key else f"devices.{spec.name}", exc.message)


def machine_inputs(profile: Profile) -> dict[tuple[int, int], str]:
    """The host files the machine reads, by (st_dev, st_ino): its profile files, images and kernel."""
    named: list[tuple[Path, str]] = [(Path(where.file), f"the profile {where.file}")
                                     for where in _profile_wheres(profile) if where.line]
    if profile.path is not None:
        named.append((profile.path, f"the profile {profile.path}"))
    named += [(slot.image, f"the image of memory slot {slot.name!r}") for slot in profile.memory if slot.image]
    if profile.loader is not None:
        named.append((profile.loader.kernel, "the loader kernel"))
    inputs: dict[tuple[int, int], str] = {}
    for path, what in named:
        try:
            info = path.stat()
        except OSError:
            continue
        inputs.setdefault((info.st_dev, info.st_ino), what)
    return inputs


def _profile_wheres(profile: Profile) -> list[Where]:
    wheres = [spec.where for spec in profile.memory] + [profile.cpu.where]
    for spec in profile.devices:
        wheres += [spec.where, *spec.prop_where.values()]
    return wheres + ([profile.loader.where] if profile.loader is not None else [])


def _check_host_outputs(profile: Profile, devices: dict[str, Any]) -> None:
    """Refuse a device output that is one of the machine's inputs: starting would overwrite it."""
    files: list[tuple[str, HostFile, os.stat_result]] = []
    for name, device in devices.items():
        host_files = getattr(device, "host_files", None)
        for file in host_files() if host_files is not None else ():
            try:
                files.append((name, file, os.stat(file.path)))
            except OSError:
                continue  # an output not there yet, which no input can be
    inputs = machine_inputs(profile)
    for name, file, info in files:
        if not file.output:
            inputs.setdefault((info.st_dev, info.st_ino), f"the {file.key} of device {name!r}")
    specs = {spec.name: spec for spec in profile.devices}
    for name, file, info in files:
        what = inputs.get((info.st_dev, info.st_ino))
        if file.output and stat.S_ISREG(info.st_mode) and what is not None:
            raise _property_error(specs[name], PropertyError(
                file.key, f"{file.path} is {what}, an input of this machine; an output would overwrite it"))


def _find_device(tb: TracebackType | None, devices: dict[str, Any]) -> str | None:
    """The innermost traceback frame running a method of one of our devices."""
    by_id = {id(dev): name for name, dev in devices.items()}
    found = None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in by_id:
            found = by_id[id(owner)]
        tb = tb.tb_next
    return found


def _callback_owner(callback: Callable[[], None], exc: BaseException, devices: dict[str, Any]) -> str | None:
    """The device a clock callback belongs to: a bound method's object (through partials), else the traceback's."""
    target: Any = callback
    while isinstance(target, functools.partial):
        target = target.func
    owner = getattr(target, "__self__", None)
    for name, device in devices.items():
        if device is owner:
            return name
    return _find_device(exc.__traceback__, devices)


def _transaction_text(fault: DeviceFault) -> str:
    """What the device was doing, for the report: ``pio write 0xf1/1 0x41``, or ``timer callback``."""
    if fault.space == "timer":
        return f"{fault.space} {fault.direction}"
    value = f" {fault.value:#x}" if fault.value is not None else ""
    return f"{fault.space} {fault.direction} {fault.address:#x}/{fault.size}{value}"


def _close_quietly(device: Any) -> None:
    close = getattr(device, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception as exc:  # closing one device must not stop the others closing
        log.warning("closing a device failed: %s", exc)


def resolve_profile(name: str, search: Iterable[Path] = ()) -> Path:
    """A profile path from a path or a bundled name (``hello`` -> machines/hello.yaml)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name:
        return path
    folders = list(search) + [Path.cwd() / "machines", bundled_machines()]
    for folder in folders:
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    raise ProfileError(Where(name), "", f"no profile named {name!r}; looked in {', '.join(str(f) for f in folders)}")


def bundled_machines() -> Path:
    """The ``machines/`` folder next to the vmcore package (a source checkout)."""
    return Path(__file__).resolve().parent.parent / "machines"


