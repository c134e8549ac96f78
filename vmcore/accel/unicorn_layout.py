"""Where unicorn keeps what its API does not show: stated by vmcore's engine build, else found
once per process by experiment.

The software CPU needs a few facts from inside the engine that unicorn 2 has no call
for: whether the guest's last instruction was a ``hlt`` (the CPU's halted flag), the
error code and kind of the exception its interrupt hook reports (the x86 state's
``error_code`` and ``exception_is_int``), and where a hook's address range is kept (to
widen one from another thread, see ``unicorn._Kicker``). Each is found on a scratch
engine by making it take known values and looking for the one place that holds them
all; a build where no single place fits gives None, and the caller falls back to what
it can do without (every probe here is tested, so a new unicorn that moves them fails
loudly in the test run rather than quietly here). vmcore's build of unicorn (engine/unicorn)
states the CPU's offsets itself (``vmcore_cpu_layout``), which spares each process the 40 ms
the experiments take; a test checks that they find the same.

Reads of memory the engine may not own go through ``/proc/self/mem``, which fails
cleanly where a plain read would crash the process.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from typing import Any, Callable

from ..immutable import Immutable

try:
    from . import engine as uc_mod
    from .engine import X
except ImportError:  # pragma: no cover - the accelerator says so
    uc_mod = None

_NO_END = (1 << 64) - 1
_MAGIC = tuple(0x5EED_0000_0000_0001 + 0x0101_0101 * i for i in range(4))  # rax, rcx, rdx, rbx


class CpuLayout(Immutable):
    """Offsets into the engine: its CPU object and the x86 state inside it."""

    #: Offset in the engine (uc_struct) of the pointer to its CPU object (X86CPU).
    cpu_pointer: int
    #: Offset in the CPU object of ``halted`` (a 32-bit flag hlt sets).
    halted: int
    #: Offset in the CPU object of the x86 state (CPUX86State, which starts with the registers).
    env: int
    #: Offset in the x86 state of ``error_code`` (int32); ``exception_is_int`` (int32) follows.
    error_code: int | None
    #: Offset in the x86 state of ``old_exception`` (int32): the exception in flight, -1 for none.
    old_exception: int | None
    #: Offset in the x86 state of ``hflags`` (uint32), whose bits 1:0 are the CPL.
    hflags: int | None
    #: Offset in the x86 state of ``features`` (uint64 per CPUID feature word, see EngineFeatures).
    features: int | None = None
    #: Where the x86 state keeps QEMU's SVM intercept controls (see vmcore.accel.intercepts).
    svm: SvmFields | None = None
    #: Offset in the x86 state of the segment caches (``segs``: ES, CS, SS, DS, FS, GS, 24 bytes
    #: each: selector u32, base u64 at +8, limit u32 at +16, flags u32 at +20, QEMU's layout).
    segments: int | None = None

    def cpu(self, uc: Any) -> int:
        """The address of ``uc``'s CPU object."""
        engine = ctypes.cast(uc._uch, ctypes.c_void_p).value
        return int(ctypes.c_uint64.from_address(engine + self.cpu_pointer).value)


def _read(address: int, length: int) -> bytes | None:
    """``length`` bytes at ``address`` of this process, or None where that is not readable memory."""
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, length, address)
    except (OSError, OverflowError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if len(data) == length else None


def _engine(code: bytes, mode: int) -> Any:
    uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, mode)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    uc.reg_write(X.UC_X86_REG_RSP if mode == uc_mod.UC_MODE_64 else X.UC_X86_REG_ESP, 0x8000)
    return uc


_GENERAL = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX) if uc_mod is not None else ()


def _find_cpu(uc: Any) -> tuple[int, int] | None:
    """(offset of the CPU pointer in the engine, offset of the registers in the CPU object).

    Several of the engine's pointers may lead to memory holding the registers (any heap
    pointer up to 64 KiB before them): only the pair that is the same on three engines
    is the CPU object's.
    """
    found: set[tuple[int, int]] | None = None
    for _ in range(3):
        here = set(_cpu_candidates(uc if found is None else _engine(b"\x90", uc_mod.UC_MODE_64)))
        found = here if found is None else found & here
    return found.pop() if found is not None and len(found) == 1 else None


