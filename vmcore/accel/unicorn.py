"""The software CPU: unicorn (QEMU's TCG as a library) behind the accelerator interface.

Memory slots are mapped from the same host buffers KVM would use, so devices'
DMA and the CPU share bytes. Port IO arrives through ``in``/``out`` instruction
hooks (string IO element by element, as TCG executes it), MMIO through
``mmio_map`` windows whose callbacks call the MMIO bus. The windows are the
complement of the memory slots, so every guest-physical address is either memory
or MMIO, as on KVM: unclaimed reads give all ones, writes are dropped, both logged
by the bus.

The windows are few and large on purpose. QEMU keeps a region's section number in
the low 12 bits of its TLB entries (the page offset), so unicorn misroutes accesses
once about 4,094 regions exist (it does not check), and each map or unmap
re-renders the whole map, so many small regions also cost quadratic time to make
and to tear down.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from typing import Any, Callable

from ..irq import InterruptController
from ..cpu import CpuState, cpuid1_apic, translate
from ..device import GuestExit
from ..memory import GuestMemory, MemorySlot
from ..stop import StopReason
from . import Accelerator, AcceleratorUnavailable
from .core import HALT, YIELD, CpuStop, Diversion, RunCore

try:
    import unicorn as uc_mod
    from unicorn import x86_const as X
except ImportError:  # pragma: no cover - exercised where unicorn is absent
    uc_mod = None
    X = None

PAGE = 4096
#: Where the MMIO windows end: the largest physical address x86 paging can form (MAXPHYADDR 52).
_PHYSICAL_TOP = 1 << 52
#: MMIO windows are also cut at each power of two from 1 MiB up: unicorn flushes the TLB page
#: by page over a region it unmaps (about 14 ns a page here), so a map change near address x
#: costs at most about x / 4096 of those, never a sweep over 2^52 bytes; and 32 cuts at most.
_WINDOW_CUTS = tuple(1 << bit for bit in range(20, 52))
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")
# Real-mode guests run in a 32-bit instance with CR0.PE clear: a 16-bit one keeps IP to
# 16 bits when emulation resumes, so a guest that switched to protected mode (firmware
# does) could not be resumed above 64K.
_MODES = {"real": "UC_MODE_32", "reset": "UC_MODE_32", "protected": "UC_MODE_32", "long": "UC_MODE_64"}
_FLAG_IF, _FLAG_TF = 1 << 9, 1 << 8
_MSR_EFER = 0xC0000080
_EFER_LMA = 1 << 10
_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))
_CPUID1_ECX_OSXSAVE = 1 << 27
_CR4_OSXSAVE = 1 << 18
_CR0_RESET = 0x60000010  # CD | NW | ET: CR0 after RESET, protection off
#: Instructions per emu_start: how often the loop gets to serve timers and interrupts while the
#: guest runs without exits (a few hundred microseconds of guest code on unicorn).
_SLICE = 20_000
_ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17))
_NO_END = (1 << 64) - 1  # emu_start's "until": an address never reached
# With an interrupt pending and IF clear, look again after this long, doubling up to the
# cap while IF stays clear (firmware runs long stretches with interrupts off; every look
# stops emulation).
_IF_POLL_NS, _IF_POLL_MAX_NS = 100_000, 5_000_000


def _reg(name: str) -> int:
    return getattr(X, f"UC_X86_REG_{name.upper()}")


class UnicornAccelerator(Accelerator):
    """One x86 vCPU emulated by unicorn."""

    name = "tcg"

    def __init__(self) -> None:
        if uc_mod is None:
            raise AcceleratorUnavailable("the software CPU needs the 'unicorn' package: pip install unicorn")
        self.uc: Any = None
        self.memory: GuestMemory | None = None
        #: Registers at the moment a device raised in a hook (for the device-error report).
        self.fault_snapshot: tuple[Any, ...] | None = None
        self._mapped: list[MemorySlot] = []  # the memory slots unicorn maps, by address
        self._windows: set[tuple[int, int]] = set()  # the MMIO windows unicorn maps, (base, end)
        # A map change seen inside an MMIO callback waits for emulation to stop (see _map_changed).
        self._map_stale = False
        self._rom_write: tuple[MemorySlot, int, int] | None = None
        # The MMIO windows' callbacks outlive a run (see _map_window): they call the run's
        # accessors from here, and drop accesses between runs.
        self._mmio: list[Callable[..., Any]] = [_no_mmio_read, _no_mmio_write]
        self._callback_code: frozenset[Any] = frozenset()  # the MMIO window callbacks' code objects
        self._callbacks: _Callbacks | None = None
        self._pending: BaseException | None = None  # raised by a device in a hook, re-raised after emu_start
        self._flush_tb = False  # the memory map changed: translated code may be stale
        self._diversion = _Diversion(self)
        self._core: RunCore | None = None
        self._hooks: list[int] = []
        self._port_hooks: list[Any] = []
        self._if_poll_ns = _IF_POLL_NS
        self._running = False
        self._cpuid1: tuple[int, int, int, int] | None = None  # leaf 1 as the guest sees it (see on_cpuid)
        self._cpuid_registers: tuple[int, ...] = ()
        self._stop_flag: ctypes.c_uint8 | None = None  # unicorn's stop-request byte (see _after_hlt)
        self.regs: Any = None  # register access in every mode (see _WideRegisters)

    # --- set-up ---------------------------------------------------------------------

    def setup(self, memory: GuestMemory, state: CpuState) -> None:
        self.memory = memory
        self.uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, getattr(uc_mod, _MODES[state.mode]))
        self._callbacks = _Callbacks(self.uc)
        self.regs = _WideRegisters(self.uc)
        offset = _stop_request_offset()
        self._stop_flag = (None if offset is None else
                           ctypes.c_uint8.from_address(ctypes.cast(self.uc._uch, ctypes.c_void_p).value + offset))
        self._cpuid1 = _cpuid_leaf1(getattr(uc_mod, _MODES[state.mode]), state.local_apic)
        # CPUID zero-extends into the 64-bit registers (written whole, as in long mode).
        self._cpuid_registers = _registers(_CPUID_REGISTERS_64)
        self._follow_map()
        # Devices (a chipset's shadow-RAM decoding) may remap memory while the guest runs.
        memory.add_listener(self._map_changed)
        self._load_state(state)

    def _map_changed(self, _removed: list[MemorySlot], _added: list[MemorySlot]) -> None:
        """Follow the guest-physical map: memory slots and, between them, the MMIO windows.

        Called from a hook too (a device's port write): unicorn takes the new mapping at once,
        for the rest of the translation block as well; blocks translated from the old bytes
        are dropped before emulation goes on. Inside an MMIO callback the window being served
        must not be unmapped under it: unicorn frees the region at once, and an 8-byte access,
        which reaches the callbacks in two parts, then made its second part through the freed
        region (a segfault). The change waits for the stop requested here instead, which also
        abandons the instruction (replayed once the map is followed, see _AbandonedAccess), so
        no instruction runs on the old map.
        """
        if self._running and self._inside_mmio_callback():
            self._map_stale = True
        else:
            self._follow_map()
        if self._running:
            self._request_stop()  # rare; the loop drops translated code before going on

    def _inside_mmio_callback(self) -> bool:
        """True when an MMIO window callback is on this thread's stack (a rare question: map changes)."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code in self._callback_code:
                return True
            frame = frame.f_back
        return False

    def _follow_map(self) -> None:
        """Make unicorn's map the memory's: unmap what went away, then map slots and windows anew.

        Slots and windows that did not change stay mapped (the guest may be running from
        them); the windows are recomputed as the gaps between slots.
        """
        assert self.memory is not None
        uc = self.uc
        self._map_stale = False
        slots = list(self.memory)
        kept = {id(slot) for slot in slots}
        mapped = {id(slot) for slot in self._mapped}
        windows = _mmio_windows(slots)
        if kept == mapped and windows == self._windows:
            return
        for base, end in sorted(self._windows - windows):
            uc.mem_unmap(base, end - base)
            self._callbacks.unmapped(base)  # type: ignore[union-attr]
        for slot in self._mapped:
            if id(slot) not in kept:
                uc.mem_unmap(slot.base, slot.size)
        for slot in slots:
            if id(slot) not in mapped:
                perms = uc_mod.UC_PROT_READ | uc_mod.UC_PROT_EXEC
                if not slot.readonly:
                    perms |= uc_mod.UC_PROT_WRITE
                uc.mem_map_ptr(slot.base, slot.size, perms, slot.host_address)
        for base, end in sorted(windows - self._windows):
            self._map_window(base, end)
        self._mapped, self._windows = slots, windows
        self._flush_tb = True

    @property
    def mode(self) -> str:
        """The guest's current mode, from CR0.PE and EFER.LMA (it switches modes as it likes)."""
        if not self.regs.reg_read(X.UC_X86_REG_CR0) & 1:
            return "real"
        return "long" if self.regs.msr_read(_MSR_EFER) & _EFER_LMA else "protected"

    def _load_state(self, state: CpuState) -> None:
        # CR4 as the state says (0 outside long mode, as after RESET and on KVM): unicorn's
        # own start value has OSFXSR and OSXSAVE set, which the guest has not asked for.
        if state.mode != "long":
            self.regs.reg_write(X.UC_X86_REG_CR4, state.cr4)
        if state.mode not in ("real", "reset"):
            self.regs.reg_write(X.UC_X86_REG_GDTR, (0, state.gdt[0], state.gdt[1], 0))
            self.regs.reg_write(X.UC_X86_REG_IDTR, (0, state.idt[0], state.idt[1], 0))
            if state.mode == "long":
                self.regs.reg_write(X.UC_X86_REG_CR3, state.cr3)
                self.regs.reg_write(X.UC_X86_REG_CR4, state.cr4)
                self.regs.msr_write(_MSR_EFER, state.efer)
            self.regs.reg_write(X.UC_X86_REG_CR0, state.cr0)
            # Segment writes in protected mode load the descriptor from the GDT just built.
            self.regs.reg_write(X.UC_X86_REG_CS, state.cs.selector)
            for name in ("ds", "es", "fs", "gs", "ss"):
                self.regs.reg_write(_reg(name), state.data.selector)
        else:
            self.regs.reg_write(X.UC_X86_REG_IDTR, (0, state.idt[0], state.idt[1], 0))
            self.regs.reg_write(X.UC_X86_REG_CR0, state.cr0 or _CR0_RESET)  # PE clear: real mode
            # Real mode: each base is selector * 16. The reset state's CS base (0xFFFF0000)
            # cannot be given to unicorn; see cpu.py's "reset" mode for why that is harmless.
            self.regs.reg_write(X.UC_X86_REG_CS, state.cs.selector)
            for name in ("ds", "es", "fs", "gs", "ss"):
                self.regs.reg_write(_reg(name), state.data.selector)
        for name, value in state.registers.items():
            if name == "rip":
                continue
            self.regs.reg_write(_reg(name), value)
        self._pc = state.registers.get("rip", 0)

    # --- a run: the CPU side of vmcore.accel.core's loop -----------------------------------

    def diversion(self) -> Diversion:
        self._diversion = _Diversion(self)
        return self._diversion

    def begin(self, core: RunCore) -> Callable[[], int]:
        uc = self.uc
        self._core = core
        self._pending = None
        accessors = core.accessors
        # The port hooks are the core's accessors themselves (see _Callbacks): a call more per
        # access costs ~10% here.
        self._mmio[:] = accessors.mmio_read, accessors.mmio_write
        mmio_write = accessors.mmio_write
        diversion = self._diversion

        def on_write_prot(_uc: Any, _access: int, address: int, size: int, value: int, _ud: Any) -> bool:
            slot = self.memory.slot_at(address) if self.memory else None
            if slot is None or not slot.readonly or diversion.stopping:
                return False
            mmio_write(None, address, size, value)
            self._rom_write = (slot, address, size)
            return False  # stop before the write; enter() replays the instruction with the write discarded

        def on_intr(_uc: Any, vector: int, _ud: Any) -> None:
            self._deliver(vector)

        def on_invalid(_uc: Any, _ud: Any) -> bool:
            self._deliver(6)  # #UD
            return True

        def on_cpuid(_uc: Any, _ud: Any) -> int:
            # Leaf 1 shows a local APIC only where a device models one, as KVM's CPUID does
            # (see vmcore.cpu). Every other leaf is unicorn's own (0: run it).
            if self._cpuid1 is None or self.regs.reg_read(X.UC_X86_REG_EAX) & 0xFFFFFFFF != 1:
                return 0
            eax, ebx, ecx, edx = self._cpuid1
            # OSXSAVE mirrors CR4.OSXSAVE now, not when the leaf was taken (SDM: CPUID leaf 1).
            ecx &= ~_CPUID1_ECX_OSXSAVE
            if self.regs.reg_read(X.UC_X86_REG_CR4) & _CR4_OSXSAVE:
                ecx |= _CPUID1_ECX_OSXSAVE
            for register, value in zip(self._cpuid_registers, (eax, ebx, ecx, edx)):
                self.regs.reg_write(register, value)
            return 1  # done: unicorn skips its own

        self._hooks = [
            uc.hook_add(uc_mod.UC_HOOK_MEM_WRITE_PROT, on_write_prot),
            uc.hook_add(uc_mod.UC_HOOK_INTR, on_intr),
            uc.hook_add(uc_mod.UC_HOOK_INSN_INVALID, on_invalid),
            uc.hook_add(uc_mod.UC_HOOK_INSN, on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID),
        ]
        callbacks = self._callbacks
        assert callbacks is not None
        self._port_hooks = [callbacks.hook_port(X.UC_X86_INS_IN, accessors.port_in),
                            callbacks.hook_port(X.UC_X86_INS_OUT, accessors.port_out)]
        self._running = True
        return self._enter

    def end(self) -> None:
        self._running = False
        for hook in self._hooks:
            self.uc.hook_del(hook)
        for handle in self._port_hooks:
            self._callbacks.delete(handle)  # type: ignore[union-attr]
        self._hooks, self._port_hooks = [], []
        self._mmio[:] = _no_mmio_read, _no_mmio_write
        self._core = None

    def _enter(self) -> int:
        """One slice of emulation; what ended it, as an exit kind (accesses went to the accessors meanwhile)."""
        pc = self._ip() if self._pc is None else self._pc
        self._pc = None
        self._rom_write = None
        diversion = self._diversion
        error = None
        try:
            self._emulate(pc)
        except uc_mod.UcError as exc:
            error = exc
        self._catch_up()
        if diversion.was_abandoned() and error is None:
            # The stop abandoned an access mid-instruction: finish that instruction (its
            # access answered from what was kept) before an interrupt can move IP elsewhere.
            # count=1 needs freshly translated blocks (see _replay_rom_write).
            self.uc.ctl_flush_tb()
            try:
                self._emulate(self._ip(), count=1, replay=diversion.kept)
            except uc_mod.UcError as exc:
                error = exc
        if diversion.stopping:
            return YIELD  # the run's end is decided (a limit): the core reports it
        if error is not None:
            if self._rom_write is None:
                raise CpuStop(self._fault(error))
            self._replay_rom_write(self._ip())
            return YIELD  # the core checks the limits: a guest that keeps writing to ROM must not outlive them
        # A slice ended, or the guest executed hlt (unicorn stops after it).
        return HALT if self._after_hlt() else YIELD

    def _emulate(self, pc: int, count: int = 0, replay: list[tuple[str, int, int, int]] | None = None) -> None:
        """emu_start; what a device raised in a hook comes first, before what it left unicorn doing.

        ``replay``: the accesses the last run abandoned, answered without the device (see _Diversion).
        """
        self._catch_up()
        self._diversion.start(replay)
        try:
            self.uc.emu_start(pc, _NO_END, count=count or _SLICE)
        except BaseException:
            if self._pending is None:
                raise
        pending, self._pending = self._pending, None
        if pending is not None:
            raise pending

    def abort(self, exc: BaseException) -> None:
        """A device raised (or ended the run) in a hook: keep the exception, let no more IO out, stop."""
        if self._pending is None:
            self._pending = exc
            if not isinstance(exc, GuestExit):
                # Where the guest was when the device failed: emulation may run on to the
                # end of the block before it stops, so take the registers now.
                try:
                    self.fault_snapshot = self.snapshot()
                except Exception:  # the report must not fail on a half-stopped CPU
                    self.fault_snapshot = None
        self.end_run()

    def end_run(self) -> None:
        self._diversion.end()
        self._request_stop()

    def _request_stop(self) -> None:
        """emu_stop, noted first (see _Diversion); from any thread."""
        if self._running:
            self._diversion.stop_requested()
        uc = self.uc
        if uc is not None:
            uc.emu_stop()

    def kick(self) -> None:
        """Nothing to do: the core wakes a halted loop, and slices end soon anyway.

        It never calls emu_stop: unicorn mishandles a stop that lands mid-block (it
        abandons an MMIO access or string IN already made and runs it again, and once
        resumed at a block's start with registers the block had changed: SeaBIOS went
        astray that way). Emulation runs in slices of ``_SLICE`` instructions instead,
        which unicorn ends cleanly at an instruction boundary; the core serves what
        was asked for between slices.
        """

    def _at_string_in(self) -> bool:
        """The IN being served belongs to an `ins` (EIP is exact in IN hooks): unicorn abandons those on a stop."""
        try:
            physical = self._physical(self._linear_pc())
            code = self.memory.read(physical, 8) if physical is not None and self.memory is not None else b""
        except Exception:  # memory near the end of a slot: not worth failing the access for
            return False
        for byte in code:
            if byte in (0x66, 0x67, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65):
                continue  # prefixes
            return byte in (0x6C, 0x6D)
        return False

    def interrupts_enabled(self) -> bool:
        return bool(self.regs.reg_read(X.UC_X86_REG_EFLAGS) & _FLAG_IF)

    def offer_interrupt(self, controller: InterruptController) -> bool:
        if controller.pending() and self.interrupts_enabled():
            if self._previous_byte() == 0xFB:
                # STI holds interrupts off for one more instruction, so "sti; hlt" cannot
                # lose a wake-up. Any other instruction ending in 0xFB only delays by one.
                # count=1 needs freshly translated blocks (see _replay_rom_write), or the
                # step runs on to the end of the block: past a "sti; nop; cli" and into a
                # mode switch, where delivering would corrupt the guest.
                self._catch_up()
                self.uc.ctl_flush_tb()
                self._emulate(self._ip(), count=1)
                if not (controller.pending() and self.interrupts_enabled()):
                    return False
            self._deliver(controller.acknowledge(), external=True)
            self._if_poll_ns = _IF_POLL_NS
            return True
        core = self._core
        if controller.pending() and core is not None and core.clock is not None:
            # IF is clear: unicorn cannot tell us when the guest sets it (KVM has the
            # interrupt window exit for that), so look again shortly.
            core.wake_at(core.clock.now() + self._if_poll_ns)
            self._if_poll_ns = min(2 * self._if_poll_ns, _IF_POLL_MAX_NS)
        return False

    # --- helpers used by the hooks ----------------------------------------------------

    def _catch_up(self) -> None:
        """Before emulation goes on: take a map change that waited, drop code translated from old bytes."""
        if self._map_stale:
            self._follow_map()
        if self._flush_tb:
            self._flush_tb = False
            self.uc.ctl_flush_tb()

    def _map_window(self, base: int, end: int) -> None:
        """Send [base, end) to the MMIO bus through the run's accessors: the guest-physical address is base + offset.

        The window outlives a run, so its callbacks find the run's accessors in ``_mmio``.
        """
        run = self._mmio

        def read(_uc: Any, offset: int, size: int, _data: Any) -> int:
            return run[0](None, offset, size, base)

        def write(_uc: Any, offset: int, size: int, value: int, _data: Any) -> None:
            run[1](None, offset, size, value & _MASKS[size], base)

        self._callbacks.mmio_map(base, end - base, read, write)
        self._callback_code = frozenset((read.__code__, write.__code__))

    def _replay_rom_write(self, pc: int) -> int:
        """Run the instruction that wrote to ROM once more, with the ROM page writable, then undo the write."""
        assert self._rom_write is not None
        slot, address, size = self._rom_write
        first = address & ~(PAGE - 1)
        last = (address + size - 1) & ~(PAGE - 1)
        length = last + PAGE - first
        saved = bytes(slot.view[first - slot.base : first - slot.base + length])
        uc = self.uc
        uc.mem_protect(first, length, uc_mod.UC_PROT_ALL)
        # count=1 works through a code hook that unicorn adds without flushing the translation
        # cache, and blocks translated in the last run (no hook) never call it: the replay would
        # run on to the end of the block, e.g. the rest of a `rep stosb` and the instructions
        # after it, with the ROM writable and those writes unseen by the bus. Drop them first.
        uc.ctl_flush_tb()
        try:
            self._emulate(pc, count=1)
        finally:
            slot.view[first - slot.base : first - slot.base + length] = saved
            uc.mem_protect(first, length, uc_mod.UC_PROT_READ | uc_mod.UC_PROT_EXEC)
        return self._ip()

    def _deliver(self, vector: int, external: bool = False) -> None:
        """Deliver an interrupt or exception; a failed delivery is a triple fault, as on hardware."""
        self._pc = None  # emulation goes on from the handler (see _enter)
        idt = self.regs.reg_read(X.UC_X86_REG_IDTR)
        base, limit = idt[1], idt[2]
        if self.mode == "real":
            if vector * 4 + 3 > limit:
                raise CpuStop(self.stop_reason("shutdown", f"triple fault: vector {vector} is beyond the "
                                              f"real-mode IVT limit {limit:#x}"))
            assert self.memory is not None
            offset, segment = struct.unpack("<HH", self.memory.read(base + vector * 4, 4))
            sp = self.regs.reg_read(X.UC_X86_REG_SP)
            ss_base = self.regs.reg_read(X.UC_X86_REG_SS) << 4
            flags = self.regs.reg_read(X.UC_X86_REG_FLAGS)
            frame = struct.pack("<HHH", self.regs.reg_read(X.UC_X86_REG_EIP) & 0xFFFF, self.regs.reg_read(X.UC_X86_REG_CS), flags)
            sp = (sp - 6) & 0xFFFF
            self._push(ss_base + sp, frame)
            self.regs.reg_write(X.UC_X86_REG_SP, sp)
            self.regs.reg_write(X.UC_X86_REG_FLAGS, flags & ~(_FLAG_IF | _FLAG_TF))
            self.regs.reg_write(X.UC_X86_REG_CS, segment)
            self.regs.reg_write(X.UC_X86_REG_EIP, offset)  # all of EIP: writing IP keeps bits 31:16
            return
        long_mode = self.mode == "long"
        size = 16 if long_mode else 8
        if vector * size + size - 1 > limit:
            raise CpuStop(self.stop_reason("shutdown", f"triple fault: vector {vector} is beyond the IDT limit {limit:#x}"))
        gate = self._read_linear(base + vector * size, size)
        offset_low, selector, _ist, attributes, offset_mid = struct.unpack_from("<HHBBH", gate)
        offset = offset_low | offset_mid << 16
        if long_mode:
            offset |= struct.unpack_from("<I", gate, 8)[0] << 32
        kind = attributes & 0xF
        if not attributes & 0x80 or kind not in (0xE, 0xF):
            raise CpuStop(self.stop_reason("shutdown", f"triple fault: IDT entry {vector} is not a present "
                                          f"interrupt or trap gate (attributes {attributes:#x})"))
        flags = self.regs.reg_read(X.UC_X86_REG_EFLAGS)
        error = vector in _ERROR_CODE_VECTORS and not external
        if long_mode:
            rsp = self.regs.reg_read(X.UC_X86_REG_RSP)
            frame = [self.regs.reg_read(X.UC_X86_REG_SS), rsp, flags, self.regs.reg_read(X.UC_X86_REG_CS), self.regs.reg_read(X.UC_X86_REG_RIP)]
            if error:
                frame.append(0)  # unicorn does not report the error code; 0 stands in
            sp = (rsp & ~0xF) - 8 * len(frame)
            self._write_linear(sp, struct.pack(f"<{len(frame)}Q", *reversed(frame)))
            self.regs.reg_write(X.UC_X86_REG_RSP, sp)
        else:
            frame = [flags, self.regs.reg_read(X.UC_X86_REG_CS), self.regs.reg_read(X.UC_X86_REG_EIP)]
            if error:
                frame.append(0)
            sp = (self.regs.reg_read(X.UC_X86_REG_ESP) - 4 * len(frame)) & 0xFFFFFFFF
            self._write_linear(sp, struct.pack(f"<{len(frame)}I", *reversed(frame)))
            self.regs.reg_write(X.UC_X86_REG_ESP, sp)
        cleared = _FLAG_TF | (_FLAG_IF if kind == 0xE else 0)  # an interrupt gate also masks IF
        self.regs.reg_write(X.UC_X86_REG_EFLAGS, flags & ~cleared)
        self.regs.reg_write(X.UC_X86_REG_CS, selector)
        self.regs.reg_write(X.UC_X86_REG_RIP if long_mode else X.UC_X86_REG_EIP, offset)

    def _push(self, address: int, frame: bytes) -> None:
        """Write a real-mode interrupt frame; bytes landing in ROM are dropped, as the CPU's would be."""
        assert self.memory is not None
        for i, byte in enumerate(frame):
            slot = self.memory.slot_at(address + i)
            if slot is None:
                raise CpuStop(self.stop_reason("shutdown", f"triple fault: stack at {address + i:#x} is not memory"))
            if not slot.readonly:
                slot.view[address + i - slot.base] = byte

    def _read_linear(self, linear: int, length: int) -> bytes:
        physical = self._physical(linear)
        assert self.memory is not None
        if physical is None:
            raise CpuStop(self.stop_reason("shutdown", f"triple fault: {linear:#x} is not mapped"))
        return self.memory.read(physical, length)

    def _write_linear(self, linear: int, data: bytes) -> None:
        """Write a stack frame (flat segments: linear = offset); page by page through the guest's tables."""
        assert self.memory is not None
        done = 0
        while done < len(data):
            here = linear + done
            physical = self._physical(here)
            if physical is None or self.memory.slot_at(physical) is None:
                raise CpuStop(self.stop_reason("shutdown", f"triple fault: stack at {here:#x} is not writable RAM"))
            chunk = min(len(data) - done, PAGE - (here & (PAGE - 1)))
            self.memory.write(physical, data[done : done + chunk])
            done += chunk

    def _ip(self) -> int:
        """EIP/RIP: also where emu_start resumes (a 32/64-bit instance takes IP, not CS:IP)."""
        return self.regs.reg_read(X.UC_X86_REG_RIP)

    def _linear_pc(self) -> int:
        cs_base = self._segment_base("cs")
        return cs_base + self._ip()

    def _segment(self, name: str) -> dict[str, int]:
        """A segment register for reports: its selector and, outside real mode, its descriptor in the GDT.

        unicorn gives the selector only; the descriptor is read back from the guest's GDT
        (what the CPU loaded, unless the guest changed the table since).
        """
        selector = self.regs.reg_read(_reg(name))
        if self.mode == "real":
            return {"selector": selector, "base": selector << 4, "limit": 0xFFFF, "type": 3, "l": 0, "db": 0}
        segment = {"selector": selector, "base": 0, "limit": 0xFFFFFFFF, "type": 0, "l": 0, "db": 0}
        _, base, limit, _ = self.regs.reg_read(X.UC_X86_REG_GDTR)
        index = selector & ~7
        if selector & 4 or index == 0 or index + 7 > limit:
            return segment  # the LDT or the null selector: not looked up
        try:
            low, high = struct.unpack("<II", self._read_linear(base + index, 8))
        except CpuStop:
            return segment  # the GDT is not mapped
        limit = (low & 0xFFFF) | (high & 0xF0000)
        segment.update(base=(low >> 16) | (high & 0xFF) << 16 | (high & 0xFF000000),
                       limit=(limit << 12 | 0xFFF) if high & (1 << 23) else limit,
                       type=(high >> 8) & 0xF, l=(high >> 21) & 1, db=(high >> 22) & 1)
        return segment

    def _segment_base(self, name: str) -> int:
        if self.mode == "real":
            return self.regs.reg_read(_reg(name)) << 4
        if self.mode == "long" and name in ("cs", "ds", "es", "ss"):
            return 0
        # Flat segments are what the VMM loads; a guest that reloads them is not followed here.
        return 0

    def _after_hlt(self) -> bool:
        """True when emulation stopped because the guest executed ``hlt``, not at a slice's end.

        Both leave EIP after the last instruction. unicorn ends a slice through its own stop
        request, which a hlt does not raise: the flag is read from the engine (see
        _stop_request_offset); where it cannot be found, a preceding F4 byte decides.
        """
        if self._stop_flag is not None and self._stop_flag.value != 0:
            return False  # the common case, read without touching a register
        return self._previous_byte() == 0xF4

    def _previous_byte(self) -> int | None:
        """The byte just before CS:IP (the last byte of the previous instruction, if it ran)."""
        if self.memory is None:
            return None
        physical = self._physical(self._linear_pc() - 1)
        if physical is None or self.memory.slot_at(physical) is None:
            return None
        return self.memory.read(physical, 1)[0]

    def _physical(self, linear: int) -> int | None:
        if self.memory is None:
            return None
        cr0 = self.regs.reg_read(X.UC_X86_REG_CR0)
        cr3 = self.regs.reg_read(X.UC_X86_REG_CR3)
        cr4 = self.regs.reg_read(X.UC_X86_REG_CR4)
        efer = self.regs.msr_read(_MSR_EFER)
        return translate(self.memory, cr0, cr3, cr4, efer, linear)

    # --- stops ------------------------------------------------------------------------

    def _fault(self, error: Any) -> StopReason:
        code = error.errno
        pc = self._linear_pc()
        if code in (uc_mod.UC_ERR_FETCH_UNMAPPED, uc_mod.UC_ERR_FETCH_PROT):
            return self.stop_reason("internal-error", f"instruction fetch from {pc:#x}, which is not RAM or ROM")
        if code == uc_mod.UC_ERR_INSN_INVALID:
            return self.stop_reason("shutdown", "invalid opcode with no handler")
        return self.stop_reason("internal-error", f"software CPU error: {error}")

    def snapshot(self) -> tuple[dict[str, int], dict[str, dict[str, int]], int | None, bytes | None]:
        registers = {}
        for name in _GPRS:
            registers[name] = self.regs.reg_read(_reg(name))
        for name in ("cr0", "cr2", "cr3", "cr4"):
            registers[name] = self.regs.reg_read(_reg(name))
        registers["efer"] = self.regs.msr_read(_MSR_EFER)
        segments = {name: self._segment(name) for name in _SEGMENTS}
        physical = self._physical(self._linear_pc())
        code = None
        if physical is not None and self.memory is not None:
            slot = self.memory.slot_at(physical)
            if slot is not None:
                code = self.memory.read(physical, min(16, slot.end - physical))
        return registers, segments, physical, code

    def close(self) -> None:
        if self.memory is not None:
            self.memory.remove_listener(self._map_changed)
        self._stop_flag = None  # points into the engine, freed with it
        if self.uc is not None:
            self.uc = None


class _Diversion(Diversion):
    """The software CPU's accesses that must not reach a device, or not twice (see core.Diversion).

    - Once the run's end is decided inside a hook (a device raised, debug-exit, a limit),
      emu_stop takes effect only at the end of the translation block, so the guest runs
      on a few instructions: from then on (``stopping``) its IO reaches no device.
    - unicorn acts on an emu_stop requested before or during an MMIO callback, or during
      the IN of a string ``ins``, by abandoning that instruction after the access ran; on
      resume it runs the instruction again. Every stop goes through ``stop_requested``;
      each access that ends with a stop requested is kept (``kept``: kind, address, size,
      value), in order: unicorn makes every part of an access it splits (an 8-byte MMIO
      access reaches the callbacks as two 4-byte ones) before it abandons the
      instruction. After emu_start returns with accesses kept, the loop re-runs that one
      instruction with them as ``start``'s ``replay``, and its accesses, while they are
      the same, are answered from them without reaching the device.
    """

    __slots__ = ("accel", "stopping", "stop", "kept", "replaying")

    def __init__(self, accel: "UnicornAccelerator") -> None:
        super().__init__()
        self.accel = accel
        self.stopping = False
        self.start()

    def start(self, replay: list[tuple[str, int, int, int]] | None = None) -> None:
        """A new emu_start: nothing requested; each access of ``replay`` is answered once, if asked again."""
        self.stop = False
        self.kept: list[tuple[str, int, int, int]] = list(replay or ())
        self.replaying = bool(replay)
        self.active = self.stopping or self.replaying

    def stop_requested(self) -> None:
        self.stop = self.active = True

    def end(self) -> None:
        self.stopping = self.active = True

    def was_abandoned(self) -> bool:
        return bool(self.kept) and self.stop and not self.replaying and not self.stopping

    def before(self, kind: str, address: int, size: int, value: int | None) -> int | bool | None:
        if self.stopping:
            return True if value is not None else (1 << (8 * size)) - 1
        kept = self.kept
        if self.replaying and kept and kept[0][:3] == (kind, address, size) and (value is None or kept[0][3] == value):
            answer = kept.pop(0)[3]
            return True if value is not None else answer
        return None

    def after(self, kind: str, address: int, size: int, value: int) -> None:
        if self.stop and kind != "out" and (kind != "in" or self.accel._at_string_in()):
            self.kept.append((kind, address, size, value))


def _no_mmio_read(_cpu: Any, _offset: int, size: int, _base: int = 0) -> int:
    return (1 << (8 * size)) - 1  # no run: nothing to reach


def _no_mmio_write(_cpu: Any, _offset: int, _size: int, _value: int, _base: int = 0) -> None:
    pass


_CPUID_REGISTERS = ("EAX", "EBX", "ECX", "EDX")
_CPUID_REGISTERS_64 = ("RAX", "RBX", "RCX", "RDX")  # CPUID zero-extends into these in long mode


def _registers(names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(getattr(X, f"UC_X86_REG_{name}") for name in names)


def _cpuid_leaf1(mode: int, local_apic: bool) -> tuple[int, int, int, int] | None:
    """unicorn's CPUID leaf 1 for an engine of ``mode`` (asked of a scratch engine), APIC bits as ``local_apic``.

    None if the scratch engine cannot answer: the guest then sees unicorn's own leaf.
    """
    try:
        uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, mode)
        uc.mem_map(0, 0x1000)
        uc.mem_write(0x100, bytes([0x0F, 0xA2, 0xF4]))  # cpuid; hlt
        uc.reg_write(X.UC_X86_REG_EAX, 1)
        uc.reg_write(X.UC_X86_REG_ECX, 0)
        uc.emu_start(0x100, _NO_END, count=2)
        eax, ebx, ecx, edx = (uc.reg_read(r) & 0xFFFFFFFF for r in _registers(_CPUID_REGISTERS))
    except Exception:  # noqa: BLE001 - a best effort; the run must not fail for it
        return None
    ecx, edx = cpuid1_apic(ecx, edx, local_apic)
    return eax, ebx, ecx, edx


_STOP_OFFSET: list[int | None] = []


def _allocation_size(address: int) -> int:
    """How many bytes of the engine's allocation may be read: glibc knows; else one page, to be safe."""
    try:
        usable = ctypes.CDLL(None).malloc_usable_size
        usable.restype, usable.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
        return int(usable(address)) or 0x1000
    except (AttributeError, OSError):  # not glibc
        return 0x1000


def _stop_request_offset() -> int | None:
    """Where unicorn keeps its stop-request flag in the engine, found once by experiment.

    unicorn has no API to say why emu_start returned. Its instruction count ends a run by
    setting a stop request, a hlt does not: on a scratch engine, runs ended both ways
    (twice each) must leave exactly one byte of the engine 1 after a count and 0 after a
    hlt. None if no single byte behaves so (another unicorn build): callers fall back.
    """
    if _STOP_OFFSET:
        return _STOP_OFFSET[0]
    found: int | None = None
    try:
        uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_32)
        uc.mem_map(0, 0x1000)
        uc.mem_write(0x100, bytes([0x90, 0x90, 0xF4, 0x90, 0x90, 0xF4]))
        address = ctypes.cast(uc._uch, ctypes.c_void_p).value
        size = _allocation_size(address)
        snapshots = []
        for begin, count in ((0x100, 1), (0x101, 10), (0x103, 1), (0x104, 10)):
            uc.emu_start(begin, _NO_END, count=count)
            snapshots.append(ctypes.string_at(address, size))
        after_count, after_hlt = snapshots[0::2], snapshots[1::2]
        candidates = [i for i in range(size) if all(s[i] == 1 for s in after_count) and all(s[i] == 0 for s in after_hlt)]
        if len(candidates) == 1:
            found = candidates[0]
    except Exception:  # an engine that does not allow this: fall back
        found = None
    _STOP_OFFSET.append(found)
    return found


