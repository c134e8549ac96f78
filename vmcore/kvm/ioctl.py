"""KVM ioctl numbers and constants, computed the way <asm-generic/ioctl.h> does.

Every request number is built from _IOC() and the ctypes size of its argument,
so a wrong struct shows up as a wrong number in tests/kvm/test_abi.py rather
than as a silent EINVAL at run time.
"""

from __future__ import annotations

import ctypes

from vmcore.kvm import structs as _s

# --- <asm-generic/ioctl.h> (x86 uses the generic layout) ---

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

# Direction is seen from user space: WRITE = user writes, kernel reads.
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, magic: int, nr: int, size: int) -> int:
    """Pack an ioctl request number (the C macro's 'type' argument is ``magic`` here).

    Rejects values that would spill into a neighbouring bit field.
    """
    for name, value, bits in (
        ("direction", direction, _IOC_DIRBITS),
        ("type", magic, _IOC_TYPEBITS),
        ("nr", nr, _IOC_NRBITS),
        ("size", size, _IOC_SIZEBITS),
    ):
        if not 0 <= value < (1 << bits):
            raise ValueError(f"ioctl {name} {value:#x} does not fit in {bits} bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (magic << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


# The argument types are ctypes classes; only their sizeof() enters the number.
_CType = type[ctypes.Structure] | type[ctypes.Union] | type[ctypes.Array] | type[ctypes._SimpleCData]


def IO(magic: int, nr: int) -> int:
    return _IOC(_IOC_NONE, magic, nr, 0)


def IOR(magic: int, nr: int, ctype: _CType) -> int:
    return _IOC(_IOC_READ, magic, nr, ctypes.sizeof(ctype))


def IOW(magic: int, nr: int, ctype: _CType) -> int:
    return _IOC(_IOC_WRITE, magic, nr, ctypes.sizeof(ctype))


def IOWR(magic: int, nr: int, ctype: _CType) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, magic, nr, ctypes.sizeof(ctype))


# --- <linux/kvm.h> ---

KVM_API_VERSION = 12
KVMIO = 0xAE

# System ioctls (on the /dev/kvm fd).
KVM_GET_API_VERSION = IO(KVMIO, 0x00)
KVM_CREATE_VM = IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = IOWR(KVMIO, 0x05, _s.kvm_cpuid2)