def _cpu_candidates(uc: Any) -> list[tuple[int, int]]:
    """Every (engine offset of a pointer, offset from it) at which ``uc``'s live registers are.

    Live: they follow a second set of values written through the API (a stale copy
    elsewhere in the heap would not).
    """
    def load(values: tuple[int, ...]) -> bytes:
        for register, value in zip(_GENERAL, values):
            uc.reg_write(register, value)
        return struct.pack("<4Q", *values)

    pattern = load(_MAGIC)
    engine = ctypes.cast(uc._uch, ctypes.c_void_p).value
    head = _read(engine, 0x1000)
    if head is None:
        return []
    candidates = []
    for offset in range(0, len(head), 8):
        pointer = struct.unpack_from("<Q", head, offset)[0]
        if not 0x10000 <= pointer < 1 << 47:
            continue
        blob = _read(pointer, 0x10000)
        found = -1 if blob is None else blob.find(pattern)
        if found >= 0:
            candidates.append((offset, pointer, found))
    second = load(tuple(value ^ 0xFFFF_0000_FFFF_0000 for value in _MAGIC))
    return [(offset, found) for offset, pointer, found in candidates if _read(pointer + found, 32) == second]


def registers_match(uc: Any, layout: CpuLayout, read: Any) -> bool:
    """Whether ``layout`` shows ``uc``'s registers where it says (checked before a run relies on it).

    ``read(register)``: the 64-bit register's value (an engine made for 16 or 32-bit code
    refuses RAX through the plain API).
    """
    try:
        live = _read(layout.cpu(uc) + layout.env, 32)
        return live == struct.pack("<4Q", *(read(register) for register in _GENERAL))
    except Exception:  # noqa: BLE001
        return False


@functools.cache
def cpu_layout() -> CpuLayout | None:
    """The CPU object's layout (see CpuLayout): as vmcore's engine build states it, else found by
    experiment (about 40 ms, once per process); None where the experiments find no single answer."""
    if uc_mod is None:
        return None
    from .engine import uclib

    stated = stated_cpu_layout(uclib)
    if stated is not None:
        return stated
    try:
        return _probe_cpu_layout()
    except Exception:  # noqa: BLE001 - an engine that does not allow this: callers fall back
        return None


#: How many offsets ``vmcore_cpu_layout`` gives (engine/unicorn/patches/0003-cpu-layout.patch).
_STATED_FIELDS = 11


def stated_cpu_layout(lib: Any) -> CpuLayout | None:
    """The layout vmcore's engine build states (``vmcore_cpu_layout``: the fields' offsetof, in
    CpuLayout's order), or None in a stock unicorn."""
    function = getattr(lib, "vmcore_cpu_layout", None)
    if function is None:
        return None
    function.argtypes, function.restype = (ctypes.POINTER(ctypes.c_uint64), ctypes.c_int), ctypes.c_int
    values = (ctypes.c_uint64 * _STATED_FIELDS)()
    if function(values, _STATED_FIELDS) != _STATED_FIELDS:
        return None  # another revision of the patch: the experiments decide
    (cpu_pointer, halted, env, error_code, old_exception, hflags, features, vmcb, intercept, guest_flag,
     segments) = values
    svm = SvmFields(vmcb=vmcb, intercept=intercept, cr_read=intercept + 8, cr_write=intercept + 10,
                    guest_flag=guest_flag)
    return CpuLayout(cpu_pointer=cpu_pointer, halted=halted, env=env, error_code=error_code,
                     old_exception=old_exception, hflags=hflags, features=features, svm=svm, segments=segments)


