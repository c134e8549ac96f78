"""Device state for snapshots (vmcore.snapshot): declared States, saved and loaded, and the
completeness check that a device loaded from a snapshot goes on as the one it was saved from."""

from __future__ import annotations

import collections
import datetime
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import as_if_from_kvm, rewrite_snapshot, vmcore
from vmcore.clock import ManualClock
from vmcore.plugins import DeviceRegistry
from vmcore.snapshot import Divergence, SnapshotError, check_device, load_device, save_device, savable, state_fields
from vmcore.stop import STATUS

STATUS_HOST_ERROR = STATUS["host-error"]

#: Every built-in type declares its state, and each must pass the check.
SAVABLE = ["acpi-pm", "cmos-rtc", "debug-exit", "debugcon", "fw-cfg", "i440fx", "i8042", "i8254", "i8259", "ide",
           "ioapic", "lapic", "pc-testdev", "pci-testdev", "piix-ide", "piix3", "uart16550", "virtio-blk",
           "virtio-console", "virtio-rng"]


def test_every_built_in_type_declares_its_state() -> None:
    registry = DeviceRegistry.default()
    assert [t.name for t in registry if savable(t.cls)] == [t.name for t in registry] == SAVABLE


@pytest.mark.parametrize("name", SAVABLE)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_device_loaded_from_a_snapshot_goes_on_as_the_original(name: str, seed: int) -> None:
    assert check_device(name, seed=seed) == []


class _Part:
    @attrs.define
    class State:
        value: int

    def __init__(self) -> None:
        self.value = 0


class _Thing:
    type_name = "thing"

    @attrs.define
    class State:
        version = 2  # a ClassVar by its lack of annotation
        number: int
        flag: bool
        text: str
        nothing: None
        data: bytes
        buffer: bytearray
        pair: tuple[int, int]
        queue: collections.deque[int]
        table: dict[int, int]
        when: datetime.datetime
        timer: Any
        idle: Any
        part: _Part

    def __init__(self, clock: ManualClock) -> None:
        self.number, self.flag, self.text, self.nothing = 0, False, "", None
        self.data, self.buffer, self.pair = b"", bytearray(), (0, 0)
        self.queue: collections.deque[int] = collections.deque(maxlen=4)
        self.table: dict[int, int] = {}
        self.when = datetime.datetime(2000, 1, 1)
        self.fired: list[int] = []
        self.timer = clock.timer(lambda: self.fired.append(clock.now()))
        self.idle = clock.timer(lambda: self.fired.append(-1))
        self.part = _Part()


def test_every_kind_of_state_value_survives_the_trip_through_json() -> None:
    clock = ManualClock()
    original = _Thing(clock)
    original.number, original.flag, original.text = -5, True, "x"
    original.data, original.buffer, original.pair = b"\x00\xff", bytearray(b"ab"), (1, 2)
    original.queue.extend([1, 2, 3, 4, 5])
    original.table = {1: 10, 2: 20}
    original.when = datetime.datetime(2026, 12, 2, 10, 30, 5)
    original.timer.mod(500)
    original.part.value = 7
    saved = json.loads(json.dumps(save_device(original)))
    assert saved["type"] == "thing" and saved["version"] == 2

    loaded_clock = ManualClock()
    loaded = _Thing(loaded_clock)
    loaded.idle.mod(100)  # armed in the fresh one, not in the saved one: cancelled by the load
    load_device(loaded, saved)
    for name in ("number", "flag", "text", "nothing", "data", "buffer", "pair", "queue", "table", "when"):
        assert getattr(loaded, name) == getattr(original, name), name
        assert type(getattr(loaded, name)) is type(getattr(original, name)), name
    assert loaded.queue.maxlen == 4 and loaded.part.value == 7 and loaded.part is not original.part
    loaded_clock.step(1000)
    assert loaded.fired == [500]  # the timer re-armed at its deadline, the idle one cancelled


