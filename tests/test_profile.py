"""Machine profiles: parsing, ``extends``, ``--set`` overrides and the errors users see.

Every malformed profile must be reported as ``file:line: key: message``; the two
tables below (profile-level and build-level problems) are kept as plain data so a
docs page of "what the loader says" can be generated from them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmcore.machine import Machine
from vmcore.profile import Limits, Profile, ProfileError

RAM_ONLY = "memory:\n  ram: {size: 4K}\n"


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
  console: {type: debugcon, port: 0xE9, output: memory, readback: 010}
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
    assert console.props == {"port": "0xE9", "output": "memory", "readback": "010"}
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


# --- malformed profiles: (name, yaml_text, expected_line, expected_fragments) -----------------

#: Problems :meth:`Profile.load` reports. Files named ``big.bin`` (8 KiB) and ``small.bin``
#: (16 bytes) exist next to each profile.
PROFILE_ERRORS: list[tuple[str, str, int, list[str]]] = [
    ("yaml-syntax",
     "memory:\n  ram: {size: 4K}\ncpu: mode: real\n",
     3, ["YAML syntax error", "mapping values are not allowed"]),
    ("yaml-tab",
     "memory:\n\tram: {size: 4K}\n",
     2, ["YAML syntax error", "'\\t'"]),
    ("top-level-list",
     "# a machine\n- memory\n- devices\n",
     2, ["top level must be a mapping"]),
    ("empty-file",
     "",
     1, ["empty", "expected a mapping", "memory"]),
    ("only-comments",
     "# nothing here yet\n",
     1, ["empty", "memory"]),
    ("unknown-top-level-key",
     RAM_ONLY + "devics:\n  console: {type: debugcon}\n",
     3, ["devics", "unknown key", "did you mean 'devices'?", "expected one of"]),
    ("misspelt-extends",
     "extend: base.yaml\n" + RAM_ONLY,
     1, ["extend", "unknown key", "did you mean 'extends'?"]),
    ("no-memory",
     "cpu: {mode: real}\n",
     1, ["memory", "at least one memory slot"]),
    ("unknown-cpu-mode",
     "cpu:\n  mode: reel\n" + RAM_ONLY,
     2, ["cpu.mode", "expected one of real, protected, long", "'reel'", "did you mean 'real'?"]),
    ("unknown-accel",
     "accel: kmv\n" + RAM_ONLY,
     1, ["accel", "expected one of kvm, tcg, auto", "did you mean 'kvm'?"]),
    ("bad-number",
     "memory:\n  ram:\n    size: 4Q\n",
     3, ["memory.ram.size", "expected a size like 4K", "'4Q'"]),
    ("bad-entry",
     "cpu:\n  entry: 0xZZ\n" + RAM_ONLY,
     2, ["cpu.entry", "expected an address", "'0xZZ'"]),
    ("entry-past-64-bits",
     "cpu:\n  entry: 0x1_0000_0000_0000_0000\n" + RAM_ONLY,
     2, ["cpu.entry", "64 bits"]),
    ("size-not-4k-multiple",
     "memory:\n  ram:\n    base: 0\n    size: 1000\n",
     4, ["memory.ram.size", "multiple of 4K", "0x3e8"]),
    ("zero-size",
     "memory:\n  ram: {size: 0}\n",
     2, ["memory.ram.size", "positive multiple of 4K"]),
    ("missing-size",
     "memory:\n  ram:\n    base: 0x1000\n",
     2, ["memory.ram.size", "missing", "size like 4K"]),
    ("unaligned-base",
     "memory:\n  ram:\n    base: 0x100\n    size: 4K\n",
     3, ["memory.ram.base", "4K-aligned", "0x100"]),
    ("unknown-slot-key",
     "memory:\n  ram:\n    size: 4K\n    imgae: x.bin\n",
     4, ["memory.ram.imgae", "did you mean 'image'?"]),
    ("unknown-slot-kind",
     "memory:\n  ram: {size: 4K, kind: flash}\n",
     2, ["memory.ram.kind", "expected one of ram, rom", "'flash'"]),
    ("overlapping-slots",
     "memory:\n  low:\n    base: 0\n    size: 8K\n  high:\n    base: 0x1000\n    size: 4K\n",
     5, ["memory.high", "overlaps slot 'low'", "0x1000..0x1fff", "0x0..0x1fff"]),
    ("image-missing",
     "memory:\n  ram:\n    size: 4K\n    image: nope.bin\n",
     4, ["memory.ram.image", "nope.bin not found", "looked at"]),
    ("image-larger-than-slot",
     "memory:\n  ram:\n    size: 4K\n    image: big.bin\n",
     4, ["memory.ram.image", "8192 bytes", "does not fit", "0x1000-byte slot"]),
    ("image-past-slot-end-at-offset",
     "memory:\n  ram:\n    size: 4K\n    image: small.bin\n    offset: 0xFF8\n",
     4, ["memory.ram.image", "16 bytes", "offset 0xff8", "does not fit"]),
    ("offset-without-image",
     "memory:\n  ram:\n    size: 4K\n    offset: 0x100\n",
     4, ["memory.ram.offset", "needs an image"]),
    ("duplicate-key",
     "memory:\n  ram: {size: 4K}\ncpu: {mode: real}\nmemory:\n  ram: {size: 8K}\n",
     4, ["memory", "duplicate key", "first given on line 1"]),
    ("duplicate-nested-key",
     "memory:\n  ram:\n    size: 4K\n    size: 8K\n",
     4, ["size", "duplicate key", "line 3"]),
    ("device-missing-type",
     RAM_ONLY + "devices:\n  console:\n    port: 0xF1\n    output: memory\n",
     4, ["devices.console.type", "missing", "vmcore devices"]),
    ("device-not-a-mapping",
     RAM_ONLY + "devices:\n  console: debugcon\n",
     4, ["devices.console", "expected 'type: NAME'"]),
    ("unknown-register",
     "cpu:\n  registers:\n    rsp: 0x8000\n    rxx: 1\n" + RAM_ONLY,
     4, ["cpu.registers.rxx", "unknown key", "expected one of", "rsp"]),
    ("register-too-wide",
     "cpu:\n  registers:\n    rax: 0x1_0000_0000_0000_0000\n" + RAM_ONLY,
     3, ["cpu.registers.rax", "64 bits"]),
    ("unaligned-tables",
     "cpu:\n  mode: protected\n  tables: 0x9100\n" + RAM_ONLY,
     3, ["cpu.tables", "4K-aligned", "0x9100"]),
    ("negative-timeout",
     RAM_ONLY + "limits:\n  timeout: -1\n",
     4, ["limits.timeout", "must be a positive number of seconds", "'-1'"]),
    ("nan-timeout",
     RAM_ONLY + "limits:\n  timeout: nan\n",
     4, ["limits.timeout", "must be a positive number of seconds", "'nan'"]),
    ("infinite-timeout",
     RAM_ONLY + "limits:\n  timeout: inf\n",
     4, ["limits.timeout", "must be a positive number of seconds", "'inf'"]),
    ("text-timeout",
     RAM_ONLY + "limits:\n  timeout: soon\n",
     4, ["limits.timeout", "expected seconds", "'soon'"]),
    ("zero-max-exits",
     RAM_ONLY + "limits:\n  max_exits: 0\n",
     4, ["limits.max_exits", "positive"]),
    ("unknown-limit",
     RAM_ONLY + "limits:\n  max_exit: 10\n",
     4, ["limits.max_exit", "did you mean 'max_exits'?"]),
]

#: Problems only :meth:`Machine.build` can see (device types, properties, bus claims, tables).
BUILD_ERRORS: list[tuple[str, str, int, list[str]]] = [
    ("unknown-device-type",
     RAM_ONLY + "devices:\n  console:\n    type: debugcom\n",
     5, ["devices.console.type", "unknown device type 'debugcom'", "did you mean 'debugcon'?", "known types"]),
    ("unknown-device-property",
     RAM_ONLY + "devices:\n  console:\n    type: debugcon\n    prot: 0xF1\n",
     6, ["devices.console.prot", "unknown property", "did you mean 'port'?", "known properties"]),
    ("device-port-out-of-range",
     RAM_ONLY + "devices:\n  console:\n    type: debugcon\n    port: 0x10000\n",
     6, ["devices.console.port", "0x0..0xffff", "0x10000"]),
    ("device-port-not-a-number",
     RAM_ONLY + "devices:\n  console:\n    type: debugcon\n    port: serial\n",
     6, ["devices.console.port", "expected a number", "'serial'"]),
    ("device-bad-choice",
     RAM_ONLY + "devices:\n  console:\n    type: debugcon\n    output: printer\n",
     6, ["devices.console.output", "expected one of stdout, stderr, file, memory", "'printer'"]),
    ("device-ports-overlap",
     RAM_ONLY + "devices:\n  console:\n    type: debugcon\n    port: 0x501\n"
     "  exit:\n    type: debug-exit\n    port: 0x500\n",
     7, ["devices.exit", "overlaps", "of exit", "of console", "0x500..0x501"]),
    ("tables-overlap-image",
     "cpu:\n  mode: protected\n  tables: 0x0\nmemory:\n  ram: {size: 64K, image: small.bin}\n",
     1, ["cpu.tables", "overlaps the image of slot 'ram'"]),
    ("tables-outside-ram",
     "cpu:\n  mode: long\n  tables: 0x100000\nmemory:\n  ram: {size: 64K}\n",
     1, ["cpu.tables", "inside one RAM slot"]),
    ("no-room-for-long-mode-tables",
     "cpu:\n  mode: long\nmemory:\n  ram: {size: 16K}\n",
     1, ["cpu.tables", "long mode needs", "add RAM or set cpu.tables"]),
]


def _case_ids(cases: list[tuple[str, str, int, list[str]]]) -> list[str]:
    return [case[0] for case in cases]


def test_error_tables_have_distinct_cases() -> None:
    names = _case_ids(PROFILE_ERRORS) + _case_ids(BUILD_ERRORS)
    assert len(names) == len(set(names))
    texts = [case[1] for case in PROFILE_ERRORS + BUILD_ERRORS]
    assert len(texts) == len(set(texts))
    assert len(names) >= 12


@pytest.fixture
def error_dir(tmp_path: Path) -> Path:
    (tmp_path / "big.bin").write_bytes(bytes(8192))
    (tmp_path / "small.bin").write_bytes(b"\xf4" * 16)
    return tmp_path


def _check(err: ProfileError, path: Path, line: int, fragments: list[str]) -> None:
    text = str(err)
    assert "\n" not in text
    assert text.startswith(f"{path}:{line}: "), text
    assert (err.where.file, err.where.line) == (str(path), line)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


@pytest.mark.parametrize(("name", "text", "line", "fragments"), PROFILE_ERRORS, ids=_case_ids(PROFILE_ERRORS))
def test_malformed_profile(error_dir: Path, name: str, text: str, line: int, fragments: list[str]) -> None:
    path = write(error_dir / f"{name}.yaml", text)
    _check(load_error(path), path, line, fragments)


@pytest.mark.parametrize(("name", "text", "line", "fragments"), BUILD_ERRORS, ids=_case_ids(BUILD_ERRORS))
def test_malformed_machine(error_dir: Path, name: str, text: str, line: int, fragments: list[str]) -> None:
    path = write(error_dir / f"{name}.yaml", text)
    profile = Profile.load(path)  # valid as a profile: only building finds the problem
    with pytest.raises(ProfileError) as info:
        Machine.build(profile)
    _check(info.value, path, line, fragments)


def test_missing_profile_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "absent.yaml")
    assert str(err) == f"{tmp_path / 'absent.yaml'}: no such profile file"


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
