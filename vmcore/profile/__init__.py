"""YAML machine profiles: loading, inheritance, overrides and validation.

One module per step: :mod:`.yaml_tree` reads YAML keeping each value's file and line,
:mod:`.layers` merges ``extends`` bases and ``--set`` overrides, :mod:`.schema`,
:mod:`.slots` and :mod:`.sections` validate into the value types of :mod:`.specs`,
and :mod:`.host_paths` resolves and reads the host files a profile names.

A profile is read with ``yaml.compose`` so every value keeps the file and line it
came from; all numbers are parsed by :func:`vmcore.units.parse_int` from the
text as written, not by YAML 1.1's rules. Every error is a :class:`ProfileError`
naming file, line and key, and saying what was expected.

Schema (all sections optional but ``memory``)::

    name: hello                 # default: the file's stem
    extends: base.yaml          # a profile this one refines (path relative to this file)
    accel: auto                 # kvm | tcg | auto
    cpu:
      mode: real                # real | protected | long | reset (x86 power-on: F000:FFF0, firmware)
      entry: 0x0                # first instruction (real mode: CS base 0, IP = entry)
      tables: 0x9000            # protected/long: where the VMM builds GDT and page tables
      registers: {rsp: 0x8000}  # initial general registers
    memory:
      ram: {base: 0, size: 4K, kind: ram, image: ../guest/hello.bin, offset: 0}
      bios: {base: 0xFFFE0000, size: 128K, kind: rom, image: /usr/share/seabios/bios.bin,
             missing: "install it: sudo apt-get install seabios"}   # said when the image is absent
    devices:
      console: {type: debugcon, port: 0xF1}   # the name, then type plus properties
    limits: {timeout: 10, max_exits: 1000000}

Mappings merge through ``extends`` key by key; a ``null`` removes an inherited entry.
At most 32 profiles may lie below one through ``extends``.
All slots together may hold at most 64G (``VMCORE_MAX_GUEST_MEMORY`` sets another limit).
docs/malformed-profiles.md lists each malformed input and the message it gives.
"""

from __future__ import annotations

from .errors import ProfileError, Where
from .host_paths import NAME_MAX, read_bounded
from .layers import MAX_EXTENDS, MAX_PROFILE_BYTES
from .schema import ACCELS, DEVICE_ERROR_POLICIES, IRQCHIPS, Profile
from .sections import LOADER_FORMATS, MAX_TIMEOUT, MODES, REGISTERS
from .slots import (DEFAULT_MAX_GUEST_MEMORY, MAX_GUEST_MEMORY_ENV, PHYS_BITS, SLOT_KINDS, max_guest_memory)
from .specs import CpuSpec, DeviceSpec, Limits, LoaderSpec, SlotSpec
from .yaml_tree import MAX_DEPTH, MAX_VALUES, Mapping, Node, Scalar, Sequence, parse_yaml

__all__ = [
    "ACCELS",
    "DEFAULT_MAX_GUEST_MEMORY",
    "DEVICE_ERROR_POLICIES",
    "IRQCHIPS",
    "LOADER_FORMATS",
    "MAX_DEPTH",
    "MAX_EXTENDS",
    "MAX_GUEST_MEMORY_ENV",
    "MAX_PROFILE_BYTES",
    "MAX_TIMEOUT",
    "MAX_VALUES",
    "MODES",
    "NAME_MAX",
    "PHYS_BITS",
    "REGISTERS",
    "SLOT_KINDS",
    "CpuSpec",
    "DeviceSpec",
    "Limits",
    "LoaderSpec",
    "Mapping",
    "Node",
    "Profile",
    "ProfileError",
    "Scalar",
    "Sequence",
    "SlotSpec",
    "Where",
    "max_guest_memory",
    "parse_yaml",
    "read_bounded",
]