def test_a_saved_state_that_does_not_fit_is_refused_with_what_is_wrong() -> None:
    clock = ManualClock()
    saved = save_device(_Thing(clock))
    fresh = _Thing(clock)
    with pytest.raises(SnapshotError, match="the saved state is of a 'other'"):
        load_device(fresh, {**saved, "type": "other"})
    with pytest.raises(SnapshotError, match="version 1; this thing reads version 2"):
        load_device(fresh, {**saved, "version": 1})
    fields = dict(saved["fields"])
    del fields["flag"]
    with pytest.raises(SnapshotError, match=r"missing \['flag'\]"):
        load_device(fresh, {**saved, "fields": {**fields, "extra": 1}})
    with pytest.raises(SnapshotError, match="not a device state"):
        load_device(fresh, {"fields": None})
    with pytest.raises(SnapshotError, match=r"thing.timer: saved as a timer, but the device holds int"):
        fresh.timer = 3
        load_device(fresh, saved)


def test_a_device_without_a_state_or_with_a_value_of_no_known_kind_cannot_be_saved() -> None:
    class Bare:
        type_name = "bare"

    with pytest.raises(SnapshotError, match="'bare' declares no State"):
        save_device(Bare())
    thing = _Thing(ManualClock())
    thing.number = object()  # type: ignore[assignment]
    with pytest.raises(SnapshotError, match="thing.number: a object is not a state value"):
        save_device(thing)


def _forgetting(cls: type, field: str, holder: Any = None) -> type:
    """``cls`` with a State that leaves ``field`` out (of ``holder``'s State when given: a part's)."""
    target = holder if holder is not None else cls
    kept = [name for name in state_fields(target.State) if name != field]
    state = type("State", (), {"__annotations__": {name: "int" for name in kept}})
    if holder is None:
        return type(cls.__name__, (cls,), {"State": state})
    return state


@pytest.mark.parametrize("type_name, field, seed", [("i8042", "_obuf", 2), ("i8042", "_keyboard", 3)])
def test_a_state_that_leaves_a_field_out_is_caught(type_name: str, field: str, seed: int) -> None:
    cls = DeviceRegistry.default().get(type_name).cls
    problems = check_device(_forgetting(cls, field), seed=seed)
    assert len(problems) == 1 and isinstance(problems[0], Divergence)
    assert str(problems[0]).startswith(f"{type_name}: saved after ") and "its State leaves something out" in str(problems[0])


def test_a_part_whose_state_leaves_a_field_out_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmcore_devices import pic

    monkeypatch.setattr(pic._Chip, "State", _forgetting(pic._Chip, "imr", holder=pic._Chip))
    problems = check_device("i8259", seed=2)
    assert len(problems) == 1 and "i8259: saved after" in str(problems[0])


def test_check_snapshot_selftest_runs_the_check_for_each_type_of_a_profile() -> None:
    run = vmcore("check", "rm-timer", "--snapshot-selftest", "--seeds", "2")
    assert run.status == 0, run.stderr
    assert "  snapshot i8254: ok (2 runs of 300 operations" in run.stdout.decode()
    assert "  snapshot i8259: ok" in run.stdout.decode()
    run = vmcore("check", "pc-bios", "--snapshot-selftest", "--seeds", "1")
    assert run.status == 0, run.stdout
    out = run.stdout.decode()
    assert all(f"  snapshot {name}: ok" in out for name in ("i440fx", "piix-ide", "fw-cfg", "uart16550"))


def test_a_type_without_a_state_is_named_by_the_check() -> None:
    cls = DeviceRegistry.default().get("debugcon").cls
    bare = type("Debugcon", (cls,), {"State": None})
    assert check_device(bare) == ["device type 'debugcon' declares no State: it cannot be saved in a snapshot"]


# --- a whole machine: vmcore run --snapshot / --restore -------------------------------------------


def _split(profile: str, after: int, folder: Path, *extra: str) -> tuple[Any, Any, str]:
    """Run ``profile`` saving the machine after ``after`` exits, then go on from the file: both runs,
    and their text traces joined."""
    snap, first, second = folder / f"at{after}.snap", folder / f"a{after}.txt", folder / f"b{after}.txt"
    saved = vmcore("run", profile, "--accel", "tcg", "--snapshot", str(snap), "--snapshot-after", str(after),
                   "--trace-file", str(first), *extra)
    restored = vmcore("run", profile, "--accel", "tcg", "--restore", str(snap), "--trace-file", str(second), *extra)
    return saved, restored, first.read_text() + second.read_text()


