"""YAML text to plain data, remembering where every key and item was written.

Manifests are parsed in two stages. Here, the text becomes plain Python data (dicts,
lists, str, int, float, bool, None) plus a table from key path (``("tasks", 1)``) to
the line and column of that key and of its value. ``loading`` then validates the
data with pydantic and uses the table to pin each error to the text.

We build the data ourselves from ruamel.yaml's node graph instead of letting a loader
construct it, because that is where the positions are, and because a few YAML rules
need deciding on purpose:

- Scalars resolve as YAML 1.1, as builds.sr.ht does (PyYAML on submit, go-yaml v2 in
  its worker): ``yes``/``on`` are booleans, ``0755`` is 493. Like go-yaml, and unlike
  PyYAML, sexagesimal numbers (``1:30``) and timestamps stay strings: the worker exports
  them as written.
- Keys are the text of scalar keys, so ``on:`` is the key "on", not ``True``.
- Duplicate keys, collection keys and explicit tags (``!!binary``, ``!foo``) are
  problems; merge keys (``<<: *defaults``) are honoured.
- Anchors can make a small text expand enormously (the "billion laughs"); expansion is
  capped by counting nodes, and nesting depth is capped too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, StreamMark, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from nixfarm.manifest.errors import ManifestError, PathElement, Problem, format_path

MAX_MANIFEST_BYTES = 128 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 32

Path = tuple[PathElement, ...]

_TAG = "tag:yaml.org,2002:"
_MERGE = _TAG + "merge"


@dataclass(frozen=True)
class Position:
    """A place in the text; both numbers count from 1."""

    line: int
    column: int


@dataclass(frozen=True)
class Spot:
    """Where one key path was written: its key, and the start of its value.

    For sequence items and the document itself both are the item's start.
    """

    key: Position
    value: Position


@dataclass
class LocatedDocument:
    """A manifest's data, the spot of every key path in it, and what went wrong."""

    data: dict[str, Any]
    spots: dict[Path, Spot]
    problems: list[Problem] = field(default_factory=list)


def load_located(source: str | bytes, *, name: str = "") -> LocatedDocument:
    """Parse one YAML document that must be a mapping.

    Raises ``ManifestError`` for what leaves nothing to validate (too big, not UTF-8,
    empty, a syntax error, not a mapping); problems in the parts (duplicate keys,
    unsupported tags) are returned in ``problems`` so validation can add its own.
    """
    raw = source.encode() if isinstance(source, str) else source
    if len(raw) > MAX_MANIFEST_BYTES:
        _fail(
            Position(1, 1),
            f"the manifest is {len(raw)} bytes; at most {MAX_MANIFEST_BYTES} bytes "
            "(128 KiB) are allowed",
            name,
        )
    text = _decode(raw, name) if isinstance(source, bytes) else source
    root = _compose(text, name)
    if root is None:
        _fail(
            Position(1, 1), "the manifest is empty; expected a mapping with image and tasks", name
        )
    if not isinstance(root, MappingNode):
        _fail(
            _position(root.start_mark),
            f"expected a mapping (image: ..., tasks: ...) at the top of the manifest, "
            f"got {_kind(root)}",
            name,
        )
    builder = _Builder(name)
    spot = Spot(_position(root.start_mark), _position(root.start_mark))
    builder.spots[()] = spot
    data = builder.mapping(root, (), 0)
    return LocatedDocument(data=data, spots=builder.spots, problems=builder.problems)


def _fail(at: Position, message: str, name: str) -> NoReturn:
    raise ManifestError.of([Problem("", at.line, at.column, message)], name=name)


def _position(mark: StreamMark) -> Position:
    return Position(mark.line + 1, mark.column + 1)


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        _fail(
            Position(line, column), f"the manifest is not UTF-8 (byte 0x{raw[e.start]:02x})", name
        )


