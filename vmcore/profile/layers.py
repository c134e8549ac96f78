"""A profile's layers merged into one tree: the file, the base profiles it ``extends``, and ``--set`` overrides.

Mappings merge key by key; a ``null`` removes an inherited entry. A profile file is read
bounded (a disk image or /dev/zero given in its place must not be read whole), and at most
:data:`MAX_EXTENDS` profiles may lie below one.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..units import format_size
from .errors import ProfileError, Where
from .host_paths import host_path, not_a_file
from .yaml_tree import BoundedComposer, Mapping, Scalar, parse_yaml

MAX_PROFILE_BYTES = 1 << 20  # larger is not a profile (an image given in its place?)
MAX_EXTENDS = 32  # base profiles below one profile; each level costs Python stack frames


def load_tree(path: Path, chain: tuple[str, ...]) -> Mapping:
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
        tree = extend(tree, path.parent, chain + (str(host_path(path.parent, path.name)),))
    return tree


def extend(tree: Mapping, folder: Path, chain: tuple[str, ...]) -> Mapping:
    node = tree.pop("extends")
    kw = tree.key_where.pop("extends")
    if not isinstance(node, Scalar) or node.null or not node.value.strip():
        raise ProfileError(kw, "extends", "expected the path of a base profile")
    if len(chain) > MAX_EXTENDS:
        raise ProfileError(node.where, "extends", f"more than {MAX_EXTENDS} base profiles below {chain[0]} "
                           "(one extends another this deep); merge some of them")
    base_path = host_path(folder, node.value)
    if str(base_path) in chain:
        cycle = " -> ".join(chain[chain.index(str(base_path)):] + (str(base_path),))
        raise ProfileError(node.where, "extends", f"{node.value} is already being loaded: a cycle ({cycle})")
    problem = not_a_file(base_path)
    if problem:
        raise ProfileError(node.where, "extends", f"base profile {node.value} {problem} (looked at {base_path})")
    base = load_tree(base_path, chain)
    # A name belongs to its own file: a child without one is named after itself, not its base.
    base.pop("name", None)
    base.key_where.pop("name", None)
    return _merge(base, tree)


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


def apply_override(tree: Mapping, item: str) -> None:
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
        node = yaml.compose(text, Loader=BoundedComposer)  # bounded nesting, as for profile files
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not a quoted string"
        raise ProfileError(where, key, f"a quoted value must be one YAML quoted string: {problem}") from None
    if not isinstance(node, yaml.ScalarNode) or node.style not in ("'", '"'):
        raise ProfileError(where, key, "a quoted value must be one YAML quoted string, like \"null\" or 'a b'")
    return str(node.value)