@pytest.mark.parametrize("after", [1, 2, 3, 4, 5])
def test_a_run_split_by_a_snapshot_ends_as_the_whole_run(after: int, tmp_path: Path) -> None:
    """mode-switch goes real -> protected -> long -> compatibility -> real mode, a letter in each:
    saved after any of its writes and restored, the two runs print and trace what one run does,
    and end as it ends."""
    whole_trace = tmp_path / "whole.txt"
    whole = vmcore("run", "mode-switch", "--accel", "tcg", "--trace-file", str(whole_trace))
    saved, restored, trace = _split("mode-switch", after, tmp_path)
    assert saved.status == 0 and "vmcore: saved the machine after" in saved.stderr, saved.stderr
    assert saved.stdout + restored.stdout == whole.stdout == b"RPLCB\n"
    assert trace == whole_trace.read_text()
    assert restored.status == whole.status == 0


@pytest.mark.parametrize("after", [400, 3000])
def test_seabios_restored_from_the_middle_of_its_post_boots_on(after: int, tmp_path: Path) -> None:
    quiet = ("--set", "devices.com1.backend=memory", "--set", "devices.debuglog.backend=memory")
    saved, restored, _trace = _split("pc-bios", after, tmp_path, *quiet)
    assert saved.status == 0, saved.stderr[-2000:]
    assert restored.status == 85, restored.stderr[-2000:]  # the boot sector's debug-exit, as a whole boot


def test_a_snapshot_that_does_not_fit_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    snap = tmp_path / "m.snap"
    assert vmcore("run", "mode-switch", "--accel", "tcg", "--snapshot", str(snap), "--snapshot-after", "3").status == 0
    data = snap.read_bytes()
    cases = {
        "corrupt": (data[:200] + bytes([data[200] ^ 1]) + data[201:], "truncated or corrupt"),
        "truncated": (data[:-100], "truncated or corrupt"),
        "not one": (b"hello, world\n" * 10, "not a vmcore snapshot"),
    }
    for name, (content, message) in cases.items():
        bad = tmp_path / f"{name}.snap"
        bad.write_bytes(content)
        run = vmcore("run", "mode-switch", "--accel", "tcg", "--restore", str(bad))
        assert run.status == 2 and f"vmcore: --restore: {bad}: {message}" in run.stderr, (name, run.stderr)
    other = vmcore("run", "hello", "--accel", "tcg", "--restore", str(snap))
    assert other.status == 2 and "memory ram: 65536 bytes in the snapshot, 4096 here" in other.stderr
    pc = vmcore("run", "pc-bios", "--accel", "tcg", "--restore", str(snap))
    assert pc.status == 2 and "its devices are not this machine's" in pc.stderr

    # A device state that does not load is found before anything is written.
    from vmcore.machine import Machine, resolve_profile
    from vmcore.profile import Profile
    from vmcore.snapshot import read_snapshot, write_snapshot

    header, _data = read_snapshot(snap, limit=1 << 30)
    header["devices"]["console"]["version"] = 99
    with Machine.build(Profile.load(resolve_profile("mode-switch"))) as machine:
        ram = machine.memory.block("ram")
        before = bytes(ram.view)
        blocks = [(block.name, block.view, block.readonly) for block in machine.memory.blocks()]
        rewritten = tmp_path / "v99.snap"
        write_snapshot(rewritten, {k: v for k, v in header.items() if k not in ("format", "memory")},
                       [(name, memoryview(bytearray(len(view))), readonly) for name, view, readonly in blocks])
        with pytest.raises(SnapshotError, match="version 99"):
            machine.restore_snapshot(rewritten)
        assert bytes(ram.view) == before


def test_snapshot_options_are_checked_before_the_run(tmp_path: Path) -> None:
    alone = vmcore("run", "hello", "--snapshot", str(tmp_path / "x.snap"))
    assert alone.status == 2 and "--snapshot FILE and --snapshot-after EXITS go together" in alone.stderr
    nowhere = vmcore("run", "hello", "--snapshot", str(tmp_path / "no" / "x.snap"), "--snapshot-after", "1")
    assert nowhere.status == 2 and "does not exist" in nowhere.stderr


