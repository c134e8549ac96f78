"""Tier 2: every bundled profile in machines/ loads and builds without KVM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmcore.accel import RunLimits
from vmcore.machine import Machine, bundled_machines, resolve_profile
from vmcore.profile import Profile, ProfileError

from tests.helpers import kvm_unit_tests_suite  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MACHINES = sorted((REPO / "machines").glob("*.yaml"))  # not machines/base/: those are only bases
SEABIOS = Path("/usr/share/seabios/bios.bin")


def machine_params(paths: list[Path]) -> list[object]:
    """One parameter per profile; pc-bios skipped, with the reason, where Debian's SeaBIOS is absent."""
    absent = pytest.mark.skipif(not SEABIOS.is_file(),
                                reason=f"{SEABIOS} is absent (as root: scripts/test-host-setup installs seabios)")
    return [pytest.param(p, id=p.stem, marks=absent if p.stem == "pc-bios" else ()) for p in paths]


def test_bundled_machines_folder_is_the_checkouts() -> None:
    assert bundled_machines() == REPO / "machines"
    names = {p.stem for p in MACHINES}
    assert {"hello", "string-io", "exit-status", "triple-fault", "internal-error",
            "protected", "long", "rom-write"} <= names


@pytest.mark.parametrize("path", machine_params(MACHINES))
def test_profile_loads_and_builds(path: Path) -> None:
    if path.stem == "kvm-unit-tests":
        kvm_unit_tests_suite()  # its kernels: built once into .cache/, or a skip with the reason
    if path.stem == "linux":
        from tests.test_linux_boot import linux_files

        linux_files()  # Debian's kernel and the initramfs: fetched once into .cache/, or a skip
    profile = Profile.load(path)
    assert profile.name == path.stem
    with Machine.build(profile) as machine:
        # Every slot is in guest memory, with its image loaded where the profile says.
        for spec in profile.memory:
            slot = machine.memory.home(spec.name)
            assert (slot.base, slot.size, slot.readonly) == (spec.base, spec.size, spec.readonly)
            if spec.image is not None:
                data = spec.image.read_bytes()
                assert data, f"{spec.image} is empty"
                assert machine.memory.read(spec.base + spec.offset, len(data)) == data
        # Every device is built and owns at least one claim on a bus, or is a PCI function
        # with BARs (the PCI bus claims those where the guest or firmware places them).
        owners = {owner for bus in (machine.pio, machine.mmio) for _, owner in bus.claims()}
        assert set(machine.devices) == {d.name for d in profile.devices}
        assert {name for name, device in machine.devices.items() if not getattr(device, "bars", None)} <= owners
        if profile.cpu.mode == "reset":
            # Firmware: the CPU starts where an x86 does, 16 bytes below 4G, in the ROM.
            assert machine.state.cs.base + machine.state.registers["rip"] == 0xFFFF_FFF0
            assert machine.memory.slot_at(0xFFFF_FFF0).readonly
        elif profile.loader is None:
            assert machine.state.mode == profile.cpu.mode
            assert machine.state.registers["rip"] == profile.cpu.entry
        elif profile.loader.format == "linux":
            # A bzImage starts at its 64-bit entry with RSI at boot_params.
            assert machine.state.mode == "long" and machine.state.registers["rsi"] == 0x7000
        else:
            # A multiboot kernel starts in 32-bit protected mode at its own entry, EAX = magic.
            assert machine.state.mode == "protected"
            assert machine.state.registers["rax"] == 0x2BADB002
            assert machine.state.registers["rip"] != 0


#: Profiles whose guest is not one of guest/: a firmware's (it prints through the BIOS, int 10h,
#: COM1), kvm-unit-tests' (COM1, debug-exit at 0xF4) or Linux's (COM1), not port 0xF1.
FIRMWARE_PROFILES = {"pc-bios", "kvm-unit-tests", "linux", "linux-virtio"}


@pytest.mark.parametrize("path", [p for p in MACHINES if p.stem not in FIRMWARE_PROFILES],
                         ids=[p.stem for p in MACHINES if p.stem not in FIRMWARE_PROFILES])
def test_guests_find_console_and_debug_exit_where_guest_readme_says(path: Path) -> None:
    with Machine.build(Profile.load(path)) as machine:
        assert machine.pio.find(0xF1)[1] == "console"
        assert machine.pio.find(0x501)[1] == "exit"


def test_rom_slot_is_claimed_on_the_mmio_bus() -> None:
    with Machine.build(Profile.load(REPO / "machines" / "rom-write.yaml")) as machine:
        claims = [(r.base, r.size, owner) for r, owner in machine.mmio.claims()]
        assert claims == [(0, 4096, "rom:rom")]
        assert [s.name for s in machine.memory] == ["rom", "data"]  # 'ram' removed by null


