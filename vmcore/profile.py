"""YAML machine profiles: loading, inheritance, overrides and validation.

A profile is read with ``yaml.compose`` so every value keeps the file and line it
came from; all numbers are parsed by :func:`vmcore.units.parse_int` from the
text as written, not by YAML 1.1's rules. Every error is a :class:`ProfileError`
naming file, line and key, and saying what was expected.

Schema (all sections optional but ``memory``)::

    name: hello                 # default: the file's stem
    extends: base.yaml          # a profile this one refines (path relative to this file)
    accel: auto                 # kvm | tcg | auto
    cpu:
      mode: real                # real | protected | long | reset (x86 power-on: F000:FFF0, firmware)
      entry: 0x0                # first instruction (real mode: CS base 0, IP = entry)
      tables: 0x9000            # protected/long: where the VMM builds GDT and page tables
      registers: {rsp: 0x8000}  # initial general registers
    memory:
      ram: {base: 0, size: 4K, kind: ram, image: ../guest/hello.bin, offset: 0}
      bios: {base: 0xFFFE0000, size: 128K, kind: rom, image: /usr/share/seabios/bios.bin,
             missing: "install it: sudo apt-get install seabios"}   # said when the image is absent
    devices:
      console: {type: debugcon, port: 0xF1}   # the name, then type plus properties
    limits: {timeout: 10, max_exits: 1000000}

Mappings merge through ``extends`` key by key; a ``null`` removes an inherited entry.
At most 32 profiles may lie below one through ``extends``.
All slots together may hold at most 64G (``VMCORE_MAX_GUEST_MEMORY`` sets another limit).
docs/malformed-profiles.md lists each malformed input and the message it gives.
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import stat
from pathlib import Path
from typing import Any, Iterable

import attrs
import yaml

from .units import format_size, parse_int

MODES = ("real", "protected", "long", "reset")
IRQCHIPS = ("auto", "userspace", "kernel", "none")
DEVICE_ERROR_POLICIES = ("stop", "continue")
LOADER_FORMATS = ("auto", "multiboot", "elf", "flat")
ACCELS = ("kvm", "tcg", "auto")
SLOT_KINDS = ("ram", "rom")
REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rflags",
)

# Bounds on what a profile file may make the loader do: a profile is read before anything
# else, so a hostile or mistaken one (a disk image passed as the profile, an alias bomb,
# ten thousand nested brackets) must end in one ProfileError, not a hang or a RecursionError.
MAX_PROFILE_BYTES = 1 << 20
MAX_DEPTH = 32  # nesting levels (the schema needs 4; device properties may nest a little)
MAX_VALUES = 100_000  # values once aliases are expanded ("billion laughs")
MAX_EXTENDS = 32  # base profiles below one profile; each level costs Python stack frames
NAME_MAX = 255  # bytes in one path component (Linux)
MAX_TIMEOUT = 1e9  # seconds; setitimer and lock waits overflow past ~9.2e9
PHYS_BITS = 52  # x86-64 architectural maximum guest-physical address width
#: Total guest memory a profile may ask for unless VMCORE_MAX_GUEST_MEMORY says otherwise.
DEFAULT_MAX_GUEST_MEMORY = 64 << 30
MAX_GUEST_MEMORY_ENV = "VMCORE_MAX_GUEST_MEMORY"


@attrs.frozen
class Where:
    """A place in a profile: file and 1-based line (line 0: not from a file)."""

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class ProfileError(Exception):
    """A profile problem, as ``file:line: key: what is wrong (what was expected)``."""

    def __init__(self, where: Where, key: str, message: str) -> None:
        self.where = where
        self.key = key
        self.message = message
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


# --- a YAML tree that remembers where each value came from -------------------------------


class Scalar:
    __slots__ = ("value", "where", "null")

    def __init__(self, value: str, where: Where, null: bool = False) -> None:
        self.value = value
        self.where = where
        self.null = null


class Mapping(dict):  # type: ignore[type-arg]
    """str -> node, with the place of the mapping and of each key."""

    def __init__(self, where: Where) -> None:
        super().__init__()
        self.where = where
        self.key_where: dict[str, Where] = {}


class Sequence(list):  # type: ignore[type-arg]
    def __init__(self, where: Where) -> None:
        super().__init__()
        self.where = where


Node = Scalar | Mapping | Sequence


def _where(file: str, node: yaml.Node) -> Where:
    return Where(file, node.start_mark.line + 1)


class _Composer(yaml.SafeLoader):
    """SafeLoader's composer with two refusals, each at the line of the offending event.

    PyYAML composes one Python call level per nesting level, so deep nesting would end in a
    RecursionError; and an alias inside the node it names (``a: &a [*a]``) composes into a
    cyclic graph that no walk of the tree ever finishes.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._defined: dict[str, int] = {}  # anchor -> how many times defined so far
        self._open: list[tuple[str, int]] = []  # anchored collections still being composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if (event.anchor, self._defined.get(event.anchor, 0)) in self._open:
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{event.anchor} is inside the node &{event.anchor} names (a recursive "
                    "structure)", event.start_mark)
            node = super().compose_node(parent, index)
            # Placed where the alias is written, not where its anchor is (its children keep theirs),
            # so "duplicate key" or "expected a mapping" point at the line that uses the alias.
            return type(node)(node.tag, node.value, event.start_mark, event.end_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                              event.start_mark)
        anchor = event.anchor if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)) else None
        if anchor is not None:
            self._defined[anchor] = self._defined.get(anchor, 0) + 1
            self._open.append((anchor, self._defined[anchor]))
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.pop()


