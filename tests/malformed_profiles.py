"""The malformed-profile cases: each profile text, where its error must point and what it must say.

Plain data, so that three places share one list: tests/test_profile.py runs every case,
tests/test_malformed_doc.py renders docs/malformed-profiles.md from them, and
tests/test_cli.py checks a few through ``vmcore check``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

import attrs
import pytest

import vmcore.memory
from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, prop
from vmcore.hookspecs import hookimpl
from vmcore.machine import Machine
from vmcore.plugins import DeviceRegistry
from vmcore.profile import MAX_EXTENDS, MAX_GUEST_MEMORY_ENV, Profile, ProfileError

RAM_ONLY = "memory:\n  ram: {size: 4K}\n"
#: A file name one byte longer than Linux allows (NAME_MAX, 255 bytes): ENAMETOOLONG.
LONG_NAME = "n" * 256
#: The name every malformed-profile case is written under (what docs/malformed-profiles.md shows).
CASE_FILE = "p.yaml"


# --- malformed profiles: (name, yaml_text, expected_line, expected_fragments) -----------------
#
# Each case is written as ``p.yaml`` in a folder made by :func:`make_case_dir` and loaded (or
# built) there. ``expected_line`` is a line of p.yaml, or ``"other.yaml:LINE"`` when the problem
# is in a file p.yaml extends. ``expected_fragments[0]`` is the exact key the message names
# ("" when it names none); the rest must appear in the message. docs/malformed-profiles.md is
# rendered from these tables (tests/test_malformed_doc.py).

Case = tuple[str, "str | bytes", "int | str", list[str]]

#: Problems :meth:`Profile.load` reports.
PROFILE_ERRORS: list[Case] = [
    # The file and its YAML.
    ("yaml-syntax",
     "memory:\n  ram: {size: 4K}\ncpu: mode: real\n",
     3, ["", "YAML syntax error", "mapping values are not allowed"]),
    ("yaml-tab",
     "memory:\n\tram: {size: 4K}\n",
     2, ["", "YAML syntax error", "'\\t'"]),
    ("yaml-unclosed-quote",
     "name: 'hello\n" + RAM_ONLY,
     1, ["", "YAML syntax error", "quoted scalar", "end of stream", "the file ends at line 4"]),
    ("yaml-unclosed-bracket",
     "memory:\n  ram: {size: 4K\ncpu: {mode: real}\n",
     3, ["", "YAML syntax error", "flow mapping (from line 2)", "expected ',' or '}'"]),
    ("yaml-bad-indentation",
     "memory:\n  ram:\n    size: 4K\n   base: 0\n",
     4, ["", "YAML syntax error", "block mapping (from line 2)", "expected <block end>"]),
    ("yaml-undefined-alias",
     "memory: *slots\n",
     1, ["", "YAML syntax error", "undefined alias 'slots'"]),
    ("yaml-recursive-alias",
     "memory: &m\n  ram: {size: 4K}\n  again: *m\n",
     3, ["", "YAML syntax error", "alias *m", "recursive structure"]),
    ("yaml-alias-bomb",
     "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n" + RAM_ONLY,
     5, ["e", "more than 100000 values", "alias bomb"]),
    ("yaml-nested-too-deep",
     "x: " + "[" * 40 + "]" * 40 + "\n" + RAM_ONLY,
     1, ["", "YAML syntax error", "nested more than 32 levels deep"]),
    ("yaml-merge-key",
     "slot: &slot {size: 4K}\nmemory:\n  ram: {<<: *slot, base: 0}\n",
     3, ["memory.ram.<<", "merge keys are not supported", "extends"]),
    ("alias-of-a-mapping-as-key",
     "slot: &slot {size: 4K}\nmemory:\n  *slot : {size: 8K}\n",
     3, ["memory", "a key must be plain text"]),
    ("alias-repeats-a-key",
     "memory:\n  &n ram: {size: 4K}\n  *n : {size: 8K}\n",
     3, ["memory.ram", "duplicate key", "first given on line 2"]),
    ("list-as-key",
     "? [memory]\n: {ram: {size: 4K}}\n",
     1, ["", "a key must be plain text"]),
    ("duplicate-key",
     "memory:\n  ram: {size: 4K}\ncpu: {mode: real}\nmemory:\n  ram: {size: 8K}\n",
     4, ["memory", "duplicate key", "first given on line 1"]),
    ("duplicate-nested-key",
     "memory:\n  ram:\n    size: 4K\n    size: 8K\n",
     4, ["memory.ram.size", "duplicate key", "line 3"]),
    ("top-level-list",
     "# a machine\n- memory\n- devices\n",
     2, ["", "top level must be a mapping"]),
    ("top-level-scalar",
     "just a sentence\n",
     1, ["", "top level must be a mapping"]),
    ("two-documents",
     RAM_ONLY + "---\nname: second\n",
     3, ["", "YAML syntax error", "single document", "another document"]),
    ("empty-file",
     "",
     1, ["", "empty", "expected a mapping", "memory"]),
    ("only-comments",
     "# nothing here yet\n",
     1, ["", "empty", "memory"]),
    ("nul-character",
     "name: a\x00b\n" + RAM_ONLY,
     1, ["", "U+0000 is not allowed"]),
    ("binary-file",
     b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00\n",
     1, ["", "not UTF-8", "byte 0xff", "binary file"]),
    ("latin-1-text",
     RAM_ONLY.encode() + b"name: caf\xe9\n",
     3, ["", "not UTF-8", "byte 0xe9"]),
    # The top level.
    ("unknown-top-level-key",
     RAM_ONLY + "devics:\n  console: {type: debugcon}\n",
     3, ["devics", "unknown key", "did you mean 'devices'?", "expected one of"]),
    ("misspelt-extends",
     "extend: base.yaml\n" + RAM_ONLY,
     1, ["extend", "unknown key", "did you mean 'extends'?"]),
    ("name-is-a-mapping",
     "name: {first: a}\n" + RAM_ONLY,
     1, ["name", "expected a name, got a mapping"]),
    ("name-is-empty",
     "name: ''\n" + RAM_ONLY,
     1, ["name", "must not be empty"]),
    ("unknown-accel",
     "accel: kmv\n" + RAM_ONLY,
     1, ["accel", "expected one of kvm, tcg, auto", "did you mean 'kvm'?"]),
    ("accel-is-a-list",
     "accel: [kvm, tcg]\n" + RAM_ONLY,
     1, ["accel", "expected one of kvm, tcg, auto, got a list"]),
    ("accel-is-a-mapping",
     "accel: {kvm: true}\n" + RAM_ONLY,
     1, ["accel", "got a mapping"]),
    ("unknown-irqchip",
     "irqchip: kernal\n" + RAM_ONLY,
     1, ["irqchip", "expected one of auto, userspace, kernel, none", "did you mean 'kernel'?"]),
    ("kernel-pit-without-kernel-irqchip",
     "kernel_pit: true\n" + RAM_ONLY,
     1, ["kernel_pit", "needs irqchip: kernel"]),
    ("kernel-pit-not-a-boolean",
     "irqchip: kernel\nkernel_pit: maybe\n" + RAM_ONLY,
     2, ["kernel_pit", "expected true or false", "'maybe'"]),
    ("unknown-clock",
     "clock: wall\n" + RAM_ONLY,
     1, ["clock", "expected one of host, virtual"]),
    ("virtual-clock-on-kvm",
     "accel: kvm\nclock: virtual\n" + RAM_ONLY,
     2, ["clock", "needs accel: tcg"]),
    # cpu
    ("cpu-is-a-list",
     "cpu: [real, 0x1000]\n" + RAM_ONLY,
     1, ["cpu", "expected a section"]),
    ("unknown-cpu-key",
     "cpu:\n  mode: real\n  entyr: 0x100\n" + RAM_ONLY,
     3, ["cpu.entyr", "unknown key", "did you mean 'entry'?"]),
    ("unknown-cpu-mode",
     "cpu:\n  mode: reel\n" + RAM_ONLY,
     2, ["cpu.mode", "expected one of real, protected, long", "'reel'", "did you mean 'real'?"]),
    ("cpu-mode-is-a-mapping",
     "cpu:\n  mode: {real: true}\n" + RAM_ONLY,
     2, ["cpu.mode", "got a mapping"]),
    ("bad-entry",
     "cpu:\n  entry: 0xZZ\n" + RAM_ONLY,
     2, ["cpu.entry", "expected an address", "'0xZZ'"]),
    ("negative-entry",
     "cpu: {entry: -0x10}\n" + RAM_ONLY,
     1, ["cpu.entry", "must not be negative", "'-0x10'"]),
    ("entry-past-64-bits",
     "cpu:\n  entry: 0x1_0000_0000_0000_0000\n" + RAM_ONLY,
     2, ["cpu.entry", "64 bits"]),
    ("real-mode-entry-past-64k",
     "cpu:\n  mode: real\n  entry: 0x10000\n" + RAM_ONLY,
     3, ["cpu.entry", "real mode", "at most 0xffff", "0x10000"]),
    ("unaligned-tables",
     "cpu:\n  mode: protected\n  tables: 0x9100\n" + RAM_ONLY,
     3, ["cpu.tables", "4K-aligned", "0x9100"]),
    ("registers-is-a-list",
     "cpu:\n  registers: [rsp, 0x8000]\n" + RAM_ONLY,
     2, ["cpu.registers", "expected register: value lines"]),
    ("unknown-register",
     "cpu:\n  registers:\n    rsp: 0x8000\n    rxx: 1\n" + RAM_ONLY,
     4, ["cpu.registers.rxx", "unknown key", "expected one of", "rsp"]),
    ("misspelt-register",
     "cpu:\n  registers: {rflag: 0x202}\n" + RAM_ONLY,
     2, ["cpu.registers.rflag", "unknown key", "did you mean 'rflags'?"]),
    ("register-too-wide",
     "cpu:\n  registers:\n    rax: 0x1_0000_0000_0000_0000\n" + RAM_ONLY,
     3, ["cpu.registers.rax", "64 bits"]),
    ("register-not-a-number",
     "cpu:\n  registers: {rsp: top}\n" + RAM_ONLY,
     2, ["cpu.registers.rsp", "expected a number", "'top'"]),
    ("unknown-cpu-model",
     "cpu:\n  model: qemu65\n" + RAM_ONLY,
     2, ["cpu.model", "unknown CPU model 'qemu65'", "qemu64"]),
    ("unknown-cpu-feature",
     "cpu:\n  model: qemu64\n  features: +x2apic,-cx61\n" + RAM_ONLY,
     3, ["cpu.features", "no CPU feature 'cx61'", "did you mean cx16?"]),
    ("cpu-feature-without-sign",
     "cpu:\n  features: [+x2apic, popcnt]\n" + RAM_ONLY,
     2, ["cpu.features", "'popcnt'", "expected +name or -name"]),
    ("cpu-feature-set-by-the-cpu",
     "cpu:\n  features: +osxsave\n" + RAM_ONLY,
     2, ["cpu.features", "osxsave is set by the CPU from its state"]),
    ("unknown-cpu-vendor",
     "cpu:\n  vendor: AuthenticIntel\n" + RAM_ONLY,
     2, ["cpu.vendor", "expected one of GenuineIntel, AuthenticAMD", "'AuthenticIntel'"]),
    # memory
    ("no-memory",
     "cpu: {mode: real}\n",
     1, ["memory", "at least one memory slot"]),
    ("memory-is-a-list",
     "memory:\n  - {size: 4K}\n",
     2, ["memory", "expected a section"]),
    ("memory-is-empty",
     "memory: {}\n",
     1, ["memory", "at least one memory slot"]),
    ("slot-is-a-scalar",
     "memory:\n  ram: 4K\n",
     2, ["memory.ram", "expected a slot: base, size, kind"]),
    ("unknown-slot-key",
     "memory:\n  ram:\n    size: 4K\n    imgae: x.bin\n",
     4, ["memory.ram.imgae", "unknown key", "did you mean 'image'?"]),
    ("missing-size",
     "memory:\n  ram:\n    base: 0x1000\n",
     2, ["memory.ram.size", "missing", "size like 4K"]),
    ("size-not-4k-multiple",
     "memory:\n  ram:\n    base: 0\n    size: 1000\n",
     4, ["memory.ram.size", "multiple of 4K", "0x3e8"]),
    ("zero-size",
     "memory:\n  ram: {size: 0}\n",
     2, ["memory.ram.size", "positive multiple of 4K"]),
    ("negative-size",
     "memory:\n  ram: {size: -4K}\n",
     2, ["memory.ram.size", "must not be negative", "'-4K'"]),
    ("bad-number",
     "memory:\n  ram:\n    size: 4Q\n",
     3, ["memory.ram.size", "expected a size like 4K", "'4Q'"]),
    ("hex-with-junk",
     "memory:\n  ram: {size: 0x10zz}\n",
     2, ["memory.ram.size", "expected a size like 4K", "'0x10zz'"]),
    ("size-is-a-mapping",
     "memory:\n  ram:\n    size: {value: 4K}\n",
     3, ["memory.ram.size", "got a mapping"]),
    ("unaligned-base",
     "memory:\n  ram:\n    base: 0x100\n    size: 4K\n",
     3, ["memory.ram.base", "4K-aligned", "0x100"]),
    ("base-past-52-bits",
     "memory:\n  ram: {base: 0x10_0000_0000_0000, size: 4K}\n",
     2, ["memory.ram.base", "past the 52-bit guest-physical space"]),
    ("slot-ends-past-52-bits",
     "memory:\n  ram:\n    base: 0xF_FFFF_FFFF_F000\n    size: 8K\n",
     4, ["memory.ram.size", "runs past the 52-bit guest-physical space"]),
    ("unknown-slot-kind",
     "memory:\n  ram: {size: 4K, kind: flash}\n",
     2, ["memory.ram.kind", "expected one of ram, rom", "'flash'"]),
    ("overlapping-slots",
     "memory:\n  low:\n    base: 0\n    size: 8K\n  high:\n    base: 0x1000\n    size: 4K\n",
     5, ["memory.high", "overlaps slot 'low'", "0x1000..0x1fff", "0x0..0x1fff"]),
    ("more-memory-than-the-limit",
     "memory:\n  low: {size: 32G}\n  high: {base: 32G, size: 40G}\n",
     3, ["memory.high", "add up to 72G", "more than the 64G", "from 32G to 72G", "VMCORE_MAX_GUEST_MEMORY"]),
    ("image-missing",
     "memory:\n  ram:\n    size: 4K\n    image: nope.bin\n",
     4, ["memory.ram.image", "nope.bin not found", "looked at"]),
    ("image-is-a-directory",
     "memory:\n  ram: {size: 4K, image: adir}\n",
     2, ["memory.ram.image", "adir is a directory, not a file"]),
    ("image-is-a-list",
     "memory:\n  ram: {size: 4K, image: [a.bin, b.bin]}\n",
     2, ["memory.ram.image", "expected the path of an image file, got a list"]),
    ("image-is-empty",
     "memory:\n  ram: {size: 4K, image: ''}\n",
     2, ["memory.ram.image", "expected the path of an image file, got ''"]),
    ("image-larger-than-slot",
     "memory:\n  ram:\n    size: 4K\n    image: big.bin\n",
     4, ["memory.ram.image", "8192 bytes", "does not fit", "0x1000-byte slot"]),
    ("image-larger-than-slot-declared-after-the-next",
     "memory:\n  next: {base: 4K, size: 4K}\n  ram: {base: 0, size: 4K, image: big.bin}\n",
     3, ["memory.ram.image", "8192 bytes", "does not fit", "0x1000-byte slot"]),
    ("image-symlink-loop",
     "memory:\n  ram: {size: 4K, image: loop.link}\n",
     2, ["memory.ram.image", "image file loop.link is a loop of symbolic links"]),
    ("image-name-too-long",
     f"memory:\n  ram: {{size: 4K, image: {LONG_NAME}}}\n",
     2, ["memory.ram.image", "has a path component of 256 bytes, more than the 255 a name may have"]),
    ("image-past-slot-end-at-offset",
     "memory:\n  ram:\n    size: 4K\n    image: small.bin\n    offset: 0xFF8\n",
     4, ["memory.ram.image", "16 bytes", "offset 0xff8", "does not fit"]),
    ("offset-past-slot",
     "memory:\n  ram:\n    size: 4K\n    image: small.bin\n    offset: 4K\n",
     5, ["memory.ram.offset", "0x1000 is past the end of the 0x1000-byte slot"]),
    ("negative-offset",
     "memory:\n  ram: {size: 4K, image: small.bin, offset: -1}\n",
     2, ["memory.ram.offset", "must not be negative"]),
    ("offset-without-image",
     "memory:\n  ram:\n    size: 4K\n    offset: 0x100\n",
     4, ["memory.ram.offset", "needs an image"]),
    # devices (what only a device type knows is checked when the machine is built: BUILD_ERRORS)
    ("devices-is-a-list",
     RAM_ONLY + "devices:\n  - type: debugcon\n",
     4, ["devices", "expected a section"]),
    ("device-not-a-mapping",
     RAM_ONLY + "devices:\n  console: debugcon\n",
     4, ["devices.console", "expected 'type: NAME'"]),
    ("device-is-empty",
     RAM_ONLY + "devices:\n  console:\n",
     4, ["devices.console", "expected 'type: NAME'"]),
    ("device-missing-type",
     RAM_ONLY + "devices:\n  console:\n    port: 0xF1\n    backend: memory\n",
     4, ["devices.console.type", "missing", "vmcore devices"]),
    ("device-type-is-a-list",
     RAM_ONLY + "devices:\n  console: {type: [debugcon]}\n",
     4, ["devices.console.type", "expected a device type name, got a list"]),
    # limits
    ("limits-is-a-list",
     RAM_ONLY + "limits: [10, 1000]\n",
     3, ["limits", "expected a section"]),
    ("unknown-limit",
     RAM_ONLY + "limits:\n  max_exit: 10\n",
     4, ["limits.max_exit", "unknown key", "did you mean 'max_exits'?"]),
    ("zero-timeout",
     RAM_ONLY + "limits:\n  timeout: 0\n",
     4, ["limits.timeout", "must be a positive number of seconds", "'0'"]),
    ("negative-timeout",
     RAM_ONLY + "limits:\n  timeout: -1\n",
     4, ["limits.timeout", "must be a positive number of seconds", "'-1'"]),
    ("nan-timeout",
     RAM_ONLY + "limits:\n  timeout: nan\n",
     4, ["limits.timeout", "must be a positive number of seconds", "'nan'"]),
    ("infinite-timeout",
     RAM_ONLY + "limits:\n  timeout: inf\n",
     4, ["limits.timeout", "must be a positive number of seconds", "'inf'"]),
    ("huge-timeout",
     RAM_ONLY + "limits:\n  timeout: 1e12\n",
     4, ["limits.timeout", "at most 1e+09 seconds", "leave limits.timeout out"]),
    ("text-timeout",
     RAM_ONLY + "limits:\n  timeout: soon\n",
     4, ["limits.timeout", "expected seconds", "'soon'"]),
    ("timeout-with-two-units",
     RAM_ONLY + "limits:\n  timeout: 10ss\n",
     4, ["limits.timeout", "expected seconds", "'10ss'"]),
    ("zero-max-exits",
     RAM_ONLY + "limits:\n  max_exits: 0\n",
     4, ["limits.max_exits", "positive"]),
    ("negative-max-exits",
     RAM_ONLY + "limits:\n  max_exits: -5\n",
     4, ["limits.max_exits", "must not be negative"]),
    # loader
    ("loader-is-a-list",
     RAM_ONLY + "loader: [kernel.elf]\n",
     3, ["loader", "expected a section"]),
    ("loader-without-kernel",
     RAM_ONLY + "loader:\n  format: elf\n",
     3, ["loader.kernel", "missing", "path of the kernel image"]),
    ("loader-kernel-missing",
     RAM_ONLY + "loader:\n  kernel: vmlinux\n",
     4, ["loader.kernel", "kernel vmlinux not found", "looked at"]),
    ("loader-kernel-is-a-directory",
     RAM_ONLY + "loader:\n  kernel: adir\n",
     4, ["loader.kernel", "adir is a directory, not a file"]),
    ("loader-kernel-symlink-loop",
     RAM_ONLY + "loader:\n  kernel: loop.link\n",
     4, ["loader.kernel", "kernel loop.link is a loop of symbolic links"]),
    ("loader-kernel-name-too-long",
     RAM_ONLY + f"loader:\n  kernel: {LONG_NAME}\n",
     4, ["loader.kernel", "has a path component of 256 bytes"]),
    ("unknown-loader-key",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  cmdlin: quiet\n",
     5, ["loader.cmdlin", "unknown key", "did you mean 'cmdline'?"]),
    ("unknown-loader-format",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  format: bzimage\n",
     5, ["loader.format", "expected one of auto, multiboot, elf, flat, linux", "'bzimage'"]),
    ("loader-initrd-missing",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  initrd: nowhere.cpio\n",
     5, ["loader.initrd", "initrd nowhere.cpio not found"]),
    ("loader-initrd-for-multiboot",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  format: multiboot\n  initrd: small.bin\n",
     6, ["loader.initrd", "only a Linux kernel takes an initrd (format: linux), not format multiboot"]),
    ("loader-address-not-a-number",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  address: 1M+4K\n",
     5, ["loader.address", "expected an address", "'1M+4K'"]),
    ("loader-cmdline-not-ascii",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  cmdline: console=ttyS0 café\n",
     5, ["loader.cmdline", "must be ASCII"]),
    ("loader-cmdline-is-a-list",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  cmdline: [quiet, debug]\n",
     5, ["loader.cmdline", "expected a command line, got a list"]),
    # extends
    ("extends-missing-file",
     RAM_ONLY + "extends: nowhere/base.yaml\n",
     3, ["extends", "base profile nowhere/base.yaml not found", "looked at"]),
    ("extends-a-directory",
     "extends: adir\n" + RAM_ONLY,
     1, ["extends", "base profile adir is a directory, not a file"]),
    ("extends-is-a-list",
     RAM_ONLY + "extends: [a.yaml, b.yaml]\n",
     3, ["extends", "expected the path of a base profile"]),
    ("extends-itself",
     "extends: p.yaml\n" + RAM_ONLY,
     1, ["extends", "p.yaml is already being loaded", "a cycle"]),
    ("extends-cycle",
     "extends: loop.yaml\n" + RAM_ONLY,
     "loop.yaml:2", ["extends", "p.yaml is already being loaded", "a cycle", "loop.yaml -> "]),
    ("extends-a-broken-base",
     "extends: bad-base.yaml\n",
     "bad-base.yaml:2", ["memory.ram.size", "multiple of 4K"]),
    ("extends-symlink-loop",
     "extends: loop.link\n" + RAM_ONLY,
     1, ["extends", "base profile loop.link is a loop of symbolic links"]),
    ("extends-name-too-long",
     f"extends: {LONG_NAME}\n" + RAM_ONLY,
     1, ["extends", "has a path component of 256 bytes"]),
    ("extends-too-deep",
     "extends: deep/1.yaml\n",
     f"deep/{MAX_EXTENDS}.yaml:1", ["extends", f"more than {MAX_EXTENDS} base profiles below ", "p.yaml (one "]),
]

#: Problems only :meth:`Machine.build` can see (device types, properties, bus claims, tables, kernels).
BUILD_ERRORS: list[Case] = [
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
    ("device-property-is-a-list",
     RAM_ONLY + "devices:\n  console:\n    type: debugcon\n    port: [0xE9, 0xF1]\n",
     6, ["devices.console.port", "expected a number", "['0xE9', '0xF1']"]),
    ("device-property-is-a-mapping",
     RAM_ONLY + "devices:\n  console:\n    type: debugcon\n    port: {io: 0xE9}\n",
     6, ["devices.console.port", "expected a number"]),
    ("device-property-is-empty",
     RAM_ONLY + "devices:\n  console:\n    type: debugcon\n    port:\n",
     6, ["devices.console.port", "expected a value, got nothing"]),
    ("device-bad-choice",
     RAM_ONLY + "devices:\n  console:\n    type: debugcon\n    backend: printer\n",
     6, ["devices.console.backend", "expected one of stdio, stderr, file, memory, socket, null", "'printer'"]),
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
    ("flat-kernel-without-address",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  format: flat\n",
     3, ["loader.kernel", "a flat image needs loader.address"]),
    ("kernel-not-multiboot",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  format: multiboot\n",
     3, ["loader.kernel", "not a multiboot kernel", "use format: elf or flat"]),
    ("flat-kernel-outside-memory",
     RAM_ONLY + "loader:\n  kernel: small.bin\n  format: flat\n  address: 1M\n",
     3, ["loader.kernel", "does not fit in guest memory", "0x100000 is in no slot"]),
    # /proc files say 0 bytes when asked (stat) and hold megabytes: only the bounded read sees it.
    ("image-from-proc-overflows-its-slot",
     "memory:\n  next: {base: 4K, size: 4K}\n  ram: {base: 0, size: 4K, image: /proc/kallsyms}\n",
     3, ["memory.ram.image", "image /proc/kallsyms holds more than the 0x1000 bytes from offset 0x0"]),
]

@attrs.frozen
class WindowConfig:
    base: int = prop(0x10000000, "Guest-physical address of the 16-byte register window.")
    decode: bool = prop(False, "Decode the window's range over memory, as a chipset does (an overlay).")


class Window(Device):
    """16 bytes of MMIO registers anywhere: the only built-in with MMIO (i440fx) has a fixed range."""

    type_name = "window"
    Config = WindowConfig
    SIZE = 16

    def __init__(self, config: WindowConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        if config.decode:
            # A hole in memory from power-on (a page: overlays are page-granular), where this device answers.
            page = config.base & ~0xFFF
            ctx.memory.overlay(f"window-{page:x}", page, 0x1000).hide()
        self.data = bytearray(self.SIZE)

    def regions(self) -> Sequence[Region]:
        return [Region(Space.MMIO, self.config.base, self.SIZE, self.read, self.write, name="window")]

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.data[offset:offset + size] = value.to_bytes(size, "little")


class WindowPlugin:
    """Adds the ``window`` type to a DeviceRegistry (``DeviceRegistry.default(plugins=[WindowPlugin])``)."""

    @staticmethod
    @hookimpl
    def vmcore_device_types() -> list[type]:
        return [Window]


#: Problems :meth:`Machine.build` sees in devices no built-in type can stand for: built with
#: the ``window`` type (:class:`Window`) from :class:`WindowPlugin` added to the installed ones.
PLUGIN_ERRORS: list[Case] = [
    ("device-mmio-over-ram",
     RAM_ONLY + "devices:\n  win: {type: window, base: 0x800}\n",
     4, ["devices.win", "mmio range 0x800..0x80f of win lies over memory slot 'ram' (0x0..0xfff, ", "p.yaml:2)",
         "reach the memory, never the device"]),
    ("device-mmio-over-rom",
     RAM_ONLY + "  bios: {base: 0xFFFF0000, size: 64K, kind: rom}\ndevices:\n  win: {type: window, base: 0xFFFFFFF8}\n",
     5, ["devices.win", "mmio range 0xfffffff8..0x100000007 of win lies over memory slot 'bios'",
         "0xfffffff8..0xffffffff reach the memory"]),
]

#: When the host cannot give a slot its memory (the anonymous mmap fails with ENOMEM): a slot
#: of more than 1M fails, smaller ones are mapped as usual.
HOST_ERRORS: list[Case] = [
    ("host-out-of-memory",
     "memory:\n  ram: {size: 4K}\n  big: {base: 1G, size: 2G}\n",
     3, ["memory.big", "slot 'big'", "the host could not provide its 2G of memory", "Cannot allocate memory"]),
]


def make_case_dir(folder: Path) -> Path:
    """The files the cases name, in ``folder`` (where each case is written as p.yaml)."""
    (folder / "big.bin").write_bytes(bytes(8192))
    (folder / "small.bin").write_bytes(b"\xf4" * 16)
    (folder / "adir").mkdir()
    (folder / "loop.yaml").write_text("# extends p.yaml back\nextends: p.yaml\n", encoding="utf-8")
    (folder / "bad-base.yaml").write_text("memory:\n  ram: {size: 3K}\n", encoding="utf-8")
    (folder / "loop.link").symlink_to("loop.link")
    extends_chain(folder / "deep", MAX_EXTENDS + 1)
    return folder


def extends_chain(folder: Path, length: int) -> Path:
    """``length`` profiles in ``folder``, 1.yaml extending 2.yaml ... the last with the memory; 1.yaml."""
    folder.mkdir()
    for i in range(1, length):
        (folder / f"{i}.yaml").write_text(f"extends: {i + 1}.yaml\n", encoding="utf-8")
    (folder / f"{length}.yaml").write_text(RAM_ONLY, encoding="utf-8")
    return folder / "1.yaml"


@contextlib.contextmanager
def default_memory_limit() -> Iterator[None]:
    """The cases assume the default guest-memory limit, whatever the environment says."""
    saved = os.environ.pop(MAX_GUEST_MEMORY_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[MAX_GUEST_MEMORY_ENV] = saved


@contextlib.contextmanager
def host_without_memory() -> Iterator[None]:
    """Make every anonymous mapping over 1M fail as an exhausted host's does (ENOMEM)."""
    real = vmcore.memory.mmap.mmap

    def mmap(fileno: int, length: int, *args: Any, **kwargs: Any) -> Any:
        if length > 1 << 20:
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        return real(fileno, length, *args, **kwargs)

    with mock.patch.object(vmcore.memory.mmap, "mmap", mmap):
        yield


