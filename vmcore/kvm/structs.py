"""ctypes mirrors of the x86_64 KVM structures in <linux/kvm.h> and <asm/kvm.h>.

Field names and class names match the C ones so that tests/kvm/test_abi.py can
compare every offset and size with what gcc computes from the real headers.
Anonymous C unions are modelled with ``_anonymous_`` so that ``run.io.port``
reads exactly like the C ``run->io.port``.
"""

from __future__ import annotations

import ctypes
import functools
from ctypes import (
    Structure,
    Union,
    c_char,
    c_int32,
    c_int64,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)

__all__ = [
    "kvm_regs",
    "kvm_segment",
    "kvm_dtable",
    "kvm_sregs",
    "kvm_fpu",
    "kvm_userspace_memory_region",
    "kvm_cpuid_entry2",
    "kvm_cpuid2",
    "cpuid2_type",
    "kvm_msr_entry",
    "kvm_msrs",
    "msrs_type",
    "kvm_irq_level",
    "kvm_interrupt",
    "kvm_pit_config",
    "kvm_irqchip",
    "kvm_lapic_state",
    "kvm_pit_channel_state",
    "kvm_pit_state2",
    "kvm_clock_data",
    "kvm_xsave",
    "kvm_debugregs",
    "kvm_xcr",
    "kvm_xcrs",
    "kvm_coalesced_mmio_zone",
    "kvm_coalesced_mmio",
    "kvm_coalesced_mmio_ring",
    "coalesced_mmio_ring_type",
    "kvm_ioeventfd",
    "kvm_enable_cap",
    "kvm_msr_filter_range",
    "kvm_msr_filter",
    "KVM_MSR_FILTER_MAX_RANGES",
    "kvm_vcpu_events",
    "kvm_debug_exit_arch",
    "kvm_guest_debug_arch",
    "kvm_guest_debug",
    "kvm_run",
    "KVM_NR_INTERRUPTS",
    "SYNC_REGS_SIZE_BYTES",
]

# <asm/kvm.h>: sizes the interrupt_bitmap in kvm_sregs.
KVM_NR_INTERRUPTS = 256
# <linux/kvm.h>: the arch sync-regs area in kvm_run is padded to this size.
SYNC_REGS_SIZE_BYTES = 2048


class kvm_regs(Structure):
    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]


class kvm_segment(Structure):
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(Structure):
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint16),
        ("padding", c_uint16 * 3),
    ]


class kvm_sregs(Structure):
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(Structure):
    # Laid out like the legacy FXSAVE area (x87 registers first, then XMM).
    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class kvm_xsave(Structure):
    """KVM_GET/SET_XSAVE: the vCPU's XSAVE area, 4 KiB: the legacy FXSAVE region (x87, MXCSR, XMM)
    first, the XSAVE header at 512 (XSTATE_BV: which components hold other than their initial
    state), then the extended components (AVX's upper halves...)."""

    _fields_ = [("region", c_uint32 * 1024)]


class kvm_debugregs(Structure):
    """KVM_GET/SET_DEBUGREGS: DR0-DR3, DR6 and DR7."""

    _fields_ = [("db", c_uint64 * 4), ("dr6", c_uint64), ("dr7", c_uint64), ("flags", c_uint64),
                ("reserved", c_uint64 * 9)]


