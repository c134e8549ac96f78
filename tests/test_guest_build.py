"""guest/build.py: the committed guest binaries are exactly what the sources build to."""

import importlib.util
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"


def _load_build_module():
    # guest/ is not a package: load the script by path.
    spec = importlib.util.spec_from_file_location("vmcore_guest_build", GUEST_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_module()

_MISSING = [tool for tool in build.TOOLS if shutil.which(tool) is None]
needs_toolchain = pytest.mark.skipif(
    bool(_MISSING), reason=f"GNU binutils missing: {', '.join(_MISSING)} (apt-get install binutils)"
)


def test_every_source_has_a_committed_binary_and_every_binary_a_source():
    sources = {p.stem for p in GUEST_DIR.glob("*.S")}
    binaries = {p.stem for p in GUEST_DIR.glob("*.bin")}
    assert sources, "no guest sources found"
    assert sources - binaries == set(), "sources without a committed .bin (run guest/build.py)"
    assert binaries - sources == set(), "committed .bin without a source"


def test_sources_table_lists_every_program_with_its_start_state():
    assert set(build.SOURCES) == {p.stem for p in GUEST_DIR.glob("*.S")}
    for program in build.SOURCES.values():
        assert program.mode in {"real", "protected", "long"}
        assert program.entry == program.base
        assert program.binary == GUEST_DIR / f"{program.name}.bin"
        if program.mode == "real":
            assert program.base == 0
        else:
            assert program.base == 0x1000


def test_real_mode_programs_fit_in_the_4k_they_boot_in():
    for program in build.SOURCES.values():
        if program.mode == "real":
            assert program.binary.stat().st_size < 4096, program.name


def test_hello_seed_program_is_tiny():
    assert (GUEST_DIR / "hello.bin").stat().st_size < 64


@pytest.mark.parametrize("name", ["pio_loop", "pio_read_loop"])
def test_benchmark_loop_count_is_the_dword_at_offset_2(name):
    # Documented patch point: benchmarks may rewrite the iteration count there.
    image = (GUEST_DIR / f"{name}.bin").read_bytes()
    assert image[:2] == b"\x66\xb9"  # mov $imm32, %ecx in 16-bit code
    assert struct.unpack_from("<I", image, 2)[0] == 100000


def test_header_without_vmcore_build_line_is_rejected(tmp_path):
    source = tmp_path / "nohdr.S"
    source.write_text("# just a comment\n.code16\n")
    with pytest.raises(build.BuildError, match="vmcore-build"):
        build.parse_header(source)


def test_header_with_unknown_mode_is_rejected(tmp_path):
    source = tmp_path / "badmode.S"
    source.write_text("# vmcore-build: mode=smm base=0x0\n")
    with pytest.raises(build.BuildError, match="mode must be one of"):
        build.parse_header(source)


def test_unknown_program_name_is_rejected_listing_known_ones(tmp_path):
    with pytest.raises(build.BuildError, match="hello"):
        build.build(["no_such_program"], out_dir=tmp_path)


@pytest.mark.toolchain
@needs_toolchain
@pytest.mark.parametrize("name", sorted(build.SOURCES))
def test_rebuild_is_byte_identical_to_committed_binary(name, tmp_path):
    (built,) = build.build([name], out_dir=tmp_path)
    assert built == tmp_path / f"{name}.bin"
    committed = GUEST_DIR / f"{name}.bin"
    assert built.read_bytes() == committed.read_bytes(), (
        f"guest/{name}.bin is stale or the build is not reproducible; run python guest/build.py"
    )


@pytest.mark.toolchain
@needs_toolchain
def test_build_all_returns_one_binary_per_source(tmp_path):
    built = build.build(out_dir=tmp_path)
    assert sorted(p.name for p in built) == sorted(f"{n}.bin" for n in build.SOURCES)


def test_missing_assembler_fails_naming_it(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(build.BuildError) as info:
        build.build(["hello"], out_dir=tmp_path)
    message = str(info.value)
    assert "`as`" in message
    assert "apt-get install binutils" in message
    assert "\n" not in message


@pytest.mark.toolchain
@needs_toolchain
def test_missing_linker_fails_naming_the_linker(tmp_path, monkeypatch):
    only_as = tmp_path / "only-as"
    only_as.mkdir()
    (only_as / "as").symlink_to(shutil.which("as"))
    monkeypatch.setenv("PATH", str(only_as))
    with pytest.raises(build.BuildError, match="`ld`"):
        build.build(["hello"], out_dir=tmp_path)


def test_command_line_reports_missing_tool_in_one_line(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, str(GUEST_DIR / "build.py"), "--out", str(tmp_path), "hello"],
        env={"PATH": str(empty)}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "`as`" in lines[0] and "apt-get install binutils" in lines[0]
    assert not (tmp_path / "hello.bin").exists()


@pytest.mark.toolchain
@needs_toolchain
def test_entry_not_at_load_address_is_rejected(tmp_path):
    source = tmp_path / "late_start.S"
    source.write_text(
        "# vmcore-build: mode=real base=0x0\n"
        ".code16\n.text\n.globl _start\n"
        "        nop\n"
        "_start: hlt\n"
    )
    program = build.parse_header(source)
    with pytest.raises(build.BuildError, match="_start is at 0x1"):
        build.build_one(program, tmp_path, build.check_toolchain())
