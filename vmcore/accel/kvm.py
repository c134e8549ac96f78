"""The KVM accelerator: a CPU backend that runs ``KVM_RUN`` and decodes its exits.

The loop around it is the run core's (vmcore.accel.core). The exit path is kept
lean: the ``kvm_run`` fields are read in place from the vCPU's mmap through
memoryviews made once per run, and decoded into the core's exit record; nothing
per exit allocates beyond the integers involved. String IO (``rep ins/outs``, one
exit of many elements) is handed to the core element by element, and an MMIO
access that crosses a page (one exit per page) as the one access it is.

Two ways to leave the guest less often, both declared by devices on their bus
regions and both invisible to them but for timing:

* posted regions are registered as coalesced MMIO/PIO zones: KVM queues their
  writes in a ring page of the vCPU mapping without exiting; the ring is drained,
  in order, through the core's accessors, before any other exit is handled, every
  ``_FLUSH_NS`` while the guest runs on, and whenever the run stops;
* doorbells get an ioeventfd each: the write signals an eventfd in the kernel;
  a watcher thread wakes the vCPU, and the writes are delivered on the vCPU's
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
from typing import Any, Callable

from ..bus import Bus, Space
from ..clock import Clock
from ..irq import InterruptController
from ..cpu import (APIC_BASE_MSR, CPUID1_ECX_TSC_DEADLINE, CpuState, Segment, code_bits, memory_operand_size,
                   translate)
from ..cpu_model import SUBLEAF_LEAVES, CpuidTable, cpuid_for, features_of
from ..kvm import Kvm, KvmError, KvmUnavailable, Vcpu, Vm
from ..kvm import ioctl as k
from ..kvm import structs as s
from .msrs import APIC_BASE as MSR_APIC_BASE
from .msrs import TSC as MSR_TSC
from .msrs import TSC_DEADLINE as MSR_TSC_DEADLINE
from .msrs import SNAPSHOT_MSRS
from .msrs import apic_base_refused
from ..memory import GuestMemory, MemorySlot
from ..stop import StopReason
from . import Accelerator, AcceleratorUnavailable, portable
from .core import HALT, MMIO_READ, MMIO_WRITE, PIO_READ, PIO_WRITE, STEPPED, YIELD, CpuStop, RunCore

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
#: The MSRs a snapshot keeps (EFER is in kvm_sregs), and the TSC: KVM moves its offset so the count goes on.
#: kvmclock's MSRs (KVM's paravirtual clock, MSR_KVM_WALL_CLOCK_NEW and MSR_KVM_SYSTEM_TIME_NEW):
#: restored, KVM goes on updating the pages the guest gave it.
_KVMCLOCK_MSRS = (0x4B564D00, 0x4B564D01)
_SAVED_MSRS = (MSR_TSC, *SNAPSHOT_MSRS, *_KVMCLOCK_MSRS)
#: KVM_GET_IRQCHIP's chips: the master and slave PICs and the IOAPIC.
_IRQCHIPS = (0, 1, 2)
#: The MSRs a vCPU the software CPU saved brings over (its TSC comes in the portable part).
_PORTABLE_MSRS = frozenset(SNAPSHOT_MSRS)
#: kvm_vcpu_events.flags (<asm/kvm.h>): which optional parts KVM_SET_VCPU_EVENTS takes.
_VCPUEVENT_VALID_NMI_PENDING, _VCPUEVENT_VALID_SIPI_VECTOR, _VCPUEVENT_VALID_SHADOW, _VCPUEVENT_VALID_SMM = 1, 2, 4, 8

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


def _struct(layout: Any, data: str, name: str) -> Any:
    """A KVM structure a snapshot saved (hex), checked to be this KVM's size."""
    raw = bytes.fromhex(data)
    if len(raw) != ctypes.sizeof(layout):
        raise AcceleratorUnavailable(f"the snapshot's kvm {name} is {len(raw)} bytes, not this KVM's "
                                     f"{ctypes.sizeof(layout)}")
    return layout.from_buffer_copy(raw)


