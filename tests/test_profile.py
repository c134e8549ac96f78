"""Machine profiles: parsing, ``extends``, ``--set`` overrides and the errors users see.

Every malformed profile must be reported as ``file:line: key: message``: the cases
are plain data in tests/malformed_profiles.py (docs/malformed-profiles.md is rendered
from them), and :func:`test_malformed_profile` runs each.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vmcore.memory
from tests.malformed_profiles import (
    ALL_CASES,
    HOST_ERRORS,
    RAM_ONLY,
    Case,
    WindowPlugin,
    case_error,
    expected_place,
    extends_chain,
    host_without_memory,
    make_case_dir,
)
from vmcore.machine import Machine
from vmcore.plugins import DeviceRegistry
from vmcore.profile import (
    MAX_EXTENDS,
    MAX_GUEST_MEMORY_ENV,
    MAX_PROFILE_BYTES,
    Limits,
    Profile,
    ProfileError,
    max_guest_memory,
)



def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        Profile.load(path, overrides)
    return info.value


# --- valid profiles ------------------------------------------------------------------------

FULL = """\
name: demo
accel: kvm
cpu:
  mode: protected
  entry: 0x1000
  tables: 0x9000
  registers: {rsp: 0x8000, rax: 010, rbx: 1_000, rflags: 0x202}
memory:
  ram: {base: 0, size: 64K, image: img/prog.bin, offset: 0x1000}
  high: {base: 1M, size: 2MiB}
  rom: {base: 0xFFFF0000, size: 0x10000, kind: rom}
devices:
  console: {type: debugcon, port: 0xE9, backend: memory, readback: 010}
  exit: {type: debug-exit}
limits: {timeout: 2.5, max_exits: 1K}
"""


@pytest.fixture
def full_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write(tmp_path / "profiles" / "img" / "prog.bin", "").write_bytes(b"\xf4")
    path = write(tmp_path / "profiles" / "demo-full.yaml", FULL)
    # Relative image paths must not depend on where vmcore is started.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return path


def test_full_profile_values(full_profile: Path) -> None:
    p = Profile.load(full_profile)
    assert p.name == "demo"
    assert p.accel == "kvm"
    assert p.path == full_profile
    assert (p.cpu.mode, p.cpu.entry, p.cpu.tables) == ("protected", 0x1000, 0x9000)
    assert p.limits == Limits(timeout=2.5, max_exits=1024)


def test_units_and_hex_in_slots(full_profile: Path) -> None:
    slots = {s.name: s for s in Profile.load(full_profile).memory}
    assert [s.name for s in Profile.load(full_profile).memory] == ["ram", "high", "rom"]
    assert (slots["ram"].base, slots["ram"].size, slots["ram"].offset) == (0, 64 * 1024, 0x1000)
    assert (slots["high"].base, slots["high"].size) == (1 << 20, 2 << 20)
    assert (slots["rom"].base, slots["rom"].size) == (0xFFFF0000, 0x10000)
    assert slots["rom"].readonly and not slots["ram"].readonly
    assert slots["ram"].kind == "ram" and slots["rom"].kind == "rom"


def test_leading_zero_is_decimal_not_octal(full_profile: Path) -> None:
    # YAML 1.1 would read 010 as 8.
    p = Profile.load(full_profile)
    assert p.cpu.registers["rax"] == 10
    with Machine.build(p) as machine:
        assert machine.devices["console"].config.readback == 10


def test_registers_are_parsed(full_profile: Path) -> None:
    regs = Profile.load(full_profile).cpu.registers
    assert regs == {"rsp": 0x8000, "rax": 10, "rbx": 1000, "rflags": 0x202}


def test_device_properties_stay_text_until_the_device_converts_them(full_profile: Path) -> None:
    p = Profile.load(full_profile)
    console = next(d for d in p.devices if d.name == "console")
    assert console.type == "debugcon"
    assert console.props == {"port": "0xE9", "backend": "memory", "readback": "010"}
    assert [d.name for d in p.devices] == ["console", "exit"]
    with Machine.build(p) as machine:
        assert machine.devices["console"].config.port == 0xE9
        assert machine.devices["exit"].config.port == 0x501  # the type's default


def test_relative_image_resolves_against_the_profiles_folder(full_profile: Path, tmp_path: Path) -> None:
    ram = Profile.load(full_profile).memory[0]
    assert ram.image == (tmp_path / "profiles" / "img" / "prog.bin").resolve()
    assert Path.cwd() == tmp_path / "elsewhere"


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    p = Profile.load(write(tmp_path / "my-board.yaml", RAM_ONLY))
    assert p.name == "my-board"
    assert p.accel == "auto"
    assert p.cpu.mode == "real" and p.cpu.entry == 0
    assert p.devices == () and p.limits == Limits()


def test_from_yaml_uses_the_given_file_name(tmp_path: Path) -> None:
    p = Profile.from_yaml(RAM_ONLY, file=str(tmp_path / "inline.yaml"))
    assert p.name == "inline"
    with pytest.raises(ProfileError) as info:
        Profile.from_yaml("memory:\n  ram: {size: 3K}\n", file="inline.yaml")
    assert str(info.value).startswith("inline.yaml:2: memory.ram.size:")


def test_yaml_1_1_booleans_are_not_booleans(tmp_path: Path) -> None:
    # 'off' stays the text 'off'; an accel of 'off' is rejected by name, not read as False.
    err = load_error(write(tmp_path / "p.yaml", "accel: off\n" + RAM_ONLY))
    assert "got 'off'" in err.message and "kvm, tcg, auto" in err.message


def test_timeout_accepts_seconds_suffix(tmp_path: Path) -> None:
    p = Profile.load(write(tmp_path / "p.yaml", RAM_ONLY + "limits: {timeout: 0.5s}\n"))
    assert p.limits.timeout == 0.5


# --- extends -------------------------------------------------------------------------------

BASE = """\
accel: kvm
cpu: {mode: real, entry: 0x0}
memory:
  ram: {base: 0, size: 4K, image: prog.bin}
  spare: {base: 0x10000, size: 4K}
