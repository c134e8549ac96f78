"""The _IOC encoding of <asm-generic/ioctl.h>, checked on values known from the kernel headers."""

from __future__ import annotations

import ctypes

import pytest

from vmcore.kvm import ioctl as K
from vmcore.kvm import structs as S


def test_io_has_no_direction_and_no_size() -> None:
    assert K.IO(0xAE, 0x80) == 0xAE80 == K.KVM_RUN
    assert K.IO(0xAE, 0x00) == K.KVM_GET_API_VERSION


def test_type_sits_in_bits_8_to_15_and_nr_in_bits_0_to_7() -> None:
    assert K._IOC(0, 0x12, 0x34, 0) == 0x1234


def test_size_sits_in_bits_16_to_29() -> None:
    assert K._IOC(0, 0, 0, 1) == 1 << 16
    assert K._IOC(0, 0, 0, (1 << 14) - 1) == ((1 << 14) - 1) << 16


def test_read_sets_bit_31_and_write_sets_bit_30() -> None:
    # Direction is from user space's view: _IOC_READ = the kernel writes to us.
    assert K.IOR(0xAE, 0, ctypes.c_uint8) == (2 << 30) | (1 << 16) | 0xAE00
    assert K.IOW(0xAE, 0, ctypes.c_uint8) == (1 << 30) | (1 << 16) | 0xAE00
    assert K.IOWR(0xAE, 0, ctypes.c_uint8) == (3 << 30) | (1 << 16) | 0xAE00


def test_size_comes_from_ctypes_sizeof() -> None:
    assert K.IOR(0xAE, 0x81, S.kvm_regs) == 0x8090AE81  # 144 = 0x90 bytes
    assert K.KVM_GET_REGS == 0x8090AE81
    assert K.KVM_SET_USER_MEMORY_REGION == 0x4020AE46  # 32-byte struct
    assert K.KVM_GET_SREGS == 0x8138AE83  # 312-byte struct
    assert K.KVM_SET_IDENTITY_MAP_ADDR == 0x4008AE48  # __u64


def test_flexible_array_struct_encodes_only_its_header() -> None:
    # sizeof(struct kvm_cpuid2) is 8: the entries[] array does not count.
    assert K.KVM_GET_SUPPORTED_CPUID == 0xC008AE05
    assert K.KVM_SET_CPUID2 == 0x4008AE90
    assert K.KVM_NMI == 0xAE9A  # linux/kvm.h: _IO(KVMIO, 0x9a)


@pytest.mark.parametrize(
    "args",
    [(4, 0, 0, 0), (0, 0x100, 0, 0), (0, 0, 0x100, 0), (0, 0, 0, 1 << 14), (0, -1, 0, 0)],
    ids=["dir", "type", "nr", "size", "negative"],
)
def test_out_of_range_fields_are_rejected(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        K._IOC(*args)


def test_every_ioctl_has_a_name_for_error_messages() -> None:
    assert K.IOCTL_NAMES[K.KVM_RUN] == "KVM_RUN"
    assert K.IOCTL_NAMES[K.KVM_SET_CPUID2] == "KVM_SET_CPUID2"
    assert "KVM_API_VERSION" not in K.IOCTL_NAMES.values()
    assert len(set(K.IOCTL_NAMES.values())) == len(K.IOCTL_NAMES)


def test_exit_reason_names_cover_every_exit_reason() -> None:
    codes = {
        value
        for name, value in vars(K).items()
        if name.startswith("KVM_EXIT_") and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
    }
    assert set(K.EXIT_REASON_NAMES) == codes
    assert K.EXIT_REASON_NAMES[K.KVM_EXIT_IO] == "io"
    assert K.EXIT_REASON_NAMES[K.KVM_EXIT_INTERNAL_ERROR] == "internal_error"


def test_suberror_and_system_event_names() -> None:
    assert K.INTERNAL_ERROR_NAMES[K.KVM_INTERNAL_ERROR_EMULATION] == "emulation"
    assert K.SYSTEM_EVENT_NAMES[K.KVM_SYSTEM_EVENT_SHUTDOWN] == "shutdown"
    assert K.SYSTEM_EVENT_NAMES[K.KVM_SYSTEM_EVENT_RESET] == "reset"
    assert K.SYSTEM_EVENT_NAMES[K.KVM_SYSTEM_EVENT_CRASH] == "crash"


def test_cap_names_are_derived_from_every_cap_constant() -> None:
    caps = {v for n, v in vars(K).items() if n.startswith("KVM_CAP_")}
    assert set(K.CAP_NAMES) == caps
    assert K.CAP_NAMES[K.KVM_CAP_USER_MEMORY] == "user_memory"
    assert K.CAP_NAMES[K.KVM_CAP_IRQCHIP] == "irqchip"