def _probe_cpu_layout() -> CpuLayout | None:
    # halted: 1 after a run that ended in hlt, 0 after one ended by its instruction count.
    uc = _engine(bytes([0x90, 0x90, 0xF4, 0x90, 0x90, 0xF4]), uc_mod.UC_MODE_64)
    found = _find_cpu(uc)
    if found is None:
        return None
    cpu_pointer, env = found
    cpu = int(ctypes.c_uint64.from_address(ctypes.cast(uc._uch, ctypes.c_void_p).value + cpu_pointer).value)
    snapshots = []
    for begin, count in ((0x1000, 1), (0x1001, 10), (0x1003, 1), (0x1004, 10)):
        uc.emu_start(begin, _NO_END, count=count)
        snapshots.append(ctypes.string_at(cpu, env))
    halted = [i for i in range(0, env, 4)
              if [struct.unpack_from("<I", s, i)[0] for s in snapshots] == [0, 1, 0, 1]]
    if len(halted) != 1:
        return None
    error_code, old_exception = _probe_exception_fields(cpu_pointer, env)
    hflags = _probe_hflags(cpu_pointer, env)
    features = _probe_features(cpu_pointer, env)
    svm = None if hflags is None or features is None else _probe_svm(cpu_pointer, env, hflags, features)
    segments = None if hflags is None else _probe_segments(cpu_pointer, env, hflags + 8)
    return CpuLayout(cpu_pointer=cpu_pointer, halted=halted[0], env=env, error_code=error_code,
                     old_exception=old_exception, hflags=hflags, features=features, svm=svm, segments=segments)


_HF_PE, _HF_CS32, _HF_SS32, _HF_LMA, _HF_CS64 = 1 << 7, 1 << 4, 1 << 5, 1 << 14, 1 << 15


def _probe_hflags(cpu_pointer: int, env: int) -> int | None:
    """hflags, QEMU's summary of the CPU's mode: in a 64-bit engine PE, CS32, SS32, LMA and CS64
    are set and the CPL (bits 1:0) is 0; in a 32-bit one PE, CS32 and SS32 but neither LMA nor CS64."""
    values = []
    for mode in (uc_mod.UC_MODE_64, uc_mod.UC_MODE_32):
        uc = _engine(b"\x90", mode)
        cpu = int(ctypes.c_uint64.from_address(ctypes.cast(uc._uch, ctypes.c_void_p).value + cpu_pointer).value)
        values.append(ctypes.string_at(cpu + env, 0x400))
    long64, prot32 = values
    want64 = _HF_PE | _HF_CS32 | _HF_SS32 | _HF_LMA | _HF_CS64
    found = [i for i in range(0, 0x400, 4)
             if struct.unpack_from("<I", long64, i)[0] & (want64 | 3) == want64
             and struct.unpack_from("<I", prot32, i)[0] & (want64 | 3) == _HF_PE | _HF_CS32 | _HF_SS32]
    return found[0] if len(found) == 1 else None


def _probe_exception_fields(cpu_pointer: int, env: int) -> tuple[int | None, int | None]:
    """(error_code, old_exception) offsets in the x86 state.

    error_code holds a #GP's selector error code (twice, two selectors), with
    exception_is_int next to it: 0 then, 1 after ``int``. old_exception, the exception in
    flight, is 13 after each #GP and still -1 (none) after the ``int``.
    """
    window = 0x8000
    states = []
    # 64-bit code: nop; mov ax, selector; mov ds, ax (beyond the empty GDT: #GP(selector)); int 0x41
    for selector in (0x1234, 0x2348, None):
        if selector is None:
            code = bytes([0x90, 0xCD, 0x41, 0xF4])
        else:
            code = bytes([0x90, 0x66, 0xB8]) + struct.pack("<H", selector) + bytes([0x8E, 0xD8, 0xF4])
        uc = _engine(code, uc_mod.UC_MODE_64)
        cpu = int(ctypes.c_uint64.from_address(ctypes.cast(uc._uch, ctypes.c_void_p).value + cpu_pointer).value)
        seen: list[bytes] = []

        def on_intr(_uc: Any, _vector: int, _ud: Any, cpu: int = cpu, seen: list[bytes] = seen) -> None:
            seen.append(ctypes.string_at(cpu + env, window))
            _uc.emu_stop()

        uc.hook_add(uc_mod.UC_HOOK_INTR, on_intr)
        uc.emu_start(0x1000, _NO_END, count=10)
        if len(seen) != 1:
            return None, None
        states.append(seen[0])
    gp1, gp2, soft = states
    codes = [i for i in range(0, window - 8, 4)
             if struct.unpack_from("<ii", gp1, i) == (0x1234, 0)
             and struct.unpack_from("<ii", gp2, i) == (0x2348, 0)
             and struct.unpack_from("<i", soft, i + 4)[0] == 1]
    in_flight = [i for i in range(0, window - 4, 4)
                 if struct.unpack_from("<i", gp1, i)[0] == 13 and struct.unpack_from("<i", gp2, i)[0] == 13
                 and struct.unpack_from("<i", soft, i)[0] == -1]
    return (codes[0] if len(codes) == 1 else None), (in_flight[0] if len(in_flight) == 1 else None)


