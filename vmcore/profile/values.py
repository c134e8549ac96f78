"""Typed values read out of the located tree, each error naming the file, line and key."""

from __future__ import annotations

from typing import Any, Iterable

from ..units import parse_int
from .errors import ProfileError
from .yaml_tree import Mapping, Node, Scalar


def unknown_keys(mapping: Mapping, allowed: Iterable[str], section: str) -> None:
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            from difflib import get_close_matches

            near = get_close_matches(key, allowed, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            shown = key if key.isprintable() else repr(key)[1:-1]  # one line, whatever the key holds
            full = f"{section}.{shown}" if section else shown
            raise ProfileError(mapping.key_where[key], full, f"unknown key; {hint}expected one of: {', '.join(allowed)}")


def scalar_node(node: Node, key: str, what: str) -> Scalar:
    if not isinstance(node, Scalar) or node.null:
        got = "nothing" if isinstance(node, Scalar) else ("a mapping" if isinstance(node, Mapping) else "a list")
        raise ProfileError(node.where, key, f"expected {what}, got {got}")
    return node


def int_value(node: Node, key: str, what: str = "a number like 42, 0x2A or 4K") -> int:
    scalar = scalar_node(node, key, what)
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


def choice(node: Node, key: str, choices: tuple[str, ...]) -> str:
    scalar = scalar_node(node, key, f"one of {', '.join(choices)}")
    if scalar.value not in choices:
        from difflib import get_close_matches

        near = get_close_matches(scalar.value, choices, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ProfileError(scalar.where, key, f"expected one of {', '.join(choices)}, got {scalar.value!r}{hint}")
    return scalar.value


def section(tree: Mapping, key: str) -> Mapping | None:
    node = tree.get(key)
    if node is None or (isinstance(node, Scalar) and node.null):
        return None
    if not isinstance(node, Mapping):
        raise ProfileError(node.where, key, "expected a section of 'key: value' lines")
    return node


def bool_value(node: Node, key: str) -> bool:
    scalar = scalar_node(node, key, "true or false")
    text = scalar.value.lower()
    if text in ("true", "yes", "on"):
        return True
    if text in ("false", "no", "off"):
        return False
    raise ProfileError(scalar.where, key, f"expected true or false, got {scalar.value!r}")


def plain(node: Node) -> Any:
    """A property value as text (or lists/dicts of text) for the device's converter."""
    if isinstance(node, Scalar):
        return None if node.null else node.value
    if isinstance(node, Mapping):
        return {k: plain(v) for k, v in node.items()}
    return [plain(v) for v in node]