class _Converter:
    """yaml nodes -> the located tree; counts values so aliases cannot multiply them without bound."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.values = 0
        self.top = ("", Where(file, 1))  # the top-level key being converted, for limit errors

    def convert(self, node: yaml.Node, depth: int = 0, path: str = "") -> Node:
        where = _where(self.file, node)
        self.values += 1
        if self.values > MAX_VALUES:
            # Reported at the top-level key whose value grew too big: the node at hand was written
            # wherever the innermost anchor is, which says little about which alias multiplied it.
            raise ProfileError(self.top[1], self.top[0], f"more than {MAX_VALUES} values once aliases are "
                               "expanded (aliases of aliases multiply: an alias bomb?)")
        if depth > MAX_DEPTH:
            # The composer bounds nesting as written; aliases can stack nestings on each other.
            raise ProfileError(self.top[1], self.top[0],
                               f"nested more than {MAX_DEPTH} levels deep once aliases are expanded")
        if isinstance(node, yaml.ScalarNode):
            return Scalar(node.value, where, null=node.tag == "tag:yaml.org,2002:null")
        if isinstance(node, yaml.SequenceNode):
            seq = Sequence(where)
            seq.extend(self.convert(item, depth + 1, f"{path}[{i}]") for i, item in enumerate(node.value))
            return seq
        if isinstance(node, yaml.MappingNode):
            mapping = Mapping(where)
            for key_node, value_node in node.value:
                kw = _where(self.file, key_node)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    # SafeLoader applies "<<" when constructing, which a located tree never does.
                    raise ProfileError(kw, f"{path}.<<" if path else "<<", "YAML merge keys are not supported; "
                                       "write the keys out, or share a base profile with extends")
                if not isinstance(key_node, yaml.ScalarNode):
                    raise ProfileError(kw, path, "a key must be plain text, not a mapping or a list")
                key = key_node.value
                full = f"{path}.{key}" if path else key
                if depth == 0:
                    self.top = (key, kw)
                if key in mapping:
                    raise ProfileError(kw, full, f"duplicate key (first given on line {mapping.key_where[key].line})")
                mapping[key] = self.convert(value_node, depth + 1, full)
                mapping.key_where[key] = kw
            return mapping
        raise ProfileError(where, "", f"unsupported YAML node {node.tag}")


def _convert(file: str, node: yaml.Node) -> Node:
    return _Converter(file).convert(node)


def parse_yaml(text: str, file: str) -> Mapping:
    """Compose YAML text into a located tree; syntax errors become ProfileError."""
    try:
        root = yaml.compose(text, Loader=_Composer)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or "syntax error"
        if exc.context:
            since = exc.context_mark.line + 1 if exc.context_mark is not None else line
            if "end of stream" in problem and since != line:
                # An unclosed quote or bracket: where it opened is the line to fix, not the file's end.
                problem = f"{exc.context}, {problem} (the file ends at line {line})"
                line = since
            else:
                problem = f"{exc.context}{f' (from line {since})' if since != line else ''}, {problem}"
        raise ProfileError(Where(file, line), "", f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as exc:
        # Not a MarkedYAMLError, and its text spans two lines: say it in one, with the line.
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else 0
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise ProfileError(Where(file, line), "", f"YAML syntax error: character {char} is not allowed "
                           "(control characters other than tab and newline)") from None
    except yaml.YAMLError as exc:
        raise ProfileError(Where(file), "", f"YAML error: {' '.join(str(exc).split())}") from None
    if root is None:
        raise ProfileError(Where(file, 1), "", "the profile is empty; expected a mapping with at least 'memory'")
    tree = _convert(file, root)
    if not isinstance(tree, Mapping):
        raise ProfileError(tree.where, "", "the top level must be a mapping (key: value lines)")
    return tree


# --- the validated profile -------------------------------------------------------------


@attrs.frozen
class SlotSpec:
    """A memory slot: a range of guest-physical memory and what fills it."""

    name: str
    base: int
    size: int
    kind: str  # "ram" | "rom"
    image: Path | None
    offset: int
    where: Where
    image_where: Where | None = None  # the line naming the image, for errors found when reading it

    @property
    def readonly(self) -> bool:
        return self.kind == "rom"

    def read_image(self) -> bytes:
        """The image's bytes; a ProfileError unless they fit between ``offset`` and the slot's end.

        The read is bounded by that room and never blocks: the size :func:`Profile.load` saw
        can be wrong (a /proc file says 0 and holds megabytes) or stale (the file grew since),
        and an image that does not fit must not spill into the slot above.
        """
        assert self.image is not None
        where, key = self.image_where or self.where, f"memory.{self.name}.image"
        room = self.size - self.offset
        try:
            data = read_bounded(self.image, room + 1)
        except OSError as exc:  # removed, made unreadable or replaced since the profile was read
            raise ProfileError(where, key, f"cannot read {self.image}: {exc.strerror or exc}") from None
        if len(data) > room:
            raise ProfileError(where, key, f"image {self.image} holds more than the {room:#x} bytes from offset "
                               f"{self.offset:#x} to the end of the {self.size:#x}-byte slot")
        return data


def read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``; OSError for anything else.

    O_NONBLOCK: a FIFO or device swapped in for the file must not block the open or the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        got = 0
        while got < limit:
            chunk = os.read(fd, min(limit - got, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@attrs.frozen
class DeviceSpec:
    """A device instance: its type and raw properties, with where each came from."""

    name: str
    type: str
    props: dict[str, Any]
    where: Where
    prop_where: dict[str, Where]


@attrs.frozen
class CpuSpec:
    mode: str = "real"
    entry: int = 0
    tables: int | None = None
    registers: dict[str, int] = attrs.Factory(dict)
    where: Where = Where("<default>")


@attrs.frozen
class LoaderSpec:
    """A kernel image to load instead of (or on top of) slot images."""

    kernel: Path
    format: str  # auto | multiboot | elf | flat
    cmdline: str
    address: int | None  # flat images: where to load (default: cpu.entry)
    where: Where


@attrs.frozen
class Limits:
    timeout: float | None = None  # seconds of wall-clock time
    max_exits: int | None = None


@attrs.frozen
class Profile:
    """A machine description: the result of :meth:`Profile.load`."""

    name: str
    path: Path | None
    accel: str
    cpu: CpuSpec
    memory: tuple[SlotSpec, ...]
    devices: tuple[DeviceSpec, ...]
    limits: Limits
    irqchip: str = "auto"  # auto | userspace | kernel | none
    device_errors: str = "stop"  # stop | continue: what an exception raised by a device does
    kernel_pit: bool = False
    loader: "LoaderSpec | None" = None

    @classmethod
    def load(cls, path: str | Path, overrides: Iterable[str] = ()) -> "Profile":
        """Read a profile file (following ``extends``), apply ``key.path=value`` overrides, validate."""
        path = Path(path)
        tree = _load_tree(path, ())
        for item in overrides:
            _apply_override(tree, item)
        return _validate(tree, path)

    @classmethod
    def from_yaml(cls, text: str, file: str = "<string>", overrides: Iterable[str] = ()) -> "Profile":
        """Parse profile text; ``extends`` resolves against the current directory."""
        tree = parse_yaml(text, file)
        if "extends" in tree:
            tree = _extend(tree, Path(file).parent if file != "<string>" else Path.cwd(), (file,))
        for item in overrides:
            _apply_override(tree, item)
        return _validate(tree, Path(file) if file != "<string>" else None)


def _load_tree(path: Path, chain: tuple[str, ...]) -> Mapping:
    file = str(path)
    try:
        with path.open("rb") as stream:
            # Bounded: a disk image (or /dev/zero) given as the profile must not be read whole.
            data = stream.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(Where(file), "", "no such profile file") from None
    except OSError as exc:
        raise ProfileError(Where(file), "", f"cannot read the profile: {exc.strerror or exc}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(Where(file), "", f"larger than {format_size(MAX_PROFILE_BYTES)}: not a profile "
                           "(an image given in its place?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ProfileError(Where(file, line), "", f"not UTF-8 text: byte {data[exc.start]:#04x} cannot be "
                           "decoded (a binary file given as the profile?)") from None
    tree = parse_yaml(text, file)
    if "extends" in tree:
        tree = _extend(tree, path.parent, chain + (str(_host_path(path.parent, path.name)),))
    return tree


def _extend(tree: Mapping, folder: Path, chain: tuple[str, ...]) -> Mapping:
    node = tree.pop("extends")
    kw = tree.key_where.pop("extends")
    if not isinstance(node, Scalar) or node.null or not node.value.strip():
        raise ProfileError(kw, "extends", "expected the path of a base profile")
    if len(chain) > MAX_EXTENDS:
        raise ProfileError(node.where, "extends", f"more than {MAX_EXTENDS} base profiles below {chain[0]} "
                           "(one extends another this deep); merge some of them")
    base_path = _host_path(folder, node.value)
    if str(base_path) in chain:
        cycle = " -> ".join(chain[chain.index(str(base_path)):] + (str(base_path),))
        raise ProfileError(node.where, "extends", f"{node.value} is already being loaded: a cycle ({cycle})")
    problem = _not_a_file(base_path)
    if problem:
        raise ProfileError(node.where, "extends", f"base profile {node.value} {problem} (looked at {base_path})")
    base = _load_tree(base_path, chain)
    # A name belongs to its own file: a child without one is named after itself, not its base.
    base.pop("name", None)
    base.key_where.pop("name", None)
    return _merge(base, tree)


def _host_path(folder: Path, text: str) -> Path:
    """``text`` (a path in a profile) made absolute against ``folder``, symbolic links resolved.

    Never raises: a path that cannot be resolved (a symlink loop, a name too long) comes back
    as written, for :func:`_not_a_file` to say what is wrong with it.
    """
    joined = folder / text
    try:
        return Path(os.path.realpath(joined))
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(joined))


def _not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a file ("" when it can), for messages."""
    try:
        mode = os.stat(path).st_mode
    except ValueError:
        return "cannot be a path: it holds a NUL character"
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "not found"
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        if exc.errno == errno.ENAMETOOLONG:
            longest = max(len(os.fsencode(part)) for part in path.parts)
            if longest > NAME_MAX:
                return f"has a path component of {longest} bytes, more than the {NAME_MAX} a name may have"
            return f"is a path of {len(os.fsencode(path))} bytes, longer than the host allows"
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    try:
        # Non-blocking, as in SlotSpec.read_image: the file may have become a FIFO since the stat.
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return ""