#: QEMU's feature words (FeatureWord order in target/i386/cpu.h) as (leaf, subleaf, register).
FEATURE_WORDS = ((1, 0, 3), (1, 0, 2), (7, 0, 1), (7, 0, 2), (7, 0, 3), None, (0x80000001, 0, 3),
                 (0x80000001, 0, 2))
_POPCNT = 1 << 23  # leaf 1 ECX


def _probe_features(cpu_pointer: int, env: int) -> int | None:
    """Where the x86 state keeps its CPUID feature words (``features[FEAT_1_EDX]`` first).

    Candidates hold the scratch engine's leaf 1 EDX, leaf 1 ECX (less OSXSAVE, which CPUID
    adds from CR4) and leaf 7 EBX as consecutive 64-bit words; the one is where clearing
    POPCNT makes a fresh engine's ``popcnt`` an invalid instruction, as QEMU's translator
    checks the words.
    """
    cpuid = dict(_ask_cpuid(((1, 0), (7, 0))))
    if len(cpuid) != 2:
        return None
    words = struct.pack("<3Q", cpuid[(1, 0)][3], cpuid[(1, 0)][2] & ~(1 << 27), cpuid[(7, 0)][1])
    window = 0x20000
    uc = _engine(b"\x90", uc_mod.UC_MODE_64)
    state = _read(_cpu_of(uc, cpu_pointer) + env, window)
    if state is None or not cpuid[(1, 0)][2] & _POPCNT:
        return None
    for offset in range(0, window - len(words), 8):
        if state[offset:offset + len(words)] != words:
            continue
        # The first place that holds them, in the probe engine's state too (read safely first:
        # a later match may lie past the x86 state, in memory a write must not touch).
        probe = _engine(bytes.fromhex("f3480fb8c1f4"), uc_mod.UC_MODE_64)  # popcnt rax, rcx; hlt
        address = _cpu_of(probe, cpu_pointer) + env + offset
        if _read(address, len(words)) != words:
            return None
        word = ctypes.c_uint64.from_address(address + 8)
        word.value &= ~_POPCNT
        try:
            probe.emu_start(0x1000, _NO_END, count=2)
        except uc_mod.UcError as exc:
            return offset if exc.errno == uc_mod.UC_ERR_INSN_INVALID else None
        return None
    return None


