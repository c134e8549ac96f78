"""Thin ctypes binding to the Linux KVM API (x86_64).

A leaf package: it imports nothing else from vmcore, so accelerators and tools
can use it without pulling in buses, devices or profiles.
"""

from vmcore.kvm import ioctl, structs
from vmcore.kvm.system import Kvm, KvmError, KvmUnavailable, Vcpu, Vm

__all__ = ["Kvm", "Vm", "Vcpu", "KvmError", "KvmUnavailable", "ioctl", "structs"]
