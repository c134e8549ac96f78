"""The KVM accelerator: the classic loop of KVM_RUN and exit handling.

The exit path is kept lean: the ``kvm_run`` fields are read in place from the
vCPU's mmap through memoryviews made once per run; an exit's size and port (or
address) pick a route from the bus's table (``Bus.read_route``: the device's
handler and offset, or the bus's full path where there is splitting, tracing or
logging to do), filled in on first use; nothing per exit allocates beyond the
integers involved.

Two ways to leave the guest less often, both declared by devices on their bus
regions and both invisible to them but for timing:

* posted regions are registered as coalesced MMIO/PIO zones: KVM queues their
  writes in a ring page of the vCPU mapping without exiting; the ring is drained,
  in order, before any other exit is handled, every ``_FLUSH_NS`` while the guest
  runs on, and whenever the run stops;
* doorbells get an ioeventfd each: the write signals an eventfd in the kernel;
  a watcher thread wakes the vCPU, and the loop delivers the writes on its own
  thread, before any other exit is handled and whenever the run stops.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import select
import signal
import threading
import time
from typing import Any, Callable

from ..bus import Bus, Direction, Space
from ..clock import Clock
from ..irq import InterruptController
from ..cpu import CpuState, Segment, code_bits, cpuid1_without_apic, memory_operand_size, translate
from ..device import GuestExit
from ..faults import DeviceFault
from ..kvm import Kvm, KvmError, KvmUnavailable, Vcpu, Vm
from ..kvm import ioctl as k
from ..kvm import structs as s
from ..memory import GuestMemory, MemorySlot
from ..stop import StopReason
from . import Accelerator, AcceleratorUnavailable, RunLimits
from .wakeup import Waker, sleep_until

log = logging.getLogger("vmcore.accel.kvm")

# Where KVM puts string/port IO data inside the kvm_run mapping (KVM_PIO_PAGE_OFFSET).
_PIO_DATA_OFFSET = 1 * mmap.PAGESIZE

# Indexes of the exit fields in memoryviews of the kvm_run mapping (u8, u32, u64 items).
_EXIT_REASON = s.kvm_run.exit_reason.offset // 4
_IO = s.kvm_run.io.offset
_IO_DIRECTION = _IO + s._exit_io.direction.offset
_IO_SIZE = _IO + s._exit_io.size.offset
_IO_PORT = (_IO + s._exit_io.port.offset) // 2
_IO_COUNT = (_IO + s._exit_io.count.offset) // 4
_IO_DATA_OFFSET = (_IO + s._exit_io.data_offset.offset) // 8
_MMIO = s.kvm_run.mmio.offset
_MMIO_ADDR = (_MMIO + s._exit_mmio.phys_addr.offset) // 8
_MMIO_DATA = _MMIO + s._exit_mmio.data.offset
_MMIO_LEN = (_MMIO + s._exit_mmio.len.offset) // 4
_MMIO_IS_WRITE = _MMIO + s._exit_mmio.is_write.offset
assert k.KVM_EXIT_IO_OUT == 1 and k.KVM_EXIT_IO_IN == 0  # the direction byte is "is a write"
# The coalesced ring: first/last (u32) then entries of phys_addr u64, len u32, pio u32, data[8].
_ENTRY = ctypes.sizeof(s.kvm_coalesced_mmio)
_RING_HEADER = s.kvm_coalesced_mmio_ring.coalesced_mmio.offset
# drain_ring indexes entries in u64/u32 items on this layout.
assert (_RING_HEADER, _ENTRY, s.kvm_coalesced_mmio.len.offset, s.kvm_coalesced_mmio.pio.offset,
        s.kvm_coalesced_mmio.data.offset) == (8, 24, 8, 12, 16)
#: Posted writes reach their device at least this often (ns) while the guest runs without exiting.
_FLUSH_NS = 50_000_000
_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))
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
        self._waker: Waker | None = None
        #: Register posted regions as coalesced zones (False: every write exits, for comparison).
        self.coalesce = True
        #: Give doorbells an ioeventfd (False: they are ordinary exits).
        self.ioeventfds = True
        #: The second fragment of a page-crossing MMIO read, once the first was served:
        #: (address, size, its bytes) (see _mmio_fragment).
        self._fragment: list[tuple[int, int, int] | None] = [None]
        #: KVM_RUN already returned the next exit (see _write_fragment): handle it before entering.
        self._exit_waiting = False

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
            # Long mode needs CPUID to advertise LM; give the guest what the host supports,
            # but no local APIC unless KVM models one (in-kernel irqchip; see vmcore.cpu).
            cpuid = kvm.supported_cpuid()
            if not kernel_irqchip:
                _hide_apic(cpuid)
            vcpu.set_cpuid2(cpuid)
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
        self._readonly_ok = self.vm.check_extension(k.KVM_CAP_READONLY_MEM) > 0
        self._slot_ids: dict[int, int] = {}  # id(window) -> KVM slot number
        self._free_ids: list[int] = []
        self._map_changed([], list(memory))
        # Devices (a chipset's shadow-RAM decoding) may remap memory while the guest runs.
        memory.add_listener(self._map_changed)
        self._load_state(state)

    def _map_changed(self, removed: list[MemorySlot], added: list[MemorySlot]) -> None:
        """Follow the guest-physical map: delete the KVM slots of windows gone, add the new ones.

        Called between exits (a device's register write), when the vCPU is out of KVM_RUN.
        KVM cannot change a slot's address or flags in place, so a change is a delete and an add.
        """
        for slot in removed:
            number = self._slot_ids.pop(id(slot), None)
            if number is not None:
                self.vm.set_user_memory_region(number, slot.base, 0, 0, 0)
                self._free_ids.append(number)
        for slot in added:
            if slot.readonly and not self._readonly_ok:
                raise AcceleratorUnavailable(
                    f"slot {slot.name!r} is a ROM but this KVM lacks KVM_CAP_READONLY_MEM; map it as ram"
                )
            number = self._free_ids.pop() if self._free_ids else len(self._slot_ids)
            flags = k.KVM_MEM_READONLY if slot.readonly else 0
            self.vm.set_user_memory_region(number, slot.base, slot.size, slot.host_address, flags)
            self._slot_ids[id(slot)] = number

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
        if not self.kernel_irqchip:
            # KVM recomputes CPUID's APIC bit from IA32_APIC_BASE's enable bit whenever it is
            # set (KVM_SET_SREGS included): the reset value (enabled) would undo _hide_apic.
            sregs.apic_base = 0
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
            self._waker = None
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
            waker = self._waker
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
        zones: list[tuple[int, int, bool]] = []
        bells: list[_Bell] = []
        watcher = views = None
        whole = memoryview(self.vcpu.mmap)
        try:
            if self.coalesce:
                self._register_posted(pio, mmio, zones)
            if self.ioeventfds:
                self._assign_doorbells(pio, mmio, bells)
            views = _Views(whole, self._ring_page if zones else None)
            if bells:
                watcher = _DoorbellWatcher([bell.fd for bell in bells], self._clock)
            return self._loop(pio, mmio, limits, views, bells, watcher)
        finally:
            if watcher is not None:
                watcher.close()
            if views is not None:
                views.release()
            whole.release()
            for bell in bells:
                bell.close(self.vm)
            for addr, size, is_pio in zones:
                try:
                    self.vm.unregister_coalesced_mmio(addr, size, is_pio)
                except KvmError as exc:  # the VM is going away anyway
                    log.debug("unregistering coalesced zone %#x: %s", addr, exc)

    def _loop(self, pio: Bus, mmio: Bus, limits: RunLimits, views: "_Views", bells: list["_Bell"],
              watcher: "_DoorbellWatcher | None") -> StopReason:
        run = self.vcpu.run_struct
        enter = self.vcpu.run
        u8, u16, u32, u64 = views.u8, views.u16, views.u32, views.u64
        ring32, ring64, ring_slots = views.ring32, views.ring64, views.ring_slots
        coalesced = ring32 is not None
        buf = self.vcpu.mmap
        pio_read, pio_write = pio.read, pio.write
        pio_data, mmio_data = views.pio, views.mmio
        # The buses' route tables, by size then port or address (see Bus.read_route): a hit
        # is the device method and the offset to call it with, a miss is filled in once.
        pio_reads, pio_writes = pio.read_routes, pio.write_routes
        mmio_reads, mmio_writes = mmio.read_routes, mmio.write_routes
        pio_read_route, pio_write_route = pio.read_route, pio.write_route
        mmio_read_route, mmio_write_route = mmio.read_route, mmio.write_route
        fault_pio, fault_mmio = pio.fault, mmio.fault
        bad_pio, bad_mmio = pio.bad_answer, mmio.bad_answer
        fragment = self._fragment
        fragment[0] = None
        READ, WRITE = Direction.READ, Direction.WRITE
        MASKS = _MASKS
        max_exits = limits.max_exits if limits.max_exits is not None else -1
        exits = 0

        def drain_ring() -> None:
            """Deliver every queued posted write, oldest first, each as the exit it replaced."""
            nonlocal exits
            first, last = ring32[0], ring32[1]
            while first != last:
                i = 1 + 3 * first  # the entry in u64 items: phys_addr, len|pio, data
                address, length, is_pio, data = ring64[i], ring32[2 * i + 2], ring32[2 * i + 3], ring64[i + 2]
                first += 1
                if first == ring_slots:
                    first = 0
                # Consumed before it is delivered: a device that stops the run leaves the rest unseen.
                ring32[0] = first
                value = data & MASKS[length]
                try:
                    handler, where = (pio_writes if is_pio else mmio_writes)[length][address]
                except KeyError:
                    handler, where = (pio_write_route if is_pio else mmio_write_route)(address, length)
                try:
                    handler(where, length, value)
                except (GuestExit, DeviceFault, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    (fault_pio if is_pio else fault_mmio)(WRITE, address, length, value, exc)
                exits += 1
                if exits == max_exits:
                    raise _ExitLimit

        poll_bells = None
        if bells:
            poller = select.poll()
            by_fd = {bell.fd: bell for bell in bells}
            for bell in bells:
                poller.register(bell.fd, select.POLLIN)
            poll_bells = poller.poll

        def ring_bells(ready: list[tuple[int, int]]) -> None:
            """Deliver the doorbells rung since the last look, one write per ring."""
            nonlocal exits
            for fd, _event in ready:
                bell = by_fd[fd]
                try:
                    rings = os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                for _ in range(rings):
                    bell.bus.write(bell.address, bell.size, bell.value)
                    exits += 1
                    if exits == max_exits:
                        raise _ExitLimit

        def flush() -> None:
            """The run is stopping: what the guest posted or rang before it stopped reaches the devices."""
            if coalesced and ring32[0] != ring32[1]:
                drain_ring()
            if poll_bells is not None and (ready := poll_bells(0)):
                ring_bells(ready)

        if watcher is not None:
            def from_watcher() -> None:
                try:
                    if watcher.live:
                        flush()
                finally:
                    watcher.drained()
            watcher.start(from_watcher)
        EXIT_IO, EXIT_MMIO = k.KVM_EXIT_IO, k.KVM_EXIT_MMIO
        EXIT_HLT, EXIT_IRQ_WINDOW = k.KVM_EXIT_HLT, k.KVM_EXIT_IRQ_WINDOW_OPEN
        PIO_DATA = _PIO_DATA_OFFSET
        self._service()  # an interrupt may be pending before the first instruction
        self._timed_out = False
        restore = self._arm_timeout(limits.timeout)
        flush_timer = None
        clock = self._clock
        if coalesced and clock is not None and self._waker is not None:
            def tick() -> None:
                # Only wakes the loop (KVM_RUN returns EINTR), which drains the ring first.
                nonlocal flush_timer
                flush_timer = clock.call_later(_FLUSH_NS, tick)
            tick()
        try:
            while True:
                try:
                    if self._exit_waiting:
                        self._exit_waiting = False  # an exit came back while serving the last one
                    else:
                        enter()
                except InterruptedError:
                    run.immediate_exit = 0
                    flush()
                    if self._timed_out:
                        return self._stop("timeout", f"no stop after {limits.timeout:g} s of wall-clock time", exits,
                                          dump=True)
                    self._service()
                    continue
                except KvmError as exc:
                    flush()
                    # The host failed, not a device: must not reach the machine's device-error report.
                    return self._stop("host-error", str(exc), exits)
                # Writes the guest posted or rang before this exit reach their devices first.
                if coalesced and ring32[0] != ring32[1]:
                    drain_ring()
                if poll_bells is not None and (ready := poll_bells(0)):
                    ring_bells(ready)
                reason = u32[_EXIT_REASON]
                if reason == EXIT_IO:
                    if u32[_IO_COUNT] == 1 and u64[_IO_DATA_OFFSET] == PIO_DATA:
                        size, port = u8[_IO_SIZE], u16[_IO_PORT]
                        view = pio_data[size]
                        if u8[_IO_DIRECTION]:
                            value = view[0]
                            try:
                                handler, where = pio_writes[size][port]
                            except KeyError:
                                handler, where = pio_write_route(port, size)
                            try:
                                handler(where, size, value)
                            except (GuestExit, DeviceFault, KeyboardInterrupt):
                                raise
                            except BaseException as exc:
                                fault_pio(WRITE, port, size, value, exc)
                        else:
                            try:
                                handler, where = pio_reads[size][port]
                            except KeyError:
                                handler, where = pio_read_route(port, size)
                            try:
                                value = handler(where, size)
                            except (GuestExit, DeviceFault, KeyboardInterrupt):
                                raise
                            except BaseException as exc:
                                value = MASKS[size]
                                fault_pio(READ, port, size, None, exc)
                            try:
                                view[0] = value  # the store checks the answer: an int of that width
                            except (TypeError, ValueError):
                                view[0] = bad_pio(port, size, value)
                    else:
                        self._string_io(run.io, buf, pio_read, pio_write)
                elif reason == EXIT_MMIO:
                    address, size = u64[_MMIO_ADDR], u32[_MMIO_LEN]
                    view = mmio_data[size]
                    if (fragment[0] is not None or (size < 8 and not (address + size) & 0xFFF)) \
                            and self._mmio_fragment(mmio, address, size, u8[_MMIO_IS_WRITE], view):
                        pass  # a piece of an access that crosses a page: split as the software CPU does
                    elif u8[_MMIO_IS_WRITE]:
                        value = view[0] & MASKS[size]
                        try:
                            handler, where = mmio_writes[size][address]
                        except KeyError:
                            handler, where = mmio_write_route(address, size)
                        try:
                            handler(where, size, value)
                        except (GuestExit, DeviceFault, KeyboardInterrupt):
                            raise
                        except BaseException as exc:
                            fault_mmio(WRITE, address, size, value, exc)
                    else:
                        try:
                            handler, where = mmio_reads[size][address]
                        except KeyError:
                            handler, where = mmio_read_route(address, size)
                        try:
                            value = handler(where, size)
                        except (GuestExit, DeviceFault, KeyboardInterrupt):
                            raise
                        except BaseException as exc:
                            value = MASKS[size]
                            fault_mmio(READ, address, size, None, exc)
                        try:
                            view[0] = value
                        except (TypeError, ValueError):
                            view[0] = bad_mmio(address, size, value)
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
        except _ExitLimit:
            # Reached while delivering posted or rung writes: the rest is dropped, as the guest would have stopped.
            return self._stop("max-exits", f"reached the limit of {max_exits} exits", exits, dump=True)
        except GuestExit as exc:
            # A device ended the run (debug-exit) during this exit, which counts too.
            return StopReason(kind="exit", message=exc.reason, status=exc.status, exits=exits + 1)
        except KeyboardInterrupt:
            flush()
            raise
        finally:
            restore()
            if flush_timer is not None:
                flush_timer.cancel()

    # --- MMIO accesses that cross a page -------------------------------------------------------

    def _mmio_fragment(self, mmio: Bus, address: int, size: int, is_write: int, view: Any) -> bool:
        """Split a page-crossing MMIO access as the software CPU does; True when this exit was served here.

        KVM hands such an access over in fragments, one per page, each of which may look
        aligned; QEMU's TCG splits the whole access instead (the bus's rule for any unaligned
        access: a write into single bytes, a read into the two aligned units around it). The
        first fragment ends at a page end:

        - a read exits before its instruction completes, so decoding the instruction at RIP
          tells whether the access goes on; the second fragment is answered from what was read;
        - a write exits after KVM completed the instruction, so KVM_RUN is entered again with
          immediate_exit set: KVM then hands over the next fragment, if there is one, without
          running the guest (KVM's API: pending operations complete, no instruction runs), or
          returns EINTR when the write was whole.
        """
        if is_write:
            return self._write_fragment(mmio, address, size, view)
        pending = self._fragment[0]
        if pending is not None:
            self._fragment[0] = None
            where, length, rest = pending
            if where == address and length == size:
                view[0] = rest
                return True
            # Not the fragment expected: an ordinary access.
        if size >= 8 or (address + size) & 0xFFF:
            return False
        whole = self._access_size()
        if whole is None or not size < whole <= 8 or whole & (whole - 1):
            return False
        first = address & ~(whole - 1)
        both = mmio.read(first, whole) | mmio.read(first + whole, whole) << (8 * whole)
        value = (both >> (8 * (address - first))) & _MASKS[whole]
        view[0] = value & _MASKS[size]
        self._fragment[0] = (address + size, whole - size, value >> (8 * size))
        return True

    def _write_fragment(self, mmio: Bus, address: int, size: int, view: Any) -> bool:
        if size >= 8 or (address + size) & 0xFFF:
            return False
        first = view[0] & _MASKS[size]
        run = self.vcpu.run_struct
        # Left set: the loop's next KVM_RUN returns EINTR at once and clears it, so a kick from
        # another thread that landed meanwhile (it sets the same flag) is not lost.
        run.immediate_exit = 1
        try:
            self.vcpu.run()
        except InterruptedError:
            return False  # nothing followed: the write was whole, served as any other
        io = run.mmio
        if run.exit_reason == k.KVM_EXIT_MMIO and io.is_write and io.phys_addr == address + size \
                and size + io.len <= 8:
            rest = int.from_bytes(bytes(io.data)[: io.len], "little")
            mmio.write(address, size + io.len, first | rest << (8 * size))  # the bus splits it
            return True
        # Another exit (KVM gives none here, by its API): serve this write whole, then that exit.
        mmio.write(address, size, first)
        self._exit_waiting = True
        return True

    def _access_size(self) -> int | None:
        """The size of the memory operand of the instruction at CS:RIP (decoded; None if unknown)."""
        if self.memory is None:
            return None
        regs, sregs = self.vcpu.get_regs(), self.vcpu.get_sregs()
        linear = (sregs.cs.base + regs.rip) & ((1 << 64) - 1)
        physical = translate(self.memory, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, linear)
        slot = self.memory.slot_at(physical) if physical is not None else None
        if physical is None or slot is None:
            return None
        code = self.memory.read(physical, min(15, slot.end - physical))
        return memory_operand_size(code, code_bits(sregs.cr0, sregs.cs.l, sregs.cs.db))

    # --- posted writes and doorbells ---------------------------------------------------------

    def _register_posted(self, pio: Bus, mmio: Bus, zones: list[tuple[int, int, bool]]) -> None:
        """A coalesced zone (added to ``zones``) per posted region KVM can queue; the rest stay synchronous."""
        wanted = [(region.base, region.size, bus.space is Space.PIO, owner)
                  for bus in (pio, mmio) for region, owner in bus.claims() if region.posted]
        if not wanted:
            return
        page = self.vm.check_extension(k.KVM_CAP_COALESCED_MMIO)
        if page <= 0:
            log.info("posted regions stay synchronous: this KVM has no coalesced MMIO")
            return
        # The value is where the ring sits in the vCPU mapping, in pages.
        self._ring_page = page
        pio_ok = self.vm.check_extension(k.KVM_CAP_COALESCED_PIO) > 0
        for base, size, is_pio, owner in wanted:
            if is_pio and not pio_ok:
                log.info("%s: posted ports stay synchronous: this KVM has no coalesced PIO", owner)
                continue
            try:
                self.vm.register_coalesced_mmio(base, size, is_pio)
            except KvmError as exc:
                log.warning("%s: posted range %#x stays synchronous: %s", owner, base, exc)
                continue
            zones.append((base, size, is_pio))

    def _assign_doorbells(self, pio: Bus, mmio: Bus, bells: list["_Bell"]) -> None:
        """An ioeventfd (added to ``bells``) for every doorbell this KVM takes; the rest stay synchronous."""
        wanted = [(bus, region, owner, bell) for bus in (pio, mmio)
                  for region, owner in bus.claims() for bell in region.doorbells]
        if not wanted:
            return
        if self.vm.check_extension(k.KVM_CAP_IOEVENTFD) <= 0:
            log.info("doorbells stay synchronous: this KVM has no ioeventfd")
            return
        for bus, region, owner, bell in wanted:
            address = region.base + bell.offset
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                self.vm.ioeventfd(fd, address, bell.size, pio=bus.space is Space.PIO, datamatch=bell.value)
            except KvmError as exc:
                os.close(fd)
                log.warning("%s: doorbell at %#x stays synchronous: %s", owner, address, exc)
                continue
            bells.append(_Bell(fd, bus, address, bell.size, bell.value))

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
        if self.memory is not None:
            self.memory.remove_listener(self._map_changed)
        for part in (self.vcpu, self.vm, self.kvm):
            part.close()


class _ExitLimit(Exception):
    """max_exits was reached while delivering posted or rung writes."""


class _Views:
    """Typed memoryviews of one vCPU mapping: the exit fields, the IO data, the coalesced ring."""

    def __init__(self, whole: memoryview, ring_page: int | None) -> None:
        self.u8, self.u16 = whole.cast("B"), whole.cast("H")
        self.u32, self.u64 = whole.cast("I"), whole.cast("Q")
        # The exit's data by access size: port IO is 1, 2 or 4 bytes (x86 has no other
        # widths); an MMIO exit carries up to 8, an odd length (a split access) goes
        # through the u64 view and a mask.
        data = whole[_PIO_DATA_OFFSET : _PIO_DATA_OFFSET + 8]
        b, h, i = data.cast("B"), data.cast("H"), data.cast("I")
        self.pio = [None, b, h, None, i, None, None, None, None]
        data = whole[_MMIO_DATA : _MMIO_DATA + 8]
        mb, mh, mi, mq = data.cast("B"), data.cast("H"), data.cast("I"), data.cast("Q")
        self.mmio = [mq, mb, mh, mq, mi, mq, mq, mq, mq]
        self.ring32 = self.ring64 = None
        self.ring_slots = 0
        self._parts = [self.u8, self.u16, self.u32, self.u64, b, h, i, mb, mh, mi, mq]
        if ring_page is not None:
            page = whole[ring_page * mmap.PAGESIZE : (ring_page + 1) * mmap.PAGESIZE]
            self.ring32, self.ring64 = page.cast("I"), page.cast("Q")
            # KVM_COALESCED_MMIO_MAX: as many entries as fit in the page after first/last.
            self.ring_slots = (mmap.PAGESIZE - _RING_HEADER) // _ENTRY
            self._parts += [self.ring32, self.ring64]

    def release(self) -> None:
        """Let the mapping close (an exported view would keep it open)."""
        for part in self._parts:
            part.release()
        self._parts = []


class _Bell:
    """One doorbell's eventfd, registered with KVM, and where its rings go."""

    __slots__ = ("fd", "bus", "address", "size", "value", "match")

    def __init__(self, fd: int, bus: Bus, address: int, size: int, match: int | None) -> None:
        self.fd, self.bus, self.address, self.size, self.match = fd, bus, address, size, match
        # The eventfd does not carry what the guest wrote: the match value, or 0 (see bus.Doorbell).
        self.value = match if match is not None else 0

    def close(self, vm: Vm) -> None:
        try:
            vm.ioeventfd(self.fd, self.address, self.size, pio=self.bus.space is Space.PIO,
                         datamatch=self.match, deassign=True)
        except KvmError as exc:  # the VM is going away anyway
            log.debug("deassigning the doorbell at %#x: %s", self.address, exc)
        os.close(self.fd)


class _DoorbellWatcher:
    """Wakes the vCPU when a doorbell rings while the guest runs on without exiting.

    A thread waits in poll() for any doorbell eventfd; then it posts a callback
    to the machine clock (which kicks KVM_RUN) and waits until the machine
    thread has read the eventfds, since they stay readable until then. It never
    reads them itself: only the machine thread delivers, so rings keep their
    order with the exits around them.
    """

    def __init__(self, fds: list[int], clock: Clock | None) -> None:
        self._fds = fds
        self._clock = clock
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._drained = threading.Event()
        self.live = True
        self._thread: threading.Thread | None = None

    def start(self, callback: Callable[[], None]) -> None:
        if self._clock is None:
            return  # nobody to post to: rings are delivered at exits and at the stop
        self._callback = callback
        self._thread = threading.Thread(target=self._watch, name="vmcore-doorbells", daemon=True)
        self._thread.start()

    def drained(self) -> None:
        self._drained.set()

    def _watch(self) -> None:
        poller = select.poll()
        for fd in (*self._fds, self._stop_fd):
            poller.register(fd, select.POLLIN)
        while True:
            ready = poller.poll()
            if any(fd == self._stop_fd for fd, _ in ready):
                return
            self._drained.clear()
            if not self.live:  # close() ran between the poll and the clear
                return
            assert self._clock is not None
            self._clock.call_soon_threadsafe(self._callback)
            self._drained.wait()

    def close(self) -> None:
        self.live = False  # a callback still queued on the clock does nothing now
        os.eventfd_write(self._stop_fd, 1)
        self._drained.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        os.close(self._stop_fd)


def _hide_apic(cpuid: Any) -> None:
    """Clear the APIC feature bits of CPUID leaf 1 in a KVM_GET_SUPPORTED_CPUID result."""
    for i in range(cpuid.nent):
        entry = cpuid.entries[i]
        if entry.function == 1:
            entry.ecx, entry.edx = cpuid1_without_apic(entry.ecx, entry.edx)


def _ignore_signal(_signum: int, _frame: Any) -> None:
    """SIGUSR1 only interrupts KVM_RUN (EINTR); the loop does the work."""


def _set_segment(seg: s.kvm_segment, value: Segment) -> None:
    seg.selector, seg.base, seg.limit = value.selector, value.base, value.limit
    seg.type, seg.s, seg.dpl, seg.present = value.type, value.s, value.dpl, value.present
    seg.db, seg.l, seg.g = value.db, value.l, value.g
    seg.avl, seg.unusable = 0, 0



