"""The public API is what vmcore/__init__.py exports, and device modules stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vmcore


@pytest.mark.parametrize("name", vmcore.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    value = getattr(vmcore, name)
    assert value is not None
    assert name in dir(vmcore)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        vmcore.Nope  # noqa: B018


def test_a_device_module_does_not_load_the_machine_accelerators_or_yaml() -> None:
    # Devices see only the bus, IRQ lines, clock and memory (the layering rule).
    code = (
        "import sys, vmcore_devices.debugcon, vmcore_devices.debug_exit\n"
        "heavy = [m for m in ('vmcore.machine', 'vmcore.accel', 'vmcore.kvm', 'vmcore.profile', 'yaml')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
