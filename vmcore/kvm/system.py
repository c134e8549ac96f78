"""File-descriptor owners for the three levels of the KVM API: system, VM, vcpu.

Only this module calls ioctl(). Each failed ioctl becomes a KvmError naming the
request and the errno text; "KVM cannot be used here at all" is KvmUnavailable,
whose message is one line telling the user what to do.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import mmap
import os
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

from vmcore.kvm import ioctl as _k
from vmcore.kvm import structs as _s

__all__ = ["KvmError", "KvmUnavailable", "Kvm", "Vm", "Vcpu"]

DEFAULT_PATH = "/dev/kvm"
#: Environment variable that points vmcore at another KVM device node (or at a
#: missing one, to try a host without KVM).
PATH_VARIABLE = "VMCORE_KVM_PATH"


def default_path() -> str:
    """``$VMCORE_KVM_PATH`` when set, else /dev/kvm."""
    return os.environ.get(PATH_VARIABLE) or DEFAULT_PATH


class KvmError(Exception):
    """A KVM request failed; ``errno`` is set when the kernel returned one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @classmethod
    def from_oserror(cls, what: str, exc: OSError) -> KvmError:
        text = os.strerror(exc.errno) if exc.errno else str(exc)
        return cls(f"{what} failed: {text}", exc.errno)


class KvmUnavailable(KvmError):
    """KVM cannot be used on this host; str() is a single actionable line."""


def _ioctl_name(request: int) -> str:
    return _k.IOCTL_NAMES.get(request, f"ioctl {request:#x}")


def _call(fd: int, request: int, arg: int | ctypes.Structure | ctypes._SimpleCData = 0) -> int:
    """ioctl() with errors turned into KvmError. Not for KVM_RUN (see Vcpu.run)."""
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        # mutate_flag=True: what the kernel writes is copied back into the struct.
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as exc:
        raise KvmError.from_oserror(_ioctl_name(request), exc) from None


@functools.cache
def _libc_ioctl() -> Callable[[int, int, int], int]:
    # fcntl.ioctl() parses an integer argument as a C int, so it cannot pass an
    # unsigned long above 2**31 (e.g. the customary TSS address 0xfffbd000).
    libc = ctypes.CDLL(None, use_errno=True)
    func = libc.ioctl
    func.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    func.restype = ctypes.c_int
    return func


_S = TypeVar("_S", bound=ctypes.Structure)


def _read(fd: int, request: int, kind: type[_S]) -> _S:
    """A fresh ``kind`` filled in by the KVM_GET_* ioctl ``request``."""
    value = kind()
    _call(fd, request, value)
    return value


def _call_ulong(fd: int, request: int, value: int) -> int:
    """ioctl() whose argument is an unsigned long passed by value."""
    ret = _libc_ioctl()(fd, request, value)
    if ret < 0:
        err = ctypes.get_errno()
        raise KvmError(f"{_ioctl_name(request)} failed: {os.strerror(err)}", err)
    return ret


