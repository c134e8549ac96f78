"""The software CPU's engine: unicorn's C library, driven through ctypes.

vmcore runs unicorn (PyPI's package, or vmcore's build of its library in the package's place,
engine/unicorn) through the library's C API itself, not through the package's Python binding.
Importing the binding (its classes, every architecture's constants, importlib.resources to find
the library) took about 15 ms of each `vmcore run`, more than the engine's whole set-up, and
its callbacks and register access put Python frames of its own around every call. This module
is the part of a binding vmcore uses, with the same names (``Uc``, ``UcError``, the ``UC_*``
constants, ``X`` for the x86 ones, ``uclib`` for the library):

- the library is the package's (``<package>/lib/libunicorn.so.2``), or the one in the folder
  ``LIBUNICORN_PATH`` names, looked at first, as the package's own loader does; found without
  importing the package;
- the constants are the package's own generated files (``unicorn_const.py``, ``x86_const.py``),
  read as plain modules: the numbers are always the installed library's;
- a Python callback is called as the binding calls it (the engine first, the user data last),
  and what it raises is kept, the emulation stopped (the engine stops at the end of the block
  it is in, as with the binding) and the exception raised again when ``emu_start`` returns.

The library is loaded on the first use of ``uclib`` or ``Uc``; the constants alone load nothing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from types import ModuleType
from typing import Any, Callable, Iterator

LIBRARY = "libunicorn.so.2"


def _package_folder() -> str:
    spec = importlib.util.find_spec("unicorn")  # the package is located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("unicorn is not installed (pip install unicorn)")
    return list(spec.submodule_search_locations)[0]


def _constants(name: str) -> ModuleType:
    """One of the package's generated constant files, run as a module of its own."""
    path = os.path.join(_package_folder(), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{__name__}._{name}", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise ImportError(f"unicorn's {name}.py is missing from {os.path.dirname(path)}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_C = _constants("unicorn_const")
#: The x86 constants: registers (UC_X86_REG_*), instructions (UC_X86_INS_*).
X = _constants("x86_const")

__version__ = f"{_C.UC_VERSION_MAJOR}.{_C.UC_VERSION_MINOR}.{_C.UC_VERSION_PATCH}"
UC_ARCH_X86: int = _C.UC_ARCH_X86
UC_MODE_16: int = _C.UC_MODE_16
UC_MODE_32: int = _C.UC_MODE_32
UC_MODE_64: int = _C.UC_MODE_64
UC_ERR_OK: int = _C.UC_ERR_OK
UC_ERR_ARG: int = _C.UC_ERR_ARG
UC_ERR_INSN_INVALID: int = _C.UC_ERR_INSN_INVALID
UC_ERR_FETCH_UNMAPPED: int = _C.UC_ERR_FETCH_UNMAPPED
UC_ERR_FETCH_PROT: int = _C.UC_ERR_FETCH_PROT
UC_PROT_READ: int = _C.UC_PROT_READ
UC_PROT_WRITE: int = _C.UC_PROT_WRITE
UC_PROT_EXEC: int = _C.UC_PROT_EXEC
UC_PROT_ALL: int = _C.UC_PROT_ALL
UC_HOOK_INTR: int = _C.UC_HOOK_INTR
UC_HOOK_INSN: int = _C.UC_HOOK_INSN
UC_HOOK_CODE: int = _C.UC_HOOK_CODE
UC_HOOK_BLOCK: int = _C.UC_HOOK_BLOCK
UC_HOOK_INSN_INVALID: int = _C.UC_HOOK_INSN_INVALID
UC_HOOK_MEM_WRITE_PROT: int = _C.UC_HOOK_MEM_WRITE_PROT

_ENGINE = ctypes.c_void_p
_INT, _U32, _U64, _SIZE, _PTR = ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p


class _MemRegion(ctypes.Structure):
    _fields_ = [("begin", _U64), ("end", _U64), ("perms", _U32)]


#: The C prototypes of the calls vmcore makes (unicorn.h); uc_ctl and uc_hook_add take more,
#: variadic, arguments, passed as ctypes objects.
_PROTOTYPES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "uc_open": (_INT, (_U32, _U32, ctypes.POINTER(_ENGINE))),
    "uc_close": (_INT, (_ENGINE,)),
    "uc_strerror": (ctypes.c_char_p, (_INT,)),
    "uc_version": (_U32, (ctypes.POINTER(_INT), ctypes.POINTER(_INT))),
    "uc_errno": (_INT, (_ENGINE,)),
    "uc_free": (_INT, (_PTR,)),
    "uc_ctl": (_INT, (_ENGINE, _INT)),
    "uc_emu_start": (_INT, (_ENGINE, _U64, _U64, _U64, _SIZE)),
    "uc_emu_stop": (_INT, (_ENGINE,)),
    "uc_hook_add": (_INT, (_ENGINE, ctypes.POINTER(_SIZE), _INT, _PTR, _PTR, _U64, _U64)),
    "uc_hook_del": (_INT, (_ENGINE, _SIZE)),
    "uc_mem_map": (_INT, (_ENGINE, _U64, _U64, _U32)),
    "uc_mem_map_ptr": (_INT, (_ENGINE, _U64, _U64, _U32, _PTR)),
    "uc_mem_unmap": (_INT, (_ENGINE, _U64, _U64)),
    "uc_mem_protect": (_INT, (_ENGINE, _U64, _U64, _U32)),
    "uc_mem_read": (_INT, (_ENGINE, _U64, ctypes.POINTER(ctypes.c_char), _U64)),
    "uc_mem_write": (_INT, (_ENGINE, _U64, ctypes.POINTER(ctypes.c_char), _U64)),
    "uc_mem_regions": (_INT, (_ENGINE, ctypes.POINTER(ctypes.POINTER(_MemRegion)), ctypes.POINTER(_U32))),
    "uc_mmio_map": (_INT, (_ENGINE, _U64, _U64, _PTR, _PTR, _PTR, _PTR)),
    "uc_reg_read": (_INT, (_ENGINE, _INT, _PTR)),
    "uc_reg_write": (_INT, (_ENGINE, _INT, _PTR)),
}


