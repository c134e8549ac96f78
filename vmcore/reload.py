"""Hot reload: a device's module imported again and its instance rebuilt from its saved state,
under a running guest (the monitor's ``reload``, or ``vmcore run --reload-on-change``).

A device author edits a model while a guest runs against it; the machine keeps going with the
new code. :func:`reload_device` does what a snapshot does for one device, in place: the device
is saved (its declared ``State``, vmcore.snapshot), its module re-imported, a new instance built
from the same configuration and loaded with the saved state, and the buses, timers and host end
moved over to it. A field the new ``State`` adds starts as the new code sets it; one it drops is
left behind. All or nothing: a module that does not import, a type that is gone, a ``State`` of
another version, or regions that no longer fit the bus leave the running device as it was, and
say why.

What moves over as it is: the device's IRQ lines (the machine's, by number), its host end
(``backend``, with its open files, sockets and readers, and ``output``, the memory backend's
buffer). A PCI function's slot goes to the new instance, its BARs mapped again where its loaded
configuration space puts them; memory the device decodes itself (its overlays: a chipset's PAM
windows) is the new instance's once it has loaded the state. An interrupt controller (the 8259
pair, a local or I/O APIC) is wired where the old one was (Machine.replace_controller): the IRQ
lines' routing, the APICs' links and, during a run, the CPU's own controller.

It runs on the machine's thread, between two exits or while the monitor holds the machine.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .bus import BusError
from .device import PropertyError, build_config, resolve_paths
from .irq import InterruptController, IoInterruptController, LocalInterruptController
from .wiring import build_device, claim_regions

if TYPE_CHECKING:
    from .machine import Machine

#: Attributes of the running instance the new one takes over: the host end, not model state.
CARRIED = ("backend", "output")


class ReloadError(Exception):
    """A device that cannot be reloaded now (one line, why); the running one is left as it was."""


def reload_device(machine: "Machine", name: str) -> str:
    """Reload device ``name`` of ``machine`` (see the module's docstring); what was done, in one line."""
    from .snapshot import SnapshotError, load_device, save_device, savable

    device = machine.devices.get(name)
    if device is None:
        raise ReloadError(f"no device {name!r}; devices: {', '.join(machine.devices)}")
    old_cls = type(device)
    if not savable(device):
        raise ReloadError(f"{name}: its type declares no State, so its state cannot be carried into new code "
                          "(docs/device-guide.md, section 11)")
    spec = next(spec for spec in machine.profile.devices if spec.name == name)
    try:
        saved = save_device(device)
    except SnapshotError as exc:
        raise ReloadError(f"{name}: cannot save its state: {exc}") from None

    module_name = old_cls.__module__
    try:
        module = importlib.reload(sys.modules[module_name])
    except Exception as exc:  # noqa: BLE001 - a syntax error, an import that fails: the author's to fix
        raise ReloadError(f"{name}: {module_name} does not import: {type(exc).__name__}: {exc}") from None
    new_cls = getattr(module, old_cls.__name__, None)
    if not isinstance(new_cls, type) or getattr(new_cls, "type_name", None) != old_cls.type_name:
        raise ReloadError(f"{name}: {module_name} no longer defines {old_cls.__name__} (type {old_cls.type_name!r})")
    folders = {key: Path(where.file).parent for key, where in spec.prop_where.items() if where.line and where.file}
    # A PCI function's slot is freed for the new instance, which attaches itself there as it is
    # built; its BARs map again once its configuration space is loaded (state_loaded).
    pci_held = machine.pci.detach(name) if machine.pci is not None else []
    overlays = machine.memory.overlays()
    try:
        config = build_config(new_cls.Config, resolve_paths(new_cls.Config, spec.props, folders))
        new = build_device(new_cls, config, name, clock=machine.clock, memory=machine.memory, mmio=machine.mmio,
                           irq_lines=machine.irq_lines, pci=machine.pci, tsc=machine.tsc)
    except (PropertyError, ValueError, TypeError, OSError) as exc:
        _drop_overlays(machine, [o for o in machine.memory.overlays() if o not in overlays])
        _put_back(machine, pci_held)
        raise ReloadError(f"{name}: the new {old_cls.__name__} cannot be built from its properties: {exc}") from None
    # Ranges of memory a device decodes itself (a chipset's PAM and SMRAM windows): the new instance
    # made its own; the running one's are those it made under the same names, dropped once the new
    # ones show what the loaded state says (the older overlay wins until then: no gap).
    made = [o for o in machine.memory.overlays() if o not in overlays]
    stale = [o for o in overlays if o.name in {m.name for m in made}]
    saved, added, dropped = _fit(saved, new)
    try:
        load_device(new, saved)
    except SnapshotError as exc:
        _cancel_timers(machine, new)
        _drop_overlays(machine, made)
        _put_back(machine, pci_held)
        raise ReloadError(f"{name}: the new code's state does not fit what the running device saved: {exc}") from None

    buses = (machine.pio, machine.mmio)
    old_claims = [(bus, region) for bus in buses for region, owner in bus.claims() if owner == name]
    for bus, region in old_claims:
        bus.unclaim(region)
    try:
        claim_regions(list(new.regions()), name, machine.pio, machine.mmio)
    except BusError as exc:
        for bus, region in old_claims:
            bus.claim(region, name)
        _cancel_timers(machine, new)
        _drop_overlays(machine, made)
        _put_back(machine, pci_held)
        raise ReloadError(f"{name}: the new code's regions do not fit the buses: {exc}") from None

    _cancel_timers(machine, device)
    _drop_overlays(machine, stale)
    for attribute in CARRIED:
        if hasattr(device, attribute) and hasattr(new, attribute):
            setattr(new, attribute, getattr(device, attribute))
    _rebind_input(getattr(new, "backend", None), device, new)
    machine.devices[name] = new
    if isinstance(device, (InterruptController, LocalInterruptController, IoInterruptController)):
        machine.replace_controller(device, new)
    spaces = sorted({region.space.value for region in new.regions()})
    changes = "".join(f"; {what}: {', '.join(names)}" for what, names in
                      (("new fields as the new code starts them", added), ("fields dropped", dropped)) if names)
    return (f"reloaded {name} ({old_cls.type_name}) from {getattr(module, '__file__', module_name)} with its state "
            f"({len(saved.get('fields', {}))} fields{changes}; regions on {', '.join(spaces) or 'no bus'})")


def _drop_overlays(machine: "Machine", overlays: list[Any]) -> None:
    with machine.memory.transaction():
        for overlay in overlays:
            machine.memory.remove_overlay(overlay)


def _put_back(machine: "Machine", pci_held: list[Any]) -> None:
    """A reload that failed: the running device's PCI functions back in their slots (taking off
    any the new instance attached), its BARs mapped where they were."""
    if pci_held and machine.pci is not None:
        machine.pci.reattach(pci_held)


def _fit(saved: dict[str, Any], new: Any) -> tuple[dict[str, Any], list[str], list[str]]:
    """The running device's saved state for the new code: a field the new State adds keeps the value
    the new instance started with, a field it no longer has is dropped (editing a model while it
    runs often adds one). A changed version (the author's "incompatible") still refuses, in load_device."""
    from .snapshot import save_device, state_fields

    state_cls = getattr(type(new), "State", None)
    if state_cls is None or getattr(new, "load_state", None) is not None:
        return saved, [], []
    expected = state_fields(state_cls)
    fields = saved["fields"]
    added = [field for field in expected if field not in fields]
    dropped = sorted(set(fields) - set(expected))
    if not added and not dropped:
        return saved, [], []
    fresh = save_device(new)["fields"] if added else {}
    merged = {field: fields[field] if field in fields else fresh[field] for field in expected}
    return dict(saved, fields=merged), added, dropped


def _cancel_timers(machine: "Machine", device: Any) -> None:
    """Cancel every armed timer of ``device`` (or its parts): the new instance armed its own."""
    from .machine import _timer_owners

    owner = _timer_owners({"device": device})
    for timer in machine.clock.timers():
        if owner(timer.callback) is not None:
            timer.cancel()


def _rebind_input(backend: Any, old: Any, new: Any) -> None:
    """A host end's input wake-up calls the running device's method: the new instance's from now on."""
    buffer = getattr(backend, "input", None)
    ready = getattr(buffer, "ready", None)
    if ready is not None and getattr(ready, "__self__", None) is old:
        buffer.ready = getattr(new, ready.__func__.__name__)


class ReloadWatcher:
    """Reloads a device when its module's file changes (``vmcore run --reload-on-change``): a
    thread looks at the files' modification times every ``interval`` seconds and posts the reload
    to the machine's thread; each outcome is logged."""

    def __init__(self, machine: "Machine", log: Callable[[str], None], interval: float = 0.5) -> None:
        self._machine = machine
        self._log = log
        self._interval = interval
        self._stop = threading.Event()
        self._files = self._watched()
        self._thread = threading.Thread(target=self._loop, name="vmcore-reload", daemon=True)
        self._thread.start()

    def _watched(self) -> dict[str, tuple[str, float]]:
        files: dict[str, tuple[str, float]] = {}
        for name, device in self._machine.devices.items():
            path = getattr(sys.modules.get(type(device).__module__), "__file__", None)
            if path:
                try:
                    files[name] = (path, os.stat(path).st_mtime)
                except OSError:
                    pass
        return files

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            for name, (path, mtime) in list(self._files.items()):
                try:
                    now = os.stat(path).st_mtime
                except OSError:
                    continue
                if now != mtime:
                    self._files[name] = (path, now)
                    self._machine.clock.call_soon_threadsafe(lambda name=name: self._reload(name))

    def _reload(self, name: str) -> None:
        try:
            self._log(reload_device(self._machine, name))
        except ReloadError as exc:
            self._log(f"reload: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

