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
import functools
import logging
import struct
import sys
import threading
import time
from typing import Any, Callable

from ..clock import VirtualClock
from ..irq import InterruptController
from ..cpu import CpuState, Segment, code_bits, decode_one, translate
from ..cpu_model import (FEATURES, PASS_THROUGH, CpuidTable, add_features, answer, cpuid_for, features_of,
                         vendor_of)
from ..device import GuestExit
from ..memory import GuestMemory, MemorySlot
from ..stop import StopReason
from . import Accelerator, AcceleratorUnavailable, portable
from .core import HALT, STEPPED, YIELD, CpuStop, Diversion, RunCore
from .control_registers import allowed_cr4
from .fastcall import FastCall
from .idt import IdtDelivery
from .intercepts import EMULATED, EXCP_VMEXIT, MSR, SCRATCH_SIZE, VINTR, InterceptControls, InterceptHandler, Step
from .msrs import SNAPSHOT_MSRS, MsrRules
from .unicorn_layout import (SEGMENT_CACHE_SIZE, EngineCounter, SegmentCache, EngineFeatures, add_c_block_hook, cpu_layout, engine_fastcalls,
                             engine_cr0_checks, engine_kick, engine_name, engine_real_mode_ints, hook_bounds_offset, pushf_clears_rf,
                             registers_match, smsw_operand_size, xcr0_offset)

try:
    from . import engine as uc_mod
    from .engine import X
except ImportError:  # pragma: no cover - exercised where unicorn is absent
    uc_mod = None
    X = None

log = logging.getLogger(__name__)

PAGE = 4096
#: The largest physical address x86 paging can form (MAXPHYADDR 52).
_PHYSICAL_TOP = 1 << 52
#: The intercepts' VMCB and MSR permission map (vmcore.accel.intercepts), at the top; the
#: MMIO windows end below them.
_SCRATCH = _PHYSICAL_TOP - SCRATCH_SIZE
#: MMIO windows are also cut at each power of two from 1 MiB up: unicorn flushes the TLB page
#: by page over a region it unmaps (about 14 ns a page here), so a map change near address x
#: costs at most about x / 4096 of those, never a sweep over 2^52 bytes; and 32 cuts at most.
_WINDOW_CUTS = tuple(1 << bit for bit in range(20, 52))
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")
#: QEMU's order of the segment caches (R_ES, R_CS, R_SS, R_DS, R_FS, R_GS).
_SEGMENT_SLOTS = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}
# Real-mode guests run in a 32-bit instance with CR0.PE clear: a 16-bit one keeps IP to
# 16 bits when emulation resumes, so a guest that switched to protected mode (firmware
# does) could not be resumed above 64K.
_MODES = {"real": "UC_MODE_32", "reset": "UC_MODE_32", "protected": "UC_MODE_32", "long": "UC_MODE_64"}
_FLAG_IF, _FLAG_TF = 1 << 9, 1 << 8
_MSR_EFER = 0xC0000080
#: The MSRs a snapshot keeps, EFER first (its writes decide what the others mean).
_SAVED_MSRS = (_MSR_EFER, *SNAPSHOT_MSRS)
#: The x87/SSE control and status registers a snapshot keeps (with ST0-7 and XMM0-15).
_FPU_CONTROL = ("fpcw", "fpsw", "fptag", "mxcsr", "fop", "fip", "fdp")
#: hflags, hflags2 and ten segment caches (ES, CS, SS, DS, FS, GS, LDT, TR, GDT, IDT): one stretch.
_ENGINE_BLOCK = 8 + 10 * 24
_EFER_LMA = 1 << 10
_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))
_CPUID1_ECX_OSXSAVE = 1 << 27
_CR4_OSXSAVE = 1 << 18
_CPUID7_ECX_OSPKE = 1 << 4
_CPUID1_EDX_APIC = 1 << 9
_CR4_PKE = 1 << 22
_HF2_NMI = 1 << 2
_HF_INHIBIT_IRQ = 1 << 3  # hflags: the interrupt shadow (QEMU's HF_INHIBIT_IRQ_MASK)
_CR0_RESET = 0x60000010  # CD | NW | ET: CR0 after RESET, protection off
_CR0_PG = 1 << 31
#: Instructions per emu_start where no _Kicker can be installed (another unicorn build): how
#: often the loop then gets to serve timers and interrupts (a few hundred microseconds of guest
#: code). A count costs much: unicorn then calls a counting helper at every instruction.
_SLICE = 20_000
_NO_END = (1 << 64) - 1  # emu_start's "until": an address never reached
# With an interrupt pending and IF clear, look again after this long, doubling up to the
# cap while IF stays clear (firmware runs long stretches with interrupts off; every look
# stops emulation).
_IF_POLL_NS, _IF_POLL_MAX_NS = 100_000, 5_000_000
#: Blocks run one at a time, looking for IF set, before falling back to those looks.
_WINDOW_BLOCKS = 4096


def _reg(name: str) -> int:
    return getattr(X, f"UC_X86_REG_{name.upper()}")


