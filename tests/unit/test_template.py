"""URL templates: references, rendering (alias, nested fields, quoting), literal braces, errors."""

from __future__ import annotations

import pytest

from harvester.spec import parse_spec
from harvester.template import TemplateError, lookup, references, render
from harvester.worker import child_context, template_context

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)


def test_references_in_order_skipping_literal_braces():
    assert references("/troops/{troop.id}/warriors") == [("troop", "id")]
    assert references("/a/{a.x}/b/{b.meta.slug}?q={{not.a.ref}}") == [("a", "x"), ("b", "meta.slug")]
    assert references("/plain/path") == []
    assert references("{ troop.id }") == [("troop", "id")]  # spaces inside the braces are tolerated


@pytest.mark.parametrize(
    "text, problem",
    [
        ("/t/{troop.id", "unbalanced '{'"),
        ("/t/troop.id}", "unbalanced '}'"),
        ("/t/{troop}", "is not of the form {level.field}"),
        ("/t/{}", "is not of the form {level.field}"),
        ("/t/{Troop.id}", "is not of the form {level.field}"),
        ("/t/{troop.}", "is not of the form {level.field}"),
        ("/t/{troop.id/x}", "is not of the form {level.field}"),
    ],
)
def test_malformed_templates(text: str, problem: str):
    with pytest.raises(TemplateError) as info:
        references(text)
    assert problem in str(info.value) and repr(text) in str(info.value)
    with pytest.raises(TemplateError):
        render(text, {"troop": {"id": 1}}, for_path=True)


def test_render_by_level_name_and_by_alias():
    spec = parse_spec(
        {
            "name": "x",
            "base_url": "http://h",
            "levels": [
                {"name": "troops", "alias": "troop", "path": "/troops", "primary_key": "id"},
                {"name": "warriors", "path": "/troops/{troop.id}/warriors/{troops.id}"},
            ],
        }
    )
    ctx = template_context({"troops": {"id": "t0001"}}, spec)
    assert set(ctx) == {"troops", "troop"}
    assert render(spec.levels[1].path, ctx, for_path=True) == "/troops/t0001/warriors/t0001"


def test_render_nested_fields_and_non_string_values():
    ctx = {"w": {"id": 12, "meta": {"site": {"code": "b-7"}}, "on": True, "off": False, "ratio": 0.5}}
    assert render("/w/{w.id}/{w.meta.site.code}", ctx, for_path=True) == "/w/12/b-7"
    assert render("{w.on}/{w.off}/{w.ratio}", ctx, for_path=True) == "true/false/0.5"


def test_values_are_url_quoted_in_paths_but_not_in_params():
    ctx = {"t": {"id": "a b/c?d=1&e#f%"}}
    assert render("/t/{t.id}/x", ctx, for_path=True) == "/t/a%20b%2Fc%3Fd%3D1%26e%23f%25/x"
    # a query value is handed to httpx as a parameter, which encodes it once: no double quoting here
    assert render("{t.id}", ctx, for_path=False) == "a b/c?d=1&e#f%"
    # the template's own text is never quoted
    assert render("/with space/{t.id}", {"t": {"id": "x"}}, for_path=True) == "/with space/x"


def test_unicode_is_quoted_as_utf8_in_paths():
    assert render("/t/{t.id}", {"t": {"id": "café"}}, for_path=True) == "/t/caf%C3%A9"


def test_double_braces_are_literal():
    assert render("/a/{{x}}/{t.id}", {"t": {"id": 1}}, for_path=True) == "/a/{x}/1"
    assert render("{{{t.id}}}", {"t": {"id": 1}}, for_path=False) == "{1}"
    assert render("}}{{", {}, for_path=True) == "}{"


def test_missing_field_names_level_and_field():
    with pytest.raises(TemplateError) as info:
        render("/t/{troop.code}", {"troop": {"id": 1}}, for_path=True)
    assert str(info.value) == "'/t/{troop.code}' needs {troop.code} but the troop record has no field 'code'"


def test_missing_nested_field():
    with pytest.raises(TemplateError) as info:
        render("/t/{troop.meta.code}", {"troop": {"meta": "not-an-object"}}, for_path=True)
    assert "has no field 'meta.code'" in str(info.value)


def test_unknown_level():
    with pytest.raises(TemplateError) as info:
        render("/t/{warrior.id}", {"troop": {"id": 1}}, for_path=True)
    assert "no ancestor 'warrior' is known" in str(info.value)


def test_null_value_is_an_error_not_the_string_none():
    with pytest.raises(TemplateError) as info:
        render("/t/{troop.id}", {"troop": {"id": None}}, for_path=True)
    assert "it is null in the troop record" in str(info.value)


def test_falsy_values_render():
    assert render("{t.a}/{t.b}", {"t": {"a": 0, "b": ""}}, for_path=True) == "0/"


def test_lookup():
    rec = {"a": {"b": {"c": 3}}, "x": 1}
    assert lookup(rec, "x") == 1 and lookup(rec, "a.b.c") == 3
    with pytest.raises(KeyError):
        lookup(rec, "a.b.d")
    with pytest.raises(KeyError):
        lookup(rec, "x.y")


def test_nested_template_field_survives_the_lineage_context():
    """A child level's template may reach into a nested field of its parent: the worker keeps that field in the
    Map item under its dotted name (`meta.slug`), and rendering must find it there."""
    spec = parse_spec(
        {
            "name": "x",
            "base_url": "http://h",
            "levels": [
                {"name": "accounts", "alias": "account", "path": "/a", "primary_key": "id"},
                {"name": "devices", "path": "/a/{account.meta.slug}/devices", "params": {"r": "{account.meta.region}"}},
            ],
        }
    )
    record = {"id": 7, "meta": {"slug": "north side", "region": "eu"}, "other": "dropped"}
    parent = child_context(spec, 0, {}, record, "/a")
    assert parent == {"accounts": {"id": 7, "meta.slug": "north side", "meta.region": "eu"}}
    ctx = template_context(parent, spec)
    assert render(spec.levels[1].path, ctx, for_path=True) == "/a/north%20side/devices"
    assert render(spec.levels[1].params["r"], ctx, for_path=False) == "eu"


def test_templates_and_pagination_walk_paths_the_same_way():
    """One walker (harvester/dotted.py): a template field reaches into lists as a spec's records path does."""
    from harvester.paginate import records_of

    rec = {"tags": [{"id": "a"}, {"id": "b"}], "meta": {"ids": [7, 8]}}
    assert lookup(rec, "tags.1.id") == "b" and lookup(rec, "meta.ids.-1") == 8
    assert records_of({"data": {"pages": [[1, 2]]}}, "data.pages.0", "u") == [1, 2]
    with pytest.raises(KeyError):
        lookup(rec, "tags.2.id")
