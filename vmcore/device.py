"""The device-facing API: what a device model is, and what it is handed.

A device type is a class with a frozen attrs ``Config`` (its properties: typed,
validated, documented, shown by ``vmcore devices``) and a constructor taking that
config and a :class:`DeviceContext`. It answers :meth:`Device.regions` with the
ranges it claims. It never sees the accelerator: only its regions' offsets, its
IRQ lines, the clock and guest memory.
"""

from __future__ import annotations

import enum
import logging
import re
import typing
from typing import Any, Callable, ClassVar, Sequence

import attrs

from .bus import Region
from .faults import GuestExit, GuestReset
from .clock import Clock
from .dma import DmaSpace
from .immutable import Immutable
from .irq import IrqLine
from .memory import GuestMemory
from .tsc import TimeStampCounter
from .units import parse_int

if typing.TYPE_CHECKING:
    from .acpi import AcpiDevice
    from .chardev import HostFile
    from .fuzz.scratch import FuzzScratch
    from .pci import PciBus


class PropertyError(ValueError):
    """A device property that is unknown or has a value of the wrong kind."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class DeviceContext(Immutable):
    """Everything a device may touch, injected by the machine or the fake bus."""

    name: str
    clock: Clock
    memory: GuestMemory
    irq_line: Callable[[int], IrqLine]
    log: logging.Logger
    #: The machine's PCI bus (``vmcore.pci.PciBus``): where PCI functions attach. None where
    #: the builder has none (then a PCI device makes a private one, see ``vmcore.pci``).
    pci: "PciBus | None" = None
    #: DMA as a bus master does it (``vmcore.dma.DmaSpace``): guest RAM, and other devices'
    #: registers through the MMIO bus, never re-entering a device mid-DMA. The machine gives
    #: every device one on its MMIO bus; by default (None) it reaches memory alone.
    dma: DmaSpace = None  # type: ignore[assignment]
    #: The guest CPU's time-stamp counter (``vmcore.tsc``), for devices of the CPU (the local
    #: APIC's TSC-deadline timer). The machine binds it to its accelerator; by default (None,
    #: the fake bus) it counts machine time at 1 GHz.
    tsc: TimeStampCounter = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.dma is None:
            object.__setattr__(self, "dma", DmaSpace(self.name, self.memory))
        if self.tsc is None:
            object.__setattr__(self, "tsc", TimeStampCounter(self.clock))

    def irq(self, number: int) -> IrqLine:
        """The interrupt line ``number`` (shared by every device that asks for it)."""
        return self.irq_line(number)

    def exit(self, status: int, reason: str) -> typing.NoReturn:
        """End the run with process status ``status``; does not return."""
        raise GuestExit(status, reason)

    def reset(self, reason: str) -> typing.NoReturn:
        """The guest reset the machine: end the run with a ``reset`` stop (status 0); does not return."""
        raise GuestReset(reason)


def prop(default: Any = attrs.NOTHING, doc: str = "", *, hex: bool = False, path: bool = False,
         **kwargs: Any) -> Any:
    """A device property: an attrs field whose ``doc`` the CLI and docs show.

    ``hex=True`` marks addresses and ports, shown as ``0xf1`` rather than ``241``.
    ``path=True`` marks a host file name: a relative one given in a profile is taken
    relative to that profile's folder (elsewhere, to the current directory).
    """
    return attrs.field(default=default, metadata={"doc": doc, "hex": hex, "path": path}, **kwargs)


_C = typing.TypeVar("_C", bound=type)


def config(cls: _C) -> _C:
    """``@attrs.frozen`` for a device's ``Config``, with equality, hashing and repr shared.

    The class is an attrs class like any other (fields, validators, converters, ``attrs.fields``,
    ``attrs.evolve``); it compares, hashes and prints as ``@attrs.frozen`` would make it, by
    the fields that take part in each. attrs writes those three methods as source for each
    class and compiles them as it is made; here they are written once, below, which halves
    what making a Config costs (a ``vmcore run`` makes one for every device type it builds:
    about 5 ms of a PC's start-up). ``@attrs.frozen`` works as well.
    """
    cls.__eq__ = _config_eq  # type: ignore[assignment]
    cls.__hash__ = _config_hash  # type: ignore[assignment]
    cls.__repr__ = _config_repr  # type: ignore[assignment]
    return attrs.frozen(eq=False, repr=False)(cls)  # type: ignore[no-any-return]


def _compared(value: Any) -> tuple[Any, ...]:
    """The values of ``value``'s fields that take part in equality (through their eq_key)."""
    return tuple([getattr(value, field.name) if field.eq_key is None else field.eq_key(getattr(value, field.name))
                  for field in attrs.fields(value.__class__) if field.eq])


def _config_eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) == _compared(other)