class UnicornAccelerator(Accelerator):
    """One x86 vCPU emulated by unicorn."""

    name = "tcg"
    returns_per_access = False

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
        self._window = False  # the next run is to stop after one block (see offer_interrupt)
        self._window_blocks = 0
        self._running = False
        self._cpuid: dict[tuple[int, int], tuple[int, int, int, int]] = {}  # leaves as the guest sees them (see on_cpuid)
        self._cpuid_registers: tuple[int, ...] = ()
        self._halted: ctypes.c_uint32 | None = None  # the engine's CPU halted flag (see _after_hlt)
        self._exception: _ExceptionInfo | None = None  # what unicorn knows of the exception it reports
        self._idt: IdtDelivery | None = None
        self._raise_interrupt: Callable[[int], None] | None = None  # see _interrupt_request
        self._reset_interrupt: Callable[[int], None] | None = None  # see _interrupt_request
        self._hardirq: _EngineInterrupts | None = None  # the engine delivers external interrupts
        self._window_armed = False  # the VINTR intercept waits for the guest to set IF (offer_interrupt)
        self._fastcall: FastCall | None = None
        self._cr4_allowed: int | None = None  # the CR4 bits this CPUID allows (see _check_cr4)
        self._intercepts: InterceptHandler | None = None  # instructions checked here (vmcore.accel.intercepts)
        self._segment_caches: int | None = None  # the engine's segment descriptor caches (see _segment)
        self._env: int | None = None  # the engine's x86 state (CPUX86State), where the caches were found
        self._step: Step | None = None  # an intercepted instruction to run once, its intercept off
        self._single_step = False  # the next run is one instruction (request_step)
        self.regs: Any = None  # register access in every mode (see _WideRegisters)
        self._kicker = _Kicker(None)  # until setup: nothing to stop
        self._vcpu_thread = 0
        self._counter: EngineCounter | None = None  # the engine's instruction count (vmcore's build)
        self._virtual: _VirtualTime | None = None  # a run whose clock is virtual (see _VirtualTime)

    # --- set-up ---------------------------------------------------------------------

    def setup(self, memory: GuestMemory, state: CpuState) -> None:
        self.memory = memory
        mode = getattr(uc_mod, _MODES[state.mode])
        self.uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, mode)
        supported = dict(engine_cpuid(self.uc, mode))  # first: it runs code in the new engine
        self._callbacks = _Callbacks(self.uc)
        self._kicker = _Kicker(self.uc)
        # No exit address: emulation ends at a hlt, a kick, a count or an error. With one (even
        # emu_start's "until" of _NO_END) unicorn drops the code translated at the address before
        # it when a run ends, and in doing so walks the guest's page tables for it, which sets
        # CR2 when that address is unmapped: a #PF handler could read the wrong address.
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        self.regs = _WideRegisters(self.uc)
        layout = cpu_layout()
        if layout is not None and not registers_match(self.uc, layout, self.regs.reg_read):
            layout = None  # not this engine's layout after all: the fallbacks
        cpu = 0 if layout is None else layout.cpu(self.uc)
        self._halted = None if layout is None else ctypes.c_uint32.from_address(cpu + layout.halted)
        if layout is not None and layout.segments is not None:
            self._segment_caches = cpu + layout.env + layout.segments
            self._env = cpu + layout.env
        self._exception = None if layout is None else _ExceptionInfo.of(cpu + layout.env, layout)
        set_cpl = None
        if layout is not None and layout.hflags is not None:
            hflags = ctypes.c_uint32.from_address(cpu + layout.env + layout.hflags)

            def set_cpl(cpl: int) -> None:
                # QEMU keeps the CPL in hflags (from SS's DPL) and checks segment loads made
                # through the API against it: a handler's ring-0 CS would be refused at CPL 3.
                hflags.value = (hflags.value & ~3) | cpl

        self._idt = IdtDelivery(self.regs, memory, self.stop_reason, set_cpl)
        self._raise_interrupt = None if layout is None else _interrupt_request(cpu)
        self._reset_interrupt = None if layout is None else _interrupt_reset(cpu)
        self._hardirq = _EngineInterrupts.of(self)
        if not supported:
            raise AcceleratorUnavailable("unicorn's engine did not answer CPUID")
        intercepting = layout is not None and layout.svm is not None and layout.hflags is not None
        if not intercepting:
            log.warning("this unicorn build's SVM intercept controls were not found: the software CPU does "
                        "not trap CR, MSR, UMIP and real-mode iret instructions (see vmcore.accel.intercepts)")
        if intercepting:
            add_features(supported, EMULATED)  # what the intercepts do that the engine does not
        features = None if layout is None else EngineFeatures.of(cpu + layout.env, layout)
        if features is not None:
            add_features(supported, ENGINE_EXTRA)
            features.enable([(FEATURES[n].leaf, FEATURES[n].subleaf, FEATURES[n].register, FEATURES[n].bit)
                             for n in ENGINE_EXTRA])
        result = cpuid_for(state.model, supported, accel="the software CPU", unavailable=UNAVAILABLE,
                           local_apic=state.local_apic)
        if result.dropped:
            log.warning("cpu %s: the software CPU lacks %s: left out", state.model.describe(),
                        ", ".join(result.dropped))
        self._cpuid = result.table
        if features is not None:
            features.follow(self._cpuid)
        elif state.model.remove or state.model.name not in PASS_THROUGH:
            log.warning("cpu %s: this unicorn build's feature words were not found: CPUID shows the model, "
                        "but the engine runs every instruction it knows", state.model.describe())
        self._cr4_allowed = allowed_cr4(self._cpuid)
        amd = vendor_of(self._cpuid) == "AuthenticAMD"
        from .engine import uclib

        # vmcore's engine build runs SYSCALL and SYSENTER itself; a stock unicorn calls hooks, which
        # do the same here (vmcore.accel.fastcall), at some 60 us a call.
        self._fastcall = None if engine_fastcalls(uclib, self.uc, amd) else FastCall(
            self.regs, self._deliver, lambda: bool(self._segment("cs")["l"]), amd=amd, set_cpl=set_cpl)
        self._counter = EngineCounter.of(uclib, self.uc)
        # And it delivers real-mode software interrupts itself (a SeaBIOS boot makes about 150, at
        # some 55 us each through vmcore.accel.idt); a stock unicorn reports them to on_intr.
        engine_real_mode_ints(uclib, self.uc)
        # CPUID zero-extends into the 64-bit registers (written whole, as in long mode).
        self._cpuid_registers = _registers(_CPUID_REGISTERS_64)
        self._follow_map()
        # Devices (a chipset's shadow-RAM decoding) may remap memory while the guest runs.
        memory.add_listener(self._map_changed)
        self._load_state(state)
        if intercepting:
            assert layout is not None and layout.svm is not None and layout.hflags is not None
            controls = InterceptControls(self.uc, cpu + layout.env, layout.svm, layout.hflags, _SCRATCH)
            self.regs.intercepts = controls
            rules = MsrRules(self.regs, features_of(self._cpuid), state.local_apic)
            # vmcore's engine build stores pushf's image with RF clear: a real-mode iret that
            # loads RF then needs no help (engine/unicorn/patches/0004-pushf-clears-rf.patch).
            self._intercepts = InterceptHandler(controls, _InterceptedCpu(self, hflags), self._cr4_allowed, rules,
                                                real_mode_iret=not pushf_clears_rf(uclib),
                                                smsw_operand_size=smsw_operand_size(uclib),
                                                engine_cr0=engine_cr0_checks(uclib, self.uc))

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
        clock = core.clock
        if clock is not None and clock.virtual:
            assert self._counter is not None and isinstance(clock, VirtualClock)  # virtual_time_unavailable
            if self._virtual is None:
                self.uc.ctl_flush_tb()  # every block from now on is translated with the counting hook
            self._virtual = _VirtualTime(clock, self._counter)
        else:
            self._virtual = None
        accessors = core.accessors
        # The port hooks are the core's accessors themselves (see _Callbacks): a call more per
        # access costs ~10% here.
        self._mmio[:] = accessors.mmio_read, accessors.mmio_write
        if self._virtual is not None:
            self._mmio[:] = self._virtual.charged(accessors.mmio_read), self._virtual.charged(accessors.mmio_write)
        mmio_write = accessors.mmio_write
        diversion = self._diversion

        def on_write_prot(_uc: Any, _access: int, address: int, size: int, value: int, _ud: Any) -> bool:
            slot = self.memory.slot_at(address) if self.memory else None
            if slot is None or not slot.readonly or diversion.stopping:
                return False
            mmio_write(None, address, size, value)
            self._rom_write = (slot, address, size)
            return False  # stop before the write; enter() replays the instruction with the write discarded

        def contained(body: Callable[..., Any]) -> Callable[..., Any]:
            # A stop raised in a hook (a triple fault) is kept for after emu_start, as a device's
            # exception is (abort): raised through unicorn's binding it would come out as the
            # engine's own error, or not at all.
            def hook(*args: Any) -> Any:
                try:
                    return body(*args)
                except CpuStop as stop:
                    self.abort(stop)
                    return True
            return hook

        @contained
        def on_intr(_uc: Any, vector: int, _ud: Any) -> None:
            error, software = self._exception.take() if self._exception is not None else (None, False)
            if vector == EXCP_VMEXIT + VINTR and self._intercepts is not None:
                self._window_open()
                return
            if vector >= EXCP_VMEXIT and self._intercepts is not None:
                try:
                    self._intercepts.handle(vector - EXCP_VMEXIT, error or 0)
                except Step as step:
                    self._step = step
                    self._request_stop()
                return
            self._check_cr4()
            self._deliver(vector, error=error, software=software)

        @contained
        def on_invalid(_uc: Any, _ud: Any) -> bool:
            if self._at_icebp():
                # INT1 (ICEBP, F1): QEMU 5.0 sends it to its own debugger, which unicorn reports
                # as an invalid opcode. A processor raises #DB as a trap after it, with no gate
                # DPL check (SDM volume 3, 17.3.1.2), as it does for a hardware event.
                self.regs.reg_write(X.UC_X86_REG_RIP, self._ip() + 1)
                self._deliver(1, external=True)
                return True
            self._deliver(6)  # #UD
            return True

        def on_cpuid(_uc: Any, _ud: Any) -> int:
            # Every leaf from the model's table (vmcore.cpu_model), as KVM answers from its own.
            leaf = self.regs.reg_read(X.UC_X86_REG_EAX) & 0xFFFFFFFF
            subleaf = self.regs.reg_read(X.UC_X86_REG_ECX) & 0xFFFFFFFF
            eax, ebx, ecx, edx = answer(self._cpuid, leaf, subleaf)
            if leaf == 1:
                # OSXSAVE mirrors CR4.OSXSAVE now, not when the leaf was taken (SDM: CPUID leaf 1).
                ecx &= ~_CPUID1_ECX_OSXSAVE
                if self.regs.reg_read(X.UC_X86_REG_CR4) & _CR4_OSXSAVE:
                    ecx |= _CPUID1_ECX_OSXSAVE
                # The APIC bit says whether the APIC is enabled in IA32_APIC_BASE (SDM 11.4.3).
                if self._intercepts is not None and self._intercepts.msrs.apic_enabled() is False:
                    edx &= ~_CPUID1_EDX_APIC
            elif leaf == 7 and subleaf == 0:
                # OSPKE mirrors CR4.PKE likewise (leaf 7 ECX bit 4).
                ecx &= ~_CPUID7_ECX_OSPKE
                if self.regs.reg_read(X.UC_X86_REG_CR4) & _CR4_PKE:
                    ecx |= _CPUID7_ECX_OSPKE
            for register, value in zip(self._cpuid_registers, (eax, ebx, ecx, edx)):
                self.regs.reg_write(register, value)
            return 1  # done: unicorn skips its own

        self._hooks = [
            uc.hook_add(uc_mod.UC_HOOK_MEM_WRITE_PROT, on_write_prot),
            uc.hook_add(uc_mod.UC_HOOK_INTR, on_intr),
            uc.hook_add(uc_mod.UC_HOOK_INSN_INVALID, on_invalid),
            uc.hook_add(uc_mod.UC_HOOK_INSN, on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID),
        ]
        fastcall = self._fastcall
        if fastcall is not None:  # a stock unicorn: SYSCALL and SYSENTER call these

            @contained
            def on_syscall(_uc: Any, _ud: Any) -> None:
                self._fast_call(fastcall.syscall)

            @contained
            def on_sysenter(_uc: Any, _ud: Any) -> None:
                self._fast_call(lambda _next: fastcall.sysenter())

            self._hooks += [uc.hook_add(uc_mod.UC_HOOK_INSN, on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL),
                            uc.hook_add(uc_mod.UC_HOOK_INSN, on_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)]
        callbacks = self._callbacks
        assert callbacks is not None
        port_in, port_out = accessors.port_in, accessors.port_out
        if self._virtual is not None:
            port_in, port_out = self._virtual.charged(port_in), self._virtual.charged(port_out)
        self._port_hooks = [callbacks.hook_port(X.UC_X86_INS_IN, port_in),
                            callbacks.hook_port(X.UC_X86_INS_OUT, port_out)]
        if self._intercepts is not None:
            self._intercepts.msrs.devices = core.msrs
            # CR8 is the local APIC's TPR where one is modelled.
            apic = core.controller
            self._intercepts.apic = apic if hasattr(apic, "set_task_priority") else None
        self._running = True
        self._vcpu_thread = threading.get_ident()
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
        if self._virtual is not None:
            self._virtual.counter.virtual_tsc(0, 0)  # the host's TSC again, for whatever runs next

    def _enter(self) -> int:
        """One emu_start: the guest runs until a hlt, a kick or a stop; what ended it, as an exit kind
        (accesses went to the accessors meanwhile)."""
        pc = self._ip() if self._pc is None else self._pc
        self._pc = None
        self._rom_write = None
        diversion = self._diversion
        error = None
        if self._intercepts is not None:
            self._intercepts.controls.assert_guest()
        stepping, self._single_step = self._single_step, False
        came_back = STEPPED if stepping else YIELD
        if stepping:
            # count=1 needs blocks translated with the counting hook (see _replay_rom_write).
            linear = self._segment_base("cs") + pc
            self.uc.ctl_remove_cache(linear, linear + 1)
        try:
            self._emulate(pc, count=1 if stepping else 0)
        except uc_mod.UcError as exc:
            error = exc
        self._catch_up()
        if self._step is not None and error is None and not diversion.stopping:
            self._run_step()
            return came_back
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
            return came_back  # the core checks the limits: a guest that keeps writing to ROM must not outlive them
        self._check_cr4()
        # A kick (or a slice's end) stopped it, or the guest executed hlt (unicorn stops after it).
        return HALT if self._after_hlt() else came_back

    def request_step(self, done: Callable[[], None]) -> None:
        self.step_done = done
        self._single_step = True

    def _run_step(self) -> None:
        """Run the intercepted instruction at RIP once, with its intercept off (see intercepts.Step)."""
        step, self._step = self._step, None
        assert step is not None and self._intercepts is not None
        ip = self._ip()
        restore = self._intercepts.controls.suspend(step.code)
        # count=1 needs blocks translated with the counting hook (see _replay_rom_write): drop
        # the ones that start here.
        self.uc.ctl_remove_cache(self._linear_pc(), self._linear_pc() + 1)
        try:
            self._emulate(ip, count=1)
        except uc_mod.UcError as exc:
            raise CpuStop(self._fault(exc)) from None
        finally:
            restore()
        if step.after is not None:
            step.after()

    def _check_cr4(self) -> None:
        """Stop when CR4 holds what no processor with this CPUID would (vmcore.accel.control_registers): a #GP went missing."""
        allowed = self._cr4_allowed
        if allowed is None or self._intercepts is not None:
            return  # trapped at the mov instead
        cr4 = self.regs.reg_read(X.UC_X86_REG_CR4)
        if cr4 & ~allowed:
            raise CpuStop(self.stop_reason(
                "internal-error", f"CR4 is {cr4:#x}, with bits {cr4 & ~allowed:#x} this CPU does not have: a "
                "processor raises #GP at the mov that loads them; unicorn took them, and the software CPU "
                "cannot undo it"))

    def _emulate(self, pc: int, count: int = 0, replay: list[tuple[str, int, int, int]] | None = None) -> None:
        """emu_start; what a device raised in a hook comes first, before what it left unicorn doing.

        ``replay``: the accesses the last run abandoned, answered without the device (see _Diversion).
        """
        self._catch_up()
        self._diversion.start(replay)
        kicker = self._kicker
        if count:
            kicker.hold()
        elif self._window:
            self._window = False
            kicker.step_from(pc)  # the guest has IF clear and an interrupt waits: look again after this block
        virtual = self._virtual
        limit = count or (0 if kicker.usable else _SLICE)
        if virtual is not None:
            limit = virtual.begin(count)
        try:
            self.regs.emu_start(pc, limit)
        except BaseException:
            if self._pending is None:
                raise
        finally:
            if virtual is not None:
                virtual.end()
            if count:
                kicker.release()  # a kick that waited for the step stops the next run at once
            else:
                kicker.settle()  # the loop serves what the kick was for before it runs the guest again
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
        if self._kicker.usable and threading.get_ident() != self._vcpu_thread:
            self._kicker.kick()  # emu_stop from another thread is not safe (see kick)
        else:
            self._request_stop()

    def _request_stop(self) -> None:
        """emu_stop, noted first (see _Diversion); from any thread."""
        if self._running:
            self._diversion.stop_requested()
        uc = self.uc
        if uc is not None:
            uc.emu_stop()

    def kick(self) -> None:
        """Stop emulation at the start of the next translation block (any thread).

        Never emu_stop from another thread: unicorn acts on a stop in the middle of a
        block, after a memory access was made but with IP still on its instruction,
        which then runs twice on resume (a read-modify-write of RAM too, not only device
        accesses), or with IP set back to the block's start and the registers the block
        changed kept (SeaBIOS went astray that way). The :class:`_Kicker` has the vCPU
        thread stop itself where a block starts, which is exact. Without one (another
        unicorn build) emulation runs in slices of ``_SLICE`` instructions and the core
        serves what was asked for between slices.
        """
        self._kicker.kick()

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

    def inject_nmi(self) -> None:
        """Raise the engine's own NMI request: QEMU's CPU takes it at the next block, whatever IF
        says, and blocks NMIs until the guest's next iret, as hardware does (SDM 6.7.1)."""
        if self._raise_interrupt is None:
            raise CpuStop(self.stop_reason("internal-error", "the software CPU cannot take NMIs with this "
                                           "unicorn build (its CPU interrupt handler was not found)"))
        self._raise_interrupt(_CPU_INTERRUPT_NMI)

    def time_stamp_counter(self) -> tuple[Callable[[], int], Callable[[], int]] | None:
        # Lazily: the scratch engine behind it is made when a device first asks.
        return (lambda: host_tsc().read()), (lambda: host_tsc().hz())

    def virtual_time_unavailable(self) -> str | None:
        if uc_mod is None or not _engine_counts():
            return ("this unicorn cannot count instructions as they run: virtual time needs vmcore's engine "
                    "build (scripts/build-engine)")
        return None

    def deadline_changed(self, deadline: int) -> None:
        if self._virtual is not None:
            self._virtual.deadline_changed(deadline)

    def interrupts_enabled(self) -> bool:
        return bool(self.regs.reg_read(X.UC_X86_REG_EFLAGS) & _FLAG_IF)

    def controller_changed(self, controller: InterruptController | None) -> None:
        if self._intercepts is not None:
            self._intercepts.apic = controller if hasattr(controller, "set_task_priority") else None
        if self._hardirq is not None and self._hardirq.controller is not None:
            self._hardirq.controller = controller

    def offer_interrupt(self, controller: InterruptController) -> bool:
        if self._hardirq is not None:
            # vmcore's engine build: the CPU takes it itself where it can (see _EngineInterrupts).
            return self._hardirq.offer(controller, self.interrupts_enabled)
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
            if controller.pending() and self.interrupts_enabled():
                self._disarm_window()
                self._deliver(controller.acknowledge(), external=True)
                self._if_poll_ns = _IF_POLL_NS
                self._window_blocks = 0
                return True
            # The instruction in the shadow cleared IF (an int n through an interrupt gate, cli):
            # look for the window as below.
        if not controller.pending():
            self._window_blocks = 0
            self._disarm_window()
            return False
        if self._intercepts is not None and self._reset_interrupt is not None and self._raise_interrupt is not None:
            # IF is clear: QEMU's own virtual-interrupt window (an SVM guest's V_IRQ) comes back as
            # a VINTR intercept at the first instruction boundary where the guest can take an
            # interrupt (IF set, no interrupt shadow), which is where KVM would exit too.
            if not self._window_armed:
                self._window_armed = True
                self._intercepts.controls.set_exit(VINTR, True)
                self._raise_interrupt(_CPU_INTERRUPT_VIRQ)
            return False
        # IF is clear: unicorn has no interrupt window exit (KVM's tells when the guest sets
        # IF). An instruction that sets IF (sti, popf, iret) ends its translation block, so
        # running a block at a time and looking after each finds the window where hardware
        # would; a guest that keeps IF clear longer than _WINDOW_BLOCKS blocks is looked at
        # again later instead, at growing intervals, so it runs at full speed meanwhile.
        if self._kicker.can_step and self._window_blocks < _WINDOW_BLOCKS:
            self._window_blocks += 1
            self._window = True
            return False
        core = self._core
        if core is not None and core.clock is not None:
            core.wake_at(core.clock.now() + self._if_poll_ns)
            self._if_poll_ns = min(2 * self._if_poll_ns, _IF_POLL_MAX_NS)
            self._window_blocks = 0
        return False

    def _disarm_window(self) -> None:
        if self._window_armed:
            self._window_armed = False
            assert self._intercepts is not None and self._reset_interrupt is not None
            self._intercepts.controls.set_exit(VINTR, False)
            self._reset_interrupt(_CPU_INTERRUPT_VIRQ)

    def _window_open(self) -> None:
        """The VINTR intercept: the guest can take an interrupt now; the controller's goes in here."""
        self._disarm_window()
        core = self._core
        controller = None if core is None else core.controller
        if controller is not None and controller.pending():
            self._deliver(controller.acknowledge(), external=True)

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

    def _deliver(self, vector: int, *, error: int | None = None, software: bool = False,
                 external: bool = False) -> None:
        """Deliver an interrupt or exception through the guest's IDT (vmcore.accel.idt); a triple fault stops."""
        self._pc = None  # emulation goes on from the handler (see _enter)
        assert self._idt is not None
        self._idt.deliver(vector, error=error, software=software, external=external)

    def _at_icebp(self) -> bool:
        try:
            return self._read_linear(self._linear_pc(), 1) == b"\xf1"
        except CpuStop:
            return False

    def _fast_call(self, action: Callable[[int], None]) -> None:
        """SYSCALL or SYSENTER (vmcore.accel.fastcall) at RIP; unicorn then adds the instruction's
        length to RIP, which is taken off here first."""
        ip = self._ip()
        length = 2
        try:
            code = self._read_linear(self._linear_pc(), 16)
            while length < len(code) and code[length - 2] != 0x0F:  # prefixes before 0F 05 / 0F 34
                length += 1
        except CpuStop:
            pass
        action(ip + length)
        self.regs.reg_write(X.UC_X86_REG_RIP, (self._ip() - length) & _MASKS[8])

    def _read_linear(self, linear: int, length: int) -> bytes:
        """Guest bytes at a linear address, for reports and decoding; CpuStop where it is not mapped.

        The stop carries no register snapshot: taking one reads the GDT through here.
        """
        physical = self._physical(linear)
        assert self.memory is not None
        if physical is None:
            raise CpuStop(StopReason.of("shutdown", f"{linear:#x} is not mapped"))
        return self.memory.read(physical, length)

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
        caches = self._segment_caches
        if caches is not None:
            # What the CPU loaded (its descriptor cache), whatever the tables say now.
            cache = SegmentCache.from_address(caches + SEGMENT_CACHE_SIZE * _SEGMENT_SLOTS[name])
            flags = cache.flags
            return {"selector": cache.selector & 0xFFFF, "base": cache.base, "limit": cache.limit, "type": flags >> 8 & 0xF,
                    "l": flags >> 21 & 1, "db": flags >> 22 & 1}
        selector = self.regs.reg_read(_reg(name))
        if self.mode == "real":
            return {"selector": selector, "base": selector << 4, "limit": 0xFFFF, "type": 3, "l": 0, "db": 0}
        segment = {"selector": selector, "base": 0, "limit": 0xFFFFFFFF, "type": 0, "l": 0, "db": 0}
        _, base, limit, _ = self.regs.reg_read(X.UC_X86_REG_GDTR)
        index = selector & ~7
        if selector & 4 or index == 0 or index + 7 > limit:
            return segment  # the LDT or the null selector: not looked up
        try:
            raw = int.from_bytes(self._read_linear(base + index, 8), "little")
        except CpuStop:
            return segment  # the GDT is not mapped
        loaded = Segment.from_descriptor(selector, raw)
        segment.update(base=loaded.base, limit=loaded.limit, type=loaded.type, l=loaded.l, db=loaded.db)
        return segment

    def _segment_base(self, name: str) -> int:
        caches = self._segment_caches
        if caches is not None:  # what the CPU loaded (see _segment)
            return int(SegmentCache.from_address(caches + SEGMENT_CACHE_SIZE * _SEGMENT_SLOTS[name]).base)
        if self.mode == "real":
            return self.regs.reg_read(_reg(name)) << 4
        if self.mode == "long" and name in ("cs", "ds", "es", "ss"):
            return 0
        # Flat segments are what the VMM loads; without the engine's caches a guest that reloads
        # them is not followed here.
        return 0

    def _after_hlt(self) -> bool:
        """True when emulation stopped because the guest executed ``hlt``, not at a kick or a slice's end.

        Both can leave IP after an F4 byte, and a stop asked for during a block may take
        effect only after a hlt later in it: the CPU's halted flag tells (found in the
        engine by experiment, see unicorn_layout.cpu_layout); where it cannot be found, a
        preceding F4 byte decides.
        """
        if self._halted is not None:
            return self._halted.value != 0
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
        if not cr0 & _CR0_PG:
            return linear & 0xFFFFFFFF  # no paging (and so no long mode): what translate() answers
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

    # --- snapshots ---------------------------------------------------------------------------

    def save_cpu(self) -> dict[str, Any]:
        """The vCPU for a snapshot (vmcore.snapshot), between runs: registers, control registers,
        MSRs, x87/SSE state, and the engine's own record of the mode (hflags, hflags2: CPL, the
        interrupt shadow, NMI blocking) with every segment's hidden part (base, limit, attributes:
        unreal mode, a selector whose descriptor changed since), which only vmcore's engine shows."""
        block = self._engine_block()
        regs = self.regs
        registers = {name: regs.reg_read(_reg(name)) for name in (*_GPRS, "cr0", "cr2", "cr3", "cr4")}
        registers["rip"] = self._ip() if self._pc is None else self._pc
        msrs = {}
        for index in _SAVED_MSRS:
            try:
                msrs[f"{index:#x}"] = regs.msr_read(index)
            except uc_mod.UcError:
                pass  # not one this engine keeps
        fpu = {name: regs.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}")) for name in _FPU_CONTROL}
        fpu["st"] = [list(regs.reg_read(getattr(X, f"UC_X86_REG_FP{i}"))) for i in range(8)]
        fpu["xmm"] = [regs.reg_read(getattr(X, f"UC_X86_REG_XMM{i}")) for i in range(16)]
        debug = {name: regs.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}")) for name in portable.DEBUG}
        xcr0 = self._xcr0()
        if xcr0 is not None:
            registers["xcr0"] = xcr0.value
        # Not the engine's halted flag: a snapshot is taken at an exit, with the guest running (the
        # flag only says how the engine's last run ended, and a set one would stop the next).
        return {"registers": registers, "msrs": msrs, "fpu": fpu, "debug": debug,
                "engine": {"name": engine_name(), "block": ctypes.string_at(block, _ENGINE_BLOCK).hex()},
                "portable": self._portable(block, registers, msrs.get(f"{_MSR_EFER:#x}", 0), fpu, debug)}

    def _xcr0(self) -> ctypes.c_uint64 | None:
        """XCR0 in the engine's x86 state (unicorn's API has no register for it), or None where it
        was not found: an OS that turned XSAVE components on must find them on after a restore."""
        layout = cpu_layout()
        if layout is None or self._env is None:
            return None
        offset = xcr0_offset(layout.cpu_pointer, layout.env)
        return None if offset is None else ctypes.c_uint64.from_address(self._env + offset)

    def _portable(self, block: int, registers: dict[str, int], efer: int, fpu: dict[str, Any],
                  debug: dict[str, int]) -> dict[str, Any]:
        """This vCPU in the form KVM takes too (vmcore.accel.portable), from the engine block's
        segment caches and flags and the registers save_cpu read."""
        caches = _segment_caches(block)
        segments = {name: {"selector": cache.selector & 0xFFFF, "base": cache.base, "limit": cache.limit,
                           **portable.attributes_of_flags(cache.flags)}
                    for name, cache in zip(portable.SEGMENTS, caches)}
        tables = {name: {"base": cache.base, "limit": cache.limit}
                  for name, cache in zip(portable.TABLES, caches[len(portable.SEGMENTS):])}
        hflags, hflags2 = ctypes.c_uint32.from_address(block).value, ctypes.c_uint32.from_address(block + 4).value
        control = {**{name: registers[name] for name in ("cr0", "cr2", "cr3", "cr4")}, "efer": efer}
        if "xcr0" in registers:
            control["xcr0"] = registers["xcr0"]
        state: dict[str, Any] = {
            "registers": {name: registers[name] for name in portable.GPRS},
            "control": control, "debug": debug,
            "segments": segments, "tables": tables,
            "fpu": {"fcw": fpu["fpcw"], "fsw": fpu["fpsw"], "ftw": portable.abridged_tags(fpu["fptag"]),
                    "fop": fpu["fop"], "fip": fpu["fip"], "fdp": fpu["fdp"],
                    "mxcsr": fpu["mxcsr"], "xmm": fpu["xmm"],
                    "st": [(int(m).to_bytes(8, "little") + int(e).to_bytes(2, "little")).hex() for m, e in fpu["st"]]},
            "events": {"shadow": int(bool(hflags & _HF_INHIBIT_IRQ)), "nmi_masked": int(bool(hflags2 & _HF2_NMI))},
        }
        if self._virtual is None:
            state["tsc"] = host_tsc().read()
        return state

    def restore_cpu(self, saved: dict[str, Any]) -> None:
        """Give the vCPU (set up, not yet run) a state :meth:`save_cpu` saved."""
        if "engine" not in saved:
            self._restore_portable(saved)
            return
        block = self._engine_block()
        engine = saved["engine"]
        if engine["name"] != engine_name():
            raise AcceleratorUnavailable(f"the snapshot's software CPU was {engine['name']}, this one is "
                                         f"{engine_name()}: its engine state does not carry over")
        raw = bytes.fromhex(engine["block"])
        if len(raw) != _ENGINE_BLOCK:
            raise AcceleratorUnavailable("the snapshot's engine state is not this engine's size")
        self._load(saved["registers"], saved["msrs"], saved["fpu"], saved.get("debug"),
                   lambda: ctypes.memmove(block, raw, _ENGINE_BLOCK))  # the engine's own record, as it was

    def _restore_portable(self, saved: dict[str, Any]) -> None:
        """A vCPU KVM saved (vmcore.accel.portable): the registers written as restore_cpu writes
        them, the segment caches as KVM had them, and the engine's mode flags worked out from
        them by the engine's own x86_update_hflags (CPL, PE, CS32/SS32/CS64, ADDSEG, LMA, ...; its
        other bits, the SVM intercepts' among them, stay as set up)."""
        state = portable.check(saved["portable"])
        block = self._engine_block()
        update_hflags = _update_hflags()
        env = self._env
        if update_hflags is None or env is None:
            raise AcceleratorUnavailable("this unicorn build does not export x86_update_hflags: a vCPU from KVM "
                                         "cannot be restored on it")
        control, fpu = state["control"], state["fpu"]
        registers = {**state["registers"], **{name: control[name] for name in ("cr0", "cr2", "cr3", "cr4")}}
        if "xcr0" in control:
            registers["xcr0"] = control["xcr0"]
        msrs = {f"{_MSR_EFER:#x}": control["efer"],
                **{index: value for index, value in saved["msrs"].items() if int(index, 16) in SNAPSHOT_MSRS}}
        st = [bytes.fromhex(value) for value in fpu["st"]]
        engine_fpu = {"fpcw": fpu["fcw"], "fpsw": fpu["fsw"], "fptag": portable.full_tags(fpu["ftw"]),  # FPSW with TOP
                      "mxcsr": fpu["mxcsr"] & 0xFFFFFFFF, "fop": fpu["fop"], "fip": fpu["fip"], "fdp": fpu["fdp"],
                      "st": [(int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")) for raw in st],
                      "xmm": fpu["xmm"]}

        def segments_and_flags() -> None:
            sources = [(state["segments"][name], portable.flags_of(state["segments"][name]))
                       for name in portable.SEGMENTS] + [({"selector": 0, **state["tables"][name]}, 0)
                                                         for name in portable.TABLES]
            for cache, (segment, flags) in zip(_segment_caches(block), sources):
                cache.selector, cache.base, cache.limit, cache.flags = (segment["selector"], segment["base"],
                                                                        segment["limit"], flags)
            update_hflags(env)
            hflags, hflags2 = ctypes.c_uint32.from_address(block), ctypes.c_uint32.from_address(block + 4)
            hflags.value = hflags.value & ~_HF_INHIBIT_IRQ | (_HF_INHIBIT_IRQ if state["events"]["shadow"] else 0)
            hflags2.value = hflags2.value & ~_HF2_NMI | (_HF2_NMI if state["events"]["nmi_masked"] else 0)

        self._load(registers, msrs, engine_fpu, state.get("debug"), segments_and_flags)

    def _load(self, registers: dict[str, Any], msrs: dict[str, Any], fpu: dict[str, Any], debug: dict[str, Any] | None,
              engine_state: Callable[[], Any]) -> None:
        """Write a saved vCPU (save_cpu's form) into the engine: the mode first (the writes
        recompute what follows from it), then the rest, then ``engine_state`` (the engine's
        record of segments and flags), RIP last."""
        regs = self.regs
        regs.msr_write(_MSR_EFER, int(msrs.get(f"{_MSR_EFER:#x}", 0)))
        for name in ("cr4", "cr3", "cr0", "cr2"):
            regs.reg_write(_reg(name), int(registers[name]))
        for index, value in msrs.items():
            try:
                regs.msr_write(int(index, 16), int(value))
            except uc_mod.UcError:
                pass  # not one this engine keeps
        for name in _GPRS:
            regs.reg_write(_reg(name), int(registers[name]))
        for name in _FPU_CONTROL:
            if name in fpu:  # fop, fip and fdp: older snapshots lack them
                regs.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), int(fpu[name]))
        for i, (mantissa, exponent) in enumerate(fpu["st"]):
            regs.reg_write(getattr(X, f"UC_X86_REG_FP{i}"), (int(mantissa), int(exponent)))
        for i, value in enumerate(fpu["xmm"]):
            regs.reg_write(getattr(X, f"UC_X86_REG_XMM{i}"), int(value))
        if debug is not None:
            for name in portable.DEBUG:
                regs.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), int(debug[name]))
        xcr0 = self._xcr0()
        if "xcr0" in registers and xcr0 is not None:
            xcr0.value = int(registers["xcr0"])
        engine_state()
        regs.reg_write(X.UC_X86_REG_RIP, int(registers["rip"]))
        self._pc = None
        self.uc.ctl_flush_tb()
        if self._intercepts is not None:
            self._intercepts.follow_state()

    def _engine_block(self) -> int:
        """The address of hflags, hflags2 and the segment caches (ES..GS, LDT, TR, GDT, IDT) in the
        engine's x86 state, which lie together (QEMU's CPUX86State); only vmcore's engine shows it."""
        if self._segment_caches is None:
            raise AcceleratorUnavailable("this unicorn build does not show its segment caches: snapshots "
                                         "need vmcore's engine (scripts/build-engine)")
        return self._segment_caches - 8

    def set_registers(self, values: dict[str, int]) -> None:
        for name, value in values.items():
            self.regs.reg_write(_reg(name), value)
        if "rip" in values:
            self._pc = None  # emulation goes on from the RIP written

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
        self._halted = self._exception = None  # point into the engine, freed with it
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