class KvmAccelerator(Accelerator):
    """A VM with one vCPU on /dev/kvm."""

    name = "kvm"

    def __init__(self, kvm: Kvm, vm: Vm, vcpu: Vcpu, kernel_irqchip: bool = False, kernel_pit: bool = False) -> None:
        self.kvm = kvm
        self.vm = vm
        self.vcpu = vcpu
        self.kernel_irqchip = kernel_irqchip
        self.kernel_pit = kernel_pit
        self.memory: GuestMemory | None = None
        self._msr_exits = False  # IA32_APIC_BASE comes to userspace (see _apic_base_exits)
        self._physical_bits = 36  # the guest's MAXPHYADDR, from its CPUID
        self._x2apic = False
        self._tsc_deadline = False  # the guest's CPUID has the TSC-deadline timer (its MSR exists)
        self._vcpu_thread = 0
        self._signals = False  # a kick may signal the vCPU thread (see begin)
        # What one run sets up (see begin/end).
        self._core: RunCore | None = None
        self._zones: list[tuple[int, int, bool]] = []
        self._whole: memoryview | None = None  # the vCPU mapping, and typed views of it, for a run
        self._views: _Views | None = None
        self._bells: list[_Bell] = []
        self._watcher: _DoorbellWatcher | None = None
        self._flush_timer: Any = None
        self._strings: list[list[int]] = []  # the `rep ins/outs` in progress (see _string_element)
        #: Register posted regions as coalesced zones (False: every write exits, for comparison).
        self.coalesce = True
        #: Give doorbells an ioeventfd (False: they are ordinary exits).
        self.ioeventfds = True
        #: The second fragment of a page-crossing MMIO read, once the first was served:
        #: (address, size, its bytes) (see _mmio_fragment).
        self._fragment: list[tuple[int, int, int] | None] = [None]
        #: KVM_RUN already returned the next exit (see _write_fragment): handle it before entering.
        self._exit_waiting = [False]
        #: Single-stepping is on for the vCPU (request_step) until its step ends.
        self._stepping = [False]
        #: Completes the exit a run stopped at (see _enter_function's finish), called by end().
        self._finish: Callable[[], None] | None = None
        #: The last run stopped inside a string I/O or a split MMIO access (not saveable there).
        self._incomplete = False
        self._xsave = self._xcrs = self._debugregs = False  # KVM_CAP_XSAVE, _XCRS, _DEBUGREGS (see setup)
        #: The lapic model whose TPR is CR8 during a run (see begin), in a cell.
        self._apic: list[Any] = [None]

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
        except KvmError as exc:
            kvm.close()
            raise AcceleratorUnavailable(f"KVM is present but unusable: {exc}") from None
        return cls(kvm, vm, vcpu, kernel_irqchip, kernel_irqchip and kernel_pit)

    def set_irq_line(self, line: int, level: bool) -> None:
        """Drive an input of the in-kernel interrupt controller (KVM_IRQ_LINE)."""
        self.vm.irq_line(line, int(level))

    # --- set-up ---------------------------------------------------------------------

    def setup(self, memory: GuestMemory, state: CpuState) -> None:
        self.memory = memory
        self._readonly_ok = self.vm.check_extension(k.KVM_CAP_READONLY_MEM) > 0
        # Snapshots read and write the x87/SSE state through the XSAVE area where KVM has it.
        self._xsave = self.vm.check_extension(k.KVM_CAP_XSAVE) > 0
        self._xcrs = self.vm.check_extension(k.KVM_CAP_XCRS) > 0
        self._debugregs = self.vm.check_extension(k.KVM_CAP_DEBUGREGS) > 0
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
        if not self.kernel_irqchip and state.local_apic:
            self._apic_msr_exits()
        table = self.cpuid_table(state)
        self.vcpu.set_cpuid2(_cpuid2(table))
        self._physical_bits = table.get((0x80000008, 0), (36,))[0] & 0xFF or 36
        self._x2apic = "x2apic" in features_of(table)
        self._tsc_deadline = "tsc-deadline" in features_of(table)
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
            # set (KVM_SET_SREGS included): the two must agree.
            sregs.apic_base = APIC_BASE_MSR if state.local_apic else 0
        self.vcpu.set_sregs(sregs)
        regs = s.kvm_regs()
        for name, value in state.registers.items():
            setattr(regs, name, value)
        self.vcpu.set_regs(regs)

    def _apic_msr_exits(self) -> None:
        """Have the APIC's MSRs come to userspace, where the lapic model answers them (RunCore.msrs):
        KVM's user-space MSR exits, for IA32_APIC_BASE and IA32_TSC_DEADLINE (which KVM without its
        own APIC would ignore) through a filter that denies them to KVM, for the x2APIC MSRs (which
        no filter covers) because KVM without its own APIC fails them (exit reason INVAL; UNKNOWN
        too: both end as the same #GP in the core)."""
        try:
            self.vm.enable_cap(k.KVM_CAP_X86_USER_SPACE_MSR, k.KVM_MSR_EXIT_REASON_FILTER
                               | k.KVM_MSR_EXIT_REASON_INVAL | k.KVM_MSR_EXIT_REASON_UNKNOWN)
            self.vm.deny_msrs([(MSR_APIC_BASE, 1), (MSR_TSC_DEADLINE, 1)])
        except KvmError as exc:
            log.warning("this KVM cannot send the APIC's MSRs to the lapic model (%s): no x2APIC, and KVM "
                        "keeps IA32_APIC_BASE", exc)
            return
        self._msr_exits = True

    def cpuid_table(self, state: CpuState) -> CpuidTable:
        """The guest's CPUID: the profile's CPU model (vmcore.cpu_model) over what this KVM supports.

        A local APIC is there where a device models one or KVM's in-kernel irqchip does;
        x2APIC and the TSC-deadline timer with the lapic model where its MSRs can come to
        userspace, the TSC-deadline timer with KVM's own APIC where KVM has it.
        """
        supported = _cpuid_dict(self.kvm.supported_cpuid())
        unavailable: dict[str, str] = {}
        if self.kernel_irqchip and self.vm.check_extension(k.KVM_CAP_TSC_DEADLINE_TIMER) > 0 \
                or not self.kernel_irqchip and state.local_apic and self._msr_exits:
            # KVM's APIC, or the lapic model, has it; the bit is the VMM's to set (as QEMU sets it).
            eax, ebx, ecx, edx = supported[(1, 0)]
            supported[(1, 0)] = (eax, ebx, ecx | CPUID1_ECX_TSC_DEADLINE, edx)
        if not self.kernel_irqchip and state.local_apic and not self._msr_exits:
            why = "this KVM cannot send the APIC's MSRs to the lapic model (no user-space MSR exits)"
            unavailable = {"x2apic": why, "tsc-deadline": why}
        result = cpuid_for(state.model, supported, accel="this KVM", unavailable=unavailable,
                           local_apic=state.local_apic or self.kernel_irqchip, host=True)
        if result.dropped:
            log.warning("cpu %s: this KVM lacks %s: left out", state.model.describe(), ", ".join(result.dropped))
        return result.table

    def time_stamp_counter(self) -> tuple[Callable[[], int], Callable[[], int]] | None:
        vcpu = self.vcpu
        return (lambda: vcpu.get_msr(MSR_TSC)), (lambda: vcpu.tsc_khz() * 1000)

    # --- a run: the CPU side of vmcore.accel.core's loop -----------------------------------

    def begin(self, core: RunCore) -> Callable[[], int]:
        if core.controller is not None and self.kernel_irqchip:
            raise AcceleratorUnavailable("a userspace interrupt controller cannot drive KVM's in-kernel irqchip")
        self._core = core
        # A kick interrupts KVM_RUN with a signal to this thread; only the main thread can set
        # the handler (elsewhere a kick takes effect at the next exit).
        self._vcpu_thread = threading.get_ident()
        self._signals = threading.current_thread() is threading.main_thread()
        if self._signals:
            signal.signal(signal.SIGUSR1, _ignore_signal)
        self._fragment[0], self._exit_waiting[0] = None, False
        self._strings.clear()
        self._whole = memoryview(self.vcpu.mmap)
        try:
            self._queues(core)
        except BaseException:
            self.end()  # what was registered goes again
            raise
        return self._enter_function(core)

    def _queues(self, core: RunCore) -> None:
        """Coalesced zones for posted regions, ioeventfds for doorbells, and what delivers their writes."""
        if self.coalesce:
            self._register_posted(core.pio, core.mmio, self._zones)
        if self.ioeventfds:
            self._assign_doorbells(core.pio, core.mmio, self._bells)
        self._views = _Views(self._whole, self._ring_page if self._zones else None)
        self.flush = self._flusher(core)  # type: ignore[method-assign]
        clock = core.clock
        if self._bells and clock is not None:
            self._watcher = _DoorbellWatcher([bell.fd for bell in self._bells], clock)
            flush = self.flush

            def from_watcher() -> None:
                try:
                    flush()
                finally:
                    watcher.drained()

            watcher = self._watcher
            watcher.start(from_watcher)
        if self._zones and clock is not None:
            def tick() -> None:
                # Only wakes the loop (KVM_RUN returns EINTR), which drains the ring first.
                self._flush_timer = clock.call_later(_FLUSH_NS, tick)
            tick()

    def end(self) -> None:
        finish, self._finish = self._finish, None
        if finish is not None:
            finish()
        if self._stepping[0]:  # the run ended inside a step: the next one runs freely
            self._stepping[0] = False
            self.step_done = None
            try:
                self.vcpu.set_single_step(False)
            except KvmError as exc:
                log.warning("KVM_SET_GUEST_DEBUG (off) after the run: %s", exc)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._views is not None:
            self._views.release()
            self._views = None
        if self._whole is not None:
            self._whole.release()
            self._whole = None
        for bell in self._bells:
            bell.close(self.vm)
        for addr, size, is_pio in self._zones:
            try:
                self.vm.unregister_coalesced_mmio(addr, size, is_pio)
            except KvmError as exc:  # the VM is going away anyway
                log.debug("unregistering coalesced zone %#x: %s", addr, exc)
        self._bells, self._zones = [], []
        self.__dict__.pop("flush", None)  # the run's flusher (see begin)
        self._core = None

    def _enter_function(self, core: RunCore) -> Callable[[], int]:
        """KVM_RUN and the decoding of its exit into ``core.exit``: the hot path, all locals."""
        run = self.vcpu.run_struct
        vcpu_run = self.vcpu.run
        views = self._views
        assert views is not None
        u8, u16, u32, u64 = views.u8, views.u16, views.u32, views.u64
        pio_data, mmio_data = views.pio, views.mmio
        record = core.exit
        flush = self.flush
        queued = bool(self._zones or self._bells)
        ending = core.ending
        fragment, strings, waiting, stepping = self._fragment, self._strings, self._exit_waiting, self._stepping
        EXIT_IO, EXIT_MMIO = k.KVM_EXIT_IO, k.KVM_EXIT_MMIO
        PIO_DATA, MASKS = _PIO_DATA_OFFSET, _MASKS
        target: Any = None  # where the answer to the read in progress goes (see core.ExitRecord)
        # CR8 is the lapic model's TPR (bits 7:4). KVM without its own APIC keeps CR8 in kvm_run:
        # given before each KVM_RUN, read back after (as QEMU's kvm_arch_pre_run/post_run do).
        self._apic[0] = core.controller if hasattr(core.controller, "set_task_priority") else None
        apic_cell = self._apic  # a cell: a local APIC reloaded mid-run takes over (controller_changed)
        # A recording on the host's clock keeps where the vCPU came back without an exit; its replay
        # comes back there too (vmcore.clock.LoggedHostClock, ReplayedHostClock).
        clock = core.clock
        clock_yields = clock is not None and (clock.replaying or clock.keeps_readings)

        def enter() -> int:
            nonlocal target
            if target is not None:
                target[0] = record.value
                target = None
            while True:
                if strings:
                    kind, target = self._string_element(strings, record)
                    return kind
                if waiting[0]:
                    waiting[0] = False  # an exit came back while serving the last one
                else:
                    apic = apic_cell[0]
                    if apic is not None:
                        tpr = apic.task_priority() >> 4
                        run.cr8 = tpr
                    if clock_yields and clock.yield_now():  # a replay: the recorded run came back here
                        run.immediate_exit = 0
                        return YIELD
                    at_entry = clock_yields and run.immediate_exit  # (read only for a recording)
                    try:
                        vcpu_run()
                    except InterruptedError:
                        run.immediate_exit = 0
                        if clock_yields:
                            clock.note_yield(bool(at_entry))
                        if apic is not None and run.cr8 != tpr:
                            apic.set_task_priority(run.cr8 << 4)
                        if queued:
                            flush()
                        return YIELD
                    except KvmError as exc:
                        # The host failed, not a device: must not reach the machine's device-error report.
                        raise CpuStop(StopReason.of("host-error", str(exc))) from None
                    if apic is not None and run.cr8 != tpr:
                        apic.set_task_priority(run.cr8 << 4)
                    if queued:
                        # Writes the guest posted or rang before this exit reach their devices first.
                        flush()
                        if ending[0] is not None and ending[0].kind != "paused":
                            return YIELD  # the limit was reached on the way: the core stops
                        # A pause reached on the way serves this exit too (the core stops after it):
                        # KVM completes it when the run ends, so its access must not be dropped.
                reason = u32[_EXIT_REASON]
                if reason == EXIT_IO:
                    size = u8[_IO_SIZE]
                    record.address, record.size = u16[_IO_PORT], size
                    if u32[_IO_COUNT] != 1 or u64[_IO_DATA_OFFSET] != PIO_DATA:
                        strings.append(self._string_io(run.io))  # `rep ins/outs`: element by element
                        continue
                    if u8[_IO_DIRECTION]:
                        record.value = pio_data[size][0]
                        return PIO_WRITE
                    target = pio_data[size]
                    return PIO_READ
                if reason == EXIT_MMIO:
                    address, size = u64[_MMIO_ADDR], u32[_MMIO_LEN]
                    view = mmio_data[size]
                    if fragment[0] is not None or (size < 8 and not (address + size) & 0xFFF):
                        kind, target = self._mmio_fragment(record, address, size, u8[_MMIO_IS_WRITE], view)
                        if kind is None:
                            continue  # served here: the rest of a read already answered
                        if kind:
                            return kind
                    record.address, record.size = address, size
                    if u8[_MMIO_IS_WRITE]:
                        record.value = view[0] & MASKS[size]
                        return MMIO_WRITE
                    target = view
                    return MMIO_READ
                if reason == k.KVM_EXIT_HLT:
                    if stepping[0]:
                        self._end_step()
                    return HALT
                if reason == k.KVM_EXIT_IRQ_WINDOW_OPEN:
                    return YIELD
                if reason == k.KVM_EXIT_X86_RDMSR or reason == k.KVM_EXIT_X86_WRMSR:
                    self._msr_exit(core, run.msr, write=reason == k.KVM_EXIT_X86_WRMSR)
                    return YIELD  # a write may have raised an interrupt (a self-IPI): the core offers it
                if reason == k.KVM_EXIT_DEBUG and stepping[0]:
                    self._end_step()
                    return STEPPED
                raise CpuStop(self._other_exit(reason))

        def finish() -> None:
            """The run is over: complete the exit it stopped at, without running the guest.

            KVM completes an I/O, MMIO or MSR exit (the answer into the register, RIP past the
            instruction) only when KVM_RUN is entered again (Documentation/virt/kvm/api.rst:
            userspace re-enters with immediate_exit set to complete pending operations without
            letting further instructions run). Left pending, the next run, a snapshot or a
            restored machine would see the instruction half done, or its answer lost."""
            nonlocal target
            if strings or fragment[0] is not None or waiting[0]:
                # A `rep ins/outs` or a page-crossing MMIO access cut short: KVM re-executes what is
                # left of it when the guest runs again, so its state is not lost, but it is not done.
                self._incomplete = True
                return
            if target is not None:
                target[0] = record.value
                target = None
            run.immediate_exit = 1
            try:
                vcpu_run()
            except InterruptedError:
                pass  # done: nothing of the guest ran
            except KvmError as exc:
                log.debug("completing the last exit: %s", exc)
            else:
                # An exit without guest code run (KVM's own checks): nothing was pending.
                log.debug("completing the last exit: KVM_RUN returned exit %s", u32[_EXIT_REASON])
            finally:
                run.immediate_exit = 0
            self._incomplete = False

        self._finish = finish
        return enter

    def request_step(self, done: Callable[[], None]) -> None:
        try:
            self.vcpu.set_single_step(True)
        except KvmError as exc:
            raise AcceleratorUnavailable(f"this KVM cannot single-step the guest: {exc}") from None
        self.step_done = done
        self._stepping[0] = True

    def _end_step(self) -> None:
        self._stepping[0] = False
        try:
            self.vcpu.set_single_step(False)
        except KvmError as exc:  # it took the step: it must let the guest go on
            raise CpuStop(StopReason.of("host-error", f"KVM_SET_GUEST_DEBUG (off): {exc}")) from None

    def _msr_exit(self, core: RunCore, msr: Any, write: bool) -> None:
        """An rdmsr/wrmsr the MSR filter sent here: the device behind it answers (RunCore); error
        1 has KVM raise #GP(0) in the guest."""
        index = msr.index
        if index == MSR_TSC_DEADLINE and not self._tsc_deadline:
            msr.error = True  # filtered for the lapic model, but not in this CPU model: #GP
            return
        if not write:
            value = core.read_msr(index)
            msr.error = value is None
            if value is not None:
                msr.data = value
            return
        value = msr.data
        refused = index == MSR_APIC_BASE and apic_base_refused(value, self._physical_bits, self._x2apic)
        ok = not refused and core.write_msr(index, value)
        msr.error = not ok
        if ok and index == MSR_APIC_BASE:
            # KVM shows CPUID's APIC bit from its own copy of the MSR: keep that in step.
            sregs = self.vcpu.get_sregs()
            sregs.apic_base = value
            self.vcpu.set_sregs(sregs)

    def _flusher(self, core: RunCore) -> Callable[[], None]:
        """Deliver what the guest posted (the coalesced ring) and rang (ioeventfds), through the core's accessors."""
        views = self._views
        assert views is not None
        ring32, ring64, ring_slots = views.ring32, views.ring64, views.ring_slots
        port_out, mmio_write = core.accessors.port_out, core.accessors.mmio_write
        ending = core.ending
        MASKS = _MASKS
        poll_bells = None
        if self._bells:
            poller = select.poll()
            by_fd = {bell.fd: bell for bell in self._bells}
            for bell in self._bells:
                poller.register(bell.fd, select.POLLIN)
            poll_bells = poller.poll

        def stopping() -> bool:
            # A pause (a snapshot point) lets everything the guest already did reach its devices:
            # the machine is saved past those writes. Any other stop leaves the rest unseen.
            return ending[0] is not None and ending[0].kind != "paused"

        def flush() -> None:
            if ring32 is not None:
                first, last = ring32[0], ring32[1]
                while first != last and not stopping():
                    i = 1 + 3 * first  # the entry in u64 items: phys_addr, len|pio, data
                    address, length, is_pio, data = ring64[i], ring32[2 * i + 2], ring32[2 * i + 3], ring64[i + 2]
                    first += 1
                    if first == ring_slots:
                        first = 0
                    # Consumed before it is delivered: a device that stops the run leaves the rest unseen.
                    ring32[0] = first
                    if is_pio:
                        port_out(None, address, length, data & MASKS[length])
                    else:
                        mmio_write(None, address, length, data & MASKS[length])
            if poll_bells is not None and (ready := poll_bells(0)):
                for fd, _event in ready:
                    bell = by_fd[fd]
                    try:
                        rings = os.eventfd_read(fd)
                    except BlockingIOError:
                        continue
                    write = port_out if bell.pio else mmio_write
                    for _ in range(rings):  # one write per ring
                        if stopping():
                            return
                        write(None, bell.address, bell.size, bell.value)

        return flush

    def offer_interrupt(self, controller: InterruptController) -> bool:
        run = self.vcpu.run_struct
        if controller.pending():
            if run.ready_for_interrupt_injection and run.if_flag:
                self.vcpu.interrupt(controller.acknowledge())
                run.request_interrupt_window = 0
                return True
            # KVM exits with IRQ_WINDOW_OPEN as soon as the guest can take it.
            run.request_interrupt_window = 1
        else:
            run.request_interrupt_window = 0
        return False

    def inject_nmi(self) -> None:
        self.vcpu.nmi()  # KVM holds it until the guest can take it (its own NMI window)

    def interrupts_enabled(self) -> bool:
        return bool(self.vcpu.run_struct.if_flag)

    def kick(self) -> None:
        """From any thread: KVM_RUN returns EINTR now (the signal) or at its next entry (immediate_exit)."""
        self.vcpu.run_struct.immediate_exit = 1
        if self._signals and threading.get_ident() != self._vcpu_thread:
            signal.pthread_kill(self._vcpu_thread, signal.SIGUSR1)

    def end_run(self) -> None:
        self.kick()

    # --- `rep ins/outs` and MMIO accesses that cross a page --------------------------------

    @staticmethod
    def _string_io(io: Any) -> list[int]:
        """A string IO exit as [direction, port, size, data offset, elements left]."""
        return [io.direction, io.port, io.size, io.data_offset, io.count]

    def _string_element(self, strings: list[list[int]], record: Any) -> tuple[int, Any]:
        """The next element of a ``rep outs``/``rep ins`` as an access of its own: every one reaches the device, in order."""
        string = strings[0]
        direction, port, size, offset, left = string
        string[3], string[4] = offset + size, left - 1
        if left == 1:
            strings.clear()
        record.address, record.size = port, size
        if direction == k.KVM_EXIT_IO_OUT:
            record.value = int.from_bytes(self.vcpu.mmap[offset : offset + size], "little")
            return PIO_WRITE, None
        return PIO_READ, _StringSlot(self.vcpu.mmap, offset, size)

    def _mmio_fragment(self, record: Any, address: int, size: int, is_write: int, view: Any) -> tuple[int | None, Any]:
        """Split a page-crossing MMIO access as the software CPU does.

        Returns (kind, where the answer goes) for the access to hand the core, (None, None)
        when this exit was served here, or (0, None) when it is an ordinary access.

        KVM hands such an access over in fragments, one per page, each of which may look
        aligned; QEMU's TCG splits the whole access instead (the bus's rule for any unaligned
        access: a write into single bytes, a read into the two aligned units around it). The
        first fragment ends at a page end:

        - a read exits before its instruction completes, so decoding the instruction at RIP
          tells whether the access goes on: the whole access goes to the bus (which splits
          it), the first fragment gets its bytes, the second is answered from the rest;
        - a write exits after KVM completed the instruction, so KVM_RUN is entered again with
          immediate_exit set: KVM then hands over the next fragment, if there is one, without
          running the guest (KVM's API: pending operations complete, no instruction runs), or
          returns EINTR when the write was whole.
        """
        if is_write:
            return self._write_fragment(record, address, size, view), None
        pending = self._fragment[0]
        if pending is not None:
            self._fragment[0] = None
            where, length, rest = pending
            if where == address and length == size:
                view[0] = rest
                return None, None
            # Not the fragment expected: an ordinary access.
        if size >= 8 or (address + size) & 0xFFF:
            return 0, None
        whole = self._access_size()
        if whole is None or not size < whole <= 8 or whole & (whole - 1):
            return 0, None
        record.address, record.size = address, whole
        return MMIO_READ, _FirstFragment(view, address, size, whole, self._fragment)

    def _write_fragment(self, record: Any, address: int, size: int, view: Any) -> int:
        if size >= 8 or (address + size) & 0xFFF:
            return 0
        first = view[0] & _MASKS[size]
        run = self.vcpu.run_struct
        # Left set: the loop's next KVM_RUN returns EINTR at once and clears it, so a kick from
        # another thread that landed meanwhile (it sets the same flag) is not lost.
        run.immediate_exit = 1
        try:
            self.vcpu.run()
        except InterruptedError:
            return 0  # nothing followed: the write was whole, served as any other
        io = run.mmio
        record.address, record.size, record.value = address, size, first
        if run.exit_reason == k.KVM_EXIT_MMIO and io.is_write and io.phys_addr == address + size \
                and size + io.len <= 8:
            rest = int.from_bytes(bytes(io.data)[: io.len], "little")
            record.size, record.value = size + io.len, first | rest << (8 * size)  # the bus splits it
            return MMIO_WRITE
        # Another exit (KVM gives none here, by its API): serve this write whole, then that exit.
        self._exit_waiting[0] = True
        return MMIO_WRITE

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
            bells.append(_Bell(fd, bus.space is Space.PIO, address, bell.size, bell.value))

    # --- stops ----------------------------------------------------------------------------

    def _other_exit(self, reason: int) -> StopReason:
        run = self.vcpu.run_struct
        name = k.EXIT_REASON_NAMES.get(reason, str(reason))
        if reason == k.KVM_EXIT_SHUTDOWN:
            return self.stop_reason("shutdown", "triple fault: the vCPU shut down")
        if reason == k.KVM_EXIT_FAIL_ENTRY:
            code = run.fail_entry.hardware_entry_failure_reason
            stop = self.stop_reason("fail-entry", f"KVM could not enter the guest (hardware reason {code:#x})")
            return stop.evolve(detail={"hardware_entry_failure_reason": hex(code)})
        if reason == k.KVM_EXIT_INTERNAL_ERROR:
            internal = run.internal
            sub = internal.suberror
            data = [int(internal.data[i]) for i in range(min(internal.ndata, 16))]
            sub_name = k.INTERNAL_ERROR_NAMES.get(sub, str(sub))
            stop = self.stop_reason("internal-error", f"KVM internal error {sub} ({sub_name}); on a software-emulating "
                                    "KVM an unsupported instruction ends this way")
            return stop.evolve(detail={"suberror": sub, "data": " ".join(f"{d:#x}" for d in data)})
        if reason == k.KVM_EXIT_SYSTEM_EVENT:
            event = run.system_event
            kind = k.SYSTEM_EVENT_NAMES.get(event.type, str(event.type))
            return StopReason.of("system-event", f"system event {kind}", detail={"type": event.type})
        return self.stop_reason("unknown-exit", f"unhandled KVM exit {name} ({reason})")

    # --- snapshots -------------------------------------------------------------------------

    def between_instructions(self) -> bool:
        return not self._strings and self._fragment[0] is None and not self._exit_waiting[0]

    def controller_changed(self, controller: Any) -> None:
        self._apic[0] = controller if hasattr(controller, "set_task_priority") else None

    def save_cpu(self) -> dict[str, Any]:
        """The vCPU for a snapshot (vmcore.snapshot), between runs, its last exit completed (see
        end): KVM's own records of it, as the kernel lays them out (kvm_regs, kvm_sregs with the
        segments' hidden parts, kvm_fpu, kvm_vcpu_events with the interrupt shadow and NMI
        masking), and the MSRs a guest sets up (EFER is in kvm_sregs; the TSC goes on from its
        value); the VM's kvmclock; with irqchip: kernel, KVM's PICs, IOAPIC, local APIC (and its
        TSC deadline) and, with kernel_pit, its PIT. A vCPU stopped inside a string I/O is refused."""
        if self._finish is not None:
            self._finish()  # saved from inside a run (the paused monitor): the exit being served is completed first
        if self._incomplete:
            raise AcceleratorUnavailable("the vCPU stopped inside a string I/O or a page-crossing MMIO access: "
                                         "save at another point")
        vcpu = self.vcpu
        regs, sregs, fpu, events = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu(), vcpu.get_vcpu_events()
        xsave = vcpu.get_xsave() if self._xsave else None
        xcrs = vcpu.get_xcrs() if self._xcrs else None
        debugregs = vcpu.get_debugregs() if self._debugregs else None
        msrs = {}
        for index in _SAVED_MSRS:
            try:
                msrs[f"{index:#x}"] = vcpu.get_msr(index)
            except KvmError:
                pass  # not one this KVM keeps
        registers = {name: int(getattr(regs, name)) for name in (*_GPRS, "rip", "rflags")}
        registers.update({name: int(getattr(sregs, name)) for name in ("cr0", "cr2", "cr3", "cr4", "efer")})
        saved: dict[str, Any] = {name: bytes(struct).hex() for name, struct in
                                 (("regs", regs), ("sregs", sregs), ("fpu", fpu), ("events", events))}
        for name, struct in (("xsave", xsave), ("xcrs", xcrs), ("debugregs", debugregs)):
            if struct is not None:  # the x87/SSE state whole (see vmcore.accel.portable), XCR0, DR0-7
                saved[name] = bytes(struct).hex()
        saved["clock_ns"] = int(self.vm.get_clock().clock)  # kvmclock: a guest's time goes on from here
        if self.kernel_irqchip:
            saved["irqchip"] = [bytes(self.vm.get_irqchip(chip)).hex() for chip in _IRQCHIPS]
            saved["lapic"] = bytes(vcpu.get_lapic()).hex()
            try:
                saved["tsc_deadline"] = vcpu.get_msr(MSR_TSC_DEADLINE)
            except KvmError:
                pass  # no TSC-deadline timer on this KVM
            if self.kernel_pit:
                saved["pit"] = bytes(self.vm.get_pit2()).hex()
            moved: dict[str, Any] = {"refused": "irqchip: kernel: KVM's own interrupt controllers have no place on "
                                                "the software CPU (irqchip: userspace moves)"}
        else:
            moved = portable.from_kvm(regs, sregs, fpu if xsave is None else portable.fpu_from_xsave(xsave), events,
                                      debugregs, xcrs)
        return {"registers": registers, "msrs": msrs, "kvm": saved, "portable": moved}

    def restore_cpu(self, saved: dict[str, Any]) -> None:
        """Give the vCPU (set up, not yet run) a state :meth:`save_cpu` saved."""
        if "kvm" not in saved:
            self._restore_portable(saved)
            return
        layouts = {"regs": s.kvm_regs, "sregs": s.kvm_sregs, "fpu": s.kvm_fpu, "events": s.kvm_vcpu_events}
        for name, layout, available in (("xsave", s.kvm_xsave, self._xsave), ("xcrs", s.kvm_xcrs, self._xcrs),
                                        ("debugregs", s.kvm_debugregs, self._debugregs)):
            if name in saved["kvm"]:
                if not available:
                    raise AcceleratorUnavailable(f"the snapshot keeps the vCPU's {name} and this KVM cannot set them")
                layouts[name] = layout
        if ("irqchip" in saved["kvm"]) != self.kernel_irqchip or ("pit" in saved["kvm"]) != self.kernel_pit:
            raise ValueError("the snapshot's interrupt controllers and PIT are not where this machine has them "
                             "(irqchip, kernel_pit): restore it with the profile it was made with")
        if self.kernel_irqchip:
            layouts["lapic"] = s.kvm_lapic_state
            if self.kernel_pit:
                layouts["pit"] = s.kvm_pit_state2
        raw = {name: _struct(layout, saved["kvm"][name], name) for name, layout in layouts.items()}
        chips = [_struct(s.kvm_irqchip, data, "irqchip") for data in saved["kvm"]["irqchip"]] if self.kernel_irqchip else []
        if len(chips) != (len(_IRQCHIPS) if self.kernel_irqchip else 0):
            raise AcceleratorUnavailable("the snapshot's kvm irqchip does not hold the two PICs and the IOAPIC")
        events = raw["events"]
        # What this VM takes: the interrupt shadow, SMM, a pending NMI and the SIPI vector (QEMU's
        # set); payloads and triple-fault events only where a capability enabled them.
        events.flags = (events.flags & (_VCPUEVENT_VALID_SHADOW | _VCPUEVENT_VALID_SMM)) | \
            _VCPUEVENT_VALID_NMI_PENDING | _VCPUEVENT_VALID_SIPI_VECTOR
        msrs = {int(index, 16): int(value) for index, value in saved["msrs"].items()}

        def controllers_and_clock() -> None:
            if self.kernel_irqchip:
                # The local APIC after IA32_APIC_BASE (in kvm_sregs), its TSC deadline after the LVT
                # timer's mode (QEMU's order); the PICs and IOAPIC are the VM's.
                self.vcpu.set_lapic(raw["lapic"])
                if "tsc_deadline" in saved["kvm"]:
                    self.vcpu.set_msr(MSR_TSC_DEADLINE, int(saved["kvm"]["tsc_deadline"]))
                for chip in chips:
                    self.vm.set_irqchip(chip)
                if self.kernel_pit:
                    self.vm.set_pit2(raw["pit"])  # each count loads again as set, counting from now
            if "clock_ns" in saved["kvm"]:
                self.vm.set_clock(int(saved["kvm"]["clock_ns"]))

        self._set_vcpu(raw["sregs"], raw["regs"], raw["fpu"], raw.get("xcrs"), raw.get("xsave"), raw.get("debugregs"),
                       msrs, events, controllers_and_clock)

    def _restore_portable(self, saved: dict[str, Any]) -> None:
        """A vCPU the software CPU saved (vmcore.accel.portable): KVM's own state of the new vCPU
        with the saved registers, segments, x87/SSE state, events and MSRs written over it."""
        state = portable.check(saved["portable"])
        vcpu = self.vcpu
        regs, sregs, fpu, events = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu(), vcpu.get_vcpu_events()
        xcrs = vcpu.get_xcrs() if self._xcrs and "xcr0" in state["control"] else None
        debugregs = vcpu.get_debugregs() if self._debugregs and "debug" in state else None
        portable.to_kvm(state, regs, sregs, fpu, events, debugregs, xcrs)
        xsave = None
        if self._xsave:
            xsave = vcpu.get_xsave()
            portable.fpu_into_xsave(fpu, xsave)
        msrs = {int(index, 16): int(value) for index, value in saved["msrs"].items() if int(index, 16) in _PORTABLE_MSRS}
        if "tsc" in state:
            msrs[MSR_TSC] = state["tsc"]
        events.flags = _VCPUEVENT_VALID_SHADOW | _VCPUEVENT_VALID_NMI_PENDING
        self._set_vcpu(sregs, regs, fpu, xcrs, xsave, debugregs, msrs, events, lambda: None)

    def _set_vcpu(self, sregs: Any, regs: Any, fpu: Any, xcrs: Any, xsave: Any, debugregs: Any, msrs: dict[int, int],
                  events: Any, then: Callable[[], None]) -> None:
        """Set a vCPU's state in KVM's order: the mode first (what the rest means follows from
        it), XCR0 before the XSAVE area (it says which components the area may hold), the events
        after the MSRs; then ``then`` (the VM's interrupt controllers and clock)."""
        vcpu = self.vcpu
        try:
            vcpu.set_sregs(sregs)
            vcpu.set_regs(regs)
            vcpu.set_fpu(fpu)
            if xcrs is not None:
                vcpu.set_xcrs(xcrs)
            if xsave is not None:
                vcpu.set_xsave(xsave)
            if debugregs is not None:
                vcpu.set_debugregs(debugregs)
            for index, value in msrs.items():
                if not vcpu.set_msr(index, value):
                    log.warning("snapshot: KVM refused MSR %#x = %#x", index, value)
            vcpu.set_vcpu_events(events)
            then()
        except KvmError as exc:
            raise AcceleratorUnavailable(f"KVM refused the snapshot's vCPU state: {exc}") from None

    def set_registers(self, values: dict[str, int]) -> None:
        regs = self.vcpu.get_regs()
        for name, value in values.items():
            setattr(regs, name, value)
        self.vcpu.set_regs(regs)

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


