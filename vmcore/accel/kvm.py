"""The KVM accelerator: the classic loop of KVM_RUN and exit handling.

The exit path is kept lean: the ``kvm_run`` fields are read in place from the
vCPU's mmap through views made once, the bus methods are bound once per run,
and nothing per exit allocates beyond the integers involved.
"""

from __future__ import annotations

import ctypes
import mmap
import signal
import threading
import time
from typing import Any

from ..bus import Bus
from ..clock import Clock
from ..irq import InterruptController
from ..cpu import CpuState, Segment, translate
from ..device import GuestExit
from ..kvm import Kvm, KvmError, KvmUnavailable, Vcpu, Vm
from ..kvm import ioctl as k
from ..kvm import structs as s
from ..memory import GuestMemory
from ..stop import StopReason
from . import Accelerator, AcceleratorUnavailable, RunLimits
from .wakeup import Waker, sleep_until

# Where KVM puts string/port IO data inside the kvm_run mapping (KVM_PIO_PAGE_OFFSET).
_PIO_DATA_OFFSET = 1 * mmap.PAGESIZE
# Real-mode guests on Intel need a 3-page TSS region and an identity-map page the
# guest never touches; the customary place is just below the 4 GiB BIOS area.
_TSS_ADDR = 0xFFFBD000
_IDENTITY_MAP_ADDR = 0xFFFBC000
_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")


