"""``{{var}}`` templates (bridge/templates.py), pure: substitution, missing variables, what is not a
placeholder, the name limit, and the stable error code."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.templates import placeholders, render
from mqttpush.errors import InvalidContent


@pytest.mark.parametrize(
    ("template", "variables", "expected"),
    [
        ("Hello {{name}}", {"name": "Ada"}, "Hello Ada"),
        ("{{ name }}!", {"name": "Ada"}, "Ada!"),  # spaces inside the braces
        ("{{a}}{{b}}{{a}}", {"a": "x", "b": "y"}, "xyx"),
        ("{{user.first-name}}", {"user.first-name": "Ada"}, "Ada"),  # dots and dashes are part of a name
        ("{{_n1}}", {"_n1": 1}, "1"),
        ("{{count}} new", {"count": 3}, "3 new"),  # non-strings as str()
        ("{{ok}}", {"ok": True}, "True"),
        ("{{price}}", {"price": 9.5}, "9.5"),
        ("no placeholders", {}, "no placeholders"),
        ("", {}, ""),
        ("{{name}}", {"name": ""}, ""),
        ("{{ünï}}", {}, "{{ünï}}"),  # not a name: left as it is
        ("{{1st}}", {}, "{{1st}}"),
        ("{{}}", {}, "{{}}"),
        ("{name}", {"name": "x"}, "{name}"),
        ("{{{name}}}", {"name": "x"}, "{x}"),
        ("{{a b}}", {"a": "x"}, "{{a b}}"),
    ],
)
def test_render_a_string(template: str, variables: dict[str, Any], expected: str) -> None:
    assert render(template, variables) == expected


def test_values_are_inserted_verbatim_not_rendered_again_or_escaped() -> None:
    variables = {"a": "{{b}}", "b": "never", "html": "<b>&amp;</b>", "q": '"quoted"\n'}
    assert render("{{a}}", variables) == "{{b}}"
    assert render("{{html}} {{q}}", variables) == '<b>&amp;</b> "quoted"\n'


def test_render_walks_dicts_and_lists_and_leaves_other_values_alone() -> None:
    value = {"title": "Hi {{n}}", "data": {"list": ["{{n}}", 5, None, {"deep": "{{n}}"}], "flag": False}}
    assert render(value, {"n": "Ada"}) == {
        "title": "Hi Ada",
        "data": {"list": ["Ada", 5, None, {"deep": "Ada"}], "flag": False},
    }
    assert render({"{{n}}": "key"}, {"n": "x"}) == {"{{n}}": "key"}  # keys are not templates


@pytest.mark.parametrize("template", ["Hi {{name}}", {"t": ["{{name}}"]}, "{{ok}} {{name}}"])
def test_a_missing_variable_is_a_stable_422(template: Any) -> None:
    with pytest.raises(InvalidContent) as caught:
        render(template, {"ok": 1, "other": 2})
    error = caught.value
    assert (error.status, error.code) == (422, "missing_variable")
    assert "'name'" in error.message
    assert error.to_json() == {"error": {"code": "missing_variable", "message": error.message}}


def test_a_name_is_at_most_64_characters() -> None:
    name64, name65 = "n" * 64, "n" * 65
    assert render("{{" + name64 + "}}", {name64: "ok"}) == "ok"
    assert render("{{" + name65 + "}}", {}) == "{{" + name65 + "}}"
    assert placeholders("{{" + name65 + "}}") == set()


def test_placeholders_lists_every_name_once() -> None:
    assert placeholders({"t": "{{a}} {{ b }}", "d": ["{{a}}", {"x": "{{c}}"}, 3], "e": {}, "l": []}) == {
        "a",
        "b",
        "c",
    }
    assert placeholders(None) == set() and placeholders(5) == set() and placeholders("") == set()


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
texts = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=20)


@settings(max_examples=200)
@given(parts=st.lists(st.tuples(texts, names), max_size=6), tail=texts, values=st.data())
def test_render_replaces_exactly_the_placeholders(
    parts: list[tuple[str, str]], tail: str, values: st.DataObject
) -> None:
    template = "".join(f"{text}{{{{{name}}}}}" for text, name in parts) + tail
    variables = {name: values.draw(texts) for _, name in parts}
    assert placeholders(template) == set(variables)
    assert render(template, variables) == "".join(text + variables[name] for text, name in parts) + tail
    assert render(template, variables | {"unused": "x"}) == render(template, variables)


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | texts,
        lambda inner: st.lists(inner) | st.dictionaries(texts, inner),
        max_leaves=10,
    )
)
def test_a_value_without_placeholders_renders_to_itself(value: Any) -> None:
    assert placeholders(value) == set()
    assert render(value, {}) == value
