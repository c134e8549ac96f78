"""Finding device types: the plugin manager and the registry built from it."""

from __future__ import annotations

import inspect
from typing import Any, Iterable

import attrs
import pluggy

from . import hookspecs
from .device import PropertyInfo, build_config, properties

ENTRY_POINT_GROUP = "vmcore"


class DeviceTypeError(Exception):
    """A device type that is unknown, or a plugin that provides a broken one."""


def make_plugin_manager(load_entry_points: bool = True, plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A plugin manager for project ``vmcore``: entry-point plugins plus ``plugins``."""
    pm = pluggy.PluginManager("vmcore")
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in plugins:
        pm.register(plugin)
    return pm


@attrs.frozen
class DeviceType:
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
    """Device type name -> class, collected once from every plugin's hook."""

    def __init__(self, types: dict[str, DeviceType]) -> None:
        self._types = types

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> "DeviceRegistry":
        types: dict[str, DeviceType] = {}
        for impl in pm.hook.vmcore_device_types.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
            for dev_cls in impl.function() or ():
                name = getattr(dev_cls, "type_name", None)
                if not isinstance(name, str) or not name:
                    raise DeviceTypeError(f"plugin {plugin_name}: {dev_cls!r} has no type_name")
                if not attrs.has(getattr(dev_cls, "Config", None)):
                    raise DeviceTypeError(f"plugin {plugin_name}: device type {name!r} needs an attrs Config class")
                if name in types:
                    raise DeviceTypeError(
                        f"device type {name!r} is provided twice: by {types[name].module} "
                        f"(plugin {types[name].plugin}) and {dev_cls.__module__} (plugin {plugin_name})"
                    )
                types[name] = DeviceType(name, dev_cls, plugin_name)
        return cls(types)

    @classmethod
    def default(cls, plugins: Iterable[Any] = ()) -> "DeviceRegistry":
        """Every installed plugin (entry points) plus ``plugins``."""
        return cls.from_plugins(make_plugin_manager(plugins=plugins))

    def __contains__(self, name: str) -> bool:
        return name in self._types

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def names(self) -> list[str]:
        return sorted(self._types)

    def get(self, name: str) -> DeviceType:
        try:
            return self._types[name]
        except KeyError:
            from difflib import get_close_matches

            near = get_close_matches(name, list(self._types), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            known = ", ".join(sorted(self._types)) or "none installed"
            raise DeviceTypeError(f"unknown device type {name!r}{hint}; known types: {known}") from None
