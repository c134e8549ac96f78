"""Hot reload (vmcore.reload): a device's module imported again and its instance rebuilt from its
saved state while a guest runs against it, all or nothing."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO
from vmcore.accel import RunLimits
from vmcore.machine import Machine
from vmcore.plugins import DeviceRegistry, make_plugin_manager
from vmcore.profile import Profile
from vmcore.reload import ReloadError

_MODULE = '''
import attrs
from vmcore.bus import Region, Space
from vmcore.device import Device, prop
from vmcore.hookspecs import hookimpl


@attrs.frozen
class CounterConfig:
    port: int = prop(0x300, "Its port.")


class Counter(Device):
    """A port whose reads count."""

    type_name = "reload-counter"
    Config = CounterConfig

    class State:
        count: int

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.count = 0

    def regions(self):
        return [Region(Space.PIO, self.config.port, 1, self.read, None, sizes=(1,))]

    def read(self, offset, size):
        self.count += 1
        return {answer}


@hookimpl
def vmcore_device_types():
    return [Counter]
'''
#: Version 1 counts up to 0x20 and stays there; version 2 answers 0xFF once the count it carried
#: is past 0x20, and 0x01 before (a device rebuilt without its state would say 0x01 first).
V1 = "min(self.count, 0x20)"
V2 = "0xFF if self.count > 0x20 else 0x01"

# in al, dx (DX = 0x300); out 0xF1, al; cmp al, 0xFF; jne back; mov dx, 0x501; out dx, al; hlt
_GUEST = bytes([0xBA, 0x00, 0x03,        # mov dx, 0x300
                0xEC,                    # in al, dx
                0xE6, 0xF1,              # out 0xF1, al
                0x3C, 0xFF,              # cmp al, 0xFF
                0x75, 0xF9,              # jne back to the in
                0xBA, 0x01, 0x05,        # mov dx, 0x501
                0xEE,                    # out dx, al: debug-exit
                0xF4])


@pytest.fixture
def counter_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    module = tmp_path / "reload_counter_plugin.py"
    module.write_text(_MODULE.replace("{answer}", V1))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "reload_counter_plugin", raising=False)
    plugin = importlib.import_module("reload_counter_plugin")
    (tmp_path / "guest.bin").write_bytes(_GUEST)
    profile = Profile.from_yaml(
        "cpu: {mode: real, entry: 0x0}\n"
        f"memory:\n  ram: {{base: 0x0, size: 4K, kind: ram, image: {tmp_path / 'guest.bin'}}}\n"
        "irqchip: userspace\n"
        "devices:\n"
        "  counter: {type: reload-counter}\n"
        "  console: {type: debugcon, port: 0xF1, backend: memory}\n"
        "  exit: {type: debug-exit, port: 0x501}\n"
        "  pic: {type: i8259}\n"
        "limits: {timeout: 60}\n")
    registry = DeviceRegistry.default(plugins=[plugin])
    machine = Machine.build(profile, registry)
    yield machine, module
    machine.close()
    sys.modules.pop("reload_counter_plugin", None)


def _wait_until(condition: Any, seconds: float = 30) -> None:
    """Poll ``condition()`` from a helper thread while the guest runs (at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_a_device_reloaded_under_a_running_guest_answers_with_the_new_code_and_its_old_state(counter_machine) -> None:
    machine, module = counter_machine
    console = machine.devices["console"]
    said: list[str] = []

    def edit_and_reload() -> None:
        _wait_until(lambda: console.output.count(0x20) >= 50)  # spinning on version 1
        module.write_text(_MODULE.replace("{answer}", V2))
        machine.clock.call_soon_threadsafe(lambda: said.append(machine.reload_device("counter")))

    editor = threading.Thread(target=edit_and_reload)
    editor.start()
    stop = machine.run("tcg", RunLimits(timeout=60))
    editor.join()
    output = bytes(console.output)
    assert (stop.kind, stop.status) == ("exit", 0xFF * 2 + 1), stop.message
    assert output[:0x20] == bytes(range(1, 0x21)) and output.endswith(b"\x20\xff")
    assert b"\x01" not in output[0x20:]  # the count went on from the running device's
    assert said and said[0].startswith("reloaded counter (reload-counter) from ")
    assert type(machine.devices["counter"]).__module__ == "reload_counter_plugin"
    assert machine.devices["counter"].count == len(output)


def test_a_module_that_no_longer_imports_leaves_the_running_device_in_place(counter_machine) -> None:
    machine, module = counter_machine
    before = machine.devices["counter"]
    module.write_text("def broken(:\n")
    with pytest.raises(ReloadError, match=r"counter: reload_counter_plugin does not import: SyntaxError"):
        machine.reload_device("counter")
    assert machine.devices["counter"] is before
    assert machine.pio.read(0x300, 1) == 1  # still served by the running one


def test_a_field_the_new_state_adds_starts_as_the_new_code_sets_it(counter_machine) -> None:
    machine, module = counter_machine
    assert [machine.pio.read(0x300, 1) for _ in range(3)] == [1, 2, 3]
    module.write_text(_MODULE.replace("{answer}", "self.count + self.offset")
                      .replace("        count: int\n", "        count: int\n        offset: int\n")
                      .replace("        self.count = 0\n", "        self.count = 0\n        self.offset = 0x40\n"))
    said = machine.reload_device("counter")
    assert "new fields as the new code starts them: offset" in said, said
    assert machine.pio.read(0x300, 1) == 4 + 0x40  # the count carried, the new field as the constructor set it


def test_a_state_of_another_version_is_refused_and_nothing_moves(counter_machine) -> None:
    machine, module = counter_machine
    before = machine.devices["counter"]
    module.write_text(_MODULE.replace("{answer}", V1).replace("        count: int\n", "        version = 2\n        count: int\n"))
    with pytest.raises(ReloadError, match=r"the new code's state does not fit what the running device saved: "
                                          r".*version 1; this reload-counter reads version 2"):
        machine.reload_device("counter")
    assert machine.devices["counter"] is before
    assert [owner for _region, owner in machine.pio.claims()].count("counter") == 1
    assert machine.pio.read(0x300, 1) == 1  # still served by the running one


def test_an_unknown_device_says_which_there_are(counter_machine) -> None:
    machine, _module = counter_machine
    with pytest.raises(ReloadError, match="no device 'nosuch'; devices: counter, console, exit, pic"):
        machine.reload_device("nosuch")


def _reload_mid_run(profile: Path, accel: str, name: str, when: Any, overrides: tuple[str, ...] = ()) -> Any:
    """Run ``profile`` on ``accel``, reloading device ``name`` once ``when(events)`` holds for the
    IRQ and bus events so far (``when`` None: not at all); (stop, console output, events, what the reload said, old, new)."""
    events: list[str] = []
    with Machine.build(Profile.load(profile, ("devices.console.backend=memory", *overrides))) as machine:
        machine.set_tracer(lambda txn: events.append(str(txn)))
        machine.set_irq_tracer(lambda event: events.append(str(event)))
        old, said = machine.devices[name], []

        def reload_when_ready() -> None:
            _wait_until(lambda: when(events))
            machine.clock.call_soon_threadsafe(lambda: said.append(machine.reload_device(name)))

        editor = threading.Thread(target=reload_when_ready)
        if when is not None:
            editor.start()
        stop = machine.run(accel, RunLimits(timeout=60))
        if when is not None:
            editor.join()
        return stop, bytes(machine.devices["console"].output), events, said, old, machine.devices[name]


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_the_8259_reloaded_between_timer_ticks_goes_on_delivering_them(accel: str) -> None:
    """rm-timer halts for ten PIT ticks through the 8259 (the CPU's own controller here): the PIC
    reloaded after the third, the line routing and the CPU take the new one, and the count ends at
    ten, each delivery traced as before."""
    if accel == "kvm":
        from tests.helpers import skip_without_kvm

        skip_without_kvm()
    delivered = lambda events: sum(event.startswith("intr vector") for event in events)  # noqa: E731
    stop, output, events, said, old, new = _reload_mid_run(REPO / "machines" / "rm-timer.yaml", accel, "pic",
                                                           lambda events: delivered(events) >= 3)
    assert output == b"rm ticks: 10\n" and (stop.kind, stop.status) == ("exit", 39), stop.message
    assert said and said[0].startswith("reloaded pic (i8259) from ") and new is not old
    assert delivered(events) == 10


def test_a_local_apic_reloaded_mid_run_keeps_its_timer_and_msrs() -> None:
    """tsc-deadline drives the lapic model's TSC-deadline timer through its MSRs (the run core's MSR
    table) and polls its IRR: the lapic reloaded once its first checks passed, the MSR writes that
    follow reach the new one (the CPU's controller rebound) and every check passes as before."""
    whole = _reload_mid_run(REPO / "machines" / "tsc-deadline.yaml", "tcg", "apic", None)
    stop, output, _events, said, old, new = _reload_mid_run(
        REPO / "machines" / "tsc-deadline.yaml", "tcg", "apic", lambda events: len(events) >= 8)  # after R
    assert output == whole[1] == b"CMRTZPDOI\n" and (stop.kind, stop.status) == (whole[0].kind, whole[0].status)
    assert said and said[0].startswith("reloaded apic (lapic) from ") and new is not old


def test_an_io_apic_reloaded_takes_the_old_ones_links() -> None:
    profile = Profile.from_yaml(
        "cpu: {mode: real, entry: 0x0}\n"
        "memory:\n  ram: {base: 0x0, size: 4K, kind: ram}\n"
        "irqchip: userspace\n"
        "devices:\n"
        "  pic: {type: i8259}\n"
        "  apic: {type: lapic}\n"
        "  ioapic: {type: ioapic}\n")
    with Machine.build(profile) as machine:
        old, apic = machine.devices["ioapic"], machine.devices["apic"]
        from vmcore.wiring import cpu_interrupts

        cpu_interrupts(machine.devices.values(), machine.controller)  # wired as a run wires them
        assert apic in old.locals and old.eoi in apic.eoi_listeners
        machine.reload_device("ioapic")
        new = machine.devices["ioapic"]
        assert new is not old and apic in new.locals
        assert new.eoi in apic.eoi_listeners and old.eoi not in apic.eoi_listeners


_PC = (REPO / "machines" / "pc-bios.yaml", ("devices.com1.backend=memory", "devices.debuglog.backend=memory"))


@pytest.mark.parametrize("names", [("ide",), ("i440fx", "ide")])
def test_pci_functions_reloaded_mid_boot_keep_their_slot_bars_and_memory_windows(names: tuple[str, ...]) -> None:
    """SeaBIOS boots on: the piix-ide function reloaded once the BIOS has mapped its BAR4 (the new
    instance takes 00:01.1 and BAR4 maps again where its loaded configuration says), the i440fx
    too (its PAM and SMRAM windows the new instance's, the running one's dropped)."""
    with Machine.build(Profile.load(_PC[0], _PC[1])) as machine:
        ide = machine.devices["ide"]
        windows = sorted(overlay.name for overlay in machine.memory.overlays())
        said: list[str] = []
        mapped: list[int | None] = []

        def reload_when_mapped() -> None:
            _wait_until(lambda: machine.pci.mapping(ide, 4) is not None)
            mapped.append(machine.pci.mapping(ide, 4))
            for name in names:
                machine.clock.call_soon_threadsafe(lambda name=name: said.append(machine.reload_device(name)))

        editor = threading.Thread(target=reload_when_mapped)
        editor.start()
        stop = machine.run("tcg", RunLimits(timeout=60))
        editor.join()
        assert (stop.kind, stop.status) == ("exit", 85), stop.message
        assert b"hello from int 10h" in bytes(machine.devices["com1"].output)
        assert [line.split(" (")[0] for line in said] == [f"reloaded {name}" for name in names]
        new = machine.devices["ide"]
        assert new is not ide and machine.pci.function(1, 1) is new
        assert mapped[0] is not None and machine.pci.mapping(new, 4) == mapped[0]
        owners = {owner for _region, owner in machine.pio.claims()}
        assert "ide:bar4" in owners and machine.pio.find(mapped[0])[1] == "ide:bar4"
        assert sorted(overlay.name for overlay in machine.memory.overlays()) == windows  # none twice


def test_a_pci_function_whose_reload_fails_stays_in_its_slot_with_its_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    import vmcore.snapshot
    from vmcore.snapshot import SnapshotError

    with Machine.build(Profile.load(_PC[0], _PC[1])) as machine:
        machine.pci.assign()  # BARs placed as firmware would
        ide, host = machine.devices["ide"], machine.devices["i440fx"]
        base, windows = machine.pci.mapping(ide, 4), machine.memory.overlays()
        claims = sorted((region.base, owner) for region, owner in machine.pio.claims())

        def refuse(device, saved):  # type: ignore[no-untyped-def]
            raise SnapshotError("made to fail")

        monkeypatch.setattr(vmcore.snapshot, "load_device", refuse)  # reload_device imports it when called
        for name in ("ide", "i440fx"):
            with pytest.raises(ReloadError, match=f"{name}: the new code's state does not fit .*made to fail"):
                machine.reload_device(name)
        assert machine.devices["ide"] is ide and machine.pci.function(1, 1) is ide
        assert machine.devices["i440fx"] is host and machine.pci.function(0, 0) is host
        assert base is not None and machine.pci.mapping(ide, 4) == base
        assert sorted((region.base, owner) for region, owner in machine.pio.claims()) == claims
        assert machine.memory.overlays() == windows  # the new instance's windows gone again
        monkeypatch.undo()
        said = machine.reload_device("ide")  # and once it can, it does
        assert said.startswith("reloaded ide (piix-ide) from ") and machine.pci.mapping(machine.devices["ide"], 4) == base


def test_the_watcher_reloads_a_device_whose_module_file_changed(counter_machine) -> None:
    from vmcore.reload import ReloadWatcher

    machine, module = counter_machine
    console = machine.devices["console"]
    said: list[str] = []

    def edit() -> None:
        _wait_until(lambda: console.output.count(0x20) >= 50)
        module.write_text(_MODULE.replace("{answer}", V2) + "\n# edited\n")

    watcher = ReloadWatcher(machine, said.append, interval=0.05)
    editor = threading.Thread(target=edit)
    editor.start()
    try:
        stop = machine.run("tcg", RunLimits(timeout=60))
    finally:
        editor.join()
        watcher.close()
    assert (stop.kind, stop.status) == ("exit", 0xFF * 2 + 1), stop.message
    assert len(said) == 1 and said[0].startswith("reloaded counter (reload-counter)"), said
    assert b"\x01" not in bytes(console.output)[0x20:]