class SegmentCache(ctypes.Structure):
    """One of the engine's segment descriptor caches (QEMU's SegmentCache): what the CPU loaded."""

    _fields_ = [("selector", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("base", ctypes.c_uint64),
                ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


SEGMENT_CACHE_SIZE = ctypes.sizeof(SegmentCache)
assert SEGMENT_CACHE_SIZE == 24


def _probe_segments(cpu_pointer: int, env: int, candidate: int) -> int | None:
    """``candidate`` if the segment caches start there: in real mode, CS and SS loaded with two
    selectors must show them and their bases (selector * 16) in slots 1 and 2 (QEMU keeps the
    caches right after hflags and hflags2)."""
    uc = _engine(b"\x90", uc_mod.UC_MODE_32)
    uc.reg_write(X.UC_X86_REG_CR0, 0x10)  # real mode
    uc.reg_write(X.UC_X86_REG_CS, 0x1234)
    uc.reg_write(X.UC_X86_REG_SS, 0x2345)
    state = _cpu_of(uc, cpu_pointer) + env
    for slot, selector in ((1, 0x1234), (2, 0x2345)):
        at = state + candidate + SEGMENT_CACHE_SIZE * slot
        if ctypes.c_uint32.from_address(at).value != selector \
                or ctypes.c_uint64.from_address(at + 8).value != selector << 4:
            return None
    return candidate


class SvmFields(Immutable):
    """Offsets in the x86 state of the SVM intercept controls QEMU's TCG checks in guest mode."""

    #: ``vm_vmcb`` (uint64): the guest-physical address of the VMCB (its MSR permission map pointer).
    vmcb: int
    #: ``intercept`` (uint64): bit n intercepts exit code 0x60 + n (IRET, MSR, ...).
    intercept: int
    #: ``intercept_cr_read`` and ``intercept_cr_write`` (uint16 each): bit n for CRn.
    cr_read: int
    cr_write: int
    #: The hflags bit that says the CPU runs as an SVM guest (QEMU's HF_GUEST_MASK).
    guest_flag: int


_VMCB_MAGIC = struct.pack("<HHHHIQ", 0xA1B2, 0xC3D4, 0xE5F6, 0x1728, 0x5A5A5A5A, 0x1122_3344_5566_7788)
_SVM_EXIT_HLT = 0x78
_EXCP_VMEXIT = 0x100


def _probe_svm(cpu_pointer: int, env: int, hflags_offset: int, features: int) -> SvmFields | None:
    """Run a VMRUN on a scratch engine and find where it put the VMCB's intercept controls.

    The engine gets SVM (its feature word and EFER.SVME) for this experiment only. The VMCB
    asks for distinctive intercept values and a guest that is the current state (64-bit, flat),
    whose first instruction is a ``hlt`` the VMCB intercepts: the hlt must come back as
    exception EXCP_VMEXIT + SVM_EXIT_HLT, and the controls must each be found once.
    """
    vmcb = 0x1D_3000
    uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
    uc.mem_map(0, 0x20_0000)
    state = _cpu_of(uc, cpu_pointer) + env
    ctypes.c_uint64.from_address(state + features + 8 * 7).value |= 1 << 2  # 8000_0001 ECX: SVM
    efer = uc.msr_read(0xC0000080)
    uc.msr_write(0xC0000080, efer | 1 << 12)  # SVME
    save = bytearray(0xC00)
    for offset, selector, attrib in ((0x00, 0x10, 0xC93), (0x10, 0x08, 0xA9B), (0x20, 0x10, 0xC93), (0x30, 0x10, 0xC93)):
        struct.pack_into("<HHIQ", save, offset, selector, attrib, 0xFFFFFFFF, 0)  # es, cs (64-bit), ss, ds
    struct.pack_into("<Q", save, 0xD0, efer | 1 << 12)
    for offset, register in ((0x148, X.UC_X86_REG_CR4), (0x150, X.UC_X86_REG_CR3), (0x158, X.UC_X86_REG_CR0)):
        struct.pack_into("<Q", save, offset, uc.reg_read(register))
    struct.pack_into("<QQ", save, 0x170, 0x2, 0x2000)  # rflags, rip
    struct.pack_into("<Q", save, 0x1D8, 0x3000)  # rsp
    control = bytearray(_VMCB_MAGIC)
    control[12 + 3] |= 1 << ((_SVM_EXIT_HLT - 0x60) - 24)  # intercept hlt (bit 24 of the intercept word)
    uc.mem_write(vmcb, bytes(control))
    uc.mem_write(vmcb + 0x400, bytes(save))
    uc.mem_write(0x1000, bytes.fromhex("0f01d8f4"))  # vmrun; hlt (never reached)
    uc.mem_write(0x2000, bytes.fromhex("f4"))  # the guest: hlt
    uc.reg_write(X.UC_X86_REG_RAX, vmcb)
    hflags = ctypes.c_uint32.from_address(state + hflags_offset)
    before = hflags.value
    seen: list[int] = []

    def on_intr(engine: Any, number: int, _ud: Any) -> None:
        seen.append(number)
        engine.emu_stop()

    uc.hook_add(uc_mod.UC_HOOK_INTR, on_intr)
    uc.emu_start(0x1000, _NO_END, count=4)
    if seen != [_EXCP_VMEXIT + _SVM_EXIT_HLT]:
        return None
    new_bits = hflags.value & ~before
    if new_bits == 0 or new_bits & (new_bits - 1):
        return None  # one bit, HF_GUEST, must be the difference
    # The x86 state only (the SVM fields sit just before the feature words): a wider window
    # reads other allocations, where a 16-bit magic value turns up by chance.
    data = _read(state, features)
    if data is None:
        return None
    intercept = int.from_bytes(control[12:20], "little")

    def find(value: int) -> int | None:
        hits = [i for i in range(0, len(data) - 8, 8) if struct.unpack_from("<Q", data, i)[0] == value]
        return hits[0] if len(hits) == 1 else None

    vmcb_at, intercept_at = find(vmcb), find(intercept)
    if vmcb_at is None or intercept_at is None:
        return None
    # intercept_cr_read and intercept_cr_write follow the intercept word (QEMU's CPUX86State).
    if struct.unpack_from("<HH", data, intercept_at + 8) != (0xA1B2, 0xC3D4):
        return None
    return SvmFields(vmcb=vmcb_at, intercept=intercept_at, cr_read=intercept_at + 8, cr_write=intercept_at + 10,
                     guest_flag=new_bits)


def _cpu_of(uc: Any, cpu_pointer: int) -> int:
    return int(ctypes.c_uint64.from_address(ctypes.cast(uc._uch, ctypes.c_void_p).value + cpu_pointer).value)


def _ask_cpuid(leaves: tuple[tuple[int, int], ...]) -> list[tuple[tuple[int, int], tuple[int, ...]]]:
    uc = _engine(bytes([0x0F, 0xA2, 0xF4]), uc_mod.UC_MODE_64)
    answers = []
    for leaf, subleaf in leaves:
        uc.reg_write(X.UC_X86_REG_RAX, leaf)
        uc.reg_write(X.UC_X86_REG_RCX, subleaf)
        uc.emu_start(0x1000, _NO_END, count=2)
        answers.append(((leaf, subleaf), tuple(uc.reg_read(r) & 0xFFFFFFFF for r in (
            X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))))
    return answers


class EngineFeatures:
    """The engine's CPUID feature words, which its translator checks: an instruction of a
    feature whose bit is clear is an invalid opcode (#UD), as on a processor without it.

    The software CPU clears here what a CPU model leaves out (``-cx16``: cmpxchg16b is #UD).
    Bits are set only for features known to be implemented by the translator (see
    ``unicorn.ENGINE_EXTRA``): one it lacks would ask it for code it may not have.
    """

    def __init__(self, address: int) -> None:
        self._words = [None if leaf is None else ctypes.c_uint64.from_address(address + 8 * i)
                       for i, leaf in enumerate(FEATURE_WORDS)]

    @classmethod
    def of(cls, env: int, layout: CpuLayout) -> EngineFeatures | None:
        """The feature words of the engine whose x86 state is at ``env``, if the layout knows them."""
        return None if layout.features is None else cls(env + layout.features)

    def enable(self, bits: list[tuple[int, int, int, int]]) -> None:
        """Set feature bits, each (leaf, subleaf, register, bit), in the engine's words: for
        features its translator implements although its own CPU model lacks them."""
        for leaf, subleaf, register, bit in bits:
            where = (leaf, subleaf, register)
            if where in FEATURE_WORDS:
                word = self._words[FEATURE_WORDS.index(where)]
                if word is not None:
                    word.value |= 1 << bit

    def follow(self, table: dict[tuple[int, int], tuple[int, int, int, int]]) -> None:
        """Clear every feature bit ``table`` (the guest's CPUID) does not offer.

        The local APIC bit stays as the engine has it: the software CPU's APIC is a device
        model behind MMIO, whatever QEMU's own APIC code would make of the bit.
        """
        for word, where in zip(self._words, FEATURE_WORDS):
            if word is None or where is None:
                continue
            leaf, subleaf, register = where
            offered = table.get((leaf, subleaf), (0, 0, 0, 0))[register]
            keep = 1 << 9 if (leaf, register) == (1, 3) else 0  # APIC
            if (leaf, register) == (1, 2):
                keep |= 1 << 27  # OSXSAVE: from CR4, not a feature word
            word.value &= offered | keep


def pushf_clears_rf(lib: Any) -> bool:
    """Whether the engine's pushf stores EFLAGS with RF clear, as a processor does: vmcore's
    build (``vmcore_pushf_clears_rf``); a stock unicorn stores RF as it is."""
    return getattr(lib, "vmcore_pushf_clears_rf", None) is not None


def smsw_operand_size(lib: Any) -> bool:
    """Whether the engine's ``smsw`` into a 32- or 64-bit register stores CR0's bits at that size
    in every mode: vmcore's build (``vmcore_smsw_operand_size``); a stock unicorn stores 16 bits
    outside 64-bit mode."""
    return getattr(lib, "vmcore_smsw_operand_size", None) is not None


def engine_cr0_checks(lib: Any, uc: Any) -> Callable[[bool, int], None] | None:
    """How to have ``uc`` check and run ``mov`` to CR0 itself (vmcore's build,
    ``vmcore_set_cr0_checks``): ``checks(on, exit_mask)``, where a write that changes a bit of
    ``exit_mask`` still leaves emulation as the SVM CR0-write intercept. None on a stock unicorn,
    where vmcore intercepts every write to CR0 to raise its faults."""
    function = getattr(lib, "vmcore_set_cr0_checks", None)
    if function is None:
        return None
    function.argtypes, function.restype = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64), ctypes.c_int

    def checks(on: bool, exit_mask: int) -> None:
        function(uc._uch, int(on), exit_mask)

    return checks


def engine_real_mode_ints(lib: Any, uc: Any) -> bool:
    """Have the engine deliver real-mode software interrupts (``int n``, ``int3``, ``into``) through
    the IVT itself (vmcore's build, ``vmcore_set_native_ints``); False on a stock unicorn, which
    reports them to the interrupt hook for vmcore to deliver (vmcore.accel.idt)."""
    function = getattr(lib, "vmcore_set_native_ints", None)
    if function is None:
        return False
    function.argtypes, function.restype = (ctypes.c_void_p, ctypes.c_int), None
    function(uc._uch, 1)
    return True


class EngineCounter:
    """vmcore's build's instruction counting (0012-virtual-time): how many instructions the running
    ``emu_start`` with a count has run, moving its end while it runs, and a TSC made of them."""

    def __init__(self, lib: Any, uc: Any) -> None:
        self._uch = uc._uch
        self._count = lib.vmcore_insn_count
        self._count.argtypes, self._count.restype = (ctypes.c_void_p,), ctypes.c_uint64
        self._limit = lib.vmcore_set_insn_limit
        self._limit.argtypes, self._limit.restype = (ctypes.c_void_p, ctypes.c_uint64), None
        self._tsc = lib.vmcore_set_virtual_tsc
        self._tsc.argtypes, self._tsc.restype = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64), None

    @classmethod
    def of(cls, lib: Any, uc: Any) -> "EngineCounter | None":
        """The engine's counter, or None on an engine without it (the stock wheel)."""
        if getattr(lib, "vmcore_insn_count", None) is None:
            return None
        return cls(lib, uc)

    def count(self) -> int:
        """Instructions counted by this emu_start so far (one more than ran, once its count is spent)."""
        return self._count(self._uch)

    def set_limit(self, count: int) -> None:
        self._limit(self._uch, count)

    def virtual_tsc(self, base: int, per_instruction: int) -> None:
        """rdtsc gives ``base + count() * per_instruction`` (0: the host's TSC again)."""
        self._tsc(self._uch, base, per_instruction)