def case_error(folder: Path, text: str | bytes, stage: str = "load") -> ProfileError:
    """Write ``text`` as p.yaml in ``folder``; the ProfileError loading (``stage="load"``) or
    building (``"build"``; ``"plugin"``: with :class:`WindowPlugin`; ``"host"``: with
    :func:`host_without_memory`) it gives."""
    path = folder / CASE_FILE
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with default_memory_limit(), contextlib.ExitStack() as stack:
        if stage == "load":
            with pytest.raises(ProfileError) as info:
                Profile.load(path)
            return info.value
        profile = Profile.load(path)  # valid as a profile: only building finds the problem
        if stage == "host":
            stack.enter_context(host_without_memory())
        registry = DeviceRegistry.default(plugins=[WindowPlugin]) if stage == "plugin" else None
        with pytest.raises(ProfileError) as info:
            Machine.build(profile, registry)
        return info.value


def expected_place(folder: Path, line: int | str) -> tuple[str, int]:
    """(file, line) a case expects: a line of p.yaml, or "other.yaml:LINE" (resolved, as extends does)."""
    if isinstance(line, int):
        return str(folder / CASE_FILE), line
    other, _, number = line.rpartition(":")
    return str((folder / other).resolve()), int(number)


ALL_CASES = [(case, "load") for case in PROFILE_ERRORS] + [(case, "build") for case in BUILD_ERRORS] + [
    (case, "plugin") for case in PLUGIN_ERRORS] + [(case, "host") for case in HOST_ERRORS]