class Kvm:
    """The /dev/kvm system fd: capability queries and VM creation."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str = DEFAULT_PATH) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def unavailable(cls, path: str | None = None) -> str | None:
        """None when KVM opens here, else the one-line reason (a probe for tools and tests)."""
        try:
            cls.open(path).close()
        except KvmUnavailable as exc:
            return str(exc)
        return None

    @classmethod
    def open(
        cls,
        path: str | None = None,
        required_caps: Iterable[int] = (_k.KVM_CAP_USER_MEMORY,),
    ) -> Kvm:
        """Open and validate the KVM device; raises KvmUnavailable with the remedy.

        ``path`` defaults to :func:`default_path` (``$VMCORE_KVM_PATH`` or /dev/kvm).
        """
        path = path if path is not None else default_path()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"{path} does not exist: this host has no KVM (enable virtualization in "
                "the firmware / load kvm_intel or kvm_amd), or use the software CPU"
            ) from None
        except PermissionError:
            raise KvmUnavailable(
                f"permission denied opening {path}: add your user to the 'kvm' group "
                "(then log in again) or run as root"
            ) from None
        except OSError as exc:
            raise KvmUnavailable(
                f"cannot open {path}: {os.strerror(exc.errno or 0)}; "
                "check that KVM is loaded, or use the software CPU"
            ) from None
        kvm = cls(fd, path)
        try:
            kvm._validate(required_caps)
        except BaseException:
            kvm.close()
            raise
        return kvm

    def _validate(self, required_caps: Iterable[int]) -> None:
        try:
            version = self.api_version
        except KvmError as exc:
            # e.g. /dev/null answers ENOTTY: the path is simply the wrong file.
            raise KvmUnavailable(
                f"{self.path} is not a KVM device ({exc}); point vmcore at /dev/kvm "
                "or use the software CPU"
            ) from None
        if version != _k.KVM_API_VERSION:
            raise KvmUnavailable(
                f"{self.path} speaks KVM API version {version}, vmcore needs "
                f"{_k.KVM_API_VERSION}: use a kernel with the stable KVM API"
            )
        for cap in required_caps:
            if self.check_extension(cap) <= 0:
                name = _k.CAP_NAMES.get(cap, str(cap)).upper()
                raise KvmUnavailable(
                    f"{self.path} lacks KVM_CAP_{name}, which vmcore requires: "
                    "use a newer kernel or the software CPU"
                )

    @property
    def api_version(self) -> int:
        return _call(self.fd, _k.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """0 if unsupported, else 1 or a cap-specific value (e.g. a count)."""
        return _call(self.fd, _k.KVM_CHECK_EXTENSION, cap)

    def capabilities(self) -> dict[str, int]:
        """Every capability vmcore names, by lower-case name, with its value."""
        return {name: self.check_extension(cap) for cap, name in _k.CAP_NAMES.items()}

    @property
    def vcpu_mmap_size(self) -> int:
        return _call(self.fd, _k.KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self, max_entries: int = 256) -> ctypes.Structure:
        """KVM_GET_SUPPORTED_CPUID as a cpuid2_type(n) instance; ``nent`` is filled in.

        Grows the buffer when the kernel says it is too small (E2BIG).
        """
        n = max_entries
        while True:
            cpuid = _s.cpuid2_type(n)()
            cpuid.nent = n
            try:
                fcntl.ioctl(self.fd, _k.KVM_GET_SUPPORTED_CPUID, cpuid, True)
                return cpuid
            except OSError as exc:
                if exc.errno != errno.E2BIG or n >= 1 << 14:
                    raise KvmError.from_oserror("KVM_GET_SUPPORTED_CPUID", exc) from None
            n *= 2

    def create_vm(self, machine_type: int = 0) -> Vm:
        vm_fd = _call(self.fd, _k.KVM_CREATE_VM, machine_type)
        return Vm(vm_fd, self)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Vm:
    """A VM fd: memory slots, in-kernel devices, vcpus."""

    __slots__ = ("fd", "kvm")

    def __init__(self, fd: int, kvm: Kvm) -> None:
        self.fd = fd
        # Kept for KVM_GET_VCPU_MMAP_SIZE, which only the system fd answers.
        self.kvm = kvm

    def check_extension(self, cap: int) -> int:
        """Per-VM answer (KVM_CAP_CHECK_EXTENSION_VM); may differ from the system one."""
        return _call(self.fd, _k.KVM_CHECK_EXTENSION, cap)

    def set_user_memory_region(
        self,
        slot: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int,
        flags: int = 0,
    ) -> None:
        """Map host memory at ``userspace_addr`` into the guest; size 0 deletes the slot."""
        region = _s.kvm_userspace_memory_region(
            slot=slot,
            flags=flags,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
        )
        _call(self.fd, _k.KVM_SET_USER_MEMORY_REGION, region)

    def create_vcpu(self, index: int = 0) -> Vcpu:
        vcpu_fd = _call(self.fd, _k.KVM_CREATE_VCPU, index)
        try:
            return Vcpu(vcpu_fd, index, self.kvm.vcpu_mmap_size)
        except BaseException:
            os.close(vcpu_fd)
            raise

    def set_tss_addr(self, addr: int) -> None:
        """Three pages of guest-physical space Intel VMX needs for real-mode emulation."""
        _call_ulong(self.fd, _k.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """One page for the EPT identity map used while the guest runs unpaged."""
        _call(self.fd, _k.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    def enable_cap(self, cap: int, *args: int) -> None:
        """KVM_ENABLE_CAP on the VM with up to four arguments."""
        request = _s.kvm_enable_cap(cap=cap)
        for i, value in enumerate(args):
            request.args[i] = value
        _call(self.fd, _k.KVM_ENABLE_CAP, request)

    def deny_msrs(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Send rdmsr/wrmsr of the MSRs in ``ranges`` ((first, count) each) to userspace
        (KVM_X86_SET_MSR_FILTER; every other MSR stays KVM's). Needs KVM_CAP_X86_USER_SPACE_MSR
        enabled with KVM_MSR_EXIT_REASON_FILTER."""
        if len(ranges) > _s.KVM_MSR_FILTER_MAX_RANGES:
            raise ValueError(f"at most {_s.KVM_MSR_FILTER_MAX_RANGES} ranges, got {len(ranges)}")
        request = _s.kvm_msr_filter(flags=_k.KVM_MSR_FILTER_DEFAULT_ALLOW)
        # All bits clear: every MSR of the range denied. KVM copies the bitmaps in the call.
        bitmaps = [(ctypes.c_uint8 * ((count + 7) // 8))() for _first, count in ranges]
        for i, (first, count) in enumerate(ranges):
            entry = request.ranges[i]
            entry.flags = _k.KVM_MSR_FILTER_READ | _k.KVM_MSR_FILTER_WRITE
            entry.nmsrs, entry.base = count, first
            entry.bitmap = ctypes.addressof(bitmaps[i])
        _call(self.fd, _k.KVM_X86_SET_MSR_FILTER, request)

    def create_irqchip(self) -> None:
        """In-kernel PIC pair, IOAPIC and local APICs (create before vcpus)."""
        _call(self.fd, _k.KVM_CREATE_IRQCHIP)

    def irq_line(self, irq: int, level: int) -> None:
        _call(self.fd, _k.KVM_IRQ_LINE, _s.kvm_irq_level(irq=irq, level=level))

    def create_pit2(self, flags: int = 0) -> None:
        _call(self.fd, _k.KVM_CREATE_PIT2, _s.kvm_pit_config(flags=flags))

    def get_irqchip(self, chip_id: int) -> _s.kvm_irqchip:
        """An in-kernel interrupt controller's state: 0 master PIC, 1 slave PIC, 2 IOAPIC."""
        chip = _s.kvm_irqchip(chip_id=chip_id)
        _call(self.fd, _k.KVM_GET_IRQCHIP, chip)
        return chip

    def set_irqchip(self, chip: _s.kvm_irqchip) -> None:
        _call(self.fd, _k.KVM_SET_IRQCHIP, chip)

    def get_pit2(self) -> _s.kvm_pit_state2:
        return _read(self.fd, _k.KVM_GET_PIT2, _s.kvm_pit_state2)

    def set_pit2(self, state: _s.kvm_pit_state2) -> None:
        _call(self.fd, _k.KVM_SET_PIT2, state)

    def get_clock(self) -> _s.kvm_clock_data:
        return _read(self.fd, _k.KVM_GET_CLOCK, _s.kvm_clock_data)

    def set_clock(self, clock_ns: int) -> None:
        """Set the VM's kvmclock to ``clock_ns`` (guests' kvmclock pages count on from there)."""
        _call(self.fd, _k.KVM_SET_CLOCK, _s.kvm_clock_data(clock=clock_ns))

    def register_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        """Let writes to the range queue in the ring instead of exiting one by one."""
        zone = _s.kvm_coalesced_mmio_zone(addr=addr, size=size, pio=int(pio))
        _call(self.fd, _k.KVM_REGISTER_COALESCED_MMIO, zone)

    def unregister_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        zone = _s.kvm_coalesced_mmio_zone(addr=addr, size=size, pio=int(pio))
        _call(self.fd, _k.KVM_UNREGISTER_COALESCED_MMIO, zone)

    def ioeventfd(
        self,
        fd: int,
        addr: int,
        length: int,
        *,
        pio: bool = False,
        datamatch: int | None = None,
        deassign: bool = False,
    ) -> None:
        """Signal eventfd ``fd`` on a guest write to ``addr`` instead of exiting."""
        flags = 0
        if pio:
            flags |= _k.KVM_IOEVENTFD_FLAG_PIO
        if datamatch is not None:
            flags |= _k.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= _k.KVM_IOEVENTFD_FLAG_DEASSIGN
        req = _s.kvm_ioeventfd(
            datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags
        )
        _call(self.fd, _k.KVM_IOEVENTFD, req)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Vm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Vcpu:
    """A vcpu fd and its shared kvm_run area.

    ``run_struct`` is a kvm_run view over ``mmap`` (no copies): read exit data
    from it after run(); port-IO data sits in ``mmap`` at ``run_struct.io.data_offset``.
    """

    __slots__ = ("fd", "index", "mmap", "run_struct", "_run")

    def __init__(self, fd: int, index: int, mmap_size: int) -> None:
        self.fd = fd
        self.index = index
        self.mmap = mmap.mmap(
            fd, mmap_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        self.run_struct = _s.kvm_run.from_buffer(self.mmap)
        # Bound once so the hot path is a single C call with no per-call allocation.
        # No argument: with one, fcntl.ioctl first tries (and fails) to parse it as a buffer,
        # which costs ~1.7 us per exit here.
        self._run = functools.partial(fcntl.ioctl, fd, _k.KVM_RUN)

    def run(self) -> None:
        """Enter the guest until the next exit; see ``run_struct.exit_reason``.

        A signal makes KVM_RUN fail with EINTR: that InterruptedError is passed
        through untouched so the caller decides whether to retry or stop.
        """
        try:
            self._run()
        except InterruptedError:
            raise
        except OSError as exc:
            raise KvmError.from_oserror("KVM_RUN", exc) from None

    def coalesced_mmio_ring(
        self, page_offset: int = _k.KVM_COALESCED_MMIO_PAGE_OFFSET
    ) -> ctypes.Structure:
        """View of the coalesced MMIO ring (``first``, ``last``, ``coalesced_mmio[]``)."""
        ring_type = _s.coalesced_mmio_ring_type(mmap.PAGESIZE)
        return ring_type.from_buffer(self.mmap, page_offset * mmap.PAGESIZE)

    def set_single_step(self, on: bool) -> None:
        """Single-step the guest (KVM_SET_GUEST_DEBUG): each KVM_RUN then ends in KVM_EXIT_DEBUG
        after one instruction (an I/O exit first where the instruction makes one)."""
        debug = _s.kvm_guest_debug(control=_k.KVM_GUESTDBG_ENABLE | _k.KVM_GUESTDBG_SINGLESTEP if on else 0)
        _call(self.fd, _k.KVM_SET_GUEST_DEBUG, debug)

    def get_regs(self) -> _s.kvm_regs:
        return _read(self.fd, _k.KVM_GET_REGS, _s.kvm_regs)

    def set_regs(self, regs: _s.kvm_regs) -> None:
        _call(self.fd, _k.KVM_SET_REGS, regs)

    def get_sregs(self) -> _s.kvm_sregs:
        return _read(self.fd, _k.KVM_GET_SREGS, _s.kvm_sregs)

    def set_sregs(self, sregs: _s.kvm_sregs) -> None:
        _call(self.fd, _k.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> _s.kvm_fpu:
        return _read(self.fd, _k.KVM_GET_FPU, _s.kvm_fpu)

    def set_fpu(self, fpu: _s.kvm_fpu) -> None:
        _call(self.fd, _k.KVM_SET_FPU, fpu)

    def get_lapic(self) -> _s.kvm_lapic_state:
        return _read(self.fd, _k.KVM_GET_LAPIC, _s.kvm_lapic_state)

    def set_lapic(self, state: _s.kvm_lapic_state) -> None:
        _call(self.fd, _k.KVM_SET_LAPIC, state)

    def get_debugregs(self) -> _s.kvm_debugregs:
        return _read(self.fd, _k.KVM_GET_DEBUGREGS, _s.kvm_debugregs)

    def set_debugregs(self, regs: _s.kvm_debugregs) -> None:
        _call(self.fd, _k.KVM_SET_DEBUGREGS, regs)

    def get_xcrs(self) -> _s.kvm_xcrs:
        return _read(self.fd, _k.KVM_GET_XCRS, _s.kvm_xcrs)

    def set_xcrs(self, xcrs: _s.kvm_xcrs) -> None:
        _call(self.fd, _k.KVM_SET_XCRS, xcrs)

    def get_xsave(self) -> _s.kvm_xsave:
        return _read(self.fd, _k.KVM_GET_XSAVE, _s.kvm_xsave)

    def set_xsave(self, xsave: _s.kvm_xsave) -> None:
        _call(self.fd, _k.KVM_SET_XSAVE, xsave)

    def get_msr(self, index: int) -> int:
        """The guest's MSR ``index`` (KVM_GET_MSRS of one entry)."""
        request = _s.msrs_type(1)(nmsrs=1)
        request.entries[0].index = index
        got = _call(self.fd, _k.KVM_GET_MSRS, request)
        if got != 1:
            raise KvmError(f"KVM_GET_MSRS: KVM did not return MSR {index:#x}")
        return int(request.entries[0].data)

    def set_msr(self, index: int, value: int) -> bool:
        """Set the guest's MSR ``index`` (KVM_SET_MSRS of one entry); False where KVM refused it."""
        request = _s.msrs_type(1)(nmsrs=1)
        request.entries[0].index = index
        request.entries[0].data = value
        return _call(self.fd, _k.KVM_SET_MSRS, request) == 1

    def get_vcpu_events(self) -> _s.kvm_vcpu_events:
        return _read(self.fd, _k.KVM_GET_VCPU_EVENTS, _s.kvm_vcpu_events)

    def set_vcpu_events(self, events: _s.kvm_vcpu_events) -> None:
        _call(self.fd, _k.KVM_SET_VCPU_EVENTS, events)

    def tsc_khz(self) -> int:
        """The guest's TSC rate in kHz (KVM_GET_TSC_KHZ)."""
        return _call(self.fd, _k.KVM_GET_TSC_KHZ)

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: queue external interrupt ``vector`` (no in-kernel irqchip only)."""
        _call(self.fd, _k.KVM_INTERRUPT, _s.kvm_interrupt(vector))

    def nmi(self) -> None:
        """KVM_NMI: queue an NMI (userspace local APIC only)."""
        _call(self.fd, _k.KVM_NMI)

    def set_cpuid2(self, cpuid: ctypes.Structure) -> None:
        """Set the guest CPUID table (a cpuid2_type(n) instance with ``nent`` set)."""
        _call(self.fd, _k.KVM_SET_CPUID2, cpuid)

    def close(self) -> None:
        if self.fd < 0:
            return
        # Drop our view first: mmap.close() refuses while exported buffers exist.
        del self.run_struct
        try:
            self.mmap.close()
        except BufferError:
            # A caller still holds a view (e.g. a saved run_struct); the mapping
            # is released with the last reference instead.
            pass
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Vcpu:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