#: vmcore_set_fastcalls's modes: SYSCALL where Intel allows it (64-bit mode only) or AMD.
FASTCALLS_INTEL, FASTCALLS_AMD = 1, 2


def engine_fastcalls(lib: Any, uc: Any, amd: bool) -> bool:
    """Have the engine run SYSCALL and SYSENTER itself, as the SDM defines them (vmcore's build,
    ``vmcore_set_fastcalls``); False on a stock unicorn, which calls instruction hooks instead."""
    function = getattr(lib, "vmcore_set_fastcalls", None)
    if function is None:
        return False
    function.argtypes, function.restype = (ctypes.c_void_p, ctypes.c_int), ctypes.c_int
    return function(uc._uch, FASTCALLS_AMD if amd else FASTCALLS_INTEL) == 0


def engine_kick(lib: Any) -> tuple[Any, Any] | None:
    """``vmcore_kick`` and ``vmcore_unkick`` of vmcore's engine build (``engine/unicorn``): a stop
    where the next block starts, from any thread, at no cost per block. None in a stock unicorn."""
    try:
        kick, unkick = lib.vmcore_kick, lib.vmcore_unkick
    except AttributeError:
        return None
    kick.argtypes, kick.restype = (ctypes.c_void_p,), None
    unkick.argtypes, unkick.restype = (ctypes.c_void_p,), ctypes.c_int
    return kick, unkick


