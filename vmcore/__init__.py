"""vmcore: a Python VMM for writing and testing device models.

The public API: build a :class:`Machine` from a :class:`Profile` and run it; write
devices against :class:`Region`, :class:`IrqLine`, :class:`Clock` and
:class:`GuestMemory`; test them with :mod:`vmcore.testing`.
"""

from .accel import Accelerator, AcceleratorUnavailable, RunLimits
from .bus import Bus, BusError, Direction, Region, Space, Transaction
from .clock import Clock, HostClock, ManualClock, Timer
from .cpu import CpuState
from .device import Device, DeviceContext, GuestExit, PropertyError, in_range, prop
from .hookspecs import hookimpl, hookspec
from .irq import IrqLine
from .machine import Machine, resolve_profile
from .memory import GuestMemory, GuestMemoryError, MemorySlot
from .plugins import DeviceRegistry, DeviceType, DeviceTypeError, make_plugin_manager
from .profile import Profile, ProfileError
from .stop import StopReason
from .units import parse_int

__version__ = "0.1.0"

__all__ = [
    "Accelerator", "AcceleratorUnavailable", "RunLimits",
    "Bus", "BusError", "Direction", "Region", "Space", "Transaction",
    "Clock", "HostClock", "ManualClock", "Timer",
    "CpuState",
    "Device", "DeviceContext", "GuestExit", "PropertyError", "in_range", "prop",
    "hookimpl", "hookspec",
    "IrqLine",
    "Machine", "resolve_profile",
    "GuestMemory", "GuestMemoryError", "MemorySlot",
    "DeviceRegistry", "DeviceType", "DeviceTypeError", "make_plugin_manager",
    "Profile", "ProfileError",
    "StopReason",
    "parse_int",
]