def _load() -> ctypes.CDLL:
    """The library, where the package's loader looks first: LIBUNICORN_PATH's folder, then its own."""
    tried = []
    for folder in (os.environ.get("LIBUNICORN_PATH"), os.path.join(_package_folder(), "lib")):
        if not folder:
            continue
        path = os.path.join(folder, LIBRARY)
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            tried.append(f"{path}: {exc}")
            continue
        for name, (restype, argtypes) in _PROTOTYPES.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
        return lib
    raise ImportError("cannot load unicorn's library: " + "; ".join(tried))


_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """unicorn's C library with its prototypes set (loaded once)."""
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def __getattr__(name: str) -> Any:
    if name == "uclib":  # ``from vmcore.accel.engine import uclib``: the library, loaded now
        return library()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class UcError(Exception):
    """A call the engine refused: ``errno`` is its uc_err."""

    def __init__(self, errno: int, *args: Any) -> None:
        super().__init__(*args)
        self.errno = errno

    def __str__(self) -> str:
        return (library().uc_strerror(self.errno) or b"unknown error").decode("ascii", "replace")


# The callbacks' C signatures (unicorn.h): the engine first, the user data last.
_INTR = ctypes.CFUNCTYPE(None, _ENGINE, _U32, _PTR)
_CODE = ctypes.CFUNCTYPE(None, _ENGINE, _U64, _U32, _PTR)
_MEM = ctypes.CFUNCTYPE(ctypes.c_bool, _ENGINE, _INT, _U64, _INT, ctypes.c_int64, _PTR)
_INSN_INVALID = ctypes.CFUNCTYPE(ctypes.c_bool, _ENGINE, _PTR)
_IN = ctypes.CFUNCTYPE(_U32, _ENGINE, _U32, _INT, _PTR)
_OUT = ctypes.CFUNCTYPE(None, _ENGINE, _U32, _INT, _U32, _PTR)
_SYSCALL = ctypes.CFUNCTYPE(None, _ENGINE, _PTR)
_CPUID = ctypes.CFUNCTYPE(_U32, _ENGINE, _PTR)
_MMIO_READ = ctypes.CFUNCTYPE(_U64, _ENGINE, _U64, ctypes.c_uint, _PTR)
_MMIO_WRITE = ctypes.CFUNCTYPE(None, _ENGINE, _U64, ctypes.c_uint, _U64, _PTR)

