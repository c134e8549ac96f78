"""Reading YAML into a tree that remembers where each value came from.

The text is composed with ``yaml.compose``, never constructed: every value stays the text
as written (numbers are parsed later by :func:`vmcore.units.parse_int`, not by YAML 1.1's
rules), with its file and line. A profile is read before anything else, so a hostile or
mistaken one (an alias bomb, ten thousand nested brackets) must end in one ProfileError,
not a hang or a RecursionError.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ProfileError, Where

MAX_DEPTH = 32  # nesting levels (the schema needs 4; device properties may nest a little)
MAX_VALUES = 100_000  # values once aliases are expanded ("billion laughs")


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


class _Bounds:
    """A composer's two refusals, each at the line of the offending event.

    PyYAML composes one Python call level per nesting level, so deep nesting would end in a
    RecursionError; and an alias inside the node it names (``a: &a [*a]``) composes into a
    cyclic graph that no walk of the tree ever finishes.
    """

    def _bounds(self) -> None:
        self._depth = 0
        self._defined: dict[str, int] = {}  # anchor -> how many times defined so far
        self._open: list[tuple[str, int]] = []  # anchored collections still being composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()  # type: ignore[attr-defined]
        if isinstance(event, yaml.AliasEvent):
            if (event.anchor, self._defined.get(event.anchor, 0)) in self._open:
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{event.anchor} is inside the node &{event.anchor} names (a recursive "
                    "structure)", event.start_mark)
            node = super().compose_node(parent, index)  # type: ignore[misc]
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
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.pop()


class BoundedComposer(_Bounds, yaml.SafeLoader):
    """SafeLoader's composer with the two refusals of _Bounds: PyYAML's own scanner and parser, whose
    error messages the profile errors quote."""

    def __init__(self, stream: str) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self._bounds()


if getattr(yaml, "__with_libyaml__", False):
    class _LibyamlComposer(_Bounds, yaml.composer.Composer, yaml.cyaml.CParser, yaml.resolver.Resolver):  # type: ignore[misc]
        """The same composer over libyaml's events: scanning and parsing in C, some ten times faster
        than PyYAML's (about 5 ms of every ``vmcore run``); the composer, and so its bounds, stay
        Python (libyaml's own composer recurses in C without a bound)."""

        def __init__(self, stream: str) -> None:
            yaml.cyaml.CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._bounds()
else:  # pragma: no cover - PyYAML built without libyaml
    _LibyamlComposer = None


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


#: What libyaml reads otherwise than PyYAML in ways a located tree shows (found by fuzzing both,
#: tests/test_profile.py): tags and directives (a lone "!" is a string to one, null to the
#: other), explicit keys ("? ") and tabs (PyYAML refuses some that libyaml takes); and, see
#: _has_empty_value, where an empty value is. Texts with any of these go to PyYAML.
_NOT_PLAIN = frozenset("!%?\t")


def _compose_quickly(text: str) -> yaml.Node | None:
    """``text`` composed over libyaml's parser; None where that is not there, the text has one of
    _NOT_PLAIN's characters, or libyaml finds something wrong: PyYAML's own parser then
    composes it again, for the error messages profiles have always had (not libyaml's)."""
    if _LibyamlComposer is None or not _NOT_PLAIN.isdisjoint(text):
        return None
    try:
        root = yaml.compose(text, Loader=_LibyamlComposer)
    except (yaml.YAMLError, ValueError, TypeError):  # noqa: BLE001 - said again by PyYAML's parser
        return None
    return root if root is not None and not _has_empty_value(root) else None


def _has_empty_value(root: yaml.Node) -> bool:
    """Whether a value is left out somewhere (``key:`` and nothing): the two parsers place some of
    those on different lines (at the end of the text)."""
    nodes, seen = [root], set()  # each node once: aliases share nodes (an alias bomb stays linear)
    while nodes:
        node = nodes.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if not node.value and not node.style:
                return True
        elif isinstance(node, yaml.SequenceNode):
            nodes.extend(node.value)
        else:
            for key, value in node.value:
                nodes += (key, value)
    return False


def parse_yaml(text: str, file: str) -> Mapping:
    """Compose YAML text into a located tree; syntax errors become ProfileError."""
    root = _compose_quickly(text)
    try:
        if root is None:
            root = yaml.compose(text, Loader=BoundedComposer)
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