def _compose(text: str, name: str) -> Node | None:
    yaml = YAML(typ="safe", pure=True)
    yaml.version = (1, 1)
    try:
        # ruamel's composer recurses once per nesting level, and a deep enough text
        # makes it slow before it fails; its parser does not. Measure depth first.
        depth = 0
        for event in yaml.parse(text):
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    _fail(
                        _position(event.start_mark),
                        f"the manifest is nested more than {MAX_DEPTH} levels deep",
                        name,
                    )
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
        node: Node | None = yaml.compose(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = _position(mark) if mark is not None else Position(1, 1)
        what = e.problem or e.context or "malformed YAML"
        if e.problem and e.context:
            if e.problem.startswith("but "):  # "expected a single document, but found..."
                what = f"{e.context}, {e.problem}"
            elif e.context_mark is not None:
                what = f"{e.problem} ({e.context} at line {e.context_mark.line + 1})"
        _fail(at, f"YAML syntax error: {what}", name)
    except ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        _fail(
            Position(line, column),
            f"YAML syntax error: unacceptable character {_codepoint(e.character)}",
            name,
        )
    except RecursionError:  # not expected after the depth check; still refused cleanly
        _fail(Position(1, 1), "the manifest is nested too deeply", name)
    except YAMLError as e:  # any other parser complaint still deserves a clear refusal
        _fail(Position(1, 1), f"YAML syntax error: {e}", name)
    return node


def _codepoint(character: int | str) -> str:
    number = character if isinstance(character, int) else ord(character[:1] or "\0")
    return f"U+{number:04X}"


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"the scalar {node.value!r}"


class _Builder:
    """Turns nodes into data, filling ``spots`` and ``problems`` on the way."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.spots: dict[Path, Spot] = {}
        self.problems: list[Problem] = []
        self.nodes = 0

    def problem(self, path: Path, node: Node, message: str) -> None:
        at = _position(node.start_mark)
        self.problems.append(Problem(format_path(path), at.line, at.column, message))

    def value(self, node: Node, path: Path, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            # Only anchors can get here within the size limit: stop before memory does.
            _fail(
                _position(node.start_mark),
                f"the manifest expands to over {MAX_NODES} values (through anchors and aliases)",
                self.name,
            )
        if depth > MAX_DEPTH:
            self.problem(path, node, f"nested more than {MAX_DEPTH} levels deep")
            return None
        if isinstance(node, MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                at = _position(item.start_mark)
                self.spots[(*path, index)] = Spot(at, at)
                items.append(self.value(item, (*path, index), depth + 1))
            return items
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        self.problem(path, node, f"unexpected YAML node {type(node).__name__}")
        return None

    def mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        # Merged mappings first, the later ones first, so that explicit keys and
        # earlier merges win, as the merge key specification says.
        merges = [v for k, v in node.value if k.tag == _MERGE]
        for merge in reversed(merges):
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for merged in reversed(sources):
                if isinstance(merged, MappingNode):
                    result.update(self.mapping(merged, path, depth + 1))
                else:
                    self.problem(
                        path,
                        merged,
                        "a merge key (<<) takes a mapping or a list "
                        f"of mappings, not {_kind(merged)}",
                    )
        first: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            if not isinstance(key_node, ScalarNode):
                self.problem(path, key_node, f"keys must be strings, not {_kind(key_node)}")
                continue
            key = str(key_node.value)
            if key in first:
                line = first[key].start_mark.line + 1
                self.problem(
                    (*path, key), key_node, f"duplicate key {key!r} (first set on line {line})"
                )
                continue
            first[key] = key_node
            key_at = _position(key_node.start_mark)
            # An empty value ("build:") has no place of its own; ruamel puts it at the
            # next token, possibly lines later. Point at the key instead.
            empty = isinstance(value_node, ScalarNode) and value_node.value == ""
            value_at = key_at if empty else _position(value_node.start_mark)
            self.spots[(*path, key)] = Spot(key_at, value_at)
            result[key] = self.value(value_node, (*path, key), depth + 1)
        return result

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        tag, text = str(node.tag), str(node.value)
        if tag in (_TAG + "str", _TAG + "timestamp"):
            return text
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            return text.lower() in ("yes", "true", "on", "y")
        if tag == _TAG + "int":
            # YAML 1.1's base 60 (1:30 == 90) surprises everyone; keep the text.
            return text if ":" in text else _int(text)
        if tag == _TAG + "float":
            return text if ":" in text else _float(text)
        self.problem(
            path,
            node,
            f"unsupported YAML tag {tag.removeprefix(_TAG)!r}; "
            "expected a plain string, number, boolean or null",
        )
        return None


def _int(text: str) -> int:
    # The YAML 1.1 forms the resolver let through: 0b101, 0x1f, 0755 (octal), 1_000.
    plain = text.replace("_", "")
    sign = -1 if plain.startswith("-") else 1
    digits = plain.lstrip("+-")
    if digits[:2].lower() == "0b":
        return sign * int(digits[2:], 2)
    if digits[:2].lower() == "0x":
        return sign * int(digits[2:], 16)
    if len(digits) > 1 and digits.startswith("0"):
        return sign * int(digits[1:], 8)
    return sign * int(digits)


def _float(text: str) -> float:
    # Python's float() reads every YAML 1.1 float but the ".inf"/".nan" spellings and
    # underscores; ruamel's own constructor warns on "1e3", which tests treat as errors.
    plain = text.replace("_", "").lower()
    if plain.lstrip("+-") in (".inf", ".nan"):
        plain = plain.replace(".", "")
    return float(plain)
