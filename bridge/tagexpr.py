"""Tag expressions: which devices a push selects by their tags. Pure: no I/O.

An expression comes in two equivalent forms that parse to the same tree:

* JSON (already decoded): ``{"tag": "cs"}``, ``{"and": [E, ...]}``, ``{"or": [E, ...]}``,
  ``{"not": E}`` — each object has exactly one key, lists are non-empty.
* compact string: ``cs && !grad || staff``, with ``||`` binding loosest, then ``&&``, then
  ``!``; the words ``or``, ``and``, ``not`` (any case) mean the same; parentheses group.
  A plain tag is 1–64 of ``A-Z a-z 0-9 _ . : @ -``; any other tag is written quoted,
  ``"and"`` or ``"a tag"``, where ``\\"`` and ``\\\\`` stand for ``"`` and ``\\``.

A tag is 1–64 characters with no control character. Hostile input is cut short: at most
:data:`MAX_LEAVES` tags and :data:`MAX_DEPTH` levels (a lone tag is one level), and nothing
but :class:`TagExprError` ever comes out of :func:`parse`, whatever it is given.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from mqttpush.errors import InvalidContent

MAX_LEAVES = 1000
MAX_DEPTH = 64
MAX_TAG_LENGTH = 64

_PLAIN_TAG = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
# One character more than allowed, so an over-long word is seen without scanning all of it.
_WORD = re.compile(r"[A-Za-z0-9_.:@-]{1,65}")
_SPACE = re.compile(r"\s+")
_WORD_OPERATORS = {"and": "&&", "or": "||", "not": "!"}


class TagExprError(InvalidContent):
    """A tag expression that cannot be parsed, or breaks a limit.

    ``position`` is the 0-based offset in the string form where the problem is (-1 for the
    JSON form); ``path`` is the JSON-pointer-like path to the bad node of the JSON form,
    such as ``/and/1/not`` ("" for the string form).
    """

    code = "bad_tag_expr"

    def __init__(self, message: str, *, position: int = -1, path: str = "") -> None:
        super().__init__(message)
        self.position = position
        self.path = path


def _string_error(position: int, detail: str) -> TagExprError:
    return TagExprError(f"at {position}: {detail}", position=position)


def _json_error(path: str, detail: str) -> TagExprError:
    return TagExprError(f"at {path or 'the top level'}: {detail}", path=path)


def _tag_problem(name: str) -> str | None:
    """Why ``name`` cannot be a tag, or None if it can."""
    if not name:
        return "a tag cannot be empty"
    if len(name) > MAX_TAG_LENGTH:
        return f"a tag is at most {MAX_TAG_LENGTH} characters, this one has {len(name)}"
    for char in name:
        if _is_control(char):
            return f"a tag cannot contain the control character {char!r}"
    return None


def _is_control(char: str) -> bool:
    # Lone surrogates count too: they cannot be stored or sent as UTF-8.
    return unicodedata.category(char) in ("Cc", "Cs")


@dataclass(frozen=True, slots=True)
class Tag:
    """True for a device that carries the tag ``name``."""

    name: str

    def __post_init__(self) -> None:
        problem = _tag_problem(self.name) if isinstance(self.name, str) else "a tag must be a string"
        if problem is not None:
            raise TagExprError(f"invalid Tag: {problem}")


@dataclass(frozen=True, slots=True)
class And:
    """True when every item is."""

    items: tuple[Expr, ...]

    def __post_init__(self) -> None:
        if not self.items:
            raise TagExprError("invalid And: it needs at least one item")


@dataclass(frozen=True, slots=True)
class Or:
    """True when any item is."""

    items: tuple[Expr, ...]

    def __post_init__(self) -> None:
        if not self.items:
            raise TagExprError("invalid Or: it needs at least one item")


@dataclass(frozen=True, slots=True)
class Not:
    """True when ``item`` is false."""

    item: Expr


Expr: TypeAlias = Tag | And | Or | Not


def parse(expr: str | dict[str, Any]) -> Expr:
    """Parse either form: a ``str`` as the compact string form, a ``dict`` as the JSON form."""
    if isinstance(expr, str):
        return parse_string(expr)
    if isinstance(expr, dict):
        return parse_json(expr)
    raise _json_error("", f"expected a string or an object, found {_json_kind(expr)}")


# --- string form -------------------------------------------------------------------------

_END = "end"
_TAG = "tag"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # _END, _TAG, or the operator: "&&", "||", "!", "(", ")"
    position: int
    source: str  # as written, for messages
    name: str = ""  # the tag, for _TAG

    def describe(self) -> str:
        if self.kind == _END:
            return "the end of the expression"
        if self.kind == _TAG:
            return f"the tag {self.name!r}"
        return repr(self.source)


class _StringParser:
    """Recursive descent over lazily scanned tokens; ``!`` and ``(`` nesting is capped at
    MAX_DEPTH before each recursion, so the Python stack stays shallow whatever the input."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.scan_at = 0
        self.leaves = 0
        self.nesting = 0
        self.previous: _Token | None = None
        self.token = self._scan()

    def parse(self) -> Expr:
        if self.token.kind == _END:
            raise _string_error(0, "empty expression")
        expr, _ = self._or()
        if self.token.kind == ")":
            raise _string_error(self.token.position, "')' without a matching '('")
        if self.token.kind != _END:
            raise _string_error(
                self.token.position,
                f"expected '&&', '||' or the end of the expression, found {self.token.describe()}",
            )
        return expr

    def _advance(self) -> None:
        self.previous = self.token
        self.token = self._scan()

    def _or(self) -> tuple[Expr, int]:
        start = self.token.position
        first, depth = self._and()
        items = [first]
        while self.token.kind == "||":
            self._advance()
            item, item_depth = self._and()
            items.append(item)
            depth = max(depth, item_depth)
        if len(items) == 1:
            return first, depth
        return Or(tuple(items)), self._deeper(depth, start)

    def _and(self) -> tuple[Expr, int]:
        start = self.token.position
        first, depth = self._unary()
        items = [first]
        while self.token.kind == "&&":
            self._advance()
            item, item_depth = self._unary()
            items.append(item)
            depth = max(depth, item_depth)
        if len(items) == 1:
            return first, depth
        return And(tuple(items)), self._deeper(depth, start)

    def _unary(self) -> tuple[Expr, int]:
        token = self.token
        if token.kind == _TAG:
            self.leaves += 1
            if self.leaves > MAX_LEAVES:
                raise _string_error(token.position, f"more than {MAX_LEAVES} tags")
            self._advance()
            return Tag(token.name), 1
        if token.kind == "!":
            self._enter(token)
            self._advance()
            item, depth = self._unary()
            self.nesting -= 1
            return Not(item), self._deeper(depth, token.position)
        if token.kind == "(":
            self._enter(token)
            self._advance()
            expr, depth = self._or()
            if self.token.kind != ")":
                raise _string_error(
                    self.token.position,
                    f"expected '&&', '||' or ')' to close the '(' at {token.position}, "
                    f"found {self.token.describe()}",
                )
            self._advance()
            self.nesting -= 1
            return expr, depth
        after = f" after {self.previous.source!r}" if self.previous is not None else ""
        raise _string_error(token.position, f"expected a tag{after}, found {token.describe()}")

    def _enter(self, token: _Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise _string_error(token.position, f"nested deeper than {MAX_DEPTH} levels")

    def _deeper(self, depth: int, position: int) -> int:
        if depth + 1 > MAX_DEPTH:
            raise _string_error(position, f"nested deeper than {MAX_DEPTH} levels")
        return depth + 1

    def _scan(self) -> _Token:
        text = self.text
        at = self.scan_at
        space = _SPACE.match(text, at)
        if space is not None:
            at = space.end()
        if at >= len(text):
            self.scan_at = at
            return _Token(_END, at, "")
        char = text[at]
        pair = text[at : at + 2]
        if pair in ("&&", "||"):
            self.scan_at = at + 2
            return _Token(pair, at, pair)
        if char in "!()":
            self.scan_at = at + 1
            return _Token(char, at, char)
        if char == '"':
            return self._quoted(at)
        word = _WORD.match(text, at)
        if word is not None:
            source = word.group()
            if len(source) > MAX_TAG_LENGTH:
                raise _string_error(at, f"a tag is at most {MAX_TAG_LENGTH} characters")
            self.scan_at = word.end()
            operator = _WORD_OPERATORS.get(source.lower())
            if operator is not None:
                return _Token(operator, at, source)
            return _Token(_TAG, at, source, source)
        if char in "&|":
            raise _string_error(at, f"unexpected character {char!r} (did you mean '{char * 2}'?)")
        raise _string_error(
            at, f"unexpected character {char!r} (write a tag with other characters in double quotes)"
        )

    def _quoted(self, start: int) -> _Token:
        text = self.text
        chars: list[str] = []
        at = start + 1
        while True:
            if at >= len(text):
                raise _string_error(start, "unterminated quoted tag")
            char = text[at]
            if char == '"':
                break
            if char == "\\":
                if text[at + 1 : at + 2] not in ('"', "\\"):
                    raise _string_error(at, "in a quoted tag '\\' may only escape '\"' or '\\'")
                char = text[at + 1]
                at += 1
            elif _is_control(char):
                raise _string_error(at, f"a tag cannot contain the control character {char!r}")
            chars.append(char)
            at += 1
            if len(chars) > MAX_TAG_LENGTH:
                raise _string_error(start, f"a tag is at most {MAX_TAG_LENGTH} characters")
        if not chars:
            raise _string_error(start, "a tag cannot be empty")
        self.scan_at = at + 1
        return _Token(_TAG, start, text[start : at + 1], "".join(chars))


def parse_string(text: str) -> Expr:
    """Parse the compact string form, e.g. ``cs && !grad || staff``.

    Raises :class:`TagExprError` whose ``position`` is where the problem is.
    """
    if not isinstance(text, str):
        raise _json_error("", f"expected a string, found {_json_kind(text)}")
    return _StringParser(text).parse()


# --- JSON form ---------------------------------------------------------------------------


def parse_json(obj: object) -> Expr:
    """Parse the JSON form, e.g. ``{"or": [{"tag": "a"}, {"not": {"tag": "b"}}]}``.

    Raises :class:`TagExprError` whose ``path`` points at the bad node.
    """
    return _JsonParser().node(obj, "", 1)


class _JsonParser:
    """Checks the depth before descending, so the Python stack stays at most MAX_DEPTH deep."""

    def __init__(self) -> None:
        self.leaves = 0

    def node(self, obj: object, path: str, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise _json_error(path, f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(obj, dict):
            raise _json_error(path, f'expected an object such as {{"tag": ...}}, found {_json_kind(obj)}')
        if len(obj) != 1:
            raise _json_error(
                path, f"expected an object with exactly one of tag, and, or, not; found {len(obj)} keys"
            )
        ((key, value),) = obj.items()
        if not isinstance(key, str) or key not in ("tag", "and", "or", "not"):
            raise _json_error(path, f"unknown operator {key!r}: expected tag, and, or, not")
        if key == "tag":
            return self._tag(value, f"{path}/tag")
        if key == "not":
            return Not(self.node(value, f"{path}/not", depth + 1))
        items = self._items(value, f"{path}/{key}", depth + 1)
        return And(items) if key == "and" else Or(items)

    def _tag(self, value: object, path: str) -> Tag:
        if not isinstance(value, str):
            raise _json_error(path, f"a tag must be a string, found {_json_kind(value)}")
        problem = _tag_problem(value)
        if problem is not None:
            raise _json_error(path, problem)
        self.leaves += 1
        if self.leaves > MAX_LEAVES:
            raise _json_error(path, f"more than {MAX_LEAVES} tags")
        return Tag(value)

    def _items(self, value: object, path: str, depth: int) -> tuple[Expr, ...]:
        if not isinstance(value, list):
            raise _json_error(path, f"expected a non-empty list, found {_json_kind(value)}")
        if not value:
            raise _json_error(path, "expected a non-empty list, found an empty one")
        return tuple(self.node(item, f"{path}/{index}", depth) for index, item in enumerate(value))


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- using a tree ------------------------------------------------------------------------
# Written without recursion, so a tree built by hand deeper than MAX_DEPTH still works.

_R = TypeVar("_R")


def _children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Tag):
        return ()
    if isinstance(e, Not):
        return (e.item,)
    return e.items


def _fold(e: Expr, combine: Callable[[Expr, list[_R]], _R]) -> _R:
    """Post-order: ``combine(node, results of its children)``, with an explicit stack."""
    results: list[_R] = []
    stack: list[tuple[Expr, bool]] = [(e, False)]
    while stack:
        node, children_done = stack.pop()
        children = _children(node)
        if children_done or not children:
            cut = len(results) - len(children)
            values = results[cut:]
            del results[cut:]
            results.append(combine(node, values))
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(children))
    return results[0]


def _walk(e: Expr) -> Iterator[Expr]:
    stack = [e]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(_children(node))


def evaluate(e: Expr, tags: frozenset[str] | set[str]) -> bool:
    """Whether a device carrying ``tags`` is selected by ``e``."""

    def combine(node: Expr, values: list[bool]) -> bool:
        if isinstance(node, Tag):
            return node.name in tags
        if isinstance(node, Not):
            return not values[0]
        if isinstance(node, And):
            return all(values)
        return any(values)

    return _fold(e, combine)


def tags_of(e: Expr) -> frozenset[str]:
    """Every tag name ``e`` mentions."""
    return frozenset(node.name for node in _walk(e) if isinstance(node, Tag))


def to_json(e: Expr) -> dict[str, Any]:
    """The canonical JSON form; ``parse_json(to_json(e)) == e``."""

    def combine(node: Expr, values: list[dict[str, Any]]) -> dict[str, Any]:
        if isinstance(node, Tag):
            return {"tag": node.name}
        if isinstance(node, Not):
            return {"not": values[0]}
        return {"and" if isinstance(node, And) else "or": values}

    return _fold(e, combine)


# How loosely the top of a rendered string binds, to know when it needs parentheses.
_BINDS_OR, _BINDS_AND, _ATOM = 0, 1, 2


def to_string(e: Expr) -> str:
    """The canonical compact form: ``&&``, ``||``, ``!``, parentheses only where needed,
    tags quoted when they are not plain.

    ``parse_string(to_string(e)) == e`` for every tree within the limits whose And and Or
    have at least two items; a one-item And or Or (JSON form only) is written as its item.
    """

    def combine(node: Expr, values: list[tuple[str, int]]) -> tuple[str, int]:
        if isinstance(node, Tag):
            return _quote(node.name), _ATOM
        if isinstance(node, Not):
            text, binds = values[0]
            return "!" + (text if binds == _ATOM else f"({text})"), _ATOM
        if len(values) == 1:
            return values[0]
        if isinstance(node, And):
            # An And inside an And keeps its parentheses so the tree reads back as it was.
            return " && ".join(t if b == _ATOM else f"({t})" for t, b in values), _BINDS_AND
        return " || ".join(t if b != _BINDS_OR else f"({t})" for t, b in values), _BINDS_OR

    return _fold(e, combine)[0]


def _quote(name: str) -> str:
    if _PLAIN_TAG.fullmatch(name) and name.lower() not in _WORD_OPERATORS:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
