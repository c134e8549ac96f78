"""Immutable value classes whose methods are written once, here, instead of generated for each class.

attrs writes a class's ``__init__``, ``__eq__``, ``__hash__`` and ``__repr__`` as Python source
and compiles it as the class is made: about 0.9 ms a class, some 40 on the way to a run, a
tenth of a firmware boot's ``vmcore run`` (bench/boot.py). vmcore's values (a profile's parsed
parts, the CPU model's entries, bus regions, PCI BARs, run limits, stop reasons, the software
CPU's engine layout) are :class:`Immutable` classes instead: a subclass annotates its fields, in ``__init__``'s order,
with defaults where it has them (:class:`Factory` for a fresh mutable one each), and gets slots
for them, that ``__init__`` (positional or keyword arguments), equality and hashing by value, a
repr, pickling and :meth:`Immutable.evolve`, all shared. A field is set once, by ``__init__``
(or ``__post_init__``, through ``object.__setattr__``).

vmcore's public value classes (``Region``, ``RunLimits``, ``StopReason``, ``CpuState``, ...) are
Immutable classes too: a changed copy is ``value.evolve(field=...)``. The devices' ``Config``
classes stay attrs classes (their validators and ``attrs.fields`` are part of the device API).
"""

from __future__ import annotations

import typing
from typing import Any, Callable, ClassVar, TypeVar

T = TypeVar("T", bound="Immutable")

# Type checkers read Immutable subclasses as frozen dataclasses (fields, __init__) through this
# (typing 3.11); on 3.10 it is left out: nothing changes at run time.
_dataclass_transform: Callable[..., Callable[[T], T]] = getattr(
    typing, "dataclass_transform", lambda **_: (lambda cls: cls))


class Factory:
    """A default made afresh for each instance: ``Factory(dict)``."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


_MISSING: Any = object()


class _Fields(type):
    """Makes an Immutable subclass's annotated names its slots, and their class values its defaults."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> _Fields:
        own = [field for field, annotation in namespace.get("__annotations__", {}).items()
               if not str(annotation).startswith(("ClassVar", "typing.ClassVar"))]
        defaults = {field: namespace.pop(field) for field in own if field in namespace}
        namespace["__slots__"] = tuple(own)
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        inherited: tuple[str, ...] = getattr(cls, "_fields", ())
        cls._fields = (*inherited, *own)  # type: ignore[attr-defined]
        cls._defaults = {**getattr(cls, "_defaults", {}), **defaults}  # type: ignore[attr-defined]
        uncompared = getattr(cls, "_not_compared", ())
        cls._compared = tuple(f for f in cls._fields if f not in uncompared)  # type: ignore[attr-defined]
        defaulted = False
        for field in cls._fields:  # type: ignore[attr-defined]
            if field in cls._defaults:  # type: ignore[attr-defined]
                defaulted = True
            elif defaulted:
                raise TypeError(f"{name}.{field}: a field without a default follows one with a default")
        return cls


@_dataclass_transform(eq_default=True, frozen_default=True, field_specifiers=(Factory,))
class Immutable(metaclass=_Fields):
    """A value with fixed fields: see the module's docstring."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}
    #: Fields left out of equality and hashing (a callback, say): a subclass lists them.
    _not_compared: ClassVar[tuple[str, ...]] = ()
    _compared: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, {len(args)} given")
        put = object.__setattr__
        for field, value in zip(fields, args):
            put(self, field, value)
        for field in fields[len(args):]:
            value = kwargs.pop(field, _MISSING)
            if value is _MISSING:
                value = self._defaults.get(field, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{type(self).__name__}() is missing its field {field!r}")
                if value.__class__ is Factory:
                    value = value.make()
            put(self, field, value)
        if kwargs:
            name = next(iter(kwargs))
            raise TypeError(f"{type(self).__name__}() got {'a second value for' if name in fields else 'no field'} {name!r}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, field) for field in self._fields])

    def _key(self) -> tuple[Any, ...]:
        return tuple([getattr(self, field) for field in self._compared])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.__class__, self._key()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._fields)
        return f"{type(self).__qualname__.rsplit('>.', 1)[-1]}({fields})"  # a local class: its own name

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), self._values()

    def evolve(self: T, **changes: Any) -> T:
        """A copy with ``changes`` (field=value) made."""
        return type(self)(**{**dict(zip(self._fields, self._values())), **changes})
