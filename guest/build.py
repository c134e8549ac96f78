#!/usr/bin/env python3
"""Build the guest programs: guest/NAME.S -> NAME.bin, a flat binary.

    python guest/build.py [--out DIR] [NAME ...]

Each source says how it is built in its first line:

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


def check_toolchain() -> dict[str, str]:
    """Return the path of each binutils tool, or fail naming the first one missing."""
    found = {}
    for tool in TOOLS:
        path = shutil.which(tool)
        if path is None:
            raise BuildError(
                f"guest build needs `{tool}` from GNU binutils, not found on PATH "
                f"(install it with `apt-get install binutils`)"
            )
        found[tool] = path
    return found


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
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


def build(names=None, out_dir: Path | str = GUEST_DIR) -> list[Path]:
    """Build ``names`` (default: every program) into ``out_dir``; return the .bin paths."""
    programs = discover()
    if names is None:
        selected = list(programs.values())
    else:
        selected = []
        for name in names:
            stem = Path(name).stem if name.endswith((".S", ".bin")) else name
            if stem not in programs:
                raise BuildError(f"no guest program {name!r}; known: {', '.join(programs)}")
            selected.append(programs[stem])
    tools = check_toolchain()
    return [build_one(p, Path(out_dir), tools) for p in selected]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build vmcore's guest programs (flat binaries).")
    parser.add_argument("--out", type=Path, default=GUEST_DIR, help="output directory (default: guest/)")
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