def _mmio_windows(slots: list[MemorySlot]) -> set[tuple[int, int]]:
    """The MMIO windows as (base, end): the gaps between ``slots`` (sorted) below _PHYSICAL_TOP, cut at _WINDOW_CUTS."""
    bounds = [0]
    for slot in slots:
        bounds += [slot.base, slot.end]
    bounds.append(_PHYSICAL_TOP)
    windows: set[tuple[int, int]] = set()
    for base, end in zip(bounds[::2], bounds[1::2]):
        cuts = [cut for cut in _WINDOW_CUTS if base < cut < end]
        for start, stop in zip([base, *cuts], [*cuts, end]):
            if start < stop:
                windows.add((start, stop))
    return windows



class _Callbacks:
    """Registers the hot callbacks (port IO hooks, MMIO windows) with unicorn's C library itself.

    The binding wraps every callback in two Python frames of its own (a guard that keeps
    an exception for after emu_start, then an adapter), which cost more than the access's
    own work; registered here, the core's accessor is the callback. Such a callback must
    not raise (ctypes would print and drop the exception): the accessors contain what
    devices raise and stop the run through ``abort``. Where unicorn's library or the
    binding's layout is not the one known here, the binding's public calls are used.
    """

    #: Register with the C library (False: always through the binding, as a comparison).
    direct = True

    def __init__(self, uc: Any) -> None:
        self.uc = uc
        self._kept: dict[Any, tuple[Any, ...]] = {}  # the ctypes function objects C holds pointers to
        self._lib: Any = None
        if self.direct:
            try:
                from unicorn.unicorn_py3.unicorn import uclib

                self._lib = uclib
            except ImportError:  # another binding (unicorn 2.0): its public calls
                pass

    def hook_port(self, insn: int, callback: Callable[..., Any]) -> Any:
        """``callback(handle, port, size[, value], user_data)`` for each IN (or OUT); a handle for :meth:`delete`."""
        if self._lib is None:
            return self.uc.hook_add(uc_mod.UC_HOOK_INSN, callback, 0, 1, 0, insn)  # user data: the base, 0
        function = (_IN_CALLBACK if insn == X.UC_X86_INS_IN else _OUT_CALLBACK)(callback)
        handle = ctypes.c_size_t()
        status = self._lib.uc_hook_add(self.uc._uch, ctypes.byref(handle), uc_mod.UC_HOOK_INSN, function, 0,
                                       ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
        if status != uc_mod.UC_ERR_OK:
            raise uc_mod.UcError(status)
        self._kept[("hook", handle.value)] = (function,)
        return ("hook", handle.value)

    def delete(self, handle: Any) -> None:
        if self._lib is None:
            self.uc.hook_del(handle)
            return
        self._lib.uc_hook_del(self.uc._uch, ctypes.c_size_t(handle[1]))
        del self._kept[handle]

    def mmio_map(self, base: int, size: int, read: Callable[..., int], write: Callable[..., None]) -> None:
        """``read(handle, offset, size, user_data)`` and ``write(handle, offset, size, value, user_data)`` for [base, base + size)."""
        if self._lib is None:
            self.uc.mmio_map(base, size, read, None, write, None)
            return
        functions = (_MMIO_READ_CALLBACK(read), _MMIO_WRITE_CALLBACK(write))
        status = self._lib.uc_mmio_map(self.uc._uch, base, size, functions[0], None, functions[1], None)
        if status != uc_mod.UC_ERR_OK:
            raise uc_mod.UcError(status)
        self._kept[("mmio", base)] = functions

    def unmapped(self, base: int) -> None:
        """The window at ``base`` was unmapped: its callbacks may go."""
        self._kept.pop(("mmio", base), None)


# The C signatures of the callbacks (unicorn.h): the engine, the access, the user data. The
# port hooks' user data is the accessors' base (0), so it is taken as the integer it is
# (a void * of 0 would arrive as None).
_IN_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64)
_OUT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64)
_MMIO_READ_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_void_p)
_MMIO_WRITE_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_uint64,
                                        ctypes.c_void_p)