def _config_hash(self: Any) -> int:
    return hash((self.__class__, _compared(self)))


def _config_repr(self: Any) -> str:
    shown = []
    for field in attrs.fields(self.__class__):
        if field.repr:
            value = getattr(self, field.name, attrs.NOTHING)
            text = "NOTHING" if value is attrs.NOTHING else (repr(value) if field.repr is True else field.repr(value))
            shown.append(f"{field.name}={text}")
    return f"{self.__class__.__qualname__.rsplit('>.', 1)[-1]}({', '.join(shown)})"


def resolve_paths(config_cls: type, props: dict[str, Any], folders: dict[str, Any]) -> dict[str, Any]:
    """``props`` with each relative ``path=True`` property joined to ``folders[key]`` (a Path), if given.

    A ``path=True`` property may also be a mapping whose values are paths (fw-cfg's ``files``).
    """
    from pathlib import Path

    def resolved(folder: Path, value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(Path(folder) / value)
        return value

    attrs.resolve_types(config_cls)
    marked = {f.name for f in attrs.fields(config_cls) if f.metadata.get("path")}
    out = dict(props)
    for key, value in props.items():
        folder = folders.get(key)
        if key.replace("-", "_") not in marked or folder is None:
            continue
        if isinstance(value, dict):
            out[key] = {name: resolved(folder, path) for name, path in value.items()}
        else:
            out[key] = resolved(folder, value)
    return out


class Device:
    """Base class for device models (optional: any class with the same shape works).

    Subclasses set ``type_name`` (the name profiles use), ``Config`` (a frozen
    attrs class of properties) and implement :meth:`regions`.
    """

    type_name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any, ctx: DeviceContext) -> None:
        self.config = config
        self.ctx = ctx

    @classmethod
    def create(cls, config: Any, ctx: DeviceContext) -> "Device":
        """Build an instance; override to pull what the device needs from ``ctx``."""
        return cls(config, ctx)

    def regions(self) -> Sequence[Region]:
        """The bus ranges this device claims."""
        raise NotImplementedError

    def acpi_devices(self) -> Sequence["AcpiDevice"]:
        """How the machine's ACPI tables describe this device to an OS it boots directly (a DSDT
        Device: hardware ID, MMIO window, interrupt; see vmcore.acpi). None by default."""
        return ()

    @classmethod
    def kernel_parameters(cls, config: Any) -> Sequence[str]:
        """What a Linux kernel the machine boots (loader format ``linux``) must be told on its command
        line to find a device of this ``config`` (a virtio-mmio device: its window and IRQ). None by
        default: Linux finds most devices by probing (PCI, ISA ports) or through firmware tables."""
        return ()

    def reset(self) -> None:
        """Return to power-on state (machine reset)."""

    def host_files(self) -> Sequence["HostFile"]:
        """The host files this device will read and write, by property (``vmcore.chardev.HostFile``).

        The machine checks them when it is built: an output may not be one of its inputs
        (the profile, an image, the kernel, another device's input).
        """
        return ()

    @classmethod
    def fuzz_props(cls, scratch: "FuzzScratch") -> dict[str, Any]:
        """Property values ``vmcore fuzz`` builds the type with (the caller's own win over them).

        Return values that keep the device off the host's resources (the terminal, a user's
        files, sockets) and make runs repeat (no host clock); point what it must read or write
        at ``scratch`` (``vmcore.fuzz.FuzzScratch``: ``scratch.disk(index)``, ``scratch.folder()``).
        Called once per campaign or replay. The default: none, the Config's defaults serve.
        """
        return {}

    def start(self) -> None:
        """Open host resources (output files, sockets, input readers): the machine is starting to run.

        Called once, after every device was built and before the first guest instruction (the
        fake bus calls it from ``attach``). Building a device, which is all ``vmcore check``
        does, must create, truncate, unlink and block on nothing: check host paths there with
        ``stat`` at most, open them here. A :class:`PropertyError` raised here is reported
        against the property's file, line and key.
        """

    def close(self) -> None:
        """Release host resources (flush and close outputs) when the machine stops.

        Also called when start() failed or never ran (``vmcore check``, a failed build).
        """


# --- properties: conversion from profile text and introspection ------------------------