def test_long_mode_tables_are_placed_clear_of_the_image() -> None:
    with Machine.build(Profile.load(REPO / "machines" / "long.yaml")) as machine:
        state = machine.state
        assert state.cr3 % 4096 == 0
        gdt_base, _ = state.gdt
        image_end = 0x1000 + (REPO / "guest" / "long64.bin").stat().st_size
        assert gdt_base >= image_end and gdt_base + 7 * 4096 <= 2 << 20


def _vmcore(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcore", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def _expected_claims(path: Path) -> list[str]:
    with Machine.build(Profile.load(path)) as machine:
        lines = []
        for bus in (machine.pio, machine.mmio):
            for region, owner in bus.claims():
                lines.append(f"{bus.space.value} {region.base:#x}..{region.end - 1:#x} {owner}")
        return lines


@pytest.mark.parametrize("path", machine_params(MACHINES))
def test_vmcore_check_lists_the_claims(path: Path) -> None:
    if path.stem == "kvm-unit-tests":
        kvm_unit_tests_suite()
    result = _vmcore("check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith(f"{path.stem}: ok ({path})")
    for claim in _expected_claims(path):
        assert claim in out
    profile = Profile.load(path)
    with Machine.build(profile) as machine:  # a loader's kernel decides mode and entry
        state = machine.state
    assert f"cpu: {state.mode} mode, entry {state.registers['rip']:#x}" in out
    for spec in profile.memory:
        assert f"memory {spec.name}: {spec.base:#x}..{spec.base + spec.size - 1:#x} {spec.kind}" in out


def test_vmcore_check_hello_output_exactly() -> None:
    result = _vmcore("check", "hello")
    assert result.returncode == 0
    assert result.stdout.splitlines()[1:] == [
        "  cpu: real mode, entry 0x0, accel auto",
        "  memory ram: 0x0..0xfff ram",
        "  pio 0xf1..0xf1 console (data)",
        "  pio 0x501..0x502 exit (exit)",
    ]


def test_bundled_name_resolves_to_machines_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: the bundled folder is found anyway
    assert resolve_profile("hello") == REPO / "machines" / "hello.yaml"
    assert resolve_profile("rom-write") == REPO / "machines" / "rom-write.yaml"


def test_a_local_machines_folder_comes_before_the_bundled_one(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "machines").mkdir()
    (tmp_path / "machines" / "hello.yaml").write_text("memory:\n  ram: {size: 4K}\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_profile("hello") == tmp_path / "machines" / "hello.yaml"


def test_paths_are_taken_as_paths(tmp_path: Path) -> None:
    assert resolve_profile("some/where") == Path("some/where")
    assert resolve_profile("x.yaml") == Path("x.yaml")


def test_unknown_name_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProfileError) as info:
        resolve_profile("helo")
    message = str(info.value)
    assert "\n" not in message
    assert "no profile named 'helo'" in message
    assert str(REPO / "machines") in message


def test_vmcore_check_by_name_from_another_folder(tmp_path: Path) -> None:
    result = _vmcore("check", "protected", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"protected: ok ({REPO / 'machines' / 'protected.yaml'})")


def test_vmcore_check_unknown_name(tmp_path: Path) -> None:
    result = _vmcore("check", "helo", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("vmcore: helo: no profile named 'helo'")



# --- run limits: checked before any CPU exists ---------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("timeout", 0), ("timeout", -1.0), ("timeout", float("nan")),
                                              ("timeout", float("inf")), ("max_exits", 0), ("max_exits", -1)])
def test_run_limits_that_would_never_stop_are_rejected(field: str, value: float) -> None:
    # A timeout of 0 disarmed the timer and a max_exits of 0 or -1 was never reached.
    with pytest.raises(ValueError, match=f"{field} must be positive"):
        RunLimits(**{field: value})


def test_run_limits_accept_positive_values_and_none() -> None:
    assert RunLimits(timeout=0.5, max_exits=1) == RunLimits(0.5, 1)
    assert (RunLimits().timeout, RunLimits().max_exits) == (None, None)


def test_a_kept_history_has_the_cpus_last_accesses_and_leaves_the_access_path_direct() -> None:
    machine = Machine.build(Profile.load(resolve_profile("hello"), ["devices.console.backend=memory"]))
    with machine:
        machine.keep_history(3)
        handler, _ = machine.pio.write_route(0xF1, 1)
        # The device's own handler, not the bus's traced path: keeping history adds no tracer.
        assert handler is not machine.pio.write and getattr(handler, "__self__", None) is machine.devices["console"]
        stop = machine.run("tcg", RunLimits(timeout=20))
    assert stop.kind == "halted"
    # "Hello" then a newline, one outb each: the last three, oldest first, in the report too.
    expected = [f"pio  write 0x000000f1/1 -> {ord(c):#04x} console" for c in "lo\n"]
    assert [str(t) for t in machine.recent_transactions()] == expected
    assert list(stop.transactions) == expected