def engine_name() -> str:
    """Which engine the software CPU runs on: vmcore's build names itself (``vmcore_engine()``),
    else the stock unicorn and its version (for benchmark headers and reports)."""
    if uc_mod is None:
        return "no unicorn"
    try:
        from .engine import uclib
    except ImportError:
        return f"unicorn {uc_mod.__version__}"
    function = getattr(uclib, "vmcore_engine", None)
    if function is None:
        return f"unicorn {uc_mod.__version__} (stock)"
    function.restype = ctypes.c_char_p
    return str(function().decode())


def add_c_block_hook(lib: Any, uc: Any, function: Any, begin: int, end: int) -> int | None:
    """Register C ``function`` as a UC_HOOK_BLOCK callback over [begin, end]; its struct hook's address."""
    handle = ctypes.c_size_t()
    status = lib.uc_hook_add(uc._uch, ctypes.byref(handle), uc_mod.UC_HOOK_BLOCK,
                             ctypes.cast(function, ctypes.c_void_p), None, ctypes.c_uint64(begin), ctypes.c_uint64(end))
    return handle.value if status == uc_mod.UC_ERR_OK and handle.value else None


@functools.cache
def hook_bounds_offset() -> int | None:
    """Where unicorn's struct hook keeps a hook's begin bound (its end follows).

    A hook handle is the address of its struct hook. On a scratch engine, two hooks with
    distinct bounds must each show begin, end and the callback's address as consecutive
    8-byte fields at one offset within the first 128 bytes. None where no offset fits both.
    """
    if uc_mod is None:
        return None
    try:
        from .engine import uclib

        uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
        callback = ctypes.cast(uclib.uc_errno, ctypes.c_void_p).value
        candidates: set[int] | None = None
        for begin, end in ((0x1111_2222_3333_4444, 0x5555_6666_7777_8888),
                           (0x0123_4567_89AB_CDEF, 0x7EDC_BA98_7654_3210)):
            address = add_c_block_hook(uclib, uc, uclib.uc_errno, begin, end)
            if address is None:
                return None
            raw = ctypes.string_at(address, 128)
            here = {offset for offset in range(0, 128 - 24, 8)
                    if struct.unpack_from("<QQQ", raw, offset) == (begin, end, callback)}
            candidates = here if candidates is None else candidates & here
        return candidates.pop() if candidates is not None and len(candidates) == 1 else None
    except Exception:  # noqa: BLE001
        return None