# VM ioctls.
KVM_CREATE_VCPU = IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = IOW(KVMIO, 0x46, _s.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = IOW(KVMIO, 0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = IO(KVMIO, 0x60)
KVM_IRQ_LINE = IOW(KVMIO, 0x61, _s.kvm_irq_level)
KVM_REGISTER_COALESCED_MMIO = IOW(KVMIO, 0x67, _s.kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = IOW(KVMIO, 0x68, _s.kvm_coalesced_mmio_zone)
KVM_CREATE_PIT2 = IOW(KVMIO, 0x77, _s.kvm_pit_config)
KVM_GET_IRQCHIP = IOWR(KVMIO, 0x62, _s.kvm_irqchip)
KVM_SET_IRQCHIP = IOR(KVMIO, 0x63, _s.kvm_irqchip)  # _IOR in <linux/kvm.h>, though it sets
KVM_GET_PIT2 = IOR(KVMIO, 0x9F, _s.kvm_pit_state2)
KVM_SET_PIT2 = IOW(KVMIO, 0xA0, _s.kvm_pit_state2)
KVM_SET_CLOCK = IOW(KVMIO, 0x7B, _s.kvm_clock_data)
KVM_GET_CLOCK = IOR(KVMIO, 0x7C, _s.kvm_clock_data)
KVM_IOEVENTFD = IOW(KVMIO, 0x79, _s.kvm_ioeventfd)
KVM_ENABLE_CAP = IOW(KVMIO, 0xA3, _s.kvm_enable_cap)
KVM_X86_SET_MSR_FILTER = IOW(KVMIO, 0xC6, _s.kvm_msr_filter)

# vcpu ioctls.
KVM_RUN = IO(KVMIO, 0x80)
KVM_GET_REGS = IOR(KVMIO, 0x81, _s.kvm_regs)
KVM_SET_REGS = IOW(KVMIO, 0x82, _s.kvm_regs)
KVM_GET_SREGS = IOR(KVMIO, 0x83, _s.kvm_sregs)
KVM_SET_SREGS = IOW(KVMIO, 0x84, _s.kvm_sregs)
KVM_INTERRUPT = IOW(KVMIO, 0x86, _s.kvm_interrupt)
KVM_NMI = IO(KVMIO, 0x9A)
KVM_GET_FPU = IOR(KVMIO, 0x8C, _s.kvm_fpu)
KVM_SET_FPU = IOW(KVMIO, 0x8D, _s.kvm_fpu)
KVM_GET_LAPIC = IOR(KVMIO, 0x8E, _s.kvm_lapic_state)
KVM_SET_LAPIC = IOW(KVMIO, 0x8F, _s.kvm_lapic_state)
KVM_GET_XSAVE = IOR(KVMIO, 0xA4, _s.kvm_xsave)
KVM_SET_XSAVE = IOW(KVMIO, 0xA5, _s.kvm_xsave)
KVM_GET_DEBUGREGS = IOR(KVMIO, 0xA1, _s.kvm_debugregs)
KVM_SET_DEBUGREGS = IOW(KVMIO, 0xA2, _s.kvm_debugregs)
KVM_GET_XCRS = IOR(KVMIO, 0xA6, _s.kvm_xcrs)
KVM_SET_XCRS = IOW(KVMIO, 0xA7, _s.kvm_xcrs)
KVM_SET_CPUID2 = IOW(KVMIO, 0x90, _s.kvm_cpuid2)
KVM_GET_MSRS = IOWR(KVMIO, 0x88, _s.kvm_msrs)
KVM_SET_MSRS = IOW(KVMIO, 0x89, _s.kvm_msrs)
KVM_GET_VCPU_EVENTS = IOR(KVMIO, 0x9F, _s.kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = IOW(KVMIO, 0xA0, _s.kvm_vcpu_events)
KVM_GET_TSC_KHZ = IO(KVMIO, 0xA3)
KVM_SET_GUEST_DEBUG = IOW(KVMIO, 0x9B, _s.kvm_guest_debug)

# Names for error messages; only the ioctls above.
IOCTL_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("KVM_") and name not in ("KVM_API_VERSION",)
}

# --- kvm_guest_debug.control (KVM_SET_GUEST_DEBUG) ---

KVM_GUESTDBG_ENABLE = 0x1
KVM_GUESTDBG_SINGLESTEP = 0x2

# --- exit reasons (kvm_run.exit_reason) ---

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_S390_SIEIC = 13
KVM_EXIT_S390_RESET = 14
KVM_EXIT_DCR = 15
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_OSI = 18
KVM_EXIT_PAPR_HCALL = 19
KVM_EXIT_S390_UCONTROL = 20
KVM_EXIT_WATCHDOG = 21
KVM_EXIT_S390_TSCH = 22
KVM_EXIT_EPR = 23
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_S390_STSI = 25
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_HYPERV = 27
KVM_EXIT_ARM_NISV = 28
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_DIRTY_RING_FULL = 31
KVM_EXIT_AP_RESET_HOLD = 32
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_XEN = 34
KVM_EXIT_RISCV_SBI = 35
KVM_EXIT_RISCV_CSR = 36
KVM_EXIT_NOTIFY = 37

EXIT_REASON_NAMES: dict[int, str] = {
    KVM_EXIT_UNKNOWN: "unknown",
    KVM_EXIT_EXCEPTION: "exception",
    KVM_EXIT_IO: "io",
    KVM_EXIT_HYPERCALL: "hypercall",
    KVM_EXIT_DEBUG: "debug",
    KVM_EXIT_HLT: "hlt",
    KVM_EXIT_MMIO: "mmio",
    KVM_EXIT_IRQ_WINDOW_OPEN: "irq_window_open",
    KVM_EXIT_SHUTDOWN: "shutdown",
    KVM_EXIT_FAIL_ENTRY: "fail_entry",
    KVM_EXIT_INTR: "intr",
    KVM_EXIT_SET_TPR: "set_tpr",
    KVM_EXIT_TPR_ACCESS: "tpr_access",
    KVM_EXIT_S390_SIEIC: "s390_sieic",
    KVM_EXIT_S390_RESET: "s390_reset",
    KVM_EXIT_DCR: "dcr",
    KVM_EXIT_NMI: "nmi",
    KVM_EXIT_INTERNAL_ERROR: "internal_error",
    KVM_EXIT_OSI: "osi",
    KVM_EXIT_PAPR_HCALL: "papr_hcall",
    KVM_EXIT_S390_UCONTROL: "s390_ucontrol",
    KVM_EXIT_WATCHDOG: "watchdog",
    KVM_EXIT_S390_TSCH: "s390_tsch",
    KVM_EXIT_EPR: "epr",
    KVM_EXIT_SYSTEM_EVENT: "system_event",
    KVM_EXIT_S390_STSI: "s390_stsi",
    KVM_EXIT_IOAPIC_EOI: "ioapic_eoi",
    KVM_EXIT_HYPERV: "hyperv",
    KVM_EXIT_ARM_NISV: "arm_nisv",
    KVM_EXIT_X86_RDMSR: "x86_rdmsr",
    KVM_EXIT_X86_WRMSR: "x86_wrmsr",
    KVM_EXIT_DIRTY_RING_FULL: "dirty_ring_full",
    KVM_EXIT_AP_RESET_HOLD: "ap_reset_hold",
    KVM_EXIT_X86_BUS_LOCK: "x86_bus_lock",
    KVM_EXIT_XEN: "xen",
    KVM_EXIT_RISCV_SBI: "riscv_sbi",
    KVM_EXIT_RISCV_CSR: "riscv_csr",
    KVM_EXIT_NOTIFY: "notify",
}

# kvm_run.io.direction
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.internal.suberror
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0

INTERNAL_ERROR_NAMES: dict[int, str] = {
    KVM_INTERNAL_ERROR_EMULATION: "emulation",
    KVM_INTERNAL_ERROR_SIMUL_EX: "simul_ex",
    KVM_INTERNAL_ERROR_DELIVERY_EV: "delivery_ev",
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected_exit_reason",
}

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6

SYSTEM_EVENT_NAMES: dict[int, str] = {
    KVM_SYSTEM_EVENT_SHUTDOWN: "shutdown",
    KVM_SYSTEM_EVENT_RESET: "reset",
    KVM_SYSTEM_EVENT_CRASH: "crash",
    KVM_SYSTEM_EVENT_WAKEUP: "wakeup",
    KVM_SYSTEM_EVENT_SUSPEND: "suspend",
    KVM_SYSTEM_EVENT_SEV_TERM: "sev_term",
}

# kvm_userspace_memory_region.flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# kvm_ioeventfd.flags
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2

# kvm_pit_config.flags
KVM_PIT_SPEAKER_DUMMY = 1

# <asm/kvm.h>: page of the vcpu mmap holding the coalesced MMIO ring on x86
# (page 1 is the port-IO data page).
KVM_COALESCED_MMIO_PAGE_OFFSET = 2

# --- capabilities (KVM_CHECK_EXTENSION argument) ---

KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_NOP_IO_DELAY = 12
KVM_CAP_MP_STATE = 14
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SYNC_MMU = 16
KVM_CAP_USER_NMI = 22
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_ONE_REG = 70
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_SYNC_REGS = 74
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_IOEVENTFD_NO_LENGTH = 100
KVM_CAP_CHECK_EXTENSION_VM = 105
KVM_CAP_MULTI_ADDRESS_SPACE = 118
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_X2APIC_API = 129
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_X86_DISABLE_EXITS = 143
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_EXIT_HYPERCALL = 201
KVM_CAP_SYSTEM_EVENT_DATA = 215

# Derived from the names above so a new KVM_CAP_* line cannot be forgotten here.
CAP_NAMES: dict[int, str] = {
    value: name[len("KVM_CAP_"):].lower()
    for name, value in list(globals().items())
    if name.startswith("KVM_CAP_")
}

# kvm_cpuid_entry2.flags: the entry applies to one ECX (``index``) only (the kernel's spelling).
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0

# KVM_CAP_X86_USER_SPACE_MSR: which failed or filtered rdmsr/wrmsr exit to userspace.
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
# kvm_msr_filter and its ranges.
KVM_MSR_FILTER_DEFAULT_ALLOW = 0
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