class _StringSlot:
    """Where the answer to one element of a ``rep ins`` goes: its place in the vCPU's IO data page."""

    __slots__ = ("buf", "offset", "size")

    def __init__(self, buf: Any, offset: int, size: int) -> None:
        self.buf, self.offset, self.size = buf, offset, size

    def __setitem__(self, _index: int, value: int) -> None:
        self.buf[self.offset : self.offset + self.size] = value.to_bytes(self.size, "little")


class _FirstFragment:
    """Where the answer to a page-crossing read goes: its first fragment's bytes now, the rest kept.

    KVM asks for the rest in the next exit (see KvmAccelerator._mmio_fragment).
    """

    __slots__ = ("view", "address", "size", "whole", "kept")

    def __init__(self, view: Any, address: int, size: int, whole: int, kept: list[Any]) -> None:
        self.view, self.address, self.size, self.whole, self.kept = view, address, size, whole, kept

    def __setitem__(self, _index: int, value: int) -> None:
        size = self.size
        self.view[0] = value & _MASKS[size]
        self.kept[0] = (self.address + size, self.whole - size, value >> (8 * size))


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

    __slots__ = ("fd", "pio", "address", "size", "value", "match")

    def __init__(self, fd: int, pio: bool, address: int, size: int, match: int | None) -> None:
        self.fd, self.pio, self.address, self.size, self.match = fd, pio, address, size, match
        # The eventfd does not carry what the guest wrote: the match value, or 0 (see bus.Doorbell).
        self.value = match if match is not None else 0

    def close(self, vm: Vm) -> None:
        try:
            vm.ioeventfd(self.fd, self.address, self.size, pio=self.pio,
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


def _cpuid_dict(cpuid: Any) -> CpuidTable:
    """A kvm_cpuid2 as a table; a leaf without a significant index is subleaf 0."""
    table: CpuidTable = {}
    for i in range(cpuid.nent):
        e = cpuid.entries[i]
        subleaf = e.index if e.flags & k.KVM_CPUID_FLAG_SIGNIFCANT_INDEX else 0
        table[(e.function, subleaf)] = (e.eax, e.ebx, e.ecx, e.edx)
    return table


def _cpuid2(table: CpuidTable) -> Any:
    """A table as a kvm_cpuid2 for KVM_SET_CPUID2."""
    cpuid = s.cpuid2_type(len(table))()
    cpuid.nent = len(table)
    indexed = SUBLEAF_LEAVES | {leaf for leaf, subleaf in table if subleaf}
    for i, ((leaf, subleaf), values) in enumerate(sorted(table.items())):
        e = cpuid.entries[i]
        e.function, e.index = leaf, subleaf
        e.flags = k.KVM_CPUID_FLAG_SIGNIFCANT_INDEX if leaf in indexed else 0
        e.eax, e.ebx, e.ecx, e.edx = values
    return cpuid


def _ignore_signal(_signum: int, _frame: Any) -> None:
    """SIGUSR1 only interrupts KVM_RUN (EINTR); the loop does the work."""


def _set_segment(seg: s.kvm_segment, value: Segment) -> None:
    seg.selector, seg.base, seg.limit = value.selector, value.base, value.limit
    seg.type, seg.s, seg.dpl, seg.present = value.type, value.s, value.dpl, value.present
    seg.db, seg.l, seg.g = value.db, value.l, value.g
    seg.avl, seg.unusable = 0, 0



