"""The ``cpu``, ``loader``, ``devices`` and ``limits`` sections."""

from __future__ import annotations

import math
from pathlib import Path

from ..cpu_model import VENDORS, ModelSpec, model_names, parse_features
from .errors import ProfileError, Where
from .host_paths import host_path, not_a_file
from .specs import CpuSpec, DeviceSpec, LoaderSpec, Limits
from .values import choice, int_value, plain, scalar_node, unknown_keys
from .yaml_tree import Mapping, Node, Scalar, Sequence

MODES = ("real", "protected", "long", "reset")
LOADER_FORMATS = ("auto", "multiboot", "elf", "flat", "linux")
REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rflags",
)
MAX_TIMEOUT = 1e9  # seconds; setitimer and lock waits overflow past ~9.2e9


def validate_loader(node: Mapping | None, key_where: Where | None) -> LoaderSpec | None:
    if node is None:
        return None
    unknown_keys(node, ("kernel", "format", "cmdline", "address", "initrd"), "loader")
    if "kernel" not in node:
        raise ProfileError(key_where or node.where, "loader.kernel", "missing; the path of the kernel image")
    kernel_node = scalar_node(node["kernel"], "loader.kernel", "the path of a kernel image")
    if not kernel_node.value.strip():
        raise ProfileError(kernel_node.where, "loader.kernel", "expected the path of a kernel image, got ''")
    folder = Path(kernel_node.where.file).parent if kernel_node.where.line else Path.cwd()
    kernel = host_path(folder, kernel_node.value)
    problem = not_a_file(kernel)
    if problem:
        raise ProfileError(kernel_node.where, "loader.kernel", f"kernel {kernel_node.value} {problem} (looked at {kernel})")
    fmt = choice(node["format"], "loader.format", LOADER_FORMATS) if "format" in node else "auto"
    cmdline = ""
    if "cmdline" in node:
        cmd = node["cmdline"]
        cmdline = "" if isinstance(cmd, Scalar) and cmd.null else scalar_node(cmd, "loader.cmdline", "a command line").value
        if not cmdline.isascii() or "\0" in cmdline:
            # Multiboot 3.3: the command line is a zero-terminated C string; the loader writes ASCII.
            raise ProfileError(cmd.where, "loader.cmdline",
                               f"must be ASCII text without NUL (a C string for the kernel), got {cmdline!r}")
    address = int_value(node["address"], "loader.address", "an address like 0x100000") if "address" in node else None
    initrd = initrd_where = None
    if "initrd" in node:
        initrd_node = scalar_node(node["initrd"], "loader.initrd", "the path of an initrd (an initramfs)")
        initrd_where = initrd_node.where
        if fmt not in ("auto", "linux"):
            raise ProfileError(initrd_where, "loader.initrd", f"only a Linux kernel takes an initrd (format: linux), "
                               f"not format {fmt}")
        initrd = host_path(folder, initrd_node.value)
        problem = not_a_file(initrd) if initrd_node.value.strip() else "is empty"
        if problem:
            raise ProfileError(initrd_where, "loader.initrd", f"initrd {initrd_node.value} {problem} (looked at {initrd})")
    return LoaderSpec(kernel=kernel, format=fmt, cmdline=cmdline, address=address, where=key_where or node.where,
                      initrd=initrd, initrd_where=initrd_where)


def validate_cpu(node: Mapping | None, key_where: Where | None = None) -> CpuSpec:
    if node is None:
        return CpuSpec()
    unknown_keys(node, ("mode", "entry", "tables", "registers", "model", "features", "vendor"), "cpu")
    mode = choice(node["mode"], "cpu.mode", MODES) if "mode" in node else "real"
    entry = int_value(node["entry"], "cpu.entry", "an address like 0x1000") if "entry" in node else 0
    if not 0 <= entry < 1 << 64:
        raise ProfileError(node["entry"].where, "cpu.entry", "must fit in 64 bits")
    if mode == "reset" and "entry" in node:
        raise ProfileError(node["entry"].where, "cpu.entry",
                           "reset mode starts where an x86 CPU does (CS:IP F000:FFF0, below 4G); remove entry")
    if mode == "real" and entry > 0xFFFF:
        # Real mode starts at CS:IP = 0:entry and CS's limit is 64K (cpu.py's start state).
        raise ProfileError(node["entry"].where, "cpu.entry",
                           f"real mode starts at CS:IP 0:entry, so at most 0xffff, got {entry:#x}")
    tables = int_value(node["tables"], "cpu.tables", "an address like 0x9000") if "tables" in node else None
    if tables is not None and tables % 4096:
        raise ProfileError(node["tables"].where, "cpu.tables", f"must be 4K-aligned, got {tables:#x}")
    registers: dict[str, int] = {}
    regs = node.get("registers")
    if regs is not None and not (isinstance(regs, Scalar) and regs.null):
        if not isinstance(regs, Mapping):
            raise ProfileError(regs.where, "cpu.registers", "expected register: value lines, e.g. rsp: 0x8000")
        unknown_keys(regs, REGISTERS, "cpu.registers")
        for reg, value in regs.items():
            registers[reg] = int_value(value, f"cpu.registers.{reg}", "a number")
            if not 0 <= registers[reg] < 1 << 64:
                raise ProfileError(value.where, f"cpu.registers.{reg}", "must fit in 64 bits")
    return CpuSpec(mode=mode, entry=entry, tables=tables, registers=registers, model=_model(node),
                   where=key_where or node.where)