def _merge(base: Mapping, child: Mapping) -> Mapping:
    """Child keys win; mappings merge recursively; a null child value deletes the key."""
    out = Mapping(child.where)
    for key, value in base.items():
        out[key] = value
        out.key_where[key] = base.key_where[key]
    for key, value in child.items():
        if isinstance(value, Scalar) and value.null and key in out:
            del out[key]
            del out.key_where[key]
            continue
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(old, value)
        else:
            out[key] = value
        out.key_where[key] = child.key_where[key]
    return out


def _apply_override(tree: Mapping, item: str) -> None:
    where = Where(f"<command line: {item}>")
    key_path, sep, value = item.partition("=")
    keys = [k.strip() for k in key_path.split(".")]
    if not sep or not all(keys):
        raise ProfileError(where, "", "an override is KEY.PATH=VALUE, e.g. cpu.entry=0x100 or devices.console.port=0xE9")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = Mapping(where)
            node[key] = child
            node.key_where[key] = where
        elif not isinstance(child, Mapping):
            raise ProfileError(where, ".".join(keys[: depth + 1]), "is a single value, not a section with keys")
        node = child
    if value.strip() in ("null", "~"):
        # As through extends, null removes the entry (e.g. --set devices.exit=null).
        node.pop(keys[-1], None)
        node.key_where.pop(keys[-1], None)
        return
    if value.strip()[:1] in ("'", '"'):
        # A quoted value is that text, as in a profile: --set 'devices.com1.backend="null"'.
        value = _quoted(value, where, ".".join(keys))
        node[keys[-1]] = Scalar(value, where)
    else:
        node[keys[-1]] = Scalar(value, where, null=value == "")
    node.key_where[keys[-1]] = where