def test_a_vcpu_from_the_other_accelerator_comes_over_in_its_portable_form_or_says_why_not(tmp_path: Path) -> None:
    """A KVM snapshot's vCPU reaches the software CPU through its portable form (vmcore.accel.portable);
    made here from a software-CPU snapshot with its engine record dropped, so no KVM is needed."""
    snap = tmp_path / "rm.snap"
    saved = vmcore("run", "rm-timer", "--accel", "tcg", "--snapshot", str(snap), "--snapshot-after", "15")
    assert saved.status == 0, saved.stderr
    rewrite_snapshot(snap, as_if_from_kvm)
    moved = vmcore("run", "rm-timer", "--accel", "tcg", "--restore", str(snap))
    assert saved.stdout + moved.stdout == b"rm ticks: 10\n" and moved.status == 39, moved.stderr

    rewrite_snapshot(snap, lambda header: header["cpu"]["portable"].update(refused="KVM was delivering an NMI"))
    refused = vmcore("run", "rm-timer", "--accel", "tcg", "--restore", str(snap))
    assert refused.status == 2 and ("vmcore: config-error: the snapshot's vCPU cannot move from kvm to tcg: KVM was "
                                    "delivering an NMI") in refused.stderr, refused.stderr
    rewrite_snapshot(snap, lambda header: header["cpu"].pop("portable"))
    older = vmcore("run", "rm-timer", "--accel", "tcg", "--restore", str(snap))
    assert older.status == 2 and ("the snapshot's vCPU was saved on kvm without a portable form; restore it with "
                                  "--accel kvm") in older.stderr, older.stderr


def test_a_damaged_portable_vcpu_refuses_the_run_before_it_starts(tmp_path: Path) -> None:
    snap = tmp_path / "rm.snap"
    assert vmcore("run", "rm-timer", "--accel", "tcg", "--snapshot", str(snap), "--snapshot-after", "5").status == 0

    def damage(header: dict[str, Any]) -> None:
        as_if_from_kvm(header)
        header["cpu"]["portable"]["segments"]["cs"]["limit"] = -1

    rewrite_snapshot(snap, damage)
    run = vmcore("run", "rm-timer", "--accel", "tcg", "--restore", str(snap))
    assert run.status == 2 and run.stdout == b"", run.stderr
    assert ("the snapshot cannot be restored: cs.limit is not a number of 32 bits: -1") in run.stderr, run.stderr


@pytest.mark.kvm
@pytest.mark.parametrize("saved_on, restored_on", [("kvm", "tcg"), ("tcg", "kvm")])
@pytest.mark.parametrize("after", [5, 25])
def test_a_real_mode_guest_moves_between_accelerators_mid_run(saved_on: str, restored_on: str, after: int,
                                                               tmp_path: Path) -> None:
    """rm-timer (real mode, PIT interrupts through the userspace 8259) saved on one accelerator goes
    on on the other and counts to ten. From the software CPU to KVM, the real-mode segments QEMU's
    TCG leaves without a limit (SS after reset) get a real-mode load's, or KVM's #SS would reset it."""
    from tests.helpers import skip_without_kvm

    skip_without_kvm()
    snap = tmp_path / "rm.snap"
    saved = vmcore("run", "rm-timer", "--accel", saved_on, "--snapshot", str(snap), "--snapshot-after", str(after))
    assert saved.status == 0, saved.stderr
    moved = vmcore("run", "rm-timer", "--accel", restored_on, "--restore", str(snap))
    assert saved.stdout + moved.stdout == b"rm ticks: 10\n" and moved.status == 39, moved.stderr


