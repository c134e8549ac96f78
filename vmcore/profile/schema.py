"""The profile as a whole: :class:`Profile`, loading it, and its top-level keys."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..immutable import Immutable
from .errors import ProfileError
from .layers import apply_override, extend, load_tree
from .sections import validate_cpu, validate_device, validate_limits, validate_loader
from .slots import check_slot_overlaps, check_total_memory, validate_slot
from .specs import CpuSpec, DeviceSpec, Limits, LoaderSpec, SlotSpec
from .values import bool_value, choice, scalar_node, section, unknown_keys
from .yaml_tree import Mapping, parse_yaml

IRQCHIPS = ("auto", "userspace", "kernel", "none")
DEVICE_ERROR_POLICIES = ("stop", "continue")
ACCELS = ("kvm", "tcg", "auto")
#: Machine time: the host's (HostClock), or made of the guest's instructions (VirtualClock).
CLOCKS = ("host", "virtual")


class Profile(Immutable):
    """A machine description: the result of :meth:`Profile.load`."""

    name: str
    path: Path | None
    accel: str
    cpu: CpuSpec
    memory: tuple[SlotSpec, ...]
    devices: tuple[DeviceSpec, ...]
    limits: Limits
    irqchip: str = "auto"  # auto | userspace | kernel | none
    device_errors: str = "stop"  # stop | continue: what an exception raised by a device does
    kernel_pit: bool = False
    loader: "LoaderSpec | None" = None
    clock: str = "host"  # host | virtual (vmcore.clock.VirtualClock: runs repeat exactly; the software CPU)

    @classmethod
    def load(cls, path: str | Path, overrides: Iterable[str] = ()) -> "Profile":
        """Read a profile file (following ``extends``), apply ``key.path=value`` overrides, validate."""
        path = Path(path)
        tree = load_tree(path, ())
        for item in overrides:
            apply_override(tree, item)
        return _validate(tree, path)

    @classmethod
    def from_yaml(cls, text: str, file: str = "<string>", overrides: Iterable[str] = ()) -> "Profile":
        """Parse profile text; ``extends`` resolves against the current directory."""
        tree = parse_yaml(text, file)
        if "extends" in tree:
            tree = extend(tree, Path(file).parent if file != "<string>" else Path.cwd(), (file,))
        for item in overrides:
            apply_override(tree, item)
        return _validate(tree, Path(file) if file != "<string>" else None)


def _validate(tree: Mapping, path: Path | None) -> Profile:
    # "extends" was consumed while loading; listed so a misspelling gets its did-you-mean.
    unknown_keys(tree, ("name", "extends", "accel", "irqchip", "kernel_pit", "device_errors", "cpu", "memory",
                        "loader", "devices", "limits", "clock"), "")
    name = scalar_node(tree["name"], "name", "a name").value if "name" in tree else (path.stem if path else "machine")
    if "name" in tree and not name.strip():
        raise ProfileError(tree["name"].where, "name", "must not be empty (leave it out to use the file's name)")
    accel = choice(tree["accel"], "accel", ACCELS) if "accel" in tree else "auto"
    cpu = validate_cpu(section(tree, "cpu"), tree.key_where.get("cpu"))
    memory_node = section(tree, "memory")
    if memory_node is None:
        raise ProfileError(tree.where if "memory" not in tree else tree["memory"].where, "memory",
                           "a profile needs at least one memory slot, e.g. memory: {ram: {base: 0, size: 4K}}")
    memory = tuple(validate_slot(name, node, memory_node.key_where[name]) for name, node in memory_node.items())
    if not memory:
        raise ProfileError(memory_node.where, "memory", "a profile needs at least one memory slot")
    check_slot_overlaps(memory)
    check_total_memory(memory)
    devices_node = section(tree, "devices")
    devices = tuple(
        validate_device(dev, node, devices_node.key_where[dev]) for dev, node in (devices_node or {}).items()
    ) if devices_node else ()
    limits = validate_limits(section(tree, "limits"))
    irqchip = choice(tree["irqchip"], "irqchip", IRQCHIPS) if "irqchip" in tree else "auto"
    kernel_pit = bool_value(tree["kernel_pit"], "kernel_pit") if "kernel_pit" in tree else False
    if kernel_pit and irqchip != "kernel":
        raise ProfileError(tree.key_where["kernel_pit"], "kernel_pit", "needs irqchip: kernel (KVM's PIT drives its PIC)")
    loader = validate_loader(section(tree, "loader"), tree.key_where.get("loader"))
    device_errors = (choice(tree["device_errors"], "device_errors", DEVICE_ERROR_POLICIES)
                     if "device_errors" in tree else "stop")
    clock = choice(tree["clock"], "clock", CLOCKS) if "clock" in tree else "host"
    if clock == "virtual" and accel == "kvm":
        raise ProfileError(tree.key_where["clock"], "clock", "virtual time is counted in instructions by the "
                           "software CPU: it needs accel: tcg (or auto); KVM runs the guest at the host's pace")
    return Profile(name=name, path=path, accel=accel, cpu=cpu, memory=memory, devices=devices, limits=limits,
                   irqchip=irqchip, kernel_pit=kernel_pit, loader=loader, device_errors=device_errors, clock=clock)