def _quoted(text: str, where: Where, key: str) -> str:
    """The string a YAML quoted scalar (single or double quotes, with YAML's escapes) stands for."""
    try:
        node = yaml.compose(text, Loader=_Composer)  # bounded nesting, as for profile files
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not a quoted string"
        raise ProfileError(where, key, f"a quoted value must be one YAML quoted string: {problem}") from None
    if not isinstance(node, yaml.ScalarNode) or node.style not in ("'", '"'):
        raise ProfileError(where, key, "a quoted value must be one YAML quoted string, like \"null\" or 'a b'")
    return str(node.value)


# --- validation ----------------------------------------------------------------------------


def _unknown_keys(mapping: Mapping, allowed: Iterable[str], section: str) -> None:
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            shown = key if key.isprintable() else repr(key)[1:-1]  # one line, whatever the key holds
            full = f"{section}.{shown}" if section else shown
            raise ProfileError(mapping.key_where[key], full, f"unknown key; {hint}expected one of: {', '.join(allowed)}")


def _scalar(node: Node, key: str, what: str) -> Scalar:
    if not isinstance(node, Scalar) or node.null:
        got = "nothing" if isinstance(node, Scalar) else ("a mapping" if isinstance(node, Mapping) else "a list")
        raise ProfileError(node.where, key, f"expected {what}, got {got}")
    return node