#: A hook's C signature and how the Python callback is called: by hook type, and for
#: UC_HOOK_INSN by instruction.
_HOOKS: dict[int, Any] = {UC_HOOK_INTR: _INTR, UC_HOOK_CODE: _CODE, UC_HOOK_BLOCK: _CODE,
                          UC_HOOK_INSN_INVALID: _INSN_INVALID}
_INSN_HOOKS: dict[int, Any] = {X.UC_X86_INS_IN: _IN, X.UC_X86_INS_OUT: _OUT, X.UC_X86_INS_SYSCALL: _SYSCALL,
                               X.UC_X86_INS_SYSENTER: _SYSCALL, X.UC_X86_INS_CPUID: _CPUID}
_MEM_HOOKS = (_C.UC_HOOK_MEM_READ_UNMAPPED, _C.UC_HOOK_MEM_WRITE_UNMAPPED, _C.UC_HOOK_MEM_FETCH_UNMAPPED,
              _C.UC_HOOK_MEM_READ_PROT, _C.UC_HOOK_MEM_WRITE_PROT, _C.UC_HOOK_MEM_FETCH_PROT,
              _C.UC_HOOK_MEM_READ, _C.UC_HOOK_MEM_WRITE, _C.UC_HOOK_MEM_FETCH, _C.UC_HOOK_MEM_READ_AFTER)
_MEM_BITS = sum(_MEM_HOOKS)


class _MMR(ctypes.Structure):
    """uc_x86_mmr: GDTR, IDTR (selector and flags unused), LDTR, TR."""

    _fields_ = [("selector", ctypes.c_uint16), ("base", _U64), ("limit", _U32), ("flags", _U32)]


class MsrBuffer(ctypes.Structure):
    """uc_x86_msr: an MSR's index and value (UC_X86_REG_MSR)."""

    _fields_ = [("id", _U32), ("value", _U64)]


class _Float80(ctypes.Structure):
    """uc_x86_float80: an x87 register, as (mantissa, exponent)."""

    _fields_ = [("mantissa", _U64), ("exponent", ctypes.c_uint16)]


_MMRS = frozenset((X.UC_X86_REG_IDTR, X.UC_X86_REG_GDTR, X.UC_X86_REG_LDTR, X.UC_X86_REG_TR))
_FLOATS = range(X.UC_X86_REG_FP0, X.UC_X86_REG_FP7 + 1)
#: Vector registers by their width in 64-bit words.
_VECTORS = ((range(X.UC_X86_REG_XMM0, X.UC_X86_REG_XMM31 + 1), 2), (range(X.UC_X86_REG_YMM0, X.UC_X86_REG_YMM31 + 1), 4),
            (range(X.UC_X86_REG_ZMM0, X.UC_X86_REG_ZMM31 + 1), 8))


def is_scalar(register: int) -> bool:
    """Whether ``register`` is one integer of at most 64 bits (a GPR, RIP, flags, a CR or DR, a selector)."""
    return (register not in _MMRS and register not in _FLOATS and register != X.UC_X86_REG_MSR
            and not any(register in span for span, _ in _VECTORS))


def _words(register: int) -> int:
    return next((words for span, words in _VECTORS if register in span), 0)


