#!/usr/bin/env python3
"""Build the guest programs: guest/NAME.S -> NAME.bin, guest/c/NAME.c -> c/NAME.elf.

    python guest/build.py [--out DIR] [NAME ...]

Two kinds of program. Assembly programs are flat binaries (below). C programs
(``guest/c/*.c`` except the runtime) are multiboot v1 ELF32 kernels at 1 MiB,
linked with the shared runtime ``crt0.S`` + ``runtime.c`` and ``link.ld``; a
profile boots them through its ``loader:`` section. They need ``gcc`` besides
binutils, are compiled with fixed flags (``C_FLAGS``) and stripped, so a rebuild
with the same compiler is byte-identical.

Assembly programs: each source says how it is built in its first line:

    # vmcore-build: mode=real base=0x0

``mode`` is the start state the VMM gives it (``real``, ``protected`` or ``long``,
the profile's ``cpu.mode``) and picks the assembler/linker flavour; ``base`` is the
guest-physical address the profile loads the image at, which is also its entry
point (``_start`` must be the first byte). Nothing else is read from the sources,
so adding a program means adding a ``.S`` file with that line.

The output depends only on the sources and the binutils version: no build ids, no
notes, no timestamps; ``tests/test_guest_build.py`` rebuilds and compares bytes.
Standard library only, so it runs before vmcore is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent
TOOLS = ("as", "ld", "objcopy")
C_DIR = GUEST_DIR / "c"
C_TOOLS = ("gcc",)
#: Linked into every C program; every other ``guest/c/*.c`` is a program.
C_RUNTIME = ("crt0.S", "runtime.c")
#: The committed ``.elf`` files were built with this compiler; another version may
#: generate other (equally valid) code, so the byte-identical test only holds with it.
C_REFERENCE_COMPILER = "12.2.0"
#: Fixed, explicit code-generation flags: nothing left to the distribution's gcc
#: defaults (Ubuntu's enable CET and stack-clash probes, which change the bytes),
#: no SSE/x87 (the VMM's start state leaves CR4.OSFXSR clear), no unwind tables,
#: no .comment, source paths mapped away.
C_FLAGS = (
    "-m32", "-march=i686", "-mtune=generic", "-mgeneral-regs-only",
    "-std=gnu11", "-O2", "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie",
    "-fno-stack-protector", "-fno-stack-clash-protection", "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fno-ident",
    "-Wall", "-Wextra",
)
#: A multiboot v1 header must lie 4-byte aligned in the first 8192 bytes (spec 3.1.1).
MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192

# mode -> (as flag, ld emulation). Real-mode sources are i386 objects whose code is
# `.code16`; gas encodes the operand/address-size prefixes.
_FLAVOURS = {
    "real": ("--32", "elf_i386"),
    "protected": ("--32", "elf_i386"),
    "long": ("--64", "elf_x86_64"),
}

_HEADER = re.compile(r"^#\s*vmcore-build:(?P<fields>.*)$")

# One output section from address `base`, the entry first; notes, build ids and
# unwind tables discarded so that `objcopy -O binary` emits exactly the program.
_LINKER_SCRIPT = """\
ENTRY(_start)
SECTIONS
{{
  . = {base:#x};
  .text : {{ *(.text .text.*) *(.rodata .rodata.*) *(.data .data.*) *(.bss .bss.*) }}
  /DISCARD/ : {{ *(.note .note.*) *(.comment) *(.eh_frame) }}
}}
"""


class BuildError(Exception):
    """A guest program could not be built; the message is one line for the user."""


class GuestProgram(typing.NamedTuple):
    """How one guest program is built and where it starts.

    A NamedTuple rather than a dataclass so that loading this file by path with
    ``importlib.util`` works without registering it in ``sys.modules`` first.
    """

    name: str
    source: Path
    mode: str  # the profile's cpu.mode: real, protected or long
    base: int  # load address == entry point

    @property
    def entry(self) -> int:
        return self.base

    @property
    def binary(self) -> Path:
        return self.source.with_suffix(".bin")


def parse_header(source: Path) -> GuestProgram:
    """Read the ``# vmcore-build:`` line that must open ``source``."""
    with source.open(encoding="utf-8") as f:
        first = f.readline().rstrip("\n")
    match = _HEADER.match(first)
    if not match:
        raise BuildError(f"{source}: first line must be '# vmcore-build: mode=... base=...'")
    fields = {}
    for item in match["fields"].split():
        key, sep, value = item.partition("=")
        if not sep:
            raise BuildError(f"{source}: vmcore-build field {item!r} is not key=value")
        fields[key] = value
    unknown = set(fields) - {"mode", "base"}
    if unknown:
        raise BuildError(f"{source}: unknown vmcore-build field(s) {sorted(unknown)}")
    mode = fields.get("mode")
    if mode not in _FLAVOURS:
        raise BuildError(f"{source}: vmcore-build mode must be one of {sorted(_FLAVOURS)}, got {mode!r}")
    try:
        base = int(fields["base"], 0)
    except (KeyError, ValueError):
        raise BuildError(f"{source}: vmcore-build needs base=<address>, e.g. base=0x1000") from None
    return GuestProgram(name=source.stem, source=source, mode=mode, base=base)


def discover(guest_dir: Path = GUEST_DIR) -> dict[str, GuestProgram]:
    """Every ``*.S`` in ``guest_dir``, by name."""
    return {p.stem: parse_header(p) for p in sorted(guest_dir.glob("*.S"))}


SOURCES: dict[str, GuestProgram] = discover()


class CProgram(typing.NamedTuple):
    """A C guest: a multiboot v1 ELF32 kernel, entered in protected mode by the loader."""

    name: str
    source: Path

    @property
    def binary(self) -> Path:
        return self.source.with_suffix(".elf")


def discover_c(c_dir: Path = C_DIR) -> dict[str, CProgram]:
    """Every ``*.c`` in ``c_dir`` that is not part of the runtime, by name."""
    return {p.stem: CProgram(p.stem, p) for p in sorted(c_dir.glob("*.c")) if p.name not in C_RUNTIME}


C_SOURCES: dict[str, CProgram] = discover_c()


def check_toolchain(c: bool = False) -> dict[str, str]:
    """Return the path of each tool (binutils, and gcc when ``c``), or fail naming the first one missing."""
    found = {}
    for tool in TOOLS:
        path = shutil.which(tool)
        if path is None:
            raise BuildError(
                f"guest build needs `{tool}` from GNU binutils, not found on PATH "
                f"(install it with `apt-get install binutils`)"
            )
        found[tool] = path
    if c:
        for tool in C_TOOLS:
            path = shutil.which(tool)
            if path is None:
                raise BuildError(
                    f"the C guests (guest/c) need `{tool}` with -m32 support, not found on PATH "
                    f"(install it with `apt-get install gcc`)"
                )
            found[tool] = path
    return found


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().replace("\n", "; ")
        raise BuildError(f"{what}: {Path(argv[0]).name} failed: {detail}")


def _elf_entry(elf: Path) -> int:
    header = elf.read_bytes()[:32]
    if header[4] == 1:  # ELFCLASS32
        return struct.unpack_from("<I", header, 24)[0]
    return struct.unpack_from("<Q", header, 24)[0]


def build_one(program: GuestProgram, out_dir: Path, tools: dict[str, str]) -> Path:
    as_flag, emulation = _FLAVOURS[program.mode]
    out = out_dir / f"{program.name}.bin"
    with tempfile.TemporaryDirectory(prefix=f"vmcore-guest-{program.name}-") as tmp:
        tmpdir = Path(tmp)
        obj, elf, script = tmpdir / "prog.o", tmpdir / "prog.elf", tmpdir / "prog.ld"
        script.write_text(_LINKER_SCRIPT.format(base=program.base))
        _run([tools["as"], as_flag, "-o", str(obj), str(program.source)], program.source.name)
        _run(
            [tools["ld"], "-m", emulation, "-N", "--build-id=none", "-T", str(script),
             "-o", str(elf), str(obj)],
            program.source.name,
        )
        entry = _elf_entry(elf)
        if entry != program.base:
            raise BuildError(
                f"{program.source.name}: _start is at {entry:#x}, but the VMM enters at the "
                f"load address {program.base:#x}; make _start the first instruction"
            )
        staged = tmpdir / "prog.bin"
        _run([tools["objcopy"], "-O", "binary", "-j", ".text", str(elf), str(staged)],
             program.source.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, out)
    return out


def _multiboot_header_offset(image: bytes) -> int | None:
    for offset in range(0, min(len(image), MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<3I", image, offset)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return offset
    return None


def build_c(program: CProgram, out_dir: Path, tools: dict[str, str]) -> Path:
    """Compile ``program`` with the runtime, link it at 1 MiB, strip it: ``out_dir/NAME.elf``."""
    out = out_dir / f"{program.name}.elf"
    c_dir = program.source.parent
    what = f"c/{program.source.name}"
    with tempfile.TemporaryDirectory(prefix=f"vmcore-guest-{program.name}-") as tmp:
        tmpdir = Path(tmp)
        objects = []
        # Compiled from inside c_dir with relative names, paths mapped away: nothing
        # of the checkout's location can reach the output.
        for source in (*C_RUNTIME, program.source.name):
            obj = tmpdir / (Path(source).stem + ".o")
            _run([tools["gcc"], *C_FLAGS, f"-ffile-prefix-map={c_dir}=.", "-c", source, "-o", str(obj)],
                 what, cwd=c_dir)
            objects.append(str(obj))
        elf = tmpdir / "prog.elf"
        _run([tools["ld"], "-m", "elf_i386", "-T", str(c_dir / "link.ld"), "--build-id=none",
              "-z", "noexecstack", "-nostdlib", "--strip-all", "-o", str(elf), *objects], what)
        image = elf.read_bytes()
        if _multiboot_header_offset(image) is None:
            raise BuildError(f"{what}: no multiboot header in the first {MULTIBOOT_SEARCH} bytes of the "
                             f"ELF; link.ld must place .multiboot first")
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(elf, out)
    return out


def build(names=None, out_dir: Path | str | None = None) -> list[Path]:
    """Build ``names`` (default: every program); return the output paths.

    Without ``out_dir`` each output goes beside its source (``guest/NAME.bin``,
    ``guest/c/NAME.elf``).
    """
    programs = discover()
    c_programs = discover_c()
    if names is None:
        selected = [*programs.values(), *c_programs.values()]
    else:
        selected = []
        for name in names:
            stem = Path(name).stem if name.endswith((".S", ".bin", ".c", ".elf")) else name
            if stem in programs and not name.endswith((".c", ".elf")):
                selected.append(programs[stem])
            elif stem in c_programs:
                selected.append(c_programs[stem])
            else:
                known = ", ".join([*programs, *c_programs])
                raise BuildError(f"no guest program {name!r}; known: {known}")
    tools = check_toolchain(c=any(isinstance(p, CProgram) for p in selected))
    built = []
    for program in selected:
        if isinstance(program, CProgram):
            built.append(build_c(program, Path(out_dir) if out_dir else program.source.parent, tools))
        else:
            built.append(build_one(program, Path(out_dir) if out_dir else GUEST_DIR, tools))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build vmcore's guest programs (flat binaries and multiboot C kernels).")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: beside each source, guest/ or guest/c/)")
    parser.add_argument("names", nargs="*", help="programs to build (default: all)")
    args = parser.parse_args(argv)
    try:
        built = build(args.names or None, args.out)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in built:
        print(f"{path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
