"""vmcore: a Python VMM for writing and testing device models.

The public API: build a :class:`Machine` from a :class:`Profile` and run it; write
devices against :class:`Region`, :class:`IrqLine`, :class:`Clock` and
:class:`GuestMemory`; test them with :mod:`vmcore.testing`.

Names are imported on first use (PEP 562), so a device module that needs only
``vmcore.bus`` does not load the machine, the accelerators or YAML.
"""

from __future__ import annotations

import importlib

# typing.TYPE_CHECKING without importing typing: importing the package stays this module alone,
# so `python -m vmcore` pauses the garbage collector (vmcore.__main__) before typing is loaded
# too, as it does for the rest of vmcore's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Accelerator": "accel", "AcceleratorUnavailable": "accel", "RunLimits": "accel",
    "Bus": "bus", "BusError": "bus", "Direction": "bus", "Doorbell": "bus", "Region": "bus", "Space": "bus",
    "Transaction": "bus",
    "Clock": "clock", "HostClock": "clock", "ManualClock": "clock", "Timer": "clock", "VirtualClock": "clock",
    "CpuState": "cpu",
    "Device": "device", "DeviceContext": "device", "PropertyError": "device",
    "DmaError": "dma", "DmaSpace": "dma",
    "GuestExit": "faults", "GuestReset": "faults", "DeviceFault": "faults", "BadAnswer": "faults",
    "config": "device", "in_range": "device", "prop": "device",
    "hookimpl": "hookspecs", "hookspec": "hookspecs",
    "IrqEvent": "irq", "IrqLine": "irq",
    "Machine": "machine", "resolve_profile": "machine",
    "GuestMemory": "memory", "GuestMemoryError": "memory", "MemorySlot": "memory",
    "DeviceRegistry": "plugins", "DeviceType": "plugins", "DeviceTypeError": "plugins",
    "make_plugin_manager": "plugins",
    "Profile": "profile", "ProfileError": "profile",
    "StopReason": "stop",
    "Timeline": "timeline",
    "parse_int": "units",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vmcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .accel import Accelerator, AcceleratorUnavailable, RunLimits
    from .bus import Bus, BusError, Direction, Doorbell, Region, Space, Transaction
    from .clock import Clock, HostClock, ManualClock, Timer, VirtualClock
    from .timeline import Timeline
    from .cpu import CpuState
    from .device import Device, DeviceContext, PropertyError, config, in_range, prop
    from .dma import DmaError, DmaSpace
    from .faults import BadAnswer, DeviceFault, GuestExit, GuestReset
    from .hookspecs import hookimpl, hookspec
    from .irq import IrqEvent, IrqLine
    from .machine import Machine, resolve_profile
    from .memory import GuestMemory, GuestMemoryError, MemorySlot
    from .plugins import DeviceRegistry, DeviceType, DeviceTypeError, make_plugin_manager
    from .profile import Profile, ProfileError
    from .stop import StopReason
    from .units import parse_int