@pytest.mark.kvm
@pytest.mark.parametrize("profile", ["mode-switch", "protected", "long"])
@pytest.mark.parametrize("saved_on, restored_on", [("kvm", "tcg"), ("tcg", "kvm")])
def test_a_guest_moved_between_accelerators_traces_as_the_whole_run(profile: str, saved_on: str, restored_on: str,
                                                                    tmp_path: Path) -> None:
    """Real, protected and long mode (mode-switch goes through all three): saved halfway on one
    accelerator, restored on the other, the two traces joined are the whole run's."""
    from tests.helpers import skip_without_kvm

    skip_without_kvm()
    whole_trace = tmp_path / "whole.txt"
    whole = vmcore("run", profile, "--accel", saved_on, "--trace-file", str(whole_trace))
    half = max(1, len(whole_trace.read_text().splitlines()) // 2)
    snap, first, second = tmp_path / "m.snap", tmp_path / "a.txt", tmp_path / "b.txt"
    saved = vmcore("run", profile, "--accel", saved_on, "--snapshot", str(snap), "--snapshot-after", str(half),
                   "--trace-file", str(first))
    moved = vmcore("run", profile, "--accel", restored_on, "--restore", str(snap), "--trace-file", str(second))
    assert saved.status == 0 and moved.status == whole.status == 0, moved.stderr
    assert saved.stdout + moved.stdout == whole.stdout
    assert first.read_text() + second.read_text() == whole_trace.read_text()


@pytest.mark.kvm
@pytest.mark.parametrize("saved_on, restored_on", [("kvm", "tcg"), ("tcg", "kvm")])
def test_seabios_moves_between_accelerators_mid_boot(saved_on: str, restored_on: str, tmp_path: Path) -> None:
    """pc-bios saved after 1500 exits (PCI set up, the BIOS copied to RAM; on KVM it took the kvmclock
    path) boots on the other accelerator to its boot sector."""
    from tests.helpers import skip_without_kvm

    skip_without_kvm()
    snap = tmp_path / "pc.snap"
    saved = vmcore("run", "pc-bios", "--accel", saved_on, "--snapshot", str(snap), "--snapshot-after", "1500")
    assert saved.status == 0, saved.stderr
    moved = vmcore("run", "pc-bios", "--accel", restored_on, "--restore", str(snap))
    assert moved.status == 85 and b"hello from int 10h" in moved.stdout, moved.stderr


@pytest.mark.kvm
@pytest.mark.parametrize("after", [5, 15, 25])  # a whole run makes about 40 exits
def test_kvm_saves_and_restores_its_vcpu_mid_run(after: int, tmp_path: Path) -> None:
    """rm-timer takes ten PIT interrupts through the userspace 8259, halting between them: saved
    after any of its port accesses (an IN's answer completed into the vCPU first: KVM_RUN with
    immediate_exit) and restored in a new process, it counts on to ten and exits as a whole run."""
    from tests.helpers import skip_without_kvm

    skip_without_kvm()
    snap = tmp_path / f"rm{after}.snap"
    saved = vmcore("run", "rm-timer", "--accel", "kvm", "--snapshot", str(snap), "--snapshot-after", str(after))
    assert saved.status == 0 and "vmcore: saved the machine after" in saved.stderr, saved.stderr
    restored = vmcore("run", "rm-timer", "--accel", "kvm", "--restore", str(snap))
    assert saved.stdout + restored.stdout == b"rm ticks: 10\n" and restored.status == 39, restored.stderr


@pytest.mark.kvm
def test_a_kvm_run_split_by_a_snapshot_traces_as_the_whole_run(tmp_path: Path) -> None:
    """mode-switch's console is a posted port (KVM's coalesced ring): a pause point delivers the whole
    ring first, so the two runs' traces joined are the whole run's."""
    from tests.helpers import skip_without_kvm

    skip_without_kvm()
    whole_trace = tmp_path / "whole.txt"
    whole = vmcore("run", "mode-switch", "--accel", "kvm", "--trace-file", str(whole_trace))
    snap, first, second = tmp_path / "m.snap", tmp_path / "a.txt", tmp_path / "b.txt"
    saved = vmcore("run", "mode-switch", "--accel", "kvm", "--snapshot", str(snap), "--snapshot-after", "1",
                   "--trace-file", str(first))
    restored = vmcore("run", "mode-switch", "--accel", "kvm", "--restore", str(snap), "--trace-file", str(second))
    assert saved.stdout + restored.stdout == whole.stdout == b"RPLCB\n"
    assert first.read_text() + second.read_text() == whole_trace.read_text()
    assert restored.status == whole.status == 0


def test_a_plain_state_class_declares_its_annotated_names_bases_first() -> None:
    from typing import ClassVar

    class Base:
        version = 3
        a: int
        b: "list[int]"

    class State(Base):
        limit: ClassVar[int] = 4  # a class constant, not state
        c: bytes

    assert state_fields(State) == ["a", "b", "c"]


@pytest.mark.parametrize("when", ["1ms", "4ms"])
def test_a_snapshot_at_a_machine_time_goes_on_with_the_guests_timer(when: str, tmp_path: Path) -> None:
    """rm-timer counts ten PIT ticks, halting between them: saved at a machine time (the pause waits
    out a hlt for its interrupt) and restored, its timer goes on and the count ends at ten."""
    snap = tmp_path / "t.snap"
    saved = vmcore("run", "rm-timer", "--accel", "tcg", "--snapshot", str(snap), "--snapshot-after", when)
    assert saved.status == 0 and "vmcore: saved the machine after" in saved.stderr, saved.stderr[-2000:]
    restored = vmcore("run", "rm-timer", "--accel", "tcg", "--restore", str(snap))
    assert saved.stdout + restored.stdout == b"rm ticks: 10\n"
    assert restored.status == 39  # its debug-exit, as a whole run's


@pytest.mark.parametrize("point", ["0s", "-1ms", "soon", "0"])
def test_a_snapshot_point_that_is_no_count_or_time_is_refused(point: str, tmp_path: Path) -> None:
    run = vmcore("run", "hello", "--snapshot", str(tmp_path / "x.snap"), "--snapshot-after", point)
    assert run.status == 2 and "--snapshot-after" in run.stderr


def test_a_snapshot_made_to_look_whole_cannot_inflate_memory_past_its_size(tmp_path: Path) -> None:
    """A file whose checksum matches but whose page run inflates to far more than it says (a
    'zip bomb'), or whose run lies outside its block: refused in one line, memory never grown."""
    import hashlib
    import zlib

    from vmcore.snapshot import _LENGTH, FORMAT, MAGIC, read_snapshot

    snap = tmp_path / "m.snap"
    assert vmcore("run", "mode-switch", "--accel", "tcg", "--snapshot", str(snap), "--snapshot-after", "3").status == 0
    header, _data = read_snapshot(snap, limit=1 << 30)
    bomb = zlib.compress(bytes(256 << 20), 9)  # 256 MiB of zeros in a few hundred KB
    (ram,) = [entry for entry in header["memory"] if entry["name"] == "ram"]

    def restore_with(run: list[int]) -> Any:
        ram["runs"] = [run]
        text = json.dumps(header).encode()
        whole = MAGIC + _LENGTH.pack(len(text)) + text + bomb
        path = tmp_path / "made.snap"
        path.write_bytes(whole + hashlib.sha256(whole).digest())  # a checksum that matches
        return vmcore("run", "mode-switch", "--accel", "tcg", "--restore", str(path))

    assert header["format"] == FORMAT
    run = restore_with([0, 1, 0, len(bomb)])  # says one page
    assert run.status == 2 and "the run of pages at 0x0 is not 4096 bytes" in run.stderr, run.stderr
    run = restore_with([16, 1, 0, len(bomb)])  # page 16 of a 16-page block
    assert run.status == 2 and "a run of pages at 0x10000 does not fit" in run.stderr, run.stderr


def test_a_snapshot_file_larger_than_the_machine_could_need_is_not_read(tmp_path: Path) -> None:
    from vmcore.snapshot import read_snapshot

    big = tmp_path / "big.snap"
    big.write_bytes(b"VMCORESN" + bytes(100_000))
    with pytest.raises(SnapshotError, match="100008 bytes, more than a snapshot of this machine can be"):
        read_snapshot(big, limit=50_000)


@pytest.mark.kvm
@pytest.mark.parametrize("after", [2, 9])
def test_a_kvm_pause_inside_a_rep_string_io_waits_for_the_instruction_to_end(after: int, tmp_path: Path) -> None:
    """KVM hands a `rep outsb`/`insb` over element by element: a pause point reached at one of them
    waits for the instruction's last (saving inside one was refused), and the split traces as the whole."""
    from tests.helpers import skip_without_kvm

    skip_without_kvm()
    whole_trace, first, second, snap = (tmp_path / name for name in ("whole.txt", "a.txt", "b.txt", "s.snap"))
    whole = vmcore("run", "string-io", "--accel", "kvm", "--trace-file", str(whole_trace))
    saved = vmcore("run", "string-io", "--accel", "kvm", "--snapshot", str(snap), "--snapshot-after", str(after),
                   "--trace-file", str(first))
    assert saved.status == 0 and "vmcore: saved the machine after" in saved.stderr, saved.stderr
    restored = vmcore("run", "string-io", "--accel", "kvm", "--restore", str(snap), "--trace-file", str(second))
    assert saved.stdout + restored.stdout == whole.stdout and restored.status == whole.status == 0
    assert first.read_text() + second.read_text() == whole_trace.read_text()


@pytest.mark.kvm
def test_kvms_own_interrupt_controllers_pit_local_apic_and_clock_go_into_the_vcpus_snapshot() -> None:
    """irqchip: kernel: KVM's PICs and IOAPIC (KVM_GET/SET_IRQCHIP), its local APIC (KVM_GET/SET_LAPIC),
    its PIT (KVM_GET/SET_PIT2) and the VM's kvmclock, saved from one VM and set in another."""
    from tests.helpers import skip_without_kvm
    from vmcore.accel.kvm import KvmAccelerator

    skip_without_kvm()
    first = KvmAccelerator.open(kernel_irqchip=True, kernel_pit=True)
    try:
        pic = first.vm.get_irqchip(0)
        pic.chip[2] = 0xB8  # kvm_pic_state.imr
        first.vm.set_irqchip(pic)
        pit = first.vm.get_pit2()
        pit.channels[0].count, pit.channels[0].mode = 1234, 2
        first.vm.set_pit2(pit)
        lapic = first.vcpu.get_lapic()
        lapic.regs[0x80] = 0x20  # the task priority register
        first.vcpu.set_lapic(lapic)
        first.vm.set_clock(5 * 10**12)
        saved = json.loads(json.dumps(first.save_cpu()))
    finally:
        first.close()
    assert "refused" in saved["portable"] and "irqchip: kernel" in saved["portable"]["refused"]
    second = KvmAccelerator.open(kernel_irqchip=True, kernel_pit=True)
    try:
        assert second.vm.get_irqchip(0).chip[2] != 0xB8 and second.vcpu.get_lapic().regs[0x80] != 0x20
        second.restore_cpu(saved)
        assert second.vm.get_irqchip(0).chip[2] == 0xB8
        restored = second.vm.get_pit2()
        assert (restored.channels[0].count, restored.channels[0].mode) == (1234, 2)
        assert second.vcpu.get_lapic().regs[0x80] == 0x20
        assert 5 * 10**12 <= second.vm.get_clock().clock < 6 * 10**12
    finally:
        second.close()
    userspace = KvmAccelerator.open()
    try:
        with pytest.raises(ValueError, match="restore it with the profile it was made with"):
            userspace.restore_cpu(saved)
    finally:
        userspace.close()


@pytest.mark.kvm
def test_seabios_on_kvms_own_interrupt_controllers_goes_on_from_a_snapshot(tmp_path: Path) -> None:
    """pc-bios with irqchip: kernel and kernel_pit, saved mid-boot: restored, the BIOS tick the boot
    sector waits for still comes (through KVM's PIT and PIC, whose state the snapshot carries)."""
    from tests.helpers import skip_without_kvm

    skip_without_kvm()
    snap, kernel = tmp_path / "pc.snap", ("--set", "irqchip=kernel", "--set", "kernel_pit=true")
    saved = vmcore("run", "pc-bios", "--accel", "kvm", *kernel, "--snapshot", str(snap), "--snapshot-after", "3000")
    assert saved.status == 0, saved.stderr
    restored = vmcore("run", "pc-bios", "--accel", "kvm", *kernel, "--restore", str(snap))
    assert restored.status == 85 and b"hello from int 10h" in restored.stdout, restored.stderr
    userspace = vmcore("run", "pc-bios", "--accel", "kvm", "--restore", str(snap))
    assert userspace.status == 2 and "restore it with the profile it was made with" in userspace.stderr