class PropertyInfo(Immutable):
    """One property of a device type, as ``vmcore devices`` shows it."""

    name: str
    type: str
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    hex: bool = False
    #: The ``in_range`` bounds (low, high) its validators set, if any.
    bounds: tuple[int, int] | None = None

    def default_text(self) -> str:
        """The default as a profile would write it."""
        if self.hex and isinstance(self.default, int):
            return f"{self.default:#x}"
        return repr(self.default)

    def bounds_text(self) -> str:
        """The bounds as ``low..high`` (hex for a hex property), or "" when it has none."""
        if self.bounds is None:
            return ""
        low, high = self.bounds
        return f"{low:#x}..{high:#x}" if self.hex else f"{low}..{high}"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "choice"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _bounds(validator: Any) -> tuple[int, int] | None:
    """The bounds of the :class:`InRange` in ``validator`` (attrs joins a list of them with and_)."""
    if isinstance(validator, InRange):
        return (validator.low, validator.high)
    for part in getattr(validator, "_validators", ()):
        found = _bounds(part)
        if found is not None:
            return found
    return None


def properties(config_cls: type) -> list[PropertyInfo]:
    """Introspect a Config class with ``attrs.fields`` (no second schema)."""
    attrs.resolve_types(config_cls)
    out = []
    for field in attrs.fields(config_cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        choices = None
        tp = field.type
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            choices = tuple(str(m.value) for m in tp)
        elif typing.get_origin(tp) is typing.Literal:
            choices = tuple(str(a) for a in typing.get_args(tp))
        out.append(PropertyInfo(field.name, _type_name(tp), default, field.metadata.get("doc", ""), choices,
                                field.metadata.get("hex", False), _bounds(field.validator)))
    return out


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def convert_value(tp: Any, raw: Any) -> Any:
    """Convert profile text (or a Python value) to the property's declared type."""
    if raw is None and tp is not type(None) and type(None) not in typing.get_args(tp):
        raise ValueError("expected a value, got nothing (an empty entry)")
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        args = typing.get_args(tp)
        if raw is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert_value(arg, raw)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if str(choice) == str(raw):
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {raw!r}")
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if tp is int:
        return parse_int(raw)
    if tp is str:
        if isinstance(raw, (dict, list)):
            raise ValueError(f"expected text, got a {'mapping' if isinstance(raw, dict) else 'list'}")
        return str(raw)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if str(member.value) == str(raw) or member.name.lower() == str(raw).lower():
                return member
        raise ValueError(f"expected one of {', '.join(str(m.value) for m in tp)}, got {raw!r}")
    if tp is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {raw!r}") from None
    return raw


def build_config(config_cls: type, props: dict[str, Any]) -> Any:
    """Make a validated Config from property values; errors are :class:`PropertyError`."""
    attrs.resolve_types(config_cls)
    fields = {f.name: f for f in attrs.fields(config_cls)}
    values = {}
    for key, raw in props.items():
        field = fields.get(key.replace("-", "_"))
        if field is None:
            from difflib import get_close_matches

            near = get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            known = ", ".join(fields) or "none"
            raise PropertyError(key, f"unknown property{hint}; known properties: {known}")
        try:
            values[field.name] = convert_value(field.type, raw)
        except (ValueError, TypeError) as exc:
            raise PropertyError(key, str(exc)) from None
    try:
        return config_cls(**values)
    except PropertyError:
        raise
    except (ValueError, TypeError) as exc:
        # Other validators name the field in their message; find which one. Whole words, earliest
        # first: "queue_size must be ..." is about queue_size, not queue.
        mentions = [
            (found.start(), name)
            for name in values
            if (found := re.search(rf"\b{re.escape(name)}\b", str(exc))) is not None
        ]
        key = min(mentions)[1] if mentions else _failing_validator(config_cls, values)
        raise PropertyError(key, str(exc)) from None


def _failing_validator(config_cls: type, values: dict[str, Any]) -> str:
    """The property whose own validator refuses its value (a custom validator whose message names
    no property: "must be even"), tried one by one in field order; "" where none does on its own
    (a check across properties, in ``__attrs_post_init__``)."""
    for field in attrs.fields(config_cls):
        if field.validator is None or field.name not in values:
            continue
        try:
            field.validator(None, field, values[field.name])
        except (ValueError, TypeError):
            return field.name
        except Exception:  # noqa: BLE001 - a validator that needs the instance: not decidable alone
            continue
    return ""


class InRange(Immutable):
    """An attrs validator: ``low <= value <= high``, shown in hex; ``vmcore devices`` shows the bounds."""

    low: int
    high: int

    def __call__(self, _instance: Any, attribute: Any, value: int) -> None:
        if not self.low <= value <= self.high:
            raise PropertyError(attribute.name, f"must be in {self.low:#x}..{self.high:#x}, got {value:#x}")


def in_range(low: int, high: int) -> InRange:
    """An attrs validator: ``low <= value <= high``."""
    return InRange(low, high)