def _int(node: Node, key: str, what: str = "a number like 42, 0x2A or 4K") -> int:
    scalar = _scalar(node, key, what)
    try:
        return parse_int(scalar.value)
    except ValueError:
        pass
    text = scalar.value.strip()
    if text.startswith("-"):
        try:
            parse_int(text[1:])
        except ValueError:
            pass
        else:
            raise ProfileError(scalar.where, key, f"must not be negative, got {scalar.value!r}")
    raise ProfileError(scalar.where, key, f"expected {what}, got {scalar.value!r}")


def _choice(node: Node, key: str, choices: tuple[str, ...]) -> str:
    scalar = _scalar(node, key, f"one of {', '.join(choices)}")
    if scalar.value not in choices:
        near = difflib.get_close_matches(scalar.value, choices, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ProfileError(scalar.where, key, f"expected one of {', '.join(choices)}, got {scalar.value!r}{hint}")
    return scalar.value


def _section(tree: Mapping, key: str) -> Mapping | None:
    node = tree.get(key)
    if node is None or (isinstance(node, Scalar) and node.null):
        return None
    if not isinstance(node, Mapping):
        raise ProfileError(node.where, key, "expected a section of 'key: value' lines")
    return node


def _validate(tree: Mapping, path: Path | None) -> Profile:
    file = str(path) if path else "<string>"
    # "extends" was consumed while loading; listed so a misspelling gets its did-you-mean.
    _unknown_keys(tree, ("name", "extends", "accel", "irqchip", "kernel_pit", "device_errors", "cpu", "memory",
                         "loader", "devices", "limits"), "")
    name = _scalar(tree["name"], "name", "a name").value if "name" in tree else (path.stem if path else "machine")
    if "name" in tree and not name.strip():
        raise ProfileError(tree["name"].where, "name", "must not be empty (leave it out to use the file's name)")
    accel = _choice(tree["accel"], "accel", ACCELS) if "accel" in tree else "auto"
    cpu = _validate_cpu(_section(tree, "cpu"), tree.key_where.get("cpu"))
    memory_node = _section(tree, "memory")
    if memory_node is None:
        raise ProfileError(tree.where if "memory" not in tree else tree["memory"].where, "memory",
                           "a profile needs at least one memory slot, e.g. memory: {ram: {base: 0, size: 4K}}")
    memory = tuple(_validate_slot(name, node, memory_node.key_where[name]) for name, node in memory_node.items())
    if not memory:
        raise ProfileError(memory_node.where, "memory", "a profile needs at least one memory slot")
    _check_slot_overlaps(memory)
    _check_total_memory(memory)
    devices_node = _section(tree, "devices")
    devices = tuple(
        _validate_device(dev, node, devices_node.key_where[dev]) for dev, node in (devices_node or {}).items()
    ) if devices_node else ()
    limits = _validate_limits(_section(tree, "limits"))
    irqchip = _choice(tree["irqchip"], "irqchip", IRQCHIPS) if "irqchip" in tree else "auto"
    kernel_pit = _bool(tree["kernel_pit"], "kernel_pit") if "kernel_pit" in tree else False
    if kernel_pit and irqchip != "kernel":
        raise ProfileError(tree.key_where["kernel_pit"], "kernel_pit", "needs irqchip: kernel (KVM's PIT drives its PIC)")
    loader = _validate_loader(_section(tree, "loader"), tree.key_where.get("loader"))
    device_errors = (_choice(tree["device_errors"], "device_errors", DEVICE_ERROR_POLICIES)
                     if "device_errors" in tree else "stop")
    _ = file
    return Profile(name=name, path=path, accel=accel, cpu=cpu, memory=memory, devices=devices, limits=limits,
                   irqchip=irqchip, kernel_pit=kernel_pit, loader=loader, device_errors=device_errors)


def _bool(node: Node, key: str) -> bool:
    scalar = _scalar(node, key, "true or false")
    text = scalar.value.lower()
    if text in ("true", "yes", "on"):
        return True
    if text in ("false", "no", "off"):
        return False
    raise ProfileError(scalar.where, key, f"expected true or false, got {scalar.value!r}")


def _validate_loader(node: Mapping | None, key_where: Where | None) -> LoaderSpec | None:
    if node is None:
        return None
    _unknown_keys(node, ("kernel", "format", "cmdline", "address"), "loader")
    if "kernel" not in node:
        raise ProfileError(key_where or node.where, "loader.kernel", "missing; the path of the kernel image")
    kernel_node = _scalar(node["kernel"], "loader.kernel", "the path of a kernel image")
    if not kernel_node.value.strip():
        raise ProfileError(kernel_node.where, "loader.kernel", "expected the path of a kernel image, got ''")
    folder = Path(kernel_node.where.file).parent if kernel_node.where.line else Path.cwd()
    kernel = _host_path(folder, kernel_node.value)
    problem = _not_a_file(kernel)
    if problem:
        raise ProfileError(kernel_node.where, "loader.kernel", f"kernel {kernel_node.value} {problem} (looked at {kernel})")
    fmt = _choice(node["format"], "loader.format", LOADER_FORMATS) if "format" in node else "auto"
    cmdline = ""
    if "cmdline" in node:
        cmd = node["cmdline"]
        cmdline = "" if isinstance(cmd, Scalar) and cmd.null else _scalar(cmd, "loader.cmdline", "a command line").value
        if not cmdline.isascii() or "\0" in cmdline:
            # Multiboot 3.3: the command line is a zero-terminated C string; the loader writes ASCII.
            raise ProfileError(cmd.where, "loader.cmdline",
                               f"must be ASCII text without NUL (a C string for the kernel), got {cmdline!r}")
    address = _int(node["address"], "loader.address", "an address like 0x100000") if "address" in node else None
    return LoaderSpec(kernel=kernel, format=fmt, cmdline=cmdline, address=address, where=key_where or node.where)


def _validate_cpu(node: Mapping | None, key_where: Where | None = None) -> CpuSpec:
    if node is None:
        return CpuSpec()
    _unknown_keys(node, ("mode", "entry", "tables", "registers"), "cpu")
    mode = _choice(node["mode"], "cpu.mode", MODES) if "mode" in node else "real"
    entry = _int(node["entry"], "cpu.entry", "an address like 0x1000") if "entry" in node else 0
    if not 0 <= entry < 1 << 64:
        raise ProfileError(node["entry"].where, "cpu.entry", "must fit in 64 bits")
    if mode == "reset" and "entry" in node:
        raise ProfileError(node["entry"].where, "cpu.entry",
                           "reset mode starts where an x86 CPU does (CS:IP F000:FFF0, below 4G); remove entry")
    if mode == "real" and entry > 0xFFFF:
        # Real mode starts at CS:IP = 0:entry and CS's limit is 64K (cpu.py's start state).
        raise ProfileError(node["entry"].where, "cpu.entry",
                           f"real mode starts at CS:IP 0:entry, so at most 0xffff, got {entry:#x}")
    tables = _int(node["tables"], "cpu.tables", "an address like 0x9000") if "tables" in node else None
    if tables is not None and tables % 4096:
        raise ProfileError(node["tables"].where, "cpu.tables", f"must be 4K-aligned, got {tables:#x}")
    registers: dict[str, int] = {}
    regs = node.get("registers")
    if regs is not None and not (isinstance(regs, Scalar) and regs.null):
        if not isinstance(regs, Mapping):
            raise ProfileError(regs.where, "cpu.registers", "expected register: value lines, e.g. rsp: 0x8000")
        _unknown_keys(regs, REGISTERS, "cpu.registers")
        for reg, value in regs.items():
            registers[reg] = _int(value, f"cpu.registers.{reg}", "a number")
            if not 0 <= registers[reg] < 1 << 64:
                raise ProfileError(value.where, f"cpu.registers.{reg}", "must fit in 64 bits")
    return CpuSpec(mode=mode, entry=entry, tables=tables, registers=registers, where=key_where or node.where)


def _validate_slot(name: str, node: Node, key_where: Where) -> SlotSpec:
    key = f"memory.{name}"
    if not isinstance(node, Mapping):
        raise ProfileError(key_where, key, "expected a slot: base, size, kind (ram or rom), optional image and offset")
    _unknown_keys(node, ("base", "size", "kind", "image", "offset", "missing"), key)
    if "size" not in node:
        raise ProfileError(key_where, f"{key}.size", "missing; every slot needs a size like 4K, 1M or 1G")
    base = _int(node["base"], f"{key}.base", "an address like 0 or 0x100000") if "base" in node else 0
    size = _int(node["size"], f"{key}.size", "a size like 4K, 1M or 1G")
    if size <= 0 or size % 4096:
        raise ProfileError(node["size"].where, f"{key}.size", f"must be a positive multiple of 4K (the page size), got {size:#x}")
    if base % 4096:
        raise ProfileError(node["base"].where, f"{key}.base", f"must be 4K-aligned, got {base:#x}")
    if base >= 1 << PHYS_BITS:
        raise ProfileError(node["base"].where, f"{key}.base",
                           f"{base:#x} is past the {PHYS_BITS}-bit guest-physical space (top {(1 << PHYS_BITS) - 1:#x})")
    if base + size > 1 << PHYS_BITS:
        raise ProfileError(node["size"].where, f"{key}.size",
                           f"the slot runs past the {PHYS_BITS}-bit guest-physical space")
    kind = _choice(node["kind"], f"{key}.kind", SLOT_KINDS) if "kind" in node else "ram"
    image = None
    if "image" in node:
        image_node = _scalar(node["image"], f"{key}.image", "the path of an image file")
        if not image_node.value.strip():
            raise ProfileError(image_node.where, f"{key}.image", "expected the path of an image file, got ''")
        folder = Path(image_node.where.file).parent if image_node.where.line else Path.cwd()
        image = _host_path(folder, image_node.value)
        problem = _not_a_file(image)
        if problem:
            # ``missing``: the profile's own advice for an absent image (e.g. the package to install).
            hint = ""
            if "missing" in node:
                hint = "; " + _scalar(node["missing"], f"{key}.missing", "advice text").value
            raise ProfileError(image_node.where, f"{key}.image",
                               f"image file {image_node.value} {problem} (looked at {image}){hint}")
    offset = _int(node["offset"], f"{key}.offset", "an offset into the slot like 0 or 0x1000") if "offset" in node else 0
    if offset and image is None:
        raise ProfileError(node["offset"].where, f"{key}.offset", "an offset needs an image to place")
    if offset >= size:
        raise ProfileError(node["offset"].where, f"{key}.offset",
                           f"{offset:#x} is past the end of the {size:#x}-byte slot")
    if image is not None:
        # What the file says now; SlotSpec.read_image bounds the read itself (a /proc file says 0).
        length = image.stat().st_size
        if offset + length > size:
            raise ProfileError(
                node["image"].where, f"{key}.image",
                f"image is {length} bytes; at offset {offset:#x} it does not fit in the {size:#x}-byte slot",
            )
    return SlotSpec(name=name, base=base, size=size, kind=kind, image=image, offset=offset, where=key_where,
                    image_where=node["image"].where if image is not None else None)


def max_guest_memory() -> int:
    """The most guest memory one profile may ask for: $VMCORE_MAX_GUEST_MEMORY, else 64G."""
    text = os.environ.get(MAX_GUEST_MEMORY_ENV)
    if text is None or not text.strip():
        return DEFAULT_MAX_GUEST_MEMORY
    where = Where(f"<environment: {MAX_GUEST_MEMORY_ENV}={text}>")
    try:
        limit = parse_int(text)
    except ValueError:
        raise ProfileError(where, MAX_GUEST_MEMORY_ENV, f"expected a size like 64G or 512M, got {text!r}") from None
    if limit <= 0:
        raise ProfileError(where, MAX_GUEST_MEMORY_ENV, f"must be positive, got {text!r}")
    return limit


def _size_text(size: int) -> str:
    text = format_size(size)
    return text if not text.isdigit() else f"{text} bytes"


def _check_total_memory(slots: tuple[SlotSpec, ...]) -> None:
    """Every slot is an anonymous host mapping: refuse totals the host should not be asked for."""
    limit = max_guest_memory()
    total = sum(slot.size for slot in slots)
    if total <= limit:
        return
    before = 0
    for slot in slots:  # in file order: the slot that crosses the limit is the one to name
        if before + slot.size > limit:
            raise ProfileError(
                slot.where, f"memory.{slot.name}",
                f"the slots add up to {_size_text(total)}, more than the {_size_text(limit)} of guest memory "
                f"a profile may have; this slot ({_size_text(slot.size)}) takes the total from "
                f"{_size_text(before)} to {_size_text(before + slot.size)} "
                f"(set {MAX_GUEST_MEMORY_ENV} to change the limit)",
            )
        before += slot.size


def _check_slot_overlaps(slots: tuple[SlotSpec, ...]) -> None:
    ordered = sorted(slots, key=lambda s: s.base)
    for a, b in zip(ordered, ordered[1:]):
        if b.base < a.base + a.size:
            raise ProfileError(
                b.where, f"memory.{b.name}",
                f"{b.base:#x}..{b.base + b.size - 1:#x} overlaps slot {a.name!r} "
                f"({a.base:#x}..{a.base + a.size - 1:#x}, {a.where})",
            )


def _plain(node: Node) -> Any:
    """A property value as text (or lists/dicts of text) for the device's converter."""
    if isinstance(node, Scalar):
        return None if node.null else node.value
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    return [_plain(v) for v in node]


def _validate_device(name: str, node: Node, key_where: Where) -> DeviceSpec:
    key = f"devices.{name}"
    if not isinstance(node, Mapping):
        raise ProfileError(key_where, key, "expected 'type: NAME' and the device's properties")
    if "type" not in node:
        raise ProfileError(key_where, f"{key}.type", "missing; every device needs a type (see 'vmcore devices')")
    dev_type = _scalar(node["type"], f"{key}.type", "a device type name").value
    props = {k: _plain(v) for k, v in node.items() if k != "type"}
    prop_where = {k: (v.where if isinstance(v, Scalar) else node.key_where[k]) for k, v in node.items()}
    return DeviceSpec(name=name, type=dev_type, props=props, where=key_where, prop_where=prop_where)


def _validate_limits(node: Mapping | None) -> Limits:
    if node is None:
        return Limits()
    _unknown_keys(node, ("timeout", "max_exits"), "limits")
    timeout = None
    if "timeout" in node:
        scalar = _scalar(node["timeout"], "limits.timeout", "seconds, like 10 or 0.5")
        try:
            timeout = float(scalar.value.strip().removesuffix("s"))
        except ValueError:
            raise ProfileError(scalar.where, "limits.timeout", f"expected seconds, like 10 or 0.5, got {scalar.value!r}") from None
        if not (math.isfinite(timeout) and timeout > 0):
            raise ProfileError(scalar.where, "limits.timeout", f"must be a positive number of seconds, got {scalar.value!r}")
        if timeout > MAX_TIMEOUT:
            raise ProfileError(scalar.where, "limits.timeout", f"at most {MAX_TIMEOUT:g} seconds, got {scalar.value!r} "
                               "(leave limits.timeout out for no time limit)")
    max_exits = _int(node["max_exits"], "limits.max_exits", "a count") if "max_exits" in node else None
    if max_exits is not None and max_exits <= 0:
        raise ProfileError(node["max_exits"].where, "limits.max_exits", f"must be positive, got {max_exits}")
    return Limits(timeout=timeout, max_exits=max_exits)