#: How far into the x86 state (CPUX86State) XCR0 is looked for.
_XCR0_WINDOW = 0x10000


@functools.lru_cache(maxsize=None)
def xcr0_offset(cpu_pointer: int, env: int) -> int | None:
    """The offset of XCR0 (``xcr0``, u64) in the x86 state, which unicorn's API does not reach: the
    u64 that an ``xsetbv`` of 1, 3 and 1 again (three engines) leaves at 1, 3 and 1, found alone.
    None if the engine runs no xsetbv or the value is not found once."""
    # mov eax, value; xor edx, edx; xor ecx, ecx; xsetbv; xor eax, eax; hlt (EAX cleared: not a match)
    states = []
    for value in (1, 3, 1):
        code = b"\xb8" + struct.pack("<I", value) + b"\x31\xd2\x31\xc9\x0f\x01\xd1\x31\xc0\xf4"
        uc = _engine(code, uc_mod.UC_MODE_64)
        uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | 1 << 18)  # CR4.OSXSAVE
        try:
            uc.emu_start(0x1000, _NO_END, count=8)
        except uc_mod.UcError:
            return None  # no XSAVE in this engine's CPU
        cpu = int(ctypes.c_uint64.from_address(ctypes.cast(uc._uch, ctypes.c_void_p).value + cpu_pointer).value)
        state = _read(cpu + env, _XCR0_WINDOW)
        if state is None:
            return None
        states.append(state)
    found = [i for i in range(0, _XCR0_WINDOW, 8)
             if [struct.unpack_from("<Q", state, i)[0] for state in states] == [1, 3, 1]]
    return found[0] if len(found) == 1 else None
