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
_MISSING_C = _MISSING + [tool for tool in build.C_TOOLS if shutil.which(tool) is None]
needs_c_toolchain = pytest.mark.skipif(
    bool(_MISSING_C), reason=f"C guest toolchain missing: {', '.join(_MISSING_C)} (apt-get install gcc binutils)"
)


def _gcc_version() -> str | None:
    if shutil.which("gcc") is None:
        return None
    result = subprocess.run(["gcc", "-dumpfullversion"], check=False, capture_output=True, text=True,
                            timeout=60)
    return result.stdout.strip() or None


_GCC_VERSION = _gcc_version()


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
@needs_c_toolchain
def test_build_all_returns_one_binary_per_source(tmp_path):
    built = build.build(out_dir=tmp_path)
    assert sorted(p.name for p in built) == sorted(
        [f"{n}.bin" for n in build.SOURCES] + [f"{n}.elf" for n in build.C_SOURCES]
    )


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


# --- the C guests (guest/c): multiboot v1 ELF32 kernels --------------------------------------

C_DIR = GUEST_DIR / "c"


def test_every_c_program_has_a_committed_elf_and_every_elf_a_source():
    programs = {p.stem for p in C_DIR.glob("*.c")} - {Path(r).stem for r in build.C_RUNTIME}
    elfs = {p.stem for p in C_DIR.glob("*.elf")}
    assert programs == {"timer_tick", "serial_echo", "cmos_clock", "multiboot_kernel"} <= set(build.C_SOURCES)
    assert programs - elfs == set(), "C programs without a committed .elf (run guest/build.py)"
    assert elfs - programs == set(), "committed .elf without a C source"


def test_runtime_sources_are_not_programs():
    for runtime in build.C_RUNTIME:
        assert (C_DIR / runtime).is_file()
        assert Path(runtime).stem not in build.C_SOURCES
    for program in build.C_SOURCES.values():
        assert program.binary == C_DIR / f"{program.name}.elf"


@pytest.mark.parametrize("name", sorted(build.C_SOURCES))
def test_committed_c_guest_is_a_multiboot_elf32_kernel_at_1m(name):
    image = (C_DIR / f"{name}.elf").read_bytes()
    assert image[:4] == b"\x7fELF" and image[4] == 1  # ELFCLASS32
    assert struct.unpack_from("<H", image, 18)[0] == 3  # EM_386
    offset = build._multiboot_header_offset(image)
    assert offset is not None and offset < 8192 and offset % 4 == 0
    flags = struct.unpack_from("<I", image, offset + 4)[0]
    assert flags & 0xFFFF & ~0x3 == 0  # only page-align and memory-info requested
    assert flags & (1 << 16) == 0  # loaded by its ELF program headers
    entry = struct.unpack_from("<I", image, 24)[0]
    assert 0x100000 <= entry < 0x200000
    assert b".comment" not in image and b".note" not in image and b".symtab" not in image


@pytest.mark.toolchain
@needs_c_toolchain
@pytest.mark.skipif(_GCC_VERSION != build.C_REFERENCE_COMPILER,
                    reason=f"gcc {_GCC_VERSION} is not the {build.C_REFERENCE_COMPILER} that built the "
                           f"committed ELFs; another version may emit other code")
@pytest.mark.parametrize("name", sorted(build.C_SOURCES))
def test_c_rebuild_is_byte_identical_to_committed_elf(name, tmp_path):
    (built,) = build.build([name], out_dir=tmp_path)
    assert built == tmp_path / f"{name}.elf"
    committed = C_DIR / f"{name}.elf"
    assert built.read_bytes() == committed.read_bytes(), (
        f"guest/c/{name}.elf is stale or the build is not reproducible; run python guest/build.py"
    )


@pytest.mark.toolchain
@needs_c_toolchain
def test_c_build_does_not_depend_on_the_checkout_path(tmp_path):
    # The same sources in another folder build to the same bytes.
    copy = tmp_path / "elsewhere" / "c"
    shutil.copytree(C_DIR, copy)
    program = build.CProgram("timer_tick", copy / "timer_tick.c")
    tools = build.check_toolchain(c=True)
    first = build.build_c(program, tmp_path / "a", tools).read_bytes()
    second = build.build_c(build.C_SOURCES["timer_tick"], tmp_path / "b", tools).read_bytes()
    assert first == second


@pytest.mark.toolchain
@needs_toolchain
def test_missing_gcc_fails_naming_it_in_one_line(tmp_path, monkeypatch):
    binutils = tmp_path / "binutils-only"
    binutils.mkdir()
    for tool in build.TOOLS:
        (binutils / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(binutils))
    with pytest.raises(build.BuildError) as info:
        build.build(["timer_tick"], out_dir=tmp_path)
    message = str(info.value)
    assert "`gcc`" in message and "apt-get install gcc" in message
    assert "\n" not in message
    assert not (tmp_path / "timer_tick.elf").exists()