_CPUID_REGISTERS_64 = ("RAX", "RBX", "RCX", "RDX")  # CPUID zero-extends into these in long mode


def _registers(names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(getattr(X, f"UC_X86_REG_{name}") for name in names)


#: What the software CPU cannot honour although the engine's CPUID may offer it (feature -> why).
UNAVAILABLE: dict[str, str] = {}


class _HostTsc:
    """The engine's TSC: the host's, as its ``rdtsc`` reads it (QEMU's ``cpu_get_tsc``; the
    offset it adds stays 0, as nothing here writes IA32_TSC, which QEMU's TCG does not model).

    unicorn's MSR read of IA32_TSC gives 0 (QEMU's rdmsr helper has no case for it), so a
    scratch engine runs ``rdtsc`` (about 10 us). The rate is measured once against the
    monotonic clock over 20 ms, each sample put at the middle of the two clock reads around
    it, when first asked for (a guest's first TSC deadline: that wrmsr takes 20 ms longer).
    """

    def __init__(self) -> None:
        self._uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
        self._uc.mem_map(0, 0x1000)
        self._uc.mem_write(0, b"\x0f\x31")  # rdtsc
        self._lock = threading.Lock()
        self._hz = 0

    def read(self) -> int:
        with self._lock:
            self._uc.emu_start(0, 2)
            return self._uc.reg_read(X.UC_X86_REG_EDX) << 32 | self._uc.reg_read(X.UC_X86_REG_EAX)

    def hz(self) -> int:
        if not self._hz:
            def sample() -> tuple[float, int]:
                before = time.monotonic_ns()
                tsc = self.read()
                return (before + time.monotonic_ns()) / 2, tsc

            first = sample()
            time.sleep(0.02)
            last = sample()
            self._hz = max(1, round((last[1] - first[1]) * 1e9 / (last[0] - first[0])))
        return self._hz


@functools.cache
def host_tsc() -> _HostTsc:
    return _HostTsc()


def _segment_caches(block: int) -> list[SegmentCache]:
    """The ten segment caches after hflags and hflags2 (ES, CS, SS, DS, FS, GS, LDT, TR, GDT, IDT)."""
    return [SegmentCache.from_address(block + 8 + SEGMENT_CACHE_SIZE * slot) for slot in range(10)]


@functools.lru_cache(maxsize=None)
def _update_hflags() -> Callable[[int], None] | None:
    """The engine's ``x86_update_hflags(CPUX86State *)`` (QEMU's, exported by unicorn as
    x86_update_hflags_x86_64): hflags worked out again from the segment caches, CRs, EFER and
    EFLAGS, as QEMU does after loading a vCPU from KVM or a migration stream. None if absent."""
    from .engine import uclib

    function = getattr(uclib, "x86_update_hflags_x86_64", None)
    if function is None:
        return None
    function.argtypes, function.restype = [ctypes.c_void_p], None
    return function  # type: ignore[no-any-return]


def _engine_counts() -> bool:
    """Whether the installed engine is vmcore's build with instruction counting (0012-virtual-time)."""
    from .engine import uclib

    return getattr(uclib, "vmcore_insn_count", None) is not None


class _VirtualTime:
    """A run whose clock is virtual (vmcore.clock.VirtualClock): every emu_start is a counted slice.

    A slice runs to the next timer's instruction (at most ``MAX_SLICE``, so the loop looks at its
    limits now and then), the clock reads the engine's count while it runs, the TSC is the same
    count (one tick per ns: 1 GHz), and a timer armed during the slice for sooner moves its end.
    Stops other than the count's end (an access that ends the run, a kick, ``hlt``) are taken
    where the same instruction is reached in every run; host input is what can differ.
    """

    #: The most instructions one slice runs without a timer to end it.
    MAX_SLICE = 10_000_000

    def __init__(self, clock: VirtualClock, counter: EngineCounter) -> None:
        self.clock, self.counter = clock, counter
        self._limit = 0  # the running slice's count, 0 between slices

    def begin(self, count: int) -> int:
        """A slice of ``count`` instructions (0: up to the next timer): the count to run."""
        clock = self.clock
        limit = self._limit = count or clock.budget(self.MAX_SLICE)
        self.counter.virtual_tsc(clock.now(), clock.ns_per_instruction)
        clock.slice(self._executed)
        return limit

    def _executed(self) -> int:
        # The engine counts an instruction before it runs: one past the count is the stop itself.
        return min(self.counter.count(), self._limit)

    def end(self) -> None:
        executed = self._executed()
        self._limit = 0
        self.clock.slice_done(executed)

    def charged(self, access: Callable[..., Any]) -> Callable[..., Any]:
        """``access`` (a device accessor), each call first charged the clock's device-access time."""
        clock = self.clock
        cost = clock.ns_per_device_access
        if not cost:
            return access

        virtual_tsc, per_instruction = self.counter.virtual_tsc, clock.ns_per_instruction

        def charged_access(*args: Any) -> Any:
            virtual_tsc(clock.charge(cost), per_instruction)  # the TSC counts the access's time too
            deadline = clock.next_deadline()
            if deadline is not None and deadline <= clock.now():
                self.deadline_changed(deadline)  # due now: the slice ends after this instruction
            return access(*args)

        return charged_access

    def deadline_changed(self, deadline: int) -> None:
        if not self._limit:
            return  # between slices: the next one is measured from the queue
        clock = self.clock
        done = self._executed()
        left = max(0, -(-(deadline - clock.now()) // clock.ns_per_instruction))
        if done + left < self._limit:
            self._limit = done + left
            self.counter.set_limit(self._limit)


#: Features QEMU 5.0's TCG implements (its TCG_7_0_EBX/ECX feature masks) that unicorn's own
#: CPU model (a Haswell) does not list: set in the engine's feature words, offered in CPUID.
#: kvm-unit-tests' smap and pku pass with them (tests/test_kvm_unit_tests.py).
ENGINE_EXTRA = ("smap", "pku")


#: engine_cpuid's answers by engine mode: the same build answers the same in every engine.
_ENGINE_CPUID: dict[int, tuple[tuple[tuple[int, int], tuple[int, int, int, int]], ...]] = {}


def engine_cpuid(uc: Any, mode: int) -> tuple[tuple[tuple[int, int], tuple[int, int, int, int]], ...]:
    """Every CPUID leaf of unicorn's own CPU (QEMU 5.0's TCG, its features filtered to what the
    TCG runs): what the software CPU supports (``max``).

    Asked of ``uc``, a new engine made in ``mode`` (32- or 64-bit) with nothing mapped yet,
    before anything else is done with it (a second engine made only to ask would cost every
    run 2-10 ms of the engine's own start-up): a page at 0 holds a loop that runs ``cpuid``
    for each of _CPUID_QUERIES and stores the answers, in one run of the engine, and is
    unmapped again; the registers the loop changed are put back as they were. Later engines
    of the process take the answers kept from the first. Empty if the engine cannot answer.
    """
    known = _ENGINE_CPUID.get(mode)
    if known is not None:
        return known
    saved = {register: uc.reg_read(register) for register in _registers(_CPUID_LOOP_REGISTERS)}
    try:
        uc.mem_map(0, 0x1000)
        try:
            uc.mem_write(_CPUID_LOOP, _CPUID_LOOP_CODE)
            uc.mem_write(_CPUID_IN, b"".join(struct.pack("<II", leaf, subleaf) for leaf, subleaf in _CPUID_QUERIES))
            uc.reg_write(X.UC_X86_REG_ESI, _CPUID_IN)
            uc.reg_write(X.UC_X86_REG_EDI, _CPUID_OUT)
            uc.reg_write(X.UC_X86_REG_EBP, len(_CPUID_QUERIES))
            uc.emu_start(_CPUID_LOOP, _CPUID_LOOP + len(_CPUID_LOOP_CODE))
            out = bytes(uc.mem_read(_CPUID_OUT, 16 * len(_CPUID_QUERIES)))
        finally:
            uc.mem_unmap(0, 0x1000)
            for register, value in saved.items():
                uc.reg_write(register, value)
    except Exception:  # noqa: BLE001 - a best effort; the caller says what is missing
        return ()
    asked = dict(zip(_CPUID_QUERIES, struct.iter_unpack("<IIII", out)))
    answers = _ENGINE_CPUID[mode] = tuple(_cpuid_leaves(asked).items())
    return answers


#: Page 0 while engine_cpuid asks: the loop, the (leaf, subleaf) pairs, the answers.
_CPUID_LOOP, _CPUID_IN, _CPUID_OUT = 0x100, 0x200, 0x600
#: The same bytes in 32- and 64-bit mode: for EBP pairs at ESI, cpuid, answers to EDI.
_CPUID_LOOP_CODE = bytes([
    0x8B, 0x06,              # mov eax, [esi]
    0x8B, 0x4E, 0x04,        # mov ecx, [esi + 4]
    0x0F, 0xA2,              # cpuid
    0x89, 0x07,              # mov [edi], eax
    0x89, 0x5F, 0x04,        # mov [edi + 4], ebx
    0x89, 0x4F, 0x08,        # mov [edi + 8], ecx
    0x89, 0x57, 0x0C,        # mov [edi + 12], edx
    0x83, 0xC6, 0x08,        # add esi, 8
    0x83, 0xC7, 0x10,        # add edi, 16
    0x83, 0xED, 0x01,        # sub ebp, 1
    0x75, 0x100 - 29,        # jnz back to the first mov (the run ends after it)
])
#: Every leaf and subleaf the answers can hold (engine_cpuid keeps the ones its CPU has).
_CPUID_QUERIES: tuple[tuple[int, int], ...] = (
    *((leaf, 0) for leaf in range(0x21)), *((4, subleaf) for subleaf in range(1, 8)),
    *((7, subleaf) for subleaf in range(1, 5)), (0xB, 1), *((0xD, subleaf) for subleaf in range(1, 32)),
    *((leaf, 0) for leaf in range(0x80000000, 0x80000021)))
#: The registers the loop changes (engine_cpuid puts them back).
_CPUID_LOOP_REGISTERS = ("EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "EIP", "EFLAGS")


def _cpuid_leaves(asked: dict[tuple[int, int], tuple[int, int, int, int]]) -> CpuidTable:
    """The leaves and subleaves the CPU that gave ``asked`` has: its basic leaves up to its highest
    (0x20 at most), leaf 4's subleaves to the first of type 0, leaf 7's as its EAX counts, leaf
    0xB's second, leaf 0xD's 1 and each its feature masks name, its extended leaves up to its
    highest (0x80000020 at most)."""
    table: CpuidTable = {(0, 0): asked[(0, 0)]}
    for leaf in range(1, min(asked[(0, 0)][0], 0x20) + 1):
        first = table[(leaf, 0)] = asked[(leaf, 0)]
        if leaf == 4:
            for subleaf in range(1, 8):
                table[(4, subleaf)] = asked[(4, subleaf)]
                if not asked[(4, subleaf)][0] & 0x1F:
                    break
        elif leaf == 7:
            for subleaf in range(1, min(first[0], 4) + 1):
                table[(7, subleaf)] = asked[(7, subleaf)]
        elif leaf == 0xB:
            table[(0xB, 1)] = asked[(0xB, 1)]
        elif leaf == 0xD:
            for subleaf in range(1, 32):
                if subleaf == 1 or (first[0] | first[3]) >> subleaf & 1:
                    table[(0xD, subleaf)] = asked[(0xD, subleaf)]
    table[(0x80000000, 0)] = asked[(0x80000000, 0)]
    for leaf in range(0x80000001, min(asked[(0x80000000, 0)][0], 0x80000020) + 1):
        table[(leaf, 0)] = asked[(leaf, 0)]
    return table


def _mmio_windows(slots: list[MemorySlot]) -> set[tuple[int, int]]:
    """The MMIO windows as (base, end): the gaps between ``slots`` (sorted) below _PHYSICAL_TOP, cut at _WINDOW_CUTS."""
    bounds = [0]
    for slot in slots:
        bounds += [slot.base, slot.end]
    bounds.append(_SCRATCH)
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
                from .engine import uclib

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


#: QEMU's CPU_INTERRUPT_NMI (CPU_INTERRUPT_TGT_EXT_3): a request bit its x86 CPU serves as an NMI.
_CPU_INTERRUPT_HARD = 0x0002
_CPU_INTERRUPT_NMI = 0x0200
#: QEMU's CPU_INTERRUPT_VIRQ (CPU_INTERRUPT_TGT_INT_0): an SVM guest's virtual interrupt request.
_CPU_INTERRUPT_VIRQ = 0x0100


class _EngineInterrupts:
    """Hardware interrupts delivered by the engine's CPU itself: vmcore's build of unicorn
    (engine/unicorn/patches/0005-hardirq-ack.patch).

    While the interrupt controller has one pending, the CPU's CPU_INTERRUPT_HARD request is
    raised; QEMU's CPU loop takes it at the first instruction boundary where the guest can
    (IF set, no interrupt shadow after sti or mov ss; from hlt too), asks :meth:`_ack` for the
    vector there (the controller's acknowledge cycle, at the moment the CPU takes it, as
    hardware's INTA) and delivers it with its own code for every mode
    (``do_interrupt_x86_hardirq``): no IDT walk in Python, no polling for the interrupt
    window. When the controller no longer has one pending the request is dropped. A stock
    unicorn has no such callback: the Python delivery (vmcore.accel.idt) serves it.
    """

    _ACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

    def __init__(self, accel: "UnicornAccelerator", setter: Any, raise_: Callable[[int], None],
                 reset: Callable[[int], None]) -> None:
        self._accel = accel
        self._raise, self._reset = raise_, reset
        self.controller: InterruptController | None = None
        self.requested = False
        self._callback = self._ACK(self._ack)  # kept alive as long as the engine may call it
        setter.argtypes, setter.restype = (ctypes.c_void_p, self._ACK, ctypes.c_void_p), None
        setter(accel.uc._uch, self._callback, None)

    @classmethod
    def of(cls, accel: "UnicornAccelerator") -> "_EngineInterrupts | None":
        from .engine import uclib

        setter = getattr(uclib, "vmcore_set_irq_ack", None)
        if setter is None or accel._raise_interrupt is None or accel._reset_interrupt is None:
            return None
        return cls(accel, setter, accel._raise_interrupt, accel._reset_interrupt)

    def offer(self, controller: InterruptController, enabled: Callable[[], bool]) -> bool:
        """Keep the request raised exactly while ``controller`` has an interrupt pending; True
        when the guest can take it now (the engine then delivers it as it resumes)."""
        self.controller = controller
        if controller.pending():
            if not self.requested:
                self.requested = True
                self._raise(_CPU_INTERRUPT_HARD)
            return enabled()
        if self.requested:
            self.requested = False
            self._reset(_CPU_INTERRUPT_HARD)
        return False

    def _ack(self, _opaque: Any) -> int:
        # Called by the engine inside emu_start; QEMU has cleared its request already.
        self.requested = False
        controller = self.controller
        try:
            if controller is None or not controller.pending():
                return -1  # it went away meanwhile: nothing to deliver
            return controller.acknowledge() & 0xFF
        except BaseException as exc:  # noqa: BLE001 - a device's fault: raised after emu_start
            self._accel.abort(exc)
            return -1


def _interrupt_request(cpu: int) -> Callable[[int], None] | None:
    """A function that raises interrupt-request bits of the engine's CPU (``cpu``: its address).

    unicorn's library exports the handler QEMU's ``cpu_interrupt`` calls
    (``cpu_interrupt_handler``, a pointer to the TCG one), which sets the bits and makes the
    CPU look at them at its next block. None where it is not exported.
    """
    try:
        from .engine import uclib

        pointer = ctypes.c_void_p.in_dll(ctypes.CDLL(uclib._name), "cpu_interrupt_handler").value
    except (ImportError, ValueError, AttributeError, OSError):
        return None
    if not pointer:
        return None
    handler = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)(pointer)
    return lambda mask: handler(cpu, mask)


def _interrupt_reset(cpu: int) -> Callable[[int], None] | None:
    """A function that clears interrupt-request bits of the engine's CPU: QEMU's
    ``cpu_reset_interrupt``, which unicorn's library exports. None where it does not."""
    try:
        from .engine import uclib

        function = ctypes.CDLL(uclib._name).cpu_reset_interrupt
    except (ImportError, AttributeError, OSError):
        return None
    function.argtypes, function.restype = (ctypes.c_void_p, ctypes.c_int), None
    return lambda mask: function(cpu, mask)


class _ExceptionInfo:
    """The x86 state's fields for the exception unicorn's interrupt hook reports (see unicorn_layout)."""

    __slots__ = ("error_code", "is_int", "old_exception")

    def __init__(self, error_code: ctypes.c_int32, is_int: ctypes.c_int32, old_exception: ctypes.c_int32) -> None:
        self.error_code, self.is_int, self.old_exception = error_code, is_int, old_exception

    @classmethod
    def of(cls, env: int, layout: Any) -> "_ExceptionInfo | None":
        """The fields in the x86 state at address ``env``."""
        if layout.error_code is None or layout.old_exception is None:
            return None
        return cls(ctypes.c_int32.from_address(env + layout.error_code),
                   ctypes.c_int32.from_address(env + layout.error_code + 4),
                   ctypes.c_int32.from_address(env + layout.old_exception))

    def take(self) -> tuple[int, bool]:
        """(error code, software interrupt?) of the exception being reported; the CPU then forgets it.

        QEMU's CPU remembers the exception in flight (``old_exception``) to turn a second
        one into #DF, and forgets it once it delivered the first; unicorn's hook delivers
        instead, so it is forgotten here, or the next #GP would become a #DF. So is the
        software-interrupt flag: unicorn moves EIP past the instruction before the hook
        whenever it is set, and an intercepted instruction (which does not set it) must stay
        where it is.
        """
        self.old_exception.value = -1
        software = bool(self.is_int.value)
        self.is_int.value = 0
        return self.error_code.value & 0xFFFFFFFF, software


class _InterceptedCpu:
    """What vmcore.accel.intercepts needs of the software CPU at an intercepted instruction."""

    def __init__(self, accel: UnicornAccelerator, hflags: ctypes.c_uint32) -> None:
        self._accel = accel
        self._hflags = hflags
        self._hflags2 = ctypes.c_uint32.from_address(ctypes.addressof(hflags) + 4)
        self.regs = accel.regs

    def fetch(self) -> tuple[bytes, int] | None:
        """The 15 bytes at RIP (the longest an instruction can be) and the code size, or None
        where they are not mapped."""
        accel = self._accel
        try:
            code = accel._read_linear(accel._linear_pc(), 15)
        except CpuStop:
            return None
        cs = accel._segment("cs")
        return code, code_bits(self.regs.reg_read(X.UC_X86_REG_CR0), cs["l"], cs["db"])

    def decode(self) -> Any:
        """The instruction at RIP (capstone, with operand details), or None."""
        fetched = self.fetch()
        return None if fetched is None else decode_one(*fetched)

    def advance(self, length: int) -> None:
        """RIP past an instruction done here."""
        cs = self._accel._segment("cs")
        bits = code_bits(self.regs.reg_read(X.UC_X86_REG_CR0), cs["l"], cs["db"])
        mask = _MASKS[8] if bits == 64 else _MASKS[4] if bits == 32 else _MASKS[2]
        self.regs.reg_write(X.UC_X86_REG_RIP, (self.regs.reg_read(X.UC_X86_REG_RIP) + length) & mask)

    def cpl(self) -> int:
        return self._hflags.value & 3

    def read_linear(self, linear: int, length: int) -> bytes:
        return self._accel._read_linear(linear, length)

    def linear_pc(self) -> int:
        return self._accel._linear_pc()

    def effective_address(self, insn: Any, operand: Any) -> int:
        """The linear address of ``insn``'s memory operand in 64-bit mode: base + index * scale +
        displacement (RIP-relative from the next instruction), plus FS's or GS's base."""
        mem = operand.mem
        address = mem.disp
        if mem.base:
            name = insn.reg_name(mem.base)
            address += (self.regs.reg_read(X.UC_X86_REG_RIP) + insn.size if name == "rip"
                        else self.regs.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}")))
        if mem.index:
            address += self.regs.reg_read(getattr(X, f"UC_X86_REG_{insn.reg_name(mem.index).upper()}")) * mem.scale
        if mem.segment:
            segment = insn.reg_name(mem.segment)
            if segment in ("fs", "gs"):
                address += self.regs.msr_read(0xC0000100 if segment == "fs" else 0xC0000101)
        return address & _MASKS[8]

    def unblock_nmi(self) -> None:
        """What an iret does to NMI blocking: QEMU keeps it in hflags2 (HF2_NMI_MASK, bit 2),
        the word after hflags, as iret's own helper clears it."""
        self._hflags2.value &= ~_HF2_NMI

    def segment(self, name: str) -> dict[str, int]:
        return self._accel._segment(name)

    def deliver(self, vector: int, error: int | None = None) -> None:
        self._accel._deliver(vector, error=error)


class _Kicker:
    """Makes emulation stop where the next translation block starts, asked from any thread.

    Two ways, by what the engine offers. vmcore's build of unicorn (``engine/unicorn``)
    exports ``vmcore_kick``: a flag that the engine reads in the check it makes where
    every block starts anyway, so a kick costs nothing per block; a kick made while
    no emulation runs stops the next run before its first instruction.

    A stock unicorn gets two block hooks registered with its C library, whose callbacks
    are functions of unicorn itself, so no Python runs per block: the first, over every
    address, has unicorn translate a call to its hook loop into every block (its
    callback, ``uc_errno``, only reads a field); the second calls ``uc_emu_stop`` over
    no address (its range: the one address ``_NEVER``) until :meth:`kick` widens it to
    every address, by one aligned 8-byte store of its end bound, which the hook loop
    reads at each block's start. The bounds' place in unicorn's ``struct hook`` is
    found once by experiment (:func:`~vmcore.accel.unicorn_layout.hook_bounds_offset`).
    Only this way can make a run one block long (:meth:`step_from`, ``can_step``).

    :meth:`settle` drops a kick once emulation stopped. Where neither way is found,
    ``usable`` is False and the caller runs the guest in counted slices instead.
    """

    def __init__(self, uc: Any) -> None:
        self.usable = self.can_step = False
        self._end: ctypes.c_uint64 | None = None
        self._engine: tuple[Callable[[], None], Callable[[], int]] | None = None
        self._lock = threading.Lock()
        self._holding = self._deferred = self._stepping = False
        self._step: list[ctypes.c_uint64] = []
        if uc is None:
            return
        try:
            from .engine import uclib
        except ImportError:  # another binding (unicorn 2.0)
            return
        functions = engine_kick(uclib)
        if functions is not None:
            kick, unkick = functions
            handle = uc._uch
            self._engine = (lambda: kick(handle), lambda: unkick(handle))
            self.usable = True
            return
        offset = hook_bounds_offset()
        if offset is None:
            return
        every = add_c_block_hook(uclib, uc, uclib.uc_errno, 1, 0)
        stopper = add_c_block_hook(uclib, uc, uclib.uc_emu_stop, _NEVER, _NEVER)
        below = add_c_block_hook(uclib, uc, uclib.uc_emu_stop, _NEVER, _NEVER)
        above = add_c_block_hook(uclib, uc, uclib.uc_emu_stop, _NEVER, _NEVER)
        if every is None or stopper is None or below is None or above is None:
            return
        self._end = ctypes.c_uint64.from_address(stopper + offset + 8)
        # (begin, end) of the two stop hooks that make a run one block long (see step_from).
        self._step = [ctypes.c_uint64.from_address(hook + offset + k) for hook in (below, above) for k in (0, 8)]
        self.usable = self.can_step = True

    def _arm(self) -> None:
        if self._engine is not None:
            self._engine[0]()
        elif self._end is not None:
            self._end.value = 0  # begin (_NEVER) > end: unicorn's "every address"

    def _disarm(self) -> bool:
        """Drop a kick not taken yet; whether there was one."""
        if self._engine is not None:
            return bool(self._engine[1]())
        if self._end is not None and self._end.value != _NEVER:
            self._end.value = _NEVER
            return True
        return False

    def kick(self) -> None:
        with self._lock:
            if self._holding:
                self._deferred = True
            else:
                self._arm()

    def settle(self) -> None:
        self._disarm()
        if self._stepping:
            self._stepping = False
            for bound in self._step:
                bound.value = _NEVER

    def step_from(self, pc: int) -> None:
        """Make the next run stop where a block starts anywhere but at ``pc``: it runs the block at
        ``pc`` (and again, if that loops on itself), no more. Only between runs, on the vCPU thread,
        and only where ``can_step``."""
        if not self._step or pc in (0, _NEVER):
            return
        below_begin, below_end, above_begin, above_end = self._step
        below_begin.value, below_end.value = 0, pc - 1
        above_end.value, above_begin.value = _NEVER, pc + 1
        self._stepping = True

    def hold(self) -> None:
        """Until :meth:`release`, kicks wait: a single step must run its instruction, not stop before it."""
        with self._lock:
            self._holding = True
            if self._disarm():
                self._deferred = True

    def release(self) -> None:
        with self._lock:
            self._holding = False
            if self._deferred:
                self._deferred = False
                self._arm()


#: An address no block starts at: the stop hook's range while no stop is asked for.
_NEVER = (1 << 64) - 1


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
        #: The engine's intercept controls once set (vmcore.accel.intercepts): MSR access suspends them.
        self.intercepts: InterceptControls | None = None
        field = ctypes.c_int.from_address(ctypes.cast(uc._uch, ctypes.c_void_p).value + 4)
        self._mode: ctypes.c_int | None = field if field.value == uc.ctl_get_mode() else None
        # Registers that are one integer (GPRs, RIP, flags, CRs, DRs, selectors) are read and
        # written through the C API directly, with one buffer: the binding's own path picks a
        # class and builds a ctypes object per call, 5x the cost (the interrupt and intercept
        # handlers make thousands of accesses in a firmware boot).
        from .engine import uclib

        self._uch = uc._uch
        self._c_read, self._c_write = uclib.uc_reg_read, uclib.uc_reg_write
        self._scalar: dict[int, bool] = {}
        self._buffer = ctypes.c_uint64()
        self._ref = ctypes.byref(self._buffer)
        self._msr = uc_mod.MsrBuffer()
        self._msr_ref = ctypes.byref(self._msr)

    def _is_scalar(self, register: int) -> bool:
        scalar = self._scalar.get(register)
        if scalar is None:
            scalar = self._scalar[register] = uc_mod.is_scalar(register)
        return scalar

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

    def emu_start(self, begin: int, count: int) -> None:
        """emu_start at RIP ``begin``: a 32-bit engine would write only EIP, losing a long-mode RIP's top half."""
        self._as(uc_mod.UC_MODE_64, self.uc.emu_start, begin, _NO_END, 0, count)

    def reg_read(self, register: int) -> Any:
        field = self._mode
        if field is None or not self._is_scalar(register):
            return self._as(uc_mod.UC_MODE_64, self.uc.reg_read, register)
        saved = field.value
        field.value = uc_mod.UC_MODE_64
        self._buffer.value = 0  # a 16- or 32-bit register fills only its part
        status = self._c_read(self._uch, register, self._ref)
        field.value = saved
        if status:
            raise uc_mod.UcError(status, register)
        return self._buffer.value

    def reg_write(self, register: int, value: Any) -> None:
        mode = uc_mod.UC_MODE_32 if register in _SEGMENT_REGISTERS else uc_mod.UC_MODE_64
        if register == X.UC_X86_REG_SS and not value & ~3:
            # A null SS, which long mode loads on a privilege change (SDM 6.14.4): the 32-bit
            # path refuses it; the 64-bit one takes the selector, all there is to it then.
            mode = uc_mod.UC_MODE_64
        field = self._mode
        if field is None or not self._is_scalar(register):
            self._as(mode, self.uc.reg_write, register, value)
            return
        saved = field.value
        field.value = mode
        self._buffer.value = value
        status = self._c_write(self._uch, register, self._ref)
        field.value = saved
        if status:
            raise uc_mod.UcError(status, register)

    def msr_read(self, msr: int) -> int:
        # unicorn reads and writes MSRs through the rdmsr/wrmsr helpers, which check the MSR
        # intercept first: a trap there would leave the engine from under this call.
        restore = None if self.intercepts is None else self.intercepts.suspend(MSR)
        try:
            if self._mode is None:
                return int(self.uc.msr_read(msr))
            self._msr.id, self._msr.value = msr, 0
            self._msr_call(self._c_read)
            return int(self._msr.value)
        finally:
            if restore is not None:
                restore()

    def msr_write(self, msr: int, value: int) -> None:
        restore = None if self.intercepts is None else self.intercepts.suspend(MSR)
        try:
            if self._mode is None:
                self.uc.msr_write(msr, value)
                return
            self._msr.id, self._msr.value = msr, value & _MASKS[8]
            self._msr_call(self._c_write)
        finally:
            if restore is not None:
                restore()

    def _msr_call(self, function: Callable[..., int]) -> None:
        field = self._mode
        assert field is not None
        saved = field.value
        field.value = uc_mod.UC_MODE_64
        status = function(self._uch, X.UC_X86_REG_MSR, self._msr_ref)
        field.value = saved
        if status:
            raise uc_mod.UcError(status, X.UC_X86_REG_MSR)


_SEGMENT_REGISTERS = (frozenset(getattr(X, f"UC_X86_REG_{name}") for name in ("CS", "DS", "ES", "SS", "FS", "GS"))
                      if X is not None else frozenset())