class _WideRegisters:
    """Register access that is right whatever mode the guest has switched to.

    unicorn answers register reads and writes by the mode its engine was made in, not the
    guest's: a 32-bit engine has no RAX or R8 and cuts RIP, CR3 and the IDT base to 32 bits,
    which a guest that went on into long mode needs whole; a 64-bit engine loads only the
    selector of CS, DS, ES or SS, where a segment load must take its descriptor (real mode:
    selector * 16). The engine's mode is the second field of its ``uc_struct`` (after the
    architecture): for each access it is set to the mode whose path is right, 64-bit for
    everything but segment loads, which take the 32-bit path (QEMU's ``cpu_x86_load_seg``,
    a load as the CPU makes it in its current mode), then put back. Where the field is not
    found there (another unicorn), accesses go by the engine's mode, as unicorn does.
    """

    def __init__(self, uc: Any) -> None:
        self.uc = uc
        field = ctypes.c_int.from_address(ctypes.cast(uc._uch, ctypes.c_void_p).value + 4)
        self._mode: ctypes.c_int | None = field if field.value == uc.ctl_get_mode() else None

    def _as(self, mode: int, call: Callable[..., Any], *args: Any) -> Any:
        field = self._mode
        if field is None:
            return call(*args)
        saved = field.value
        field.value = mode
        try:
            return call(*args)
        finally:
            field.value = saved

    def reg_read(self, register: int) -> Any:
        return self._as(uc_mod.UC_MODE_64, self.uc.reg_read, register)

    def reg_write(self, register: int, value: Any) -> None:
        mode = uc_mod.UC_MODE_32 if register in _SEGMENT_REGISTERS else uc_mod.UC_MODE_64
        self._as(mode, self.uc.reg_write, register, value)

    def msr_read(self, msr: int) -> int:
        return int(self._as(uc_mod.UC_MODE_64, self.uc.msr_read, msr))

    def msr_write(self, msr: int, value: int) -> None:
        self._as(uc_mod.UC_MODE_64, self.uc.msr_write, msr, value)


_SEGMENT_REGISTERS = (frozenset(getattr(X, f"UC_X86_REG_{name}") for name in ("CS", "DS", "ES", "SS", "FS", "GS"))
                      if X is not None else frozenset())