class KvmAccelerator(Accelerator):
    """A VM with one vCPU on /dev/kvm."""

    name = "kvm"

    def __init__(self, kvm: Kvm, vm: Vm, vcpu: Vcpu, kernel_irqchip: bool = False) -> None:
        self.kvm = kvm
        self.vm = vm
        self.vcpu = vcpu
        self.kernel_irqchip = kernel_irqchip
        self.memory: GuestMemory | None = None
        self._timed_out = False
        self._intr = False  # the userspace controller's INTR output, kept by its callback
        self._woken = threading.Event()
        self._vcpu_thread = 0

    @classmethod
    def open(cls, path: str | None = None, kernel_irqchip: bool = False,
             kernel_pit: bool = False) -> "KvmAccelerator":
        """A VM with one vCPU; ``kernel_irqchip`` makes KVM model the PIC/IOAPIC (and ``kernel_pit`` the PIT)."""
        try:
            kvm = Kvm.open(path)
        except KvmUnavailable as exc:
            raise AcceleratorUnavailable(str(exc)) from None
        try:
            vm = kvm.create_vm()
            if vm.check_extension(k.KVM_CAP_SET_TSS_ADDR) > 0:
                vm.set_tss_addr(_TSS_ADDR)
            if vm.check_extension(k.KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0:
                vm.set_identity_map_addr(_IDENTITY_MAP_ADDR)
            # Both must exist before the vCPU (KVM refuses them afterwards).
            if kernel_irqchip:
                vm.create_irqchip()
                if kernel_pit:
                    vm.create_pit2()
            vcpu = vm.create_vcpu(0)
            # Long mode needs CPUID to advertise LM; give the guest what the host supports.
            vcpu.set_cpuid2(kvm.supported_cpuid())
        except KvmError as exc:
            kvm.close()
            raise AcceleratorUnavailable(f"KVM is present but unusable: {exc}") from None
        return cls(kvm, vm, vcpu, kernel_irqchip)

    def set_irq_line(self, line: int, level: bool) -> None:
        """Drive an input of the in-kernel interrupt controller (KVM_IRQ_LINE)."""
        self.vm.irq_line(line, int(level))

    # --- set-up ---------------------------------------------------------------------

    def setup(self, memory: GuestMemory, state: CpuState) -> None:
        self.memory = memory
        readonly_ok = self.vm.check_extension(k.KVM_CAP_READONLY_MEM) > 0
        for index, slot in enumerate(memory):
            if slot.readonly and not readonly_ok:
                raise AcceleratorUnavailable(
                    f"slot {slot.name!r} is a ROM but this KVM lacks KVM_CAP_READONLY_MEM; map it as ram"
                )
            flags = k.KVM_MEM_READONLY if slot.readonly else 0
            self.vm.set_user_memory_region(index, slot.base, slot.size, slot.host_address, flags)
        self._load_state(state)

    def _load_state(self, state: CpuState) -> None:
        sregs = self.vcpu.get_sregs()
        _set_segment(sregs.cs, state.cs)
        for name in ("ds", "es", "fs", "gs", "ss"):
            _set_segment(getattr(sregs, name), state.data)
        sregs.gdt.base, sregs.gdt.limit = state.gdt
        sregs.idt.base, sregs.idt.limit = state.idt
        if state.mode != "real":
            sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = state.cr0, state.cr3, state.cr4, state.efer
            # A usable TR is required in protected mode: a busy 32/64-bit TSS.
            sregs.tr.type, sregs.tr.present, sregs.tr.s, sregs.tr.limit = 0xB, 1, 0, 0x67
        self.vcpu.set_sregs(sregs)
        regs = s.kvm_regs()
        for name, value in state.registers.items():
            setattr(regs, name, value)
        self.vcpu.set_regs(regs)

    # --- the run loop ---------------------------------------------------------------

    def run(self, pio: Bus, mmio: Bus, limits: RunLimits, clock: Clock | None = None,
            controller: InterruptController | None = None) -> StopReason:
        if controller is not None and self.kernel_irqchip:
            raise AcceleratorUnavailable("a userspace interrupt controller cannot drive KVM's in-kernel irqchip")
        self._clock = clock
        self._controller = controller
        self._deadline = limits.timeout and time.monotonic() + limits.timeout
        waker = self._start_waker(clock, controller)
        try:
            return self._run(pio, mmio, limits)
        finally:
            if waker is not None:
                waker.close()
            if clock is not None:
                clock.deadline_changed = clock.wakeup = None
            if controller is not None:
                controller.intr_changed = None

    def _start_waker(self, clock: Clock | None, controller: InterruptController | None) -> Waker | None:
        """Timers and host input wake KVM_RUN through a signal; only the main thread can take signals."""
        if controller is not None:
            self._intr = controller.pending()

            def intr_changed(level: bool) -> None:
                self._intr = level
                if level:
                    self._woken.set()

            controller.intr_changed = intr_changed
        if clock is None or threading.current_thread() is not threading.main_thread():
            return None
        self._vcpu_thread = threading.get_ident()
        signal.signal(signal.SIGUSR1, _ignore_signal)
        waker = Waker(self._kick, clock.now)
        clock.deadline_changed = waker.arm
        clock.wakeup = waker.kick
        self._waker = waker
        waker.arm(clock.next_deadline())
        return waker

    def _kick(self) -> None:
        """From any thread: make KVM_RUN return to the loop soon."""
        self.vcpu.run_struct.immediate_exit = 1
        self._woken.set()
        signal.pthread_kill(self._vcpu_thread, signal.SIGUSR1)

    def _service(self) -> bool:
        """Between exits: run due timers and posted input, then offer a pending interrupt.

        Returns True when an interrupt was injected.
        """
        clock = self._clock
        if clock is not None:
            clock.run_due()
            waker = getattr(self, "_waker", None)
            if waker is not None:
                waker.rearm(clock.next_deadline())
        controller = self._controller
        if controller is None:
            return False
        run = self.vcpu.run_struct
        if self._intr:
            if run.ready_for_interrupt_injection and run.if_flag:
                self.vcpu.interrupt(controller.acknowledge())
                run.request_interrupt_window = 0
                return True
            # KVM exits with IRQ_WINDOW_OPEN as soon as the guest can take it.
            run.request_interrupt_window = 1
        else:
            run.request_interrupt_window = 0
        return False

    def _wait_halted(self) -> bool:
        """A ``hlt`` with interrupts enabled: sleep until an interrupt can be injected.

        Returns False when the wait ends because the run's time limit passed.
        """
        clock = self._clock
        while True:
            if self._service():
                return True
            remaining = None if not self._deadline else self._deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            sleep_until(clock.now, clock.next_deadline(), self._woken, remaining) if clock else \
                self._woken.wait(remaining)

    def _run(self, pio: Bus, mmio: Bus, limits: RunLimits) -> StopReason:
        run = self.vcpu.run_struct
        io = run.io
        mmio_exit = run.mmio
        buf = self.vcpu.mmap
        # Typed views of the exit data, made once: reading .value needs no slicing.
        pio_views = {
            1: ctypes.c_uint8.from_buffer(buf, _PIO_DATA_OFFSET),
            2: ctypes.c_uint16.from_buffer(buf, _PIO_DATA_OFFSET),
            4: ctypes.c_uint32.from_buffer(buf, _PIO_DATA_OFFSET),
        }
        mmio_data = ctypes.c_uint64.from_buffer(buf, s.kvm_run.mmio.offset + s._exit_mmio.data.offset)
        pio_read, pio_write = pio.read, pio.write
        mmio_read, mmio_write = mmio.read, mmio.write
        enter = self.vcpu.run
        EXIT_IO, EXIT_MMIO, IO_OUT = k.KVM_EXIT_IO, k.KVM_EXIT_MMIO, k.KVM_EXIT_IO_OUT
        EXIT_HLT, EXIT_IRQ_WINDOW = k.KVM_EXIT_HLT, k.KVM_EXIT_IRQ_WINDOW_OPEN
        self._service()  # an interrupt may be pending before the first instruction
        max_exits = limits.max_exits if limits.max_exits is not None else -1
        exits = 0
        self._timed_out = False
        restore = self._arm_timeout(limits.timeout)
        try:
            while True:
                try:
                    enter()
                except InterruptedError:
                    run.immediate_exit = 0
                    if self._timed_out:
                        return self._stop("timeout", f"no stop after {limits.timeout:g} s of wall-clock time", exits,
                                          dump=True)
                    self._service()
                    continue
                except KvmError as exc:
                    # The host failed, not a device: must not reach the machine's device-error report.
                    return self._stop("host-error", str(exc), exits)
                reason = run.exit_reason
                if reason == EXIT_IO:
                    size = io.size
                    if io.count == 1 and io.data_offset == _PIO_DATA_OFFSET:
                        view = pio_views[size]
                        if io.direction == IO_OUT:
                            pio_write(io.port, size, view.value)
                        else:
                            view.value = pio_read(io.port, size)
                    else:
                        self._string_io(io, buf, pio_read, pio_write)
                elif reason == EXIT_MMIO:
                    size = mmio_exit.len
                    if mmio_exit.is_write:
                        mmio_write(mmio_exit.phys_addr, size, mmio_data.value & ((1 << (8 * size)) - 1))
                    else:
                        mmio_data.value = mmio_read(mmio_exit.phys_addr, size)
                elif reason == EXIT_HLT and run.if_flag and self._controller is not None:
                    # Waiting for an interrupt, as a CPU in HLT does; with IF clear it is a stop.
                    if not self._wait_halted():
                        return self._stop("timeout", f"no stop after {limits.timeout:g} s of wall-clock time",
                                          exits, dump=True)
                    continue
                elif reason == EXIT_IRQ_WINDOW:
                    self._service()
                    continue
                else:
                    return self._other_exit(reason, exits)
                if self._intr:
                    self._service()
                # Only IO and MMIO exits count: the same measure the software CPU keeps.
                exits += 1
                if exits == max_exits:
                    return self._stop("max-exits", f"reached the limit of {max_exits} exits", exits, dump=True)
        except GuestExit as exc:
            # A device ended the run (debug-exit) during this exit, which counts too.
            return StopReason(kind="exit", message=exc.reason, status=exc.status, exits=exits + 1)
        finally:
            restore()
            del pio_views, mmio_data, io, mmio_exit, run

    @staticmethod
    def _string_io(io: Any, buf: mmap.mmap, read: Any, write: Any) -> None:
        """``rep outs``/``rep ins``: every element reaches the device, in order."""
        size, port, offset = io.size, io.port, io.data_offset
        if io.direction == k.KVM_EXIT_IO_OUT:
            for i in range(io.count):
                start = offset + i * size
                write(port, size, int.from_bytes(buf[start : start + size], "little"))
        else:
            for i in range(io.count):
                start = offset + i * size
                buf[start : start + size] = read(port, size).to_bytes(size, "little")

    def _arm_timeout(self, timeout: float | None):  # type: ignore[no-untyped-def]
        """Interrupt KVM_RUN after ``timeout`` s: SIGALRM + immediate_exit (main thread only)."""
        if timeout is None or threading.current_thread() is not threading.main_thread():
            return lambda: None
        run = self.vcpu.run_struct

        def expire(_signum: int, _frame: Any) -> None:
            # Either KVM_RUN is in progress (the signal kicks it out with EINTR) or
            # about to start (immediate_exit makes it return EINTR at once).
            self._timed_out = True
            run.immediate_exit = 1

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout)

        def restore() -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

        return restore

    # --- stops ----------------------------------------------------------------------------

    def _other_exit(self, reason: int, exits: int) -> StopReason:
        run = self.vcpu.run_struct
        name = k.EXIT_REASON_NAMES.get(reason, str(reason))
        if reason == k.KVM_EXIT_HLT:
            return StopReason.of("halted", "the guest executed hlt", exits=exits)
        if reason == k.KVM_EXIT_SHUTDOWN:
            return self._stop("shutdown", "triple fault: the vCPU shut down", exits, dump=True)
        if reason == k.KVM_EXIT_FAIL_ENTRY:
            code = run.fail_entry.hardware_entry_failure_reason
            return self._stop("fail-entry", f"KVM could not enter the guest (hardware reason {code:#x})", exits,
                              dump=True, detail={"hardware_entry_failure_reason": hex(code)})
        if reason == k.KVM_EXIT_INTERNAL_ERROR:
            internal = run.internal
            sub = internal.suberror
            data = [int(internal.data[i]) for i in range(min(internal.ndata, 16))]
            sub_name = k.INTERNAL_ERROR_NAMES.get(sub, str(sub))
            return self._stop("internal-error", f"KVM internal error {sub} ({sub_name}); on a software-emulating "
                              "KVM an unsupported instruction ends this way", exits, dump=True,
                              detail={"suberror": sub, "data": " ".join(f"{d:#x}" for d in data)})
        if reason == k.KVM_EXIT_SYSTEM_EVENT:
            event = run.system_event
            kind = k.SYSTEM_EVENT_NAMES.get(event.type, str(event.type))
            return self._stop("system-event", f"system event {kind}", exits, detail={"type": event.type})
        return self._stop("unknown-exit", f"unhandled KVM exit {name} ({reason})", exits, dump=True)

    def _stop(self, kind: str, message: str, exits: int, dump: bool = False,
              detail: dict[str, Any] | None = None) -> StopReason:
        if not dump:
            return StopReason.of(kind, message, exits=exits, detail=detail or {})
        registers, segments, code_address, code = self.snapshot()
        return StopReason.of(kind, message, exits=exits, registers=registers, segments=segments,
                             code_address=code_address, code=code, detail=detail or {})

    def snapshot(self) -> tuple[dict[str, int], dict[str, dict[str, int]], int | None, bytes | None]:
        """Registers, segments, and up to 16 guest bytes at CS:RIP (for reports)."""
        regs = self.vcpu.get_regs()
        sregs = self.vcpu.get_sregs()
        registers = {name: int(getattr(regs, name)) for name in _GPRS}
        for name in ("cr0", "cr2", "cr3", "cr4", "efer"):
            registers[name] = int(getattr(sregs, name))
        segments = {
            name: {f: int(getattr(getattr(sregs, name), f)) for f in ("selector", "base", "limit", "type", "l", "db")}
            for name in _SEGMENTS
        }
        linear = (sregs.cs.base + regs.rip) & ((1 << 64) - 1)
        code_address = code = None
        if self.memory is not None:
            physical = translate(self.memory, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, linear)
            if physical is not None:
                code_address = physical
                slot = self.memory.slot_at(physical)
                if slot is not None:
                    code = self.memory.read(physical, min(16, slot.end - physical))
        return registers, segments, code_address, code

    def close(self) -> None:
        for part in (self.vcpu, self.vm, self.kvm):
            part.close()


def _ignore_signal(_signum: int, _frame: Any) -> None:
    """SIGUSR1 only interrupts KVM_RUN (EINTR); the loop does the work."""


def _set_segment(seg: s.kvm_segment, value: Segment) -> None:
    seg.selector, seg.base, seg.limit = value.selector, value.base, value.limit
    seg.type, seg.s, seg.dpl, seg.present = value.type, value.s, value.dpl, value.present
    seg.db, seg.l, seg.g = value.db, value.l, value.g
    seg.avl, seg.unusable = 0, 0