class kvm_xcr(Structure):
    _fields_ = [("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64)]


class kvm_xcrs(Structure):
    """KVM_GET/SET_XCRS: the extended control registers (XCR0: which XSAVE components the OS uses)."""

    _fields_ = [("nr_xcrs", c_uint32), ("flags", c_uint32), ("xcrs", kvm_xcr * 16), ("padding", c_uint64 * 16)]


class kvm_userspace_memory_region(Structure):
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_cpuid_entry2(Structure):
    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


class kvm_cpuid2(Structure):
    # The C struct ends in a flexible array; sizeof() is the 8-byte header, which
    # is what the ioctl numbers encode. Use cpuid2_type(n) for a usable buffer.
    _fields_ = [
        ("nent", c_uint32),
        ("padding", c_uint32),
        ("entries", kvm_cpuid_entry2 * 0),
    ]


def _with_entries(header: type[Structure], n: int) -> type[Structure]:
    """``header`` (a C struct ending in a flexible array, declared with 0 entries) with room for ``n``."""
    if n < 0:
        raise ValueError(f"{header.__name__} entry count must be >= 0, got {n}")
    *fields, (name, empty) = header._fields_
    return type(f"{header.__name__}_{n}", (Structure,), {"_fields_": [*fields, (name, empty._type_ * n)]})


@functools.cache
def cpuid2_type(n: int) -> type[Structure]:
    """A kvm_cpuid2 layout with room for ``n`` entries (cached per ``n``)."""
    return _with_entries(kvm_cpuid2, n)


class kvm_msr_entry(Structure):
    _fields_ = [
        ("index", c_uint32),
        ("reserved", c_uint32),
        ("data", c_uint64),
    ]


class kvm_msrs(Structure):
    # A flexible array of kvm_msr_entry follows the 8-byte header (what the ioctl numbers
    # encode); msrs_type(n) has room for n.
    _fields_ = [
        ("nmsrs", c_uint32),
        ("pad", c_uint32),
        ("entries", kvm_msr_entry * 0),
    ]


@functools.cache
def msrs_type(n: int) -> type[Structure]:
    """A kvm_msrs layout with room for ``n`` entries (cached per ``n``)."""
    return _with_entries(kvm_msrs, n)


class _irq_or_status(Union):
    _fields_ = [("irq", c_uint32), ("status", c_int32)]


class kvm_interrupt(Structure):
    """KVM_INTERRUPT: inject an external interrupt vector (userspace interrupt controller only)."""

    _fields_ = [("irq", c_uint32)]


class kvm_irq_level(Structure):
    # KVM_IRQ_LINE reads .irq; KVM_IRQ_LINE_STATUS writes .status over it.
    _anonymous_ = ("_u",)
    _fields_ = [("_u", _irq_or_status), ("level", c_uint32)]


class kvm_pit_config(Structure):
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class kvm_irqchip(Structure):
    """KVM_GET/SET_IRQCHIP: one in-kernel interrupt controller's state (``chip_id`` 0: master PIC,
    1: slave PIC, 2: IOAPIC), kept whole as KVM lays it out (a snapshot saves the bytes)."""

    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", c_uint8 * 512)]


class kvm_lapic_state(Structure):
    """KVM_GET/SET_LAPIC: the in-kernel local APIC's register page (KVM_APIC_REG_SIZE bytes)."""

    _fields_ = [("regs", c_uint8 * 0x400)]


class kvm_pit_channel_state(Structure):
    _fields_ = [
        ("count", c_uint32),  # can be 65536
        ("latched_count", c_uint16),
        ("count_latched", c_uint8),
        ("status_latched", c_uint8),
        ("status", c_uint8),
        ("read_state", c_uint8),
        ("write_state", c_uint8),
        ("write_latch", c_uint8),
        ("rw_mode", c_uint8),
        ("mode", c_uint8),
        ("bcd", c_uint8),
        ("gate", c_uint8),
        ("count_load_time", c_int64),
    ]


class kvm_pit_state2(Structure):
    """KVM_GET/SET_PIT2: the in-kernel PIT's three channels (a set count counts from the set)."""

    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", c_uint32), ("reserved", c_uint32 * 9)]


class kvm_clock_data(Structure):
    """KVM_GET/SET_CLOCK: the VM's kvmclock (ns), which a guest's kvmclock pages count from."""

    _fields_ = [("clock", c_uint64), ("flags", c_uint32), ("pad0", c_uint32), ("realtime", c_uint64),
                ("host_tsc", c_uint64), ("pad", c_uint32 * 4)]


class _pad_or_pio(Union):
    _fields_ = [("pad", c_uint32), ("pio", c_uint32)]


class kvm_coalesced_mmio_zone(Structure):
    _anonymous_ = ("_u",)
    _fields_ = [("addr", c_uint64), ("size", c_uint32), ("_u", _pad_or_pio)]


class kvm_coalesced_mmio(Structure):
    """One entry of the coalesced MMIO/PIO ring shared through the vcpu mmap."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("phys_addr", c_uint64),
        ("len", c_uint32),
        ("_u", _pad_or_pio),
        ("data", c_uint8 * 8),
    ]


class kvm_coalesced_mmio_ring(Structure):
    # Header only (first/last indices); the entries follow it up to the end of
    # the page, see coalesced_mmio_ring_type().
    _fields_ = [
        ("first", c_uint32),
        ("last", c_uint32),
        ("coalesced_mmio", kvm_coalesced_mmio * 0),
    ]


@functools.cache
def coalesced_mmio_ring_type(page_size: int) -> type[Structure]:
    """The ring as the kernel sizes it: as many entries as fit in one page.

    Mirrors KVM_COALESCED_MMIO_MAX = (PAGE_SIZE - sizeof(ring)) / sizeof(entry).
    """
    header = ctypes.sizeof(kvm_coalesced_mmio_ring)
    return _with_entries(kvm_coalesced_mmio_ring, (page_size - header) // ctypes.sizeof(kvm_coalesced_mmio))


class kvm_ioeventfd(Structure):
    _fields_ = [
        ("datamatch", c_uint64),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("fd", c_int32),
        ("flags", c_uint32),
        ("pad", c_uint8 * 36),
    ]


class kvm_enable_cap(Structure):
    _fields_ = [
        ("cap", c_uint32),
        ("flags", c_uint32),
        ("args", c_uint64 * 4),
        ("pad", c_uint8 * 64),
    ]


#: <linux/kvm.h>: how many ranges one MSR filter holds.
KVM_MSR_FILTER_MAX_RANGES = 16


class kvm_msr_filter_range(Structure):
    _fields_ = [
        ("flags", c_uint32),
        ("nmsrs", c_uint32),  # bits in bitmap: one per MSR from base
        ("base", c_uint32),
        ("bitmap", c_void_p),  # a set bit allows the access, a clear one sends it to userspace
    ]


class kvm_msr_filter(Structure):
    _fields_ = [
        ("flags", c_uint32),
        ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES),
    ]


class kvm_guest_debug_arch(Structure):
    _fields_ = [("debugreg", c_uint64 * 8)]


class kvm_guest_debug(Structure):  # KVM_SET_GUEST_DEBUG: single-stepping for the monitor's step
    _fields_ = [
        ("control", c_uint32),
        ("pad", c_uint32),
        ("arch", kvm_guest_debug_arch),
    ]


class _vcpu_events_exception(Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("has_error_code", c_uint8), ("pending", c_uint8),
                ("error_code", c_uint32)]


class _vcpu_events_interrupt(Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class _vcpu_events_nmi(Structure):
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class _vcpu_events_smi(Structure):
    _fields_ = [("smm", c_uint8), ("pending", c_uint8), ("smm_inside_nmi", c_uint8), ("latched_init", c_uint8)]


class _vcpu_events_triple_fault(Structure):
    _fields_ = [("pending", c_uint8)]


class kvm_vcpu_events(Structure):
    """<asm/kvm.h>, KVM_GET/SET_VCPU_EVENTS: what is in flight besides the registers (an exception
    or interrupt being injected, the interrupt shadow, NMI masking, SMM)."""

    _fields_ = [
        ("exception", _vcpu_events_exception),
        ("interrupt", _vcpu_events_interrupt),
        ("nmi", _vcpu_events_nmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", _vcpu_events_smi),
        ("triple_fault", _vcpu_events_triple_fault),
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    ]


class kvm_debug_exit_arch(Structure):
    _fields_ = [
        ("exception", c_uint32),
        ("pad", c_uint32),
        ("pc", c_uint64),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
    ]


# --- the per-exit payloads of kvm_run (one member of its anonymous union each) ---


class _exit_hw(Structure):  # KVM_EXIT_UNKNOWN
    _fields_ = [("hardware_exit_reason", c_uint64)]


class _exit_fail_entry(Structure):  # KVM_EXIT_FAIL_ENTRY
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class _exit_ex(Structure):  # KVM_EXIT_EXCEPTION
    _fields_ = [("exception", c_uint32), ("error_code", c_uint32)]


class _exit_io(Structure):  # KVM_EXIT_IO; the data lives at run + data_offset
    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),
    ]


class _exit_debug(Structure):  # KVM_EXIT_DEBUG
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _exit_mmio(Structure):  # KVM_EXIT_MMIO
    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class _exit_hypercall(Structure):  # KVM_EXIT_HYPERCALL
    _fields_ = [
        ("nr", c_uint64),
        ("args", c_uint64 * 6),
        ("ret", c_uint64),
        ("longmode", c_uint32),
        ("pad", c_uint32),
    ]


class _exit_tpr_access(Structure):  # KVM_EXIT_TPR_ACCESS
    _fields_ = [("rip", c_uint64), ("is_write", c_uint32), ("pad", c_uint32)]


class _exit_internal(Structure):  # KVM_EXIT_INTERNAL_ERROR
    _fields_ = [
        ("suberror", c_uint32),
        ("ndata", c_uint32),
        ("data", c_uint64 * 16),
    ]


class _insn(Structure):
    _fields_ = [("insn_size", c_uint8), ("insn_bytes", c_uint8 * 15)]


class _insn_union(Union):
    _anonymous_ = ("_s",)
    _fields_ = [("_s", _insn)]


class _exit_emulation_failure(Structure):
    # Overlay of .internal for KVM_INTERNAL_ERROR_EMULATION; insn_* are valid only
    # when flags has KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES.
    _anonymous_ = ("_u",)
    _fields_ = [
        ("suberror", c_uint32),
        ("ndata", c_uint32),
        ("flags", c_uint64),
        ("_u", _insn_union),
    ]


class _flags_or_data(Union):
    _fields_ = [("flags", c_uint64), ("data", c_uint64 * 16)]


class _exit_system_event(Structure):  # KVM_EXIT_SYSTEM_EVENT
    # Since 5.18 the old 'flags' word is the first of ndata data words.
    _anonymous_ = ("_u",)
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("_u", _flags_or_data)]


class _exit_msr(Structure):  # KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR
    _fields_ = [
        ("error", c_uint8),
        ("pad", c_uint8 * 7),
        ("reason", c_uint32),
        ("index", c_uint32),
        ("data", c_uint64),
    ]


class _exit_notify(Structure):  # KVM_EXIT_NOTIFY
    _fields_ = [("flags", c_uint32)]


class _kvm_run_exit(Union):
    _fields_ = [
        ("hw", _exit_hw),
        ("fail_entry", _exit_fail_entry),
        ("ex", _exit_ex),
        ("io", _exit_io),
        ("debug", _exit_debug),
        ("mmio", _exit_mmio),
        ("hypercall", _exit_hypercall),
        ("tpr_access", _exit_tpr_access),
        ("internal", _exit_internal),
        ("emulation_failure", _exit_emulation_failure),
        ("system_event", _exit_system_event),
        ("msr", _exit_msr),
        ("notify", _exit_notify),
        # The kernel pads the union to 256 bytes so new exits keep the ABI.
        ("padding", c_char * 256),
    ]


class _kvm_run_s(Union):
    # Holds struct kvm_sync_regs when KVM_CAP_SYNC_REGS is used; only the size
    # matters to us, overlay kvm_regs/kvm_sregs at kvm_run.s.offset if needed.
    _fields_ = [("padding", c_char * SYNC_REGS_SIZE_BYTES)]


class kvm_run(Structure):
    """The per-vcpu area mmap()ed from the vcpu fd; shared with the kernel."""

    _anonymous_ = ("_exit",)
    _fields_ = [
        # in
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        # out
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        # in (before KVM_RUN) and out (after)
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("_exit", _kvm_run_exit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", _kvm_run_s),
    ]