def _model(node: Mapping) -> ModelSpec:
    """``cpu.model``, ``cpu.features`` and ``cpu.vendor`` (see vmcore.cpu_model)."""
    name = "max"
    if "model" in node:
        name_node = scalar_node(node["model"], "cpu.model", "a CPU model name")
        names = {n.lower(): n for n in model_names()}
        if name_node.value.lower() not in names:
            raise ProfileError(name_node.where, "cpu.model",
                               f"unknown CPU model {name_node.value!r}; known: {', '.join(model_names())}")
        name = names[name_node.value.lower()]
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    features = node.get("features")
    if features is not None and not (isinstance(features, Scalar) and features.null):
        if isinstance(features, Sequence):
            items = [scalar_node(item, "cpu.features", "+name or -name").value for item in features]
            text: str | list[str] = items
        else:
            text = scalar_node(features, "cpu.features", "features like +x2apic,-cx16").value
        try:
            add, remove = parse_features(text)
        except ValueError as exc:
            raise ProfileError(features.where, "cpu.features", str(exc)) from None
    vendor = None
    if "vendor" in node:
        vendor = choice(node["vendor"], "cpu.vendor", VENDORS)
    return ModelSpec(name=name, add=add, remove=remove, vendor=vendor)


def validate_device(name: str, node: Node, key_where: Where) -> DeviceSpec:
    key = f"devices.{name}"
    if not isinstance(node, Mapping):
        raise ProfileError(key_where, key, "expected 'type: NAME' and the device's properties")
    if "type" not in node:
        raise ProfileError(key_where, f"{key}.type", "missing; every device needs a type (see 'vmcore devices')")
    dev_type = scalar_node(node["type"], f"{key}.type", "a device type name").value
    props = {k: plain(v) for k, v in node.items() if k != "type"}
    prop_where = {k: (v.where if isinstance(v, Scalar) else node.key_where[k]) for k, v in node.items()}
    return DeviceSpec(name=name, type=dev_type, props=props, where=key_where, prop_where=prop_where)


def validate_limits(node: Mapping | None) -> Limits:
    if node is None:
        return Limits()
    unknown_keys(node, ("timeout", "max_exits"), "limits")
    timeout = None
    if "timeout" in node:
        scalar = scalar_node(node["timeout"], "limits.timeout", "seconds, like 10 or 0.5")
        try:
            timeout = float(scalar.value.strip().removesuffix("s"))
        except ValueError:
            raise ProfileError(scalar.where, "limits.timeout", f"expected seconds, like 10 or 0.5, got {scalar.value!r}") from None
        if not (math.isfinite(timeout) and timeout > 0):
            raise ProfileError(scalar.where, "limits.timeout", f"must be a positive number of seconds, got {scalar.value!r}")
        if timeout > MAX_TIMEOUT:
            raise ProfileError(scalar.where, "limits.timeout", f"at most {MAX_TIMEOUT:g} seconds, got {scalar.value!r} "
                               "(leave limits.timeout out for no time limit)")
    max_exits = int_value(node["max_exits"], "limits.max_exits", "a count") if "max_exits" in node else None
    if max_exits is not None and max_exits <= 0:
        raise ProfileError(node["max_exits"].where, "limits.max_exits", f"must be positive, got {max_exits}")
    return Limits(timeout=timeout, max_exits=max_exits)
