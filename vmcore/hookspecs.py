"""Every hook a vmcore plugin can implement (pluggy project ``vmcore``).

A plugin is any module or object with ``@hookimpl``-decorated functions, found
through the ``vmcore`` entry-point group. Hooks run while a machine is built,
never on the per-exit path.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("vmcore")
hookimpl = pluggy.HookimplMarker("vmcore")


@hookspec
def vmcore_device_types() -> list[type]:
    """Return the device classes this plugin provides.

    Each class has ``type_name`` (the name profiles use in ``devices: ...: type:``),
    ``Config`` (a frozen attrs class of properties) and ``create(config, ctx)``;
    see :class:`vmcore.device.Device`.
    """
