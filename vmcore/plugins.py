"""Finding device types: the plugin manager and the registry built from it."""

from __future__ import annotations

import inspect
import os
import re
import sys
import types
from typing import Any, Iterable

import attrs
import pluggy

from . import hookspecs
from .device import PropertyInfo, build_config, properties
from .immutable import Immutable

ENTRY_POINT_GROUP = "vmcore"


class DeviceTypeError(Exception):
    """A device type that is unknown, or a plugin that provides a broken one."""


class EntryPoint:
    """An installed entry point: ``name = module:attribute`` in its distribution's entry_points.txt."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: str) -> None:
        self.name, self.value = name, value

    def load(self) -> Any:
        """Import the module and return the attribute it names (the module itself when none is)."""
        from importlib import import_module

        module, _, attribute = self.value.partition(":")
        target = import_module(module.strip())
        for part in filter(None, attribute.split("[")[0].strip().split(".")):
            target = getattr(target, part)
        return target

    def __repr__(self) -> str:
        return f"EntryPoint({self.name!r}, {self.value!r})"


_SEPARATORS = re.compile(r"[-_.]+")


def entry_points(group: str) -> list[EntryPoint]:
    """The entry points of ``group`` of every installed distribution, as ``importlib.metadata``
    finds them: ``sys.path`` in order, a distribution's first copy only (by normalized name).

    Reads the entry_points.txt files itself: importing ``importlib.metadata`` (with ``email``
    for metadata headers vmcore never reads) and its scan cost about a tenth of a firmware
    boot's ``vmcore run`` (bench/boot.py). Where the standard library would also look
    elsewhere (a zip on ``sys.path``, an import hook that provides distributions), it asks
    ``importlib.metadata`` instead.
    """
    from importlib.machinery import PathFinder

    paths = [entry or "." for entry in sys.path if isinstance(entry, str)]
    if any(getattr(finder, "find_distributions", None) is not None and finder is not PathFinder
           for finder in sys.meta_path) or any(os.path.isfile(path) for path in paths):
        from importlib.metadata import entry_points as standard

        return [EntryPoint(ep.name, ep.value) for ep in standard(group=group)]
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for path in paths:
        try:
            names = os.listdir(path)
        except OSError:  # missing, not a folder, unreadable: nothing installed there
            continue
        # As importlib.metadata's lookup: every .dist-info first, then every .egg-info.
        infos = [n for n in names if n.lower().endswith(".dist-info")]
        eggs = [n for n in names if n.lower().endswith(".egg-info")]
        for name in infos + eggs:
            distribution = _SEPARATORS.sub("_", name.rpartition(".")[0].partition("-")[0]).lower()
            if distribution in seen:
                continue
            seen.add(distribution)
            try:
                with open(os.path.join(path, name, "entry_points.txt"), encoding="utf-8") as file:
                    text = file.read()
            except (OSError, UnicodeDecodeError):  # none (most have none), or an .egg-info file
                continue
            found.extend(_group_entries(text, group))
    return found


def _group_entries(text: str, group: str) -> list[EntryPoint]:
    """The ``name = value`` lines of section ``[group]`` of an entry_points.txt."""
    entries: list[EntryPoint] = []
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            name, _, value = line.partition("=")
            entries.append(EntryPoint(name.strip(), value.strip()))
    return entries


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, with a quick answer for a module's names that hold no hook implementation.

    Registering a plugin looks at each of its names (``dir``) through ``inspect.getattr_static``:
    about 50 names a device module (its imports, classes, constants), 600 for a PC's devices, some
    4 ms of every machine's first build. In a module, a name whose value is no function, method,
    classmethod or staticmethod cannot hold one (pluggy skips it too), nor can a function without
    the ``vmcore_impl`` marker; every other name goes to pluggy's own lookup.
    """

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if isinstance(plugin, types.ModuleType):
            value = vars(plugin).get(name, _ABSENT)
            if value.__class__ is types.FunctionType:
                if not hasattr(value, _IMPL_MARKER):
                    return None
            elif value is not _ABSENT and not isinstance(value, _HOOKABLE):
                return None
        return super().parse_hookimpl_opts(plugin, name)


_ABSENT = object()
#: pluggy's project name (vmcore.hookspecs' markers); its HookimplMarker marks a function with
#: the attribute PROJECT + "_impl".
PROJECT = "vmcore"
_IMPL_MARKER = PROJECT + "_impl"
_HOOKABLE = (types.FunctionType, types.MethodType, classmethod, staticmethod)