devices:
  console: {type: debugcon, port: 0xF1}
  exit: {type: debug-exit, port: 0x501}
limits: {timeout: 30, max_exits: 100}
"""


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "base"
    write(folder / "base.yaml", BASE)
    (folder / "prog.bin").write_bytes(b"\xf4")
    return folder


def test_child_overrides_scalars(tmp_path: Path, base_dir: Path) -> None:
    child = write(tmp_path / "child.yaml", "extends: base/base.yaml\ncpu: {entry: 0x100}\nlimits: {timeout: 5}\n")
    p = Profile.load(child)
    assert p.cpu.entry == 0x100
    assert p.cpu.mode == "real"  # from the base, through the nested merge
    assert p.limits == Limits(timeout=5.0, max_exits=100)
    assert p.accel == "kvm"


def test_nested_mappings_merge_key_by_key(tmp_path: Path, base_dir: Path) -> None:
    child = write(tmp_path / "child.yaml",
                  "extends: base/base.yaml\nmemory:\n  ram: {size: 8K}\ndevices:\n  console: {port: 0xE9}\n")
    p = Profile.load(child)
    ram = next(s for s in p.memory if s.name == "ram")
    assert (ram.base, ram.size) == (0, 8192)
    assert ram.image == (base_dir / "prog.bin").resolve()
    console = next(d for d in p.devices if d.name == "console")
    assert console.type == "debugcon" and console.props == {"port": "0xE9"}


def test_null_removes_an_inherited_slot_and_device(tmp_path: Path, base_dir: Path) -> None:
    child = write(tmp_path / "child.yaml", "extends: base/base.yaml\nmemory:\n  spare: null\ndevices:\n  exit: ~\n")
    p = Profile.load(child)
    assert [s.name for s in p.memory] == ["ram"]
    assert [d.name for d in p.devices] == ["console"]


def test_name_of_an_extending_profile_is_its_own_stem(tmp_path: Path, base_dir: Path) -> None:
    child = write(tmp_path / "board-x.yaml", "extends: base/base.yaml\n")
    assert Profile.load(child).name == "board-x"


def test_base_in_another_folder_resolves_its_images_against_its_own_folder(tmp_path: Path, base_dir: Path) -> None:
    child = write(tmp_path / "deep" / "er" / "child.yaml", "extends: ../../base/base.yaml\n")
    p = Profile.load(child)
    assert p.memory[0].image == (base_dir / "prog.bin").resolve()


def test_image_set_by_the_child_resolves_against_the_childs_folder(tmp_path: Path, base_dir: Path) -> None:
    (tmp_path / "mine.bin").write_bytes(b"\x90\xf4")
    child = write(tmp_path / "child.yaml", "extends: base/base.yaml\nmemory:\n  ram: {image: mine.bin}\n")
    assert Profile.load(child).memory[0].image == (tmp_path / "mine.bin").resolve()


def test_errors_in_an_inherited_value_name_the_base_file(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "memory:\n  ram: {size: 4K}\nlimits:\n  timeout: -3\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\n")
    err = load_error(child)
    assert str(err).startswith(f"{(tmp_path / 'base.yaml').resolve()}:4: limits.timeout:")


def test_extends_cycle_is_detected(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "extends: b.yaml\n" + RAM_ONLY)
    write(tmp_path / "b.yaml", "# b\nextends: a.yaml\n")
    err = load_error(a)
    assert err.key == "extends"
    assert "cycle" in err.message
    assert err.where.line == 2 and err.where.file.endswith("b.yaml")


def test_profile_extending_itself_is_a_cycle(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", RAM_ONLY + "extends: a.yaml\n")
    err = load_error(a)
    assert "cycle" in err.message and err.where.line == 3


def test_missing_base_names_the_file_line_and_path(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", RAM_ONLY + "extends: nowhere/base.yaml\n")
    err = load_error(child)
    assert str(err).startswith(f"{child}:3: extends: base profile nowhere/base.yaml not found")
    assert str(tmp_path / "nowhere" / "base.yaml") in err.message


def test_extends_must_be_a_path(tmp_path: Path) -> None:
    err = load_error(write(tmp_path / "c.yaml", RAM_ONLY + "extends: {a: 1}\n"))
    assert str(err).startswith(f"{tmp_path / 'c.yaml'}:3: extends:")
    assert "path of a base profile" in err.message


# --- overrides (--set) ---------------------------------------------------------------------


def test_override_cpu_entry(tmp_path: Path) -> None:
    p = Profile.load(write(tmp_path / "p.yaml", RAM_ONLY), ["cpu.entry=0x100"])
    assert p.cpu.entry == 0x100


def test_override_device_property(tmp_path: Path, base_dir: Path) -> None:
    p = Profile.load(base_dir / "base.yaml", ["devices.console.port=0xE9"])
    console = next(d for d in p.devices if d.name == "console")
    assert console.props["port"] == "0xE9"
    with Machine.build(p) as machine:
        assert machine.pio.find(0xE9) is not None and machine.pio.find(0xE9)[1] == "console"
        assert machine.pio.find(0xF1) is None


def test_override_wins_over_extends(tmp_path: Path, base_dir: Path) -> None:
    child = write(tmp_path / "child.yaml", "extends: base/base.yaml\ncpu: {entry: 0x10}\n")
    assert Profile.load(child, ["cpu.entry=0x20"]).cpu.entry == 0x20


def test_override_creates_new_keys(tmp_path: Path) -> None:
    p = Profile.load(write(tmp_path / "p.yaml", RAM_ONLY),
                     ["limits.max_exits=5", "devices.out.type=debugcon", "devices.out.port=0x3F8"])
    assert p.limits.max_exits == 5
    assert [(d.name, d.type, d.props) for d in p.devices] == [("out", "debugcon", {"port": "0x3F8"})]


@pytest.mark.parametrize("item", ["cpu.entry", "=5", "cpu..entry=1", ".entry=1", "cpu.=1", ""])
def test_malformed_override_says_what_an_override_looks_like(tmp_path: Path, item: str) -> None:
    err = load_error(write(tmp_path / "p.yaml", RAM_ONLY), (item,))
    assert "KEY.PATH=VALUE" in err.message
    assert f"<command line: {item}>" in str(err)


def test_override_through_a_single_value_is_rejected(tmp_path: Path) -> None:
    err = load_error(write(tmp_path / "p.yaml", "cpu: {mode: real}\n" + RAM_ONLY), ("cpu.mode.x=1",))
    assert err.key == "cpu.mode"
    assert "single value" in err.message


def test_bad_override_value_is_reported_against_the_command_line(tmp_path: Path) -> None:
    err = load_error(write(tmp_path / "p.yaml", RAM_ONLY), ("cpu.entry=zzz",))
    assert str(err) == ("<command line: cpu.entry=zzz>: cpu.entry: expected an address like 0x1000, got 'zzz'")


def test_error_tables_have_distinct_cases() -> None:
    names = [case[0] for case, _ in ALL_CASES]
    assert len(names) == len(set(names))
    texts = [case[1] for case, _ in ALL_CASES]
    assert len(texts) == len(set(texts))
    assert len(names) >= 100


@pytest.fixture
def error_dir(tmp_path: Path) -> Path:
    return make_case_dir(tmp_path)


@pytest.mark.parametrize(("case", "stage"), ALL_CASES, ids=[case[0] for case, _ in ALL_CASES])
def test_malformed_profile(error_dir: Path, case: Case, stage: str) -> None:
    _name, text, line, fragments = case
    err = case_error(error_dir, text, stage)
    file, number = expected_place(error_dir, line)
    key, *rest = fragments
    message = str(err)
    assert "\n" not in message
    assert (err.where.file, err.where.line, err.key) == (file, number, key), message
    assert message.startswith(f"{file}:{number}: {key}: " if key else f"{file}:{number}: "), message
    for fragment in rest:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_profile_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "absent.yaml")
    assert str(err) == f"{tmp_path / 'absent.yaml'}: no such profile file"


def test_a_profile_larger_than_any_profile_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"memory: {ram: {size: 4K}}\n" + b"#" * MAX_PROFILE_BYTES)
    err = load_error(path)
    assert str(err) == f"{path}: larger than 1M: not a profile (an image given in its place?)"


def test_a_directory_given_as_the_profile(tmp_path: Path) -> None:
    err = load_error(tmp_path)
    assert str(err) == f"{tmp_path}: cannot read the profile: Is a directory"


# --- guest memory: the profile's limit and the host's --------------------------------------


def test_the_default_limit_is_64g_and_a_profile_may_reach_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_GUEST_MEMORY_ENV, raising=False)
    assert max_guest_memory() == 64 << 30
    text = "memory:\n  low: {size: 32G}\n  high: {base: 32G, size: 32G}\n"
    assert sum(s.size for s in Profile.load(write(tmp_path / "p.yaml", text)).memory) == 64 << 30


def test_the_environment_sets_the_guest_memory_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_GUEST_MEMORY_ENV, "1M")
    path = write(tmp_path / "p.yaml", "memory:\n  ram: {size: 512K}\n  more: {base: 1M, size: 1M}\n")
    err = load_error(path)
    assert str(err) == (
        f"{path}:3: memory.more: the slots add up to 1536K, more than the 1M of guest memory a profile may have; "
        "this slot (1M) takes the total from 512K to 1536K (set VMCORE_MAX_GUEST_MEMORY to change the limit)")
    monkeypatch.setenv(MAX_GUEST_MEMORY_ENV, "0x180000")
    assert len(Profile.load(path).memory) == 2


@pytest.mark.parametrize(("value", "message"), [
    ("lots", "expected a size like 64G or 512M, got 'lots'"),
    ("0", "must be positive, got '0'"),
    ("-1G", "expected a size like 64G or 512M, got '-1G'"),
])
def test_a_malformed_memory_limit_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     value: str, message: str) -> None:
    monkeypatch.setenv(MAX_GUEST_MEMORY_ENV, value)
    err = load_error(write(tmp_path / "p.yaml", RAM_ONLY))
    assert str(err) == f"<environment: VMCORE_MAX_GUEST_MEMORY={value}>: VMCORE_MAX_GUEST_MEMORY: {message}"


def test_a_slot_the_host_cannot_map_is_one_line_naming_the_slot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    profile = Profile.load(write(tmp_path / "p.yaml", "memory:\n  ram: {size: 64M}\n"))
    monkeypatch.setattr(vmcore.memory.mmap, "mmap", no_memory)
    with pytest.raises(ProfileError) as info:
        Machine.build(profile)
    assert str(info.value) == (
        f"{tmp_path / 'p.yaml'}:2: memory.ram: slot 'ram': the host could not provide its 64M of memory "
        "(Cannot allocate memory); make the slot smaller or free host memory")


def test_slots_mapped_before_the_one_that_fails_are_released(tmp_path: Path) -> None:
    closed: list[str] = []
    real_close = vmcore.memory.MemorySlot.close

    def close(slot: vmcore.memory.MemorySlot) -> None:
        closed.append(slot.name)
        real_close(slot)

    profile = Profile.load(write(tmp_path / "p.yaml", HOST_ERRORS[0][1]))
    with (host_without_memory(), mock.patch.object(vmcore.memory.MemorySlot, "close", close),
          pytest.raises(ProfileError, match="slot 'big'")):
        Machine.build(profile)
    assert closed == ["ram"]


# --- every input: one line or a profile ------------------------------------------------------

_VALID = "name: fuzz\ncpu: {mode: real, entry: 0x0, registers: {rsp: 0x800}}\nmemory:\n  ram: {base: 0, size: 4K}\n" \
         "devices:\n  console: {type: debugcon, port: 0xE9}\nlimits: {timeout: 5, max_exits: 100}\n"


@st.composite
def _mangled(draw: st.DrawFn) -> str:
    """A valid profile with a few slices cut, repeated or replaced by YAML punctuation."""
    text = _VALID
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        piece = draw(st.sampled_from(["", text[i:j] * 2, ":", "- ", "{", "}", "[", "]", "&a ", "*a", "\t", "'",
                                      '"', "\n  ", "\n", "~", "!!str ", "? ", "<<: ", "#", "-4K", "0x", "%"]))
        text = text[:i] + piece + text[j:]
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_mangled(), st.text(max_size=120)))
def test_every_input_is_a_profile_or_one_line_error(text: str, tmp_path: Path) -> None:
    try:
        Profile.load(write(tmp_path / "fuzz.yaml", text))
    except ProfileError as err:
        message = str(err)
        assert "\n" not in message
        assert message.startswith((str(tmp_path / "fuzz.yaml"), "<environment"))


# --- later fixes: null overrides and names through extends ----------------------------------


def test_override_with_null_removes_an_entry(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("memory: {ram: {size: 4K}}\ndevices:\n  console: {type: debugcon}\n  exit: {type: debug-exit}\n")
    profile = Profile.load(path, ["devices.exit=null"])
    assert [d.name for d in profile.devices] == ["console"]


def test_a_child_without_a_name_is_named_after_its_own_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("name: the-base\nmemory: {ram: {size: 4K}}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\n")
    assert Profile.load(tmp_path / "child.yaml").name == "child"


# --- hostile paths and files (issue 13) ------------------------------------------------------


def test_extends_may_go_max_extends_deep(tmp_path: Path) -> None:
    top = extends_chain(tmp_path / "chain", MAX_EXTENDS + 1)  # the top file and MAX_EXTENDS bases
    assert [slot.name for slot in Profile.load(top).memory] == ["ram"]


def test_an_extends_chain_of_600_files_is_one_line_at_the_limit(tmp_path: Path) -> None:
    top = extends_chain(tmp_path / "chain", 600)
    err = load_error(top)
    assert (err.where.file, err.where.line, err.key) == (str(tmp_path / "chain" / f"{MAX_EXTENDS + 1}.yaml"), 1,
                                                         "extends")
    assert f"more than {MAX_EXTENDS} base profiles below {top}" in err.message


def test_an_image_that_grew_after_loading_does_not_spill_into_the_next_slot(tmp_path: Path) -> None:
    image = tmp_path / "grows.bin"
    image.write_bytes(b"\x90" * 4096)
    path = write(tmp_path / "p.yaml", "memory:\n  next: {base: 4K, size: 4K}\n  ram: {base: 0, size: 4K, "
                 "image: grows.bin}\n")
    profile = Profile.load(path)
    image.write_bytes(b"\x90" * 4097)
    with pytest.raises(ProfileError) as info:
        Machine.build(profile)
    assert str(info.value) == (f"{path}:3: memory.ram.image: image {image} holds more than the 0x1000 bytes from "
                               "offset 0x0 to the end of the 0x1000-byte slot")


def test_an_image_that_fills_its_slot_exactly_from_its_offset_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "fill.bin").write_bytes(b"\xab" * 0x800)
    profile = Profile.load(write(tmp_path / "p.yaml", "memory:\n  ram: {size: 4K, image: fill.bin, offset: 0x800}\n"))
    with Machine.build(profile) as machine:
        assert machine.memory.read(0x7FF, 2) == b"\x00\xab"
        assert machine.memory.read(0xFFF, 1) == b"\xab"


def test_a_proc_file_that_fits_is_read_to_its_end_though_stat_says_0_bytes(tmp_path: Path) -> None:
    assert os.stat("/proc/version").st_size == 0
    expected = Path("/proc/version").read_bytes()
    profile = Profile.load(write(tmp_path / "p.yaml", "memory:\n  ram: {size: 4K, image: /proc/version}\n"))
    with Machine.build(profile) as machine:
        assert machine.memory.read(0, len(expected)) == expected


def test_the_cpu_tables_are_kept_clear_of_a_proc_image_by_what_was_loaded_not_by_stat(tmp_path: Path) -> None:
    # /proc/version says 0 bytes but holds ~150: the GDT placed at the slot's top (the last 4K)
    # would land on it if its size were taken from stat.
    length = len(Path("/proc/version").read_bytes())
    profile = Profile.load(write(tmp_path / "p.yaml", "cpu: {mode: protected}\n"
                                 "memory:\n  ram: {size: 8K, image: /proc/version, offset: 0x1000}\n"))
    with pytest.raises(ProfileError, match="free of images"):
        Machine.build(profile)
    assert length > 0


def test_an_image_replaced_by_a_fifo_after_loading_is_refused_without_blocking(tmp_path: Path) -> None:
    image = tmp_path / "img.bin"
    image.write_bytes(b"\xf4")
    profile = Profile.load(write(tmp_path / "p.yaml", "memory:\n  ram: {size: 4K, image: img.bin}\n"))
    image.unlink()
    os.mkfifo(image)  # no writer: a blocking open would wait forever
    with pytest.raises(ProfileError) as info:
        Machine.build(profile)
    assert str(info.value) == f"{tmp_path / 'p.yaml'}:2: memory.ram.image: cannot read {image}: not a regular file"


def test_a_fifo_as_image_is_refused_when_loading(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    err = load_error(write(tmp_path / "p.yaml", "memory:\n  ram: {size: 4K, image: fifo}\n"))
    assert err.message.startswith("image file fifo is not a regular file")


def test_a_path_longer_than_the_host_allows_is_named_as_such(tmp_path: Path) -> None:
    deep = "/".join(["d" * 200] * 25)  # every component fits; the whole path (5K) does not
    err = load_error(write(tmp_path / "p.yaml", f"memory:\n  ram: {{size: 4K, image: {deep}/x.bin}}\n"))
    assert "longer than the host allows" in err.message


def test_a_profile_named_longer_than_the_host_allows_on_the_command_line_is_one_line() -> None:
    from vmcore.cli import _profile_path

    with pytest.raises(ProfileError) as info:
        _profile_path("p" * 300)
    assert info.value.message == "cannot read the profile: File name too long"


def test_device_mmio_in_a_hole_between_slots_is_accepted(tmp_path: Path) -> None:
    text = RAM_ONLY + "  high: {base: 1M, size: 4K}\ndevices:\n  win: {type: window, base: 0x1000}\n"
    registry = DeviceRegistry.default(plugins=[WindowPlugin])
    with Machine.build(Profile.load(write(tmp_path / "p.yaml", text)), registry) as machine:
        assert machine.mmio.find(0x1000) is not None and machine.mmio.find(0x1000)[1] == "win"


def test_device_mmio_over_memory_that_a_device_decodes_is_accepted(tmp_path: Path) -> None:
    text = RAM_ONLY + "devices:\n  win: {type: window, base: 0x800, decode: true}\n"
    registry = DeviceRegistry.default(plugins=[WindowPlugin])
    with Machine.build(Profile.load(write(tmp_path / "p.yaml", text)), registry) as machine:
        assert machine.mmio.find(0x800) is not None and machine.mmio.find(0x800)[1] == "win"


def test_device_mmio_partly_over_decoded_memory_names_the_part_memory_answers(tmp_path: Path) -> None:
    # The window's overlay is its own page (0x0..0xfff); the window runs 8 bytes into the next page.
    text = "memory:\n  ram: {size: 8K}\ndevices:\n  win: {type: window, base: 0xFF8, decode: true}\n"
    with pytest.raises(ProfileError) as info:
        Machine.build(Profile.load(write(tmp_path / "p.yaml", text)), DeviceRegistry.default(plugins=[WindowPlugin]))
    assert "the guest's accesses to 0x1000..0x1007 reach the memory" in info.value.message


def test_a_path_with_a_nul_character_is_one_line(tmp_path: Path) -> None:
    err = load_error(write(tmp_path / "p.yaml", 'memory:\n  ram: {size: 4K, image: "a\\0b.bin"}\n'))
    assert err.message.startswith("image file a\x00b.bin cannot be a path: it holds a NUL character")


# --- quoted --set values ------------------------------------------------------------------


UART = RAM_ONLY + "devices:\n  com1: {type: uart16550, backend: memory}\n"


@pytest.mark.parametrize("value", ['"null"', "'null'", ' "null" '])
def test_a_quoted_override_value_is_that_text(tmp_path: Path, value: str) -> None:
    profile = Profile.load(write(tmp_path / "p.yaml", UART), [f"devices.com1.backend={value}"])
    assert profile.devices[0].props["backend"] == "null"


def test_a_quoted_override_gives_the_uart_its_null_backend(tmp_path: Path) -> None:
    profile = Profile.load(write(tmp_path / "p.yaml", UART), ['devices.com1.backend="null"'])
    with Machine.build(profile) as machine:
        assert machine.devices["com1"].config.backend == "null"


def test_a_quoted_override_takes_yaml_escapes(tmp_path: Path) -> None:
    profile = Profile.load(write(tmp_path / "p.yaml", RAM_ONLY), ['name="a\\x41 b"', "limits.timeout='1'"])
    assert (profile.name, profile.limits.timeout) == ("aA b", 1.0)


def test_an_unquoted_null_override_still_removes_the_key(tmp_path: Path) -> None:
    profile = Profile.load(write(tmp_path / "p.yaml", UART), ["devices.com1.backend=null"])
    assert "backend" not in profile.devices[0].props


@pytest.mark.parametrize(("value", "problem"), [
    ('"null', "a quoted value must be one YAML quoted string: found unexpected end of stream"),
    ('"a" b', "a quoted value must be one YAML quoted string: expected '<document start>', but found '<scalar>'"),
    ('"a": b', "a quoted value must be one YAML quoted string, like \"null\" or 'a b'"),
])
def test_a_malformed_quoted_override_is_one_line(tmp_path: Path, value: str, problem: str) -> None:
    err = load_error(write(tmp_path / "p.yaml", UART), (f"devices.com1.backend={value}",))
    assert str(err) == f"<command line: devices.com1.backend={value}>: devices.com1.backend: {problem}"


# --- YAML read through libyaml, errors through PyYAML -----------------------------------------------

from vmcore.profile import yaml_tree  # noqa: E402

_YAML_PIECES = ["a", "b: ", ":", " ", "  ", "\n", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "'", '"', "#", "!!str ",
                "? ", "|", ">", "\t", "0x1F", "~", "null", "yes", "<<: ", "%YAML 1.1\n", "---\n", "...\n", "\\", "@",
                "é", "\x85", "\u2028", "\r", "\x00", "!", "%"]


def _located(node: Any) -> Any:
    """What the located tree takes from a composed node: tag, text and line, all the way down."""
    import yaml

    if isinstance(node, yaml.ScalarNode):
        return ("scalar", node.tag, node.value, node.start_mark.line)
    if isinstance(node, yaml.SequenceNode):
        return ("sequence", node.tag, node.start_mark.line, [_located(item) for item in node.value])
    return ("mapping", node.tag, node.start_mark.line, [(_located(k), _located(v)) for k, v in node.value])


def _composed_by_pyyaml(text: str) -> Any:
    import yaml

    try:
        return _located(yaml.compose(text, Loader=yaml_tree.BoundedComposer))
    except Exception:  # noqa: BLE001 - a text PyYAML refuses
        return None


@pytest.mark.skipif(yaml_tree._LibyamlComposer is None, reason="PyYAML without libyaml: profiles read by PyYAML alone")
def test_every_machine_profile_is_read_through_libyaml_as_pyyaml_reads_it() -> None:
    for path in sorted((Path(__file__).parent.parent / "machines").glob("*.yaml")):
        text = path.read_text()
        quick = yaml_tree._compose_quickly(text)
        assert quick is not None, f"{path.name} went to PyYAML"
        assert _located(quick) == _composed_by_pyyaml(text), path.name


@pytest.mark.skipif(yaml_tree._LibyamlComposer is None, reason="PyYAML without libyaml: profiles read by PyYAML alone")
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(_YAML_PIECES), max_size=30).map("".join))
# Found by fuzzing the two apart: a lone tag, an explicit key, empty values at the text's end.
@example("!")
@example("? ")
@example("---\n ")
@example("a:\n  b:")
@example("- a\n-")
def test_what_libyaml_composes_is_what_pyyaml_composes(text: str) -> None:
    # libyaml takes a few texts PyYAML refuses (a tab after a scalar, "|#"): read as libyaml reads
    # them. Where both take a text, the located tree must be the same; where they differ
    # (tags, explicit keys, empty values at the end of a text), the text goes to PyYAML.
    quick = yaml_tree._compose_quickly(text)
    slow = _composed_by_pyyaml(text)
    if quick is not None and slow is not None:
        assert _located(quick) == slow


def test_a_text_libyaml_refuses_is_said_wrong_in_pyyaml_s_words(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nmemory:\n  ram: {base: 0, size: 4K\n")  # an unclosed brace
    with pytest.raises(ProfileError) as caught:
        Profile.load(path)
    # PyYAML's words ("but got"; libyaml's would be "did not find expected ',' or '}'").
    assert str(caught.value).endswith(":4: YAML syntax error: while parsing a flow mapping (from line 3), "
                                      "expected ',' or '}', but got '<stream end>'")
    assert yaml_tree._compose_quickly(path.read_text()) is None