class Uc:
    """One x86 engine (uc_open'd): the calls vmcore makes, as the package's ``Uc`` makes them."""

    def __init__(self, arch: int, mode: int) -> None:
        lib = library()
        self._lib = lib
        self._uch = _ENGINE()
        status = lib.uc_open(arch, mode, ctypes.byref(self._uch))
        if status != UC_ERR_OK:
            self._uch = None  # type: ignore[assignment]
            raise UcError(status)
        #: The ctypes callbacks C holds pointers to, by hook handle (or MMIO base).
        self._callbacks: dict[Any, Any] = {}
        self._hook_exception: BaseException | None = None

    def close(self) -> None:
        if self._uch:
            self._lib.uc_close(self._uch)
            self._uch = None  # type: ignore[assignment]

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the library may be gone
            pass

    def _check(self, status: int, *args: Any) -> None:
        if status != UC_ERR_OK:
            raise UcError(status, *args)

    # --- running ----------------------------------------------------------------------------

    def emu_start(self, begin: int, until: int, timeout: int = 0, count: int = 0) -> None:
        """Run from ``begin``; a refusal raises UcError, else what a callback raised meanwhile."""
        self._hook_exception = None
        self._check(self._lib.uc_emu_start(self._uch, begin, until, timeout, count))
        if self._hook_exception is not None:
            exc, self._hook_exception = self._hook_exception, None
            raise exc

    def emu_stop(self) -> None:
        self._check(self._lib.uc_emu_stop(self._uch))

    # --- registers --------------------------------------------------------------------------

    def reg_read(self, register: int, aux: Any = None) -> Any:
        """An integer; GDTR/IDTR/LDTR/TR as (selector, base, limit, flags); FP0-7 as (mantissa,
        exponent); MSR (``aux``: its index) as its value; XMM/YMM/ZMM as one integer."""
        words = _words(register)
        buffer: Any
        if register in _MMRS:
            buffer = _MMR()
        elif register in _FLOATS:
            buffer = _Float80()
        elif register == X.UC_X86_REG_MSR:
            buffer = MsrBuffer(id=aux)
        elif words:
            buffer = (_U64 * words)()
        else:
            buffer = _U64()
        self._check(self._lib.uc_reg_read(self._uch, register, ctypes.byref(buffer)), register)
        if register in _MMRS:
            return (buffer.selector, buffer.base, buffer.limit, buffer.flags)
        if register in _FLOATS:
            return (buffer.mantissa, buffer.exponent)
        if register == X.UC_X86_REG_MSR:
            return buffer.value
        if words:
            return sum(word << (64 * i) for i, word in enumerate(buffer))
        return buffer.value

    def reg_write(self, register: int, value: Any) -> None:
        words = _words(register)
        buffer: Any
        if register in _MMRS:
            buffer = _MMR(*value)
        elif register in _FLOATS:
            buffer = _Float80(*value)
        elif register == X.UC_X86_REG_MSR:
            buffer = MsrBuffer(*value)
        elif words:
            buffer = (_U64 * words)(*((value >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in range(words)))
        else:
            buffer = _U64(value & 0xFFFFFFFFFFFFFFFF)
        self._check(self._lib.uc_reg_write(self._uch, register, ctypes.byref(buffer)), register)

    def msr_read(self, msr: int) -> int:
        return int(self.reg_read(X.UC_X86_REG_MSR, msr))

    def msr_write(self, msr: int, value: int) -> None:
        self.reg_write(X.UC_X86_REG_MSR, (msr, value))

    # --- memory -----------------------------------------------------------------------------

    def mem_map(self, address: int, size: int, perms: int = UC_PROT_ALL) -> None:
        self._check(self._lib.uc_mem_map(self._uch, address, size, perms))

    def mem_map_ptr(self, address: int, size: int, perms: int, ptr: int) -> None:
        self._check(self._lib.uc_mem_map_ptr(self._uch, address, size, perms, ptr))

    def mem_unmap(self, address: int, size: int) -> None:
        self._check(self._lib.uc_mem_unmap(self._uch, address, size))
        self._callbacks.pop(("mmio", address), None)

    def mem_protect(self, address: int, size: int, perms: int = UC_PROT_ALL) -> None:
        self._check(self._lib.uc_mem_protect(self._uch, address, size, perms))

    def mem_read(self, address: int, size: int) -> bytearray:
        data = ctypes.create_string_buffer(size)
        self._check(self._lib.uc_mem_read(self._uch, address, data, size), address, size)
        return bytearray(data)

    def mem_write(self, address: int, data: bytes) -> None:
        self._check(self._lib.uc_mem_write(self._uch, address, bytes(data), len(data)), address, len(data))

    def mem_regions(self) -> Iterator[tuple[int, int, int]]:
        """Every mapped range as (first, last, perms)."""
        regions = ctypes.POINTER(_MemRegion)()
        count = _U32()
        self._check(self._lib.uc_mem_regions(self._uch, ctypes.byref(regions), ctypes.byref(count)))
        try:
            for i in range(count.value):
                yield regions[i].begin, regions[i].end, regions[i].perms
        finally:
            self._lib.uc_free(regions)

    def mmio_map(self, address: int, size: int, read: Callable[..., int] | None, read_data: Any,
                 write: Callable[..., None] | None, write_data: Any) -> None:
        """``read(uc, offset, size, read_data)`` and ``write(uc, offset, size, value, write_data)``
        for [address, address + size); None: the accesses are dropped (reads give 0)."""
        functions = (None if read is None else _MMIO_READ(self._guard(read, read_data, 0)),
                     None if write is None else _MMIO_WRITE(self._guard(write, write_data, None)))
        self._check(self._lib.uc_mmio_map(self._uch, address, size, functions[0], None, functions[1], None))
        self._callbacks[("mmio", address)] = functions

    # --- hooks ------------------------------------------------------------------------------

    def _guard(self, callback: Callable[..., Any], user_data: Any, default: Any) -> Callable[..., Any]:
        """``callback(self, *args, user_data)``; what it raises is kept for emu_start, which stops."""

        def called(_engine: Any, *args: Any) -> Any:
            try:
                return callback(self, *args[:-1], user_data)
            except BaseException as exc:  # noqa: BLE001 - raised again when emu_start returns
                if self._hook_exception is None:
                    self._hook_exception = exc
                self._lib.uc_emu_stop(self._uch)
                return default

        return called

    def hook_add(self, kind: int, callback: Callable[..., Any], user_data: Any = None, begin: int = 1,
                 end: int = 0, aux1: int = 0, aux2: int = 0) -> int:
        """Hook ``kind`` events in [begin, end] (begin > end: everywhere); for UC_HOOK_INSN,
        ``aux1`` is the instruction. Returns the handle for :meth:`hook_del`."""
        extra: tuple[Any, ...] = ()
        if kind == UC_HOOK_INSN:
            signature = _INSN_HOOKS.get(aux1)
            extra = (_INT(aux1),)
        elif kind & _MEM_BITS and not kind & ~_MEM_BITS:  # one or more memory events
            signature = _MEM
        else:
            signature = _HOOKS.get(kind)
        if signature is None:
            raise UcError(UC_ERR_ARG)
        function = signature(self._guard(callback, user_data, 0 if signature in (_IN, _CPUID) else False
                                         if signature in (_MEM, _INSN_INVALID) else None))
        handle = _SIZE()
        self._check(self._lib.uc_hook_add(self._uch, ctypes.byref(handle), kind, function, None,
                                          _U64(begin), _U64(end), *extra))
        self._callbacks[handle.value] = function
        return handle.value

    def hook_del(self, handle: int) -> None:
        self._check(self._lib.uc_hook_del(self._uch, handle))
        self._callbacks.pop(handle, None)

    # --- controls (uc_ctl) ------------------------------------------------------------------

    def _ctl(self, control: int, io: int, *args: Any) -> None:
        code = (io << 30) | (len(args) << 26) | control
        self._check(self._lib.uc_ctl(self._uch, code, *args))

    def ctl_get_mode(self) -> int:
        mode = _INT()
        self._ctl(_C.UC_CTL_UC_MODE, _C.UC_CTL_IO_READ, ctypes.byref(mode))
        return mode.value

    def ctl_exits_enabled(self, enable: bool) -> None:
        self._ctl(_C.UC_CTL_UC_USE_EXITS, _C.UC_CTL_IO_WRITE, _INT(int(enable)))

    def ctl_set_exits(self, exits: list[int]) -> None:
        array = (_U64 * len(exits))(*exits)
        self._ctl(_C.UC_CTL_UC_EXITS, _C.UC_CTL_IO_WRITE, ctypes.cast(array, _PTR), _SIZE(len(exits)))

    def ctl_remove_cache(self, begin: int, end: int) -> None:
        self._ctl(_C.UC_CTL_TB_REMOVE_CACHE, _C.UC_CTL_IO_WRITE, _U64(begin), _U64(end))

    def ctl_flush_tb(self) -> None:
        self._ctl(_C.UC_CTL_TB_FLUSH, _C.UC_CTL_IO_WRITE)