def make_plugin_manager(load_entry_points: bool = True, plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A plugin manager for project ``vmcore``: entry-point plugins plus ``plugins``."""
    pm = _PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in plugins:
        pm.register(plugin)
    return pm


class DeviceType(Immutable):
    """A registered device type and where it came from."""

    name: str
    cls: type
    plugin: str

    @property
    def module(self) -> str:
        return self.cls.__module__

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.cls.__doc__ or "")

    @property
    def properties(self) -> list[PropertyInfo]:
        return properties(self.cls.Config)

    def config(self, props: dict[str, Any]) -> Any:
        """A validated Config from property values (raises PropertyError)."""
        return build_config(self.cls.Config, props)


class DeviceRegistry:
    """Device type name -> class, collected from every plugin's hook.

    Entry points load lazily: one named after a device type (as vmcore's own are) is imported
    when that type is first asked for, and the rest only when a name is not found that way or
    the whole list is wanted (``names``, iteration, or a name no entry point has). A ``vmcore run`` so imports the
    device modules its profile uses, not every installed one. A type provided twice is an error
    as soon as both providers are loaded (``vmcore devices`` and ``vmcore check`` load them all).
    """

    def __init__(self, types: dict[str, DeviceType], pm: pluggy.PluginManager | None = None,
                 pending: dict[str, EntryPoint] | None = None) -> None:
        self._types = types
        self._pm = pm
        #: Entry points not imported yet, by name.
        self._pending: dict[str, EntryPoint] = pending if pending is not None else {}

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> "DeviceRegistry":
        """Every type of the plugins ``pm`` holds (all loaded now)."""
        registry = cls({}, pm)
        for impl in pm.hook.vmcore_device_types.get_hookimpls():
            registry._add(impl, pm.get_name(impl.plugin) or repr(impl.plugin))
        return registry

    @classmethod
    def default(cls, plugins: Iterable[Any] = ()) -> "DeviceRegistry":
        """Every installed plugin (entry points, imported as needed) plus ``plugins`` (now)."""
        pm = make_plugin_manager(load_entry_points=False, plugins=plugins)
        pending: dict[str, EntryPoint] = {}
        for ep in entry_points(ENTRY_POINT_GROUP):
            # As pluggy's own loading does: a name taken (by a plugin given here, or an earlier
            # distribution's entry point) is not loaded again, nor a blocked one.
            if ep.name not in pending and pm.get_plugin(ep.name) is None and not pm.is_blocked(ep.name):
                pending[ep.name] = ep
        registry = cls({}, pm, pending)
        for impl in pm.hook.vmcore_device_types.get_hookimpls():
            registry._add(impl, pm.get_name(impl.plugin) or repr(impl.plugin))
        return registry

    def _add(self, impl: Any, plugin_name: str) -> None:
        """Take the types one hook implementation returns, checking each."""
        types = self._types
        for dev_cls in impl.function() or ():
            name = getattr(dev_cls, "type_name", None)
            if not isinstance(name, str) or not name:
                raise DeviceTypeError(f"plugin {plugin_name}: {dev_cls!r} has no type_name")
            if not attrs.has(getattr(dev_cls, "Config", None)):
                raise DeviceTypeError(f"plugin {plugin_name}: device type {name!r} needs an attrs Config class")
            if name not in types and name in self._pending and name != plugin_name:
                self._load(name)  # the entry point named after this type may provide it too
            if name in types:
                raise DeviceTypeError(
                    f"device type {name!r} is provided twice: by {types[name].module} "
                    f"(plugin {types[name].plugin}) and {dev_cls.__module__} (plugin {plugin_name})"
                )
            types[name] = DeviceType(name, dev_cls, plugin_name)

    def _load(self, ep_name: str) -> None:
        """Import the pending entry point ``ep_name`` and take its types."""
        ep = self._pending.pop(ep_name)
        assert self._pm is not None
        plugin = ep.load()
        self._pm.register(plugin, name=ep.name)
        for impl in self._pm.hook.vmcore_device_types.get_hookimpls():
            if impl.plugin is plugin:
                self._add(impl, ep.name)

    def _load_all(self) -> None:
        while self._pending:
            self._load(next(iter(self._pending)))

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except DeviceTypeError:
            return False
        return True

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._load_all()
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def names(self) -> list[str]:
        self._load_all()
        return sorted(self._types)

    def get(self, name: str) -> DeviceType:
        """The type called ``name``; a DeviceTypeError naming the nearest known name if none is."""
        if name not in self._types and name in self._pending:
            self._load(name)
        if name not in self._types:
            self._load_all()  # a type its entry point does not name, or none has it
        try:
            return self._types[name]
        except KeyError:
            from difflib import get_close_matches

            near = get_close_matches(name, list(self._types), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            known = ", ".join(sorted(self._types)) or "none installed"
            raise DeviceTypeError(f"unknown device type {name!r}{hint}; known types: {known}") from None
