"""Kvm / Vm / Vcpu: error messages without KVM, fd-level behaviour with a real /dev/kvm."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from vmcore.kvm import Kvm, KvmError, KvmUnavailable, ioctl as K, structs as S
from vmcore.kvm import system


def _one_line(message: str) -> bool:
    return "\n" not in message and message.strip() == message and message != ""


# --- no KVM needed: what the user is told when KVM cannot be used ---


def test_missing_device_says_no_kvm_and_names_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "kvm")
    with pytest.raises(KvmUnavailable) as info:
        Kvm.open(path)
    message = str(info.value)
    assert _one_line(message)
    assert path in message
    assert "does not exist" in message
    assert "software CPU" in message


def test_permission_denied_suggests_kvm_group_or_root(monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(path: str, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(system.os, "open", deny)
    with pytest.raises(KvmUnavailable) as info:
        Kvm.open("/dev/kvm")
    message = str(info.value)
    assert _one_line(message)
    assert "permission denied" in message
    assert "'kvm' group" in message and "root" in message


def test_a_file_that_is_not_kvm_is_reported_as_such() -> None:
    with pytest.raises(KvmUnavailable) as info:
        Kvm.open("/dev/null")
    message = str(info.value)
    assert _one_line(message)
    assert "/dev/null is not a KVM device" in message
    assert "KVM_GET_API_VERSION failed: Inappropriate ioctl for device" in message


def test_api_version_mismatch_names_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Kvm, "api_version", property(lambda self: 11))
    with pytest.raises(KvmUnavailable) as info:
        Kvm.open("/dev/null")
    message = str(info.value)
    assert _one_line(message)
    assert "version 11" in message and "needs 12" in message


def test_missing_required_capability_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Kvm, "api_version", property(lambda self: K.KVM_API_VERSION))
    monkeypatch.setattr(Kvm, "check_extension", lambda self, cap: 0)
    with pytest.raises(KvmUnavailable) as info:
        Kvm.open("/dev/null", required_caps=[K.KVM_CAP_READONLY_MEM])
    message = str(info.value)
    assert _one_line(message)
    assert "KVM_CAP_READONLY_MEM" in message


def test_open_closes_the_fd_when_validation_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[int] = []
    real_close = os.close
    monkeypatch.setattr(system.os, "close", lambda fd: (closed.append(fd), real_close(fd)))
    with pytest.raises(KvmUnavailable):
        Kvm.open("/dev/null")
    assert len(closed) == 1


def test_failed_ioctl_names_the_request_and_the_errno_text() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    with Kvm(fd, "/dev/null") as not_kvm:
        with pytest.raises(KvmError) as info:
            not_kvm.create_vm()
    assert str(info.value) == "KVM_CREATE_VM failed: Inappropriate ioctl for device"
    assert info.value.errno is not None


def test_kvm_unavailable_is_a_kvm_error() -> None:
    assert issubclass(KvmUnavailable, KvmError)


# --- with /dev/kvm ---


@pytest.mark.kvm
def test_api_version_is_12(kvm: Kvm) -> None:
    assert kvm.api_version == K.KVM_API_VERSION == 12


@pytest.mark.kvm
def test_capabilities_are_keyed_by_name_and_include_user_memory(kvm: Kvm) -> None:
    caps = kvm.capabilities()
    assert set(caps) == set(K.CAP_NAMES.values())
    assert caps["user_memory"] > 0
    assert kvm.check_extension(K.KVM_CAP_USER_MEMORY) == caps["user_memory"]


@pytest.mark.kvm
def test_vcpu_mmap_covers_kvm_run(kvm: Kvm) -> None:
    assert kvm.vcpu_mmap_size >= ctypes.sizeof(S.kvm_run)


@pytest.mark.kvm
def test_supported_cpuid_fills_nent(kvm: Kvm) -> None:
    cpuid = kvm.supported_cpuid()
    assert 0 < cpuid.nent <= len(cpuid.entries)
    leaves = {cpuid.entries[i].function for i in range(cpuid.nent)}
    assert 0 in leaves


@pytest.mark.kvm
def test_supported_cpuid_grows_a_too_small_buffer(kvm: Kvm) -> None:
    cpuid = kvm.supported_cpuid(max_entries=1)
    assert cpuid.nent > 1


@pytest.mark.kvm
def test_create_vm_and_vcpu_with_run_struct_over_the_mmap(kvm: Kvm) -> None:
    with kvm.create_vm() as vm, vm.create_vcpu(0) as vcpu:
        assert len(vcpu.mmap) == kvm.vcpu_mmap_size
        # A view, not a copy: the struct sits at the start of the mapping.
        base = ctypes.addressof(ctypes.c_char.from_buffer(vcpu.mmap))
        assert ctypes.addressof(vcpu.run_struct) == base


@pytest.mark.kvm
def test_regs_round_trip(kvm: Kvm) -> None:
    with kvm.create_vm() as vm, vm.create_vcpu() as vcpu:
        regs = vcpu.get_regs()
        regs.rax, regs.r15, regs.rip, regs.rflags = 0x1122334455667788, 42, 0x1000, 0x202
        vcpu.set_regs(regs)
        back = vcpu.get_regs()
        assert (back.rax, back.r15, back.rip, back.rflags) == (0x1122334455667788, 42, 0x1000, 0x202)


@pytest.mark.kvm
def test_sregs_start_at_the_reset_vector_and_round_trip(kvm: Kvm) -> None:
    with kvm.create_vm() as vm, vm.create_vcpu() as vcpu:
        sregs = vcpu.get_sregs()
        # Architectural reset state: CS.base 0xFFFF0000, selector 0xF000.
        assert (sregs.cs.base, sregs.cs.selector) == (0xFFFF0000, 0xF000)
        sregs.cs.base, sregs.cs.selector = 0, 0
        vcpu.set_sregs(sregs)
        back = vcpu.get_sregs()
        assert (back.cs.base, back.cs.selector) == (0, 0)


@pytest.mark.kvm
def test_fpu_round_trip(kvm: Kvm) -> None:
    with kvm.create_vm() as vm, vm.create_vcpu() as vcpu:
        fpu = vcpu.get_fpu()
        assert fpu.fcw == 0x37F  # FNINIT default control word
        fpu.xmm[3][0] = 0x5A
        vcpu.set_fpu(fpu)
        assert vcpu.get_fpu().xmm[3][0] == 0x5A


@pytest.mark.kvm
def test_set_cpuid2_accepts_the_supported_table(kvm: Kvm) -> None:
    with kvm.create_vm() as vm, vm.create_vcpu() as vcpu:
        vcpu.set_cpuid2(kvm.supported_cpuid())


@pytest.mark.kvm
def test_memory_region_error_names_the_ioctl(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        with pytest.raises(KvmError) as info:
            vm.set_user_memory_region(0, 0x123, 4096, 0)  # unaligned guest address
    assert str(info.value) == "KVM_SET_USER_MEMORY_REGION failed: Invalid argument"


@pytest.mark.kvm
def test_memory_region_maps_and_unmaps_host_memory(kvm: Kvm) -> None:
    mem = mmap.mmap(-1, 0x2000)
    anchor = ctypes.c_char.from_buffer(mem)
    try:
        with kvm.create_vm() as vm:
            vm.set_user_memory_region(0, 0x10000, len(mem), ctypes.addressof(anchor))
            vm.set_user_memory_region(0, 0x10000, 0, 0)  # size 0 deletes the slot
    finally:
        del anchor
        mem.close()


@pytest.mark.kvm
def test_tss_address_above_2gib_is_passed_whole(kvm: Kvm) -> None:
    # fcntl.ioctl() would reject 0xfffbd000 as an int argument.
    with kvm.create_vm() as vm:
        vm.set_tss_addr(0xFFFBD000)
        vm.set_identity_map_addr(0xFFFBC000)


@pytest.mark.kvm
def test_in_kernel_irqchip_and_pit(kvm: Kvm) -> None:
    if not (kvm.check_extension(K.KVM_CAP_IRQCHIP) and kvm.check_extension(K.KVM_CAP_PIT2)):
        pytest.skip("this KVM has no in-kernel irqchip/PIT")
    with kvm.create_vm() as vm:
        vm.create_irqchip()  # must precede vcpu creation
        vm.create_pit2(K.KVM_PIT_SPEAKER_DUMMY)
        vm.irq_line(4, 1)
        vm.irq_line(4, 0)


@pytest.mark.kvm
def test_coalesced_mmio_and_pio_zones(kvm: Kvm) -> None:
    if not kvm.check_extension(K.KVM_CAP_COALESCED_PIO):
        pytest.skip("this KVM has no coalesced PIO")
    with kvm.create_vm() as vm, vm.create_vcpu() as vcpu:
        vm.register_coalesced_mmio(0xD0000000, 0x1000)
        vm.register_coalesced_mmio(0x80, 1, pio=True)
        vm.unregister_coalesced_mmio(0x80, 1, pio=True)
        # The ring page is the one KVM_CHECK_EXTENSION(COALESCED_MMIO) reports.
        ring = vcpu.coalesced_mmio_ring(kvm.check_extension(K.KVM_CAP_COALESCED_MMIO))
        assert ring.first == ring.last == 0
        del ring


@pytest.mark.kvm
def test_ioeventfd_assign_and_deassign(kvm: Kvm) -> None:
    efd = os.eventfd(0)
    try:
        with kvm.create_vm() as vm:
            vm.ioeventfd(efd, 0x510, 2, pio=True)
            vm.ioeventfd(efd, 0x510, 2, pio=True, deassign=True)
    finally:
        os.close(efd)


@pytest.mark.kvm
def test_close_is_idempotent_even_with_a_view_still_held(kvm: Kvm) -> None:
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu()
    held = vcpu.run_struct  # keeps the mmap exported; close() must still succeed
    vcpu.close()
    vcpu.close()
    vm.close()
    vm.close()
    assert vcpu.fd == -1 and vm.fd == -1
    del held