@pytest.mark.toolchain
@needs_toolchain
def test_command_line_reports_missing_gcc_in_one_line(tmp_path):
    binutils = tmp_path / "binutils-only"
    binutils.mkdir()
    for tool in build.TOOLS:
        (binutils / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        [sys.executable, str(GUEST_DIR / "build.py"), "--out", str(tmp_path), "serial_echo"],
        env={"PATH": str(binutils)}, check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "`gcc`" in lines[0]


def test_asm_only_build_does_not_need_gcc(tmp_path, monkeypatch):
    # Selecting only assembly programs checks binutils alone: with nothing on PATH
    # the error names `as`, not gcc.
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(build.BuildError, match="`as`"):
        build.build(["hello"], out_dir=tmp_path)


def test_c_program_names_resolve_with_or_without_suffix(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for name in ("timer_tick", "timer_tick.c", "timer_tick.elf"):
        with pytest.raises(build.BuildError, match="`as`"):  # found, then stopped by the missing toolchain
            build.build([name], out_dir=tmp_path)


# --- the committed C guests on the reference machine (QEMU's own multiboot loader) ------------

QEMU = shutil.which("qemu-system-i386")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-i386 missing (apt-get install qemu-system-x86)")


def _qemu(name: str, tmp_path: Path, *extra: str, serial: str = "none") -> tuple[int, str]:
    """Boot guest/c/NAME.elf with QEMU's -kernel; return (exit status, debugcon output)."""
    out = tmp_path / "debugcon.txt"
    result = subprocess.run(
        [QEMU, "-accel", "tcg", "-kernel", str(C_DIR / f"{name}.elf"), "-display", "none", "-no-reboot",
         "-monitor", "none", "-serial", serial,
         "-device", "isa-debug-exit,iobase=0x501,iosize=2",
         "-device", "isa-debugcon,iobase=0xf1,chardev=dbg", "-chardev", f"file,id=dbg,path={out}", *extra],
        check=False, capture_output=True, text=True, timeout=60,
    )
    return result.returncode, out.read_text() if out.exists() else ""


@needs_qemu
def test_timer_tick_on_qemu_counts_50_ticks(tmp_path):
    assert _qemu("timer_tick", tmp_path) == (33, "ticks: 50\n")


@needs_qemu
def test_cmos_clock_on_qemu_prints_the_rtc_start_time(tmp_path):
    status, out = _qemu("cmos_clock", tmp_path, "-rtc", "base=2026-01-02T03:04:05")
    assert status == 37
    assert out in {f"2026-01-02 03:04:0{s}\n" for s in (5, 6, 7)}


@needs_qemu
def test_multiboot_kernel_on_qemu_reads_its_info_and_exits_with_the_cmdline_status(tmp_path):
    status, out = _qemu("multiboot_kernel", tmp_path, "-m", "4M", "-append", "status=7 hello")
    assert status == 15
    lines = out.splitlines()
    # QEMU, like GRUB, puts the kernel's file name first on the command line.
    assert lines[0] == f"cmdline: {C_DIR / 'multiboot_kernel.elf'} status=7 hello"
    assert "loader: qemu" in lines
    assert "mmap: base=0x0 len=0x9fc00 type=1" in lines


@needs_qemu
def test_serial_echo_on_qemu_echoes_until_q(tmp_path):
    import socket
    import time

    path = str(tmp_path / "com1.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    server.settimeout(30)
    qemu = subprocess.Popen(
        [QEMU, "-accel", "tcg", "-kernel", str(C_DIR / "serial_echo.elf"), "-display", "none", "-no-reboot",
         "-monitor", "none", "-device", "isa-debug-exit,iobase=0x501,iosize=2",
         "-chardev", f"socket,id=com1,path={path}", "-serial", "chardev:com1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        conn, _ = server.accept()
        conn.settimeout(30)
        received = b""
        while b"echo ready\n" not in received:
            received += conn.recv(256)
        conn.sendall(b"hi\n")
        time.sleep(0.1)
        conn.sendall(b"q")
        while b"bye\n" not in received:
            chunk = conn.recv(256)
            if not chunk:
                break
            received += chunk
        assert received == b"echo ready\nhi\nqbye\n"
        assert qemu.wait(timeout=30) == 35
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait(timeout=10)
        server.close()


def test_the_device_guides_build_recipe_links_its_example_at_its_load_address(tmp_path):
    """docs/device-guide.md section 5: the assembly and the commands as printed there."""
    import re

    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) missing (as root: scripts/test-host-setup)")
    guide = (Path(__file__).resolve().parent.parent / "docs" / "device-guide.md").read_text()
    source = re.search(r"```asm\n(# scratch-demo.*?)```", guide, re.S)
    recipe = re.search(r"Build it into a flat binary.*?```sh\n(.*?)```", guide, re.S)
    assert source is not None and recipe is not None
    # A label used as an absolute address: where the link puts the code decides its value.
    (tmp_path / "scratch-demo.S").write_text(source.group(1) + "        .word   1b\n")
    for command in recipe.group(1).strip().splitlines():
        done = subprocess.run(command.split(), cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0 and not done.stderr, (command, done.stderr)
    image = (tmp_path / "scratch-demo.bin").read_bytes()
    assert len(image) == 32 and image[:3] == bytes([0xB8, 0x28, 0x19])  # mov $0x1928, %ax
    assert struct.unpack_from("<H", image, 30)[0] == 27  # 1: (the hlt) is at 27, its address at 0
