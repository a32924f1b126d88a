"""Tag expressions (bridge/tagexpr): both forms, canonical output, evaluation, limits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bridge.tagexpr import (
    MAX_DEPTH,
    MAX_LEAVES,
    And,
    Expr,
    Not,
    Or,
    Tag,
    TagExprError,
    evaluate,
    parse,
    parse_json,
    parse_string,
    tags_of,
    to_json,
    to_string,
)
from mqttpush.errors import InvalidContent

PROPS = settings(max_examples=300, deadline=None)

# Plain tags, the operator words, and tags that must be quoted (space, quote, backslash, non-ASCII).
TAG_NAMES = [
    "a",
    "b",
    "cs",
    "grad",
    "x-1.y:z@w",
    "and",
    "OR",
    "Not",
    "two words",
    'say "hi"',
    "back\\slash",
    "é",
]
tag_names = st.sampled_from(TAG_NAMES)
tag_sets = st.frozensets(tag_names)


def exprs(min_items: int) -> st.SearchStrategy[Expr]:
    """Trees over TAG_NAMES; And/Or have at least ``min_items`` items."""

    def branches(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        items = st.lists(children, min_size=min_items, max_size=4).map(tuple)
        return st.one_of(children.map(Not), items.map(And), items.map(Or))

    return st.recursive(tag_names.map(Tag), branches, max_leaves=25)


def depth(e: Expr) -> int:
    if isinstance(e, Tag):
        return 1
    if isinstance(e, Not):
        return 1 + depth(e.item)
    return 1 + max(depth(item) for item in e.items)


def oracle(e: Expr, tags: frozenset[str]) -> bool:
    """Evaluate by rendering the tree as a fully parenthesised Python expression."""

    def python(node: Expr) -> str:
        if isinstance(node, Tag):
            return f"({node.name!r} in tags)"
        if isinstance(node, Not):
            return f"(not {python(node.item)})"
        word = " and " if isinstance(node, And) else " or "
        return "(" + word.join(python(item) for item in node.items) + ")"

    return bool(eval(python(e), {"tags": tags}))


def refused(text: str, position: int, words: str) -> TagExprError:
    with pytest.raises(TagExprError) as info:
        parse_string(text)
    assert info.value.position == position
    assert info.value.path == ""
    assert f"at {position}:" in info.value.message
    assert words in info.value.message
    return info.value


def refused_json(obj: Any, path: str, words: str) -> TagExprError:
    with pytest.raises(TagExprError) as info:
        parse_json(obj)
    assert info.value.path == path
    assert info.value.position == -1
    assert words in info.value.message
    if path:
        assert f"at {path}:" in info.value.message
    return info.value


# --- the spec example, precedence, synonyms, quoting ----------------------------------------

SPEC = {"or": [{"and": [{"tag": "cs"}, {"not": {"tag": "grad"}}]}, {"tag": "staff"}]}


def test_spec_example_string_equals_json() -> None:
    expected = Or((And((Tag("cs"), Not(Tag("grad")))), Tag("staff")))
    assert parse_string("cs && !grad || staff") == expected
    assert parse_json(SPEC) == expected
    assert parse("cs && !grad || staff") == parse(SPEC)
    assert to_json(expected) == SPEC
    assert to_string(expected) == "cs && !grad || staff"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a || b && c", Or((Tag("a"), And((Tag("b"), Tag("c")))))),
        ("a && b || c", Or((And((Tag("a"), Tag("b"))), Tag("c")))),
        ("(a || b) && c", And((Or((Tag("a"), Tag("b"))), Tag("c")))),
        ("!a && b", And((Not(Tag("a")), Tag("b")))),
        ("!(a && b)", Not(And((Tag("a"), Tag("b"))))),
        ("!!a", Not(Not(Tag("a")))),
        ("a && b && c", And((Tag("a"), Tag("b"), Tag("c")))),
        ("(a && b) && c", And((And((Tag("a"), Tag("b"))), Tag("c")))),
        ("a || b || c", Or((Tag("a"), Tag("b"), Tag("c")))),
        ("((a))", Tag("a")),
        ("  \t a\n&&b  ", And((Tag("a"), Tag("b")))),
        ("a&&!b||c", Or((And((Tag("a"), Not(Tag("b")))), Tag("c")))),
    ],
)
def test_precedence_and_grouping(text: str, expected: Expr) -> None:
    assert parse_string(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "cs and not grad or staff",
        "cs AND NOT grad OR staff",
        "cs And Not grad Or staff",
        "cs &&not grad||staff",
    ],
)
def test_words_are_synonyms_of_operators(text: str) -> None:
    assert parse_string(text) == parse_json(SPEC)


def test_words_are_whole_words_only() -> None:
    assert parse_string("android || oregon && notes") == Or(
        (Tag("android"), And((Tag("oregon"), Tag("notes"))))
    )
    assert parse_string("and-1") == Tag("and-1")
    assert parse_string("not(a)") == Not(Tag("a"))


def test_plain_tags_use_the_whole_tag_alphabet() -> None:
    assert parse_string("Ab_0.9:x@y-z") == Tag("Ab_0.9:x@y-z")
    assert parse_string("a" * 64) == Tag("a" * 64)


def test_quoted_tags() -> None:
    assert parse_string('"and" || "or"') == Or((Tag("and"), Tag("or")))
    assert parse_string('"two words" && !"é"') == And((Tag("two words"), Not(Tag("é"))))
    assert parse_string('"cs"') == Tag("cs")
    assert parse_string('"' + "x" * 64 + '"') == Tag("x" * 64)
    # The escapes that let every JSON-form tag be written in the string form too.
    assert parse_string(r'"say \"hi\""') == Tag('say "hi"')
    assert parse_string(r'"back\\slash"') == Tag("back\\slash")


def test_to_string_quotes_only_what_needs_it() -> None:
    e = Or((Tag("a"), Tag("and"), Tag("x y"), Tag('q"'), Tag("b\\"), Tag("NOT")))
    assert to_string(e) == r'a || "and" || "x y" || "q\"" || "b\\" || "NOT"'
    assert parse_string(to_string(e)) == e


def test_to_string_parenthesises_only_where_needed() -> None:
    assert to_string(And((Or((Tag("a"), Tag("b"))), Tag("c")))) == "(a || b) && c"
    assert to_string(Or((And((Tag("a"), Tag("b"))), Tag("c")))) == "a && b || c"
    assert to_string(Or((Or((Tag("a"), Tag("b"))), Tag("c")))) == "(a || b) || c"
    assert to_string(And((Tag("a"), And((Tag("b"), Tag("c")))))) == "a && (b && c)"
    assert to_string(Not(Or((Tag("a"), Tag("b"))))) == "!(a || b)"
    assert to_string(Not(Not(Tag("a")))) == "!!a"


def test_json_one_item_and_or_are_kept() -> None:
    e = parse_json({"and": [{"or": [{"tag": "a"}]}]})
    assert e == And((Or((Tag("a"),)),))
    assert to_json(e) == {"and": [{"or": [{"tag": "a"}]}]}
    assert to_string(e) == "a"


def test_one_item_and_is_written_so_it_keeps_its_meaning() -> None:
    e: Expr = Or((And((Or((Tag("a"), Tag("b"))),)), Tag("c")))
    assert to_string(e) == "(a || b) || c"
    e = Not(And((Or((Tag("a"), Tag("b"))),)))
    assert to_string(e) == "!(a || b)"


def test_json_tags_may_be_any_text_without_control_characters() -> None:
    assert parse_json({"tag": 'x y"\\é✓'}) == Tag('x y"\\é✓')


def test_evaluate_and_tags_of() -> None:
    e = parse_string("cs && !grad || staff")
    assert evaluate(e, {"cs"})
    assert not evaluate(e, {"cs", "grad"})
    assert evaluate(e, frozenset({"cs", "grad", "staff"}))
    assert not evaluate(e, set())
    assert tags_of(e) == frozenset({"cs", "grad", "staff"})


def test_trees_built_by_hand_deeper_than_the_limit_still_work() -> None:
    e: Expr = Tag("a")
    for _ in range(20_000):
        e = Not(e)
    assert evaluate(e, {"a"})
    assert tags_of(e) == {"a"}
    assert to_string(e) == "!" * 20_000 + "a"
    obj, levels = to_json(e), 0
    while "not" in obj:
        obj, levels = obj["not"], levels + 1
    assert (obj, levels) == ({"tag": "a"}, 20_000)


@pytest.mark.parametrize("build", [lambda: Tag(""), lambda: Tag("a\x00"), lambda: And(()), lambda: Or(())])
def test_nodes_refuse_invalid_content(build: Any) -> None:
    with pytest.raises(TagExprError):
        build()


def test_error_is_an_invalid_content_with_its_own_code() -> None:
    error = refused("a &&", 4, "expected a tag after '&&'")
    assert isinstance(error, InvalidContent)
    assert error.code == "bad_tag_expr"
    assert error.status == 422
    assert error.to_json()["error"]["code"] == "bad_tag_expr"


# --- string errors and their positions ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("", 0, "empty expression"),
        ("   ", 0, "empty expression"),
        ("a &&", 4, "expected a tag after '&&'"),
        ("a and", 5, "expected a tag after 'and'"),
        ("|| a", 0, "expected a tag, found '||'"),
        ("a && || b", 5, "expected a tag after '&&', found '||'"),
        ("a b", 2, "found the tag 'b'"),
        ("a !b", 2, "found '!'"),
        ("!", 1, "expected a tag after '!'"),
        ("(a", 2, "to close the '(' at 0"),
        ("((a) || (b)", 11, "to close the '(' at 0"),
        ("(a b)", 3, "to close the '(' at 0"),
        ("a)", 1, "')' without a matching '('"),
        ("(a))", 3, "')' without a matching '('"),
        ("()", 1, "expected a tag after '('"),
        ("a # b", 2, "unexpected character '#'"),
        ("a & b", 2, "did you mean '&&'"),
        ("a | b", 2, "did you mean '||'"),
        ("a &&& b", 4, "unexpected character '&'"),
        ("é", 0, "unexpected character 'é'"),
        ('a || "b', 5, "unterminated quoted tag"),
        ('"', 0, "unterminated quoted tag"),
        ('a || ""', 5, "a tag cannot be empty"),
        ('"a\\nb"', 2, "may only escape"),
        ('"a\\', 2, "may only escape"),
        ('"a\tb"', 2, "control character"),
        ("x" * 65, 0, "at most 64 characters"),
        ('b || "' + "x" * 65 + '"', 5, "at most 64 characters"),
        ("a\x00", 1, "unexpected character"),
    ],
)
def test_string_errors_carry_their_position(text: str, position: int, words: str) -> None:
    refused(text, position, words)


# --- JSON errors and their paths ------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "path", "words"),
    [
        ("cs", "", "found a string"),
        ([{"tag": "a"}], "", "found a list"),
        (None, "", "found null"),
        ({}, "", "found 0 keys"),
        ({"tag": "a", "not": {"tag": "b"}}, "", "found 2 keys"),
        ({"nor": []}, "", "unknown operator 'nor'"),
        ({1: "a"}, "", "unknown operator 1"),
        ({"tag": 1}, "/tag", "must be a string"),
        ({"tag": ""}, "/tag", "cannot be empty"),
        ({"tag": "x" * 65}, "/tag", "at most 64 characters"),
        ({"tag": "a\nb"}, "/tag", "control character"),
        ({"tag": "\ud800"}, "/tag", "control character"),
        ({"and": []}, "/and", "non-empty list"),
        ({"or": {"tag": "a"}}, "/or", "non-empty list"),
        ({"and": [{"tag": "a"}, {"not": "b"}]}, "/and/1/not", "found a string"),
        (
            {"or": [{"tag": "a"}, {"and": [{"tag": "b"}, {"tag": True}]}]},
            "/or/1/and/1/tag",
            "must be a string",
        ),
    ],
)
def test_json_errors_carry_their_path(obj: Any, path: str, words: str) -> None:
    refused_json(obj, path, words)


@pytest.mark.parametrize("value", [1, None, ["a"], b"a", 1.5])
def test_parse_refuses_what_is_neither_string_nor_object(value: Any) -> None:
    with pytest.raises(TagExprError):
        parse(value)


# --- limits ---------------------------------------------------------------------------------


def test_thousand_tags_is_the_limit_in_both_forms() -> None:
    assert len(tags_of(parse_string(" || ".join(f"t{i}" for i in range(MAX_LEAVES))))) == MAX_LEAVES
    assert parse_json({"or": [{"tag": "a"}] * MAX_LEAVES}) == Or((Tag("a"),) * MAX_LEAVES)


def test_more_than_thousand_tags_is_refused_at_the_first_tag_over() -> None:
    text = "a || " * MAX_LEAVES + "b"
    refused(text, len(text) - 1, "more than 1000 tags")
    refused_json({"or": [{"tag": "a"}] * (MAX_LEAVES + 1)}, "/or/1000/tag", "more than 1000 tags")


def nots(levels: int) -> dict[str, Any]:
    """``levels`` nested objects: ``levels - 1`` nots around one tag."""
    obj: dict[str, Any] = {"tag": "a"}
    for _ in range(levels - 1):
        obj = {"not": obj}
    return obj


def test_depth_64_is_the_limit_in_json_form() -> None:
    assert depth(parse_json(nots(MAX_DEPTH))) == MAX_DEPTH
    refused_json(nots(MAX_DEPTH + 1), "/not" * MAX_DEPTH, "nested deeper than 64 levels")


def test_depth_64_is_the_limit_in_string_form() -> None:
    assert depth(parse_string("!" * (MAX_DEPTH - 1) + "a")) == MAX_DEPTH
    refused("!" * MAX_DEPTH + "a", 0, "nested deeper than 64 levels")
    # And nodes count as levels even though only 63 parentheses are open.
    nested = "a && (" * (MAX_DEPTH - 1) + "a && a" + ")" * (MAX_DEPTH - 1)
    refused(nested, 0, "nested deeper than 64 levels")
    fits = "a && (" * (MAX_DEPTH - 2) + "a && a" + ")" * (MAX_DEPTH - 2)
    assert depth(parse_string(fits)) == MAX_DEPTH
    assert parse_string(to_string(parse_string(fits))) == parse_string(fits)


def test_hostile_input_is_refused_without_crashing() -> None:
    for text in ["(" * 100_000, "!" * 100_000 + "a", "(" * 100_000 + "a" + ")" * 100_000]:
        refused(text, MAX_DEPTH, "nested deeper than 64 levels")
    refused("a" * 1_000_000, 0, "at most 64 characters")
    refused('"' + "a" * 1_000_000, 0, "at most 64 characters")
    refused("a || " * 100_000 + "a", 5 * MAX_LEAVES, "more than 1000 tags")
    refused_json(nots(100_000), "/not" * MAX_DEPTH, "nested deeper than 64 levels")
    deep_list: Any = [{"tag": "a"}]
    for _ in range(100_000):
        deep_list = {"and": [deep_list]}
    with pytest.raises(TagExprError):
        parse(deep_list)


# --- properties -----------------------------------------------------------------------------


@PROPS
@given(exprs(min_items=2), tag_sets)
def test_string_and_json_forms_round_trip(e: Expr, tags: frozenset[str]) -> None:
    assume(depth(e) <= MAX_DEPTH)
    from_string = parse_string(to_string(e))
    from_json = parse_json(to_json(e))
    assert from_string == e
    assert from_json == e
    assert parse(to_string(e)) == parse(to_json(e))
    assert evaluate(from_string, tags) == evaluate(from_json, tags) == evaluate(e, tags)


@PROPS
@given(exprs(min_items=1), tag_sets)
def test_one_item_and_or_round_trip_as_json_and_keep_their_meaning_as_string(
    e: Expr, tags: frozenset[str]
) -> None:
    assume(depth(e) <= MAX_DEPTH)
    assert parse_json(to_json(e)) == e
    assert evaluate(parse_string(to_string(e)), tags) == evaluate(e, tags)


@PROPS
@given(exprs(min_items=1), tag_sets)
def test_evaluate_agrees_with_python(e: Expr, tags: frozenset[str]) -> None:
    assert evaluate(e, tags) == oracle(e, tags)
    assert evaluate(e, set(tags)) == evaluate(e, tags)


@PROPS
@given(exprs(min_items=1), tag_sets)
def test_tags_of_is_every_tag_and_all_that_evaluate_looks_at(e: Expr, tags: frozenset[str]) -> None:
    assert tags_of(e) == _names(e)
    assert evaluate(e, tags) == evaluate(e, tags & tags_of(e))


def _names(e: Expr) -> set[str]:
    if isinstance(e, Tag):
        return {e.name}
    if isinstance(e, Not):
        return _names(e.item)
    return set().union(*(_names(item) for item in e.items))


FRAGMENTS = [
    "a",
    "b",
    "and",
    "OR",
    "not",
    "&&",
    "||",
    "&",
    "|",
    "!",
    "(",
    ")",
    '"',
    '"x"',
    "\\",
    " ",
    "\t",
    "é",
    "\x00",
    "#",
]
expression_like_text = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)


def _parses_or_refuses(text: str) -> None:
    try:
        e = parse_string(text)
    except TagExprError as error:
        assert 0 <= error.position <= len(text)
        assert error.path == ""
        assert error.code == "bad_tag_expr"
        assert f"at {error.position}:" in error.message
    else:
        assert parse_string(to_string(e)) == e
        assert parse_json(to_json(e)) == e


@PROPS
@given(st.text())
def test_any_text_parses_or_is_refused_with_a_position(text: str) -> None:
    _parses_or_refuses(text)


@PROPS
@given(expression_like_text)
def test_any_operator_soup_parses_or_is_refused_with_a_position(text: str) -> None:
    _parses_or_refuses(text)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.sampled_from(["a", ""]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["tag", "and", "or", "not", "nor"]), children, max_size=2)
    ),
    max_leaves=20,
)


@PROPS
@given(json_like)
def test_any_json_parses_or_is_refused_with_a_path(obj: Any) -> None:
    try:
        e = parse_json(obj)
    except TagExprError as error:
        assert error.position == -1
        assert error.code == "bad_tag_expr"
    else:
        assert parse_json(to_json(e)) == e
