"""The source spec: the demo spec loads, and every kind of invalid spec is a SpecError naming file, field, problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester import spec as s
from harvester.spec import SpecError, find_spec, load_spec, parse_spec

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sources" / "demo.yaml"


@pytest.fixture(autouse=True)
def _demo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_BASE_URL", "http://127.0.0.1:9")


def demo_data() -> dict[str, Any]:
    return yaml.safe_load(DEMO.read_text())


def write_spec(tmp_path: Path, data: Any, name: str = "demo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def spec_error(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> tuple[str, Path]:
    """Load the demo spec from a file after `mutate`; return the SpecError's message and the file."""
    data = demo_data()
    mutate(data)
    path = write_spec(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value), path


# ---------------------------------------------------------------------------------------------------------------
# the valid spec
# ---------------------------------------------------------------------------------------------------------------
def test_demo_spec_loads_with_every_level_and_pagination_style():
    spec = load_spec(DEMO)
    assert spec.name == "demo"
    assert spec.base_url == "http://127.0.0.1:9/v1"
    assert [lv.name for lv in spec.levels] == ["troops", "warriors", "datagroups", "points"]
    assert [type(lv.pagination) for lv in spec.levels] == [
        s.PageNumberPagination,
        s.OffsetPagination,
        s.CursorPagination,
        s.LinkHeaderPagination,
    ]
    troops = spec.levels[0]
    assert troops.alias == "troop" and troops.names == ("troops", "troop")
    assert troops.primary_key == ["id"]  # a single key is normalised to a list
    assert troops.pagination.size == 50 and troops.pagination.total_path == "total"
    assert spec.levels[3].primary_key is None and spec.levels[3].types == {"ts": "timestamp[s]"}
    assert spec.auth.type == "header" and spec.auth.env == "DEMO_API_KEY"
    assert spec.rate_limit.requests_per_second == 50 and spec.rate_limit.burst == 5
    assert spec.secret_name() == "harvester/demo"  # locally; on AWS the stack sets HARVESTER_SECRET_PREFIX
    # defaults filled in
    assert spec.retries.max_attempts == 8 and spec.timeouts.read == 30.0 and spec.ttl_days == 90


def test_env_default_in_base_url_used_when_unset(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DEMO_BASE_URL")
    assert load_spec(DEMO).base_url == "http://127.0.0.1:8080/v1"


def test_base_url_trailing_slash_is_dropped():
    spec = parse_spec({"name": "x", "base_url": "https://api.example.com/v2/", "levels": [{"name": "a", "path": "/a"}]})
    assert spec.base_url == "https://api.example.com/v2"
    assert isinstance(spec.levels[0].pagination, s.NoPagination)


def test_context_fields_are_primary_key_then_templated_fields():
    spec = parse_spec(
        {
            "name": "x",
            "base_url": "http://h",
            "levels": [
                {"name": "accounts", "alias": "account", "path": "/a", "primary_key": "id"},
                {
                    "name": "devices",
                    "path": "/a/{account.id}/d/{accounts.slug}",
                    "params": {"region": "{account.meta.region}"},
                    "primary_key": ["id", "kind"],
                },
                {"name": "metrics", "path": "/d/{devices.id}?since={account.created}"},
            ],
        }
    )
    assert spec.context_fields(0) == ["id", "slug", "meta.region", "created"]
    assert spec.context_fields(1) == ["id", "kind"]
    assert spec.context_fields(2) == []
    assert spec.level_index("account") == 0 and spec.level_index("metrics") == 2
    with pytest.raises(KeyError):
        spec.level_index("nope")


def test_spec_hash_is_stable_and_changes_with_the_spec(tmp_path: Path):
    a, b = load_spec(DEMO), load_spec(DEMO)
    assert a.spec_hash() == b.spec_hash()
    assert len(a.spec_hash()) == 16
    # the same spec written differently (key order, single pk as a list) has the same hash
    data = demo_data()
    data["levels"][0]["primary_key"] = ["id"]
    reordered = dict(reversed(list(data.items())))
    assert load_spec(write_spec(tmp_path, reordered)).spec_hash() == a.spec_hash()
    data["levels"][0]["pagination"]["size"] = 51
    assert load_spec(write_spec(tmp_path, data, "other.yaml")).spec_hash() != a.spec_hash()


# ---------------------------------------------------------------------------------------------------------------
# invalid specs: each names the file, the field and what was expected
# ---------------------------------------------------------------------------------------------------------------
def test_missing_field(tmp_path: Path):
    msg, path = spec_error(tmp_path, lambda d: d["levels"][1].pop("path"))
    assert str(path) in msg
    assert "levels[1].path" in msg and "Field required" in msg


def test_missing_required_pagination_field(tmp_path: Path):
    msg, path = spec_error(tmp_path, lambda d: d["levels"][2]["pagination"].pop("cursor_path"))
    assert str(path) in msg
    assert "levels[2].pagination.cursor_path" in msg and "required" in msg.lower()
    assert ".cursor." not in msg  # pydantic's union tag is not shown in the field path


def test_wrong_type(tmp_path: Path):
    msg, path = spec_error(tmp_path, lambda d: d["levels"][1]["pagination"].update(limit="fifty"))
    assert str(path) in msg
    assert "levels[1].pagination.limit" in msg and "valid integer" in msg and "'fifty'" in msg


def test_out_of_range_value(tmp_path: Path):
    msg, path = spec_error(tmp_path, lambda d: d["levels"][0]["pagination"].update(size=0))
    assert str(path) in msg
    assert "levels[0].pagination.size" in msg and "greater than 0" in msg and "(got 0)" in msg


def test_wrong_type_of_a_section(tmp_path: Path):
    msg, _ = spec_error(tmp_path, lambda d: d.update(levels={"troops": {}}))
    assert "levels: Input should be a valid list" in msg


def test_unknown_pagination_type(tmp_path: Path):
    msg, path = spec_error(tmp_path, lambda d: d["levels"][1].update(pagination={"type": "pages"}))
    assert str(path) in msg
    assert "levels[1].pagination" in msg and "'pages'" in msg
    for tag in ("none", "page_number", "offset", "cursor", "next_url", "link_header"):
        assert f"'{tag}'" in msg  # what was expected


def test_pagination_without_type(tmp_path: Path):
    msg, _ = spec_error(tmp_path, lambda d: d["levels"][1]["pagination"].pop("type"))
    assert "levels[1].pagination" in msg and "'type'" in msg


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["levels"][1].update(page_size=10), "levels[1].page_size"),
        (lambda d: d["levels"][1]["pagination"].update(per_page=10), "levels[1].pagination.per_page"),
        (lambda d: d["auth"].update(value="secret-in-the-spec"), "auth.value"),
    ],
)
def test_unknown_extra_key(tmp_path: Path, mutate, where):
    msg, path = spec_error(tmp_path, mutate)
    assert f"{path}: {where}: Extra inputs are not permitted" in msg


def test_template_referring_to_a_non_ancestor_level(tmp_path: Path):
    # warriors' path uses datagroups, a later level
    msg, path = spec_error(tmp_path, lambda d: d["levels"][1].update(path="/datagroups/{datagroup.id}/warriors"))
    assert str(path) in msg
    assert "levels[1].path" in msg and "{datagroup.id} does not name an ancestor level" in msg
    assert "['troops', 'troop']" in msg  # the ancestors it could have used
    assert "(top level)" not in msg


def test_template_referring_to_its_own_level(tmp_path: Path):
    msg, _ = spec_error(tmp_path, lambda d: d["levels"][1].update(params={"x": "{warrior.id}"}))
    assert "levels[1].params.x" in msg and "{warrior.id} does not name an ancestor level" in msg


def test_template_on_first_level_has_no_ancestors(tmp_path: Path):
    msg, _ = spec_error(tmp_path, lambda d: d["levels"][0].update(path="/troops/{troop.id}"))
    assert "levels[0].path" in msg and "none, this is the first level" in msg


@pytest.mark.parametrize(
    "mutate, where, problem",
    [
        (lambda d: d["levels"][1].update(path="/troops/{troop.id/warriors"), "levels[1].path", "unbalanced '{'"),
        (lambda d: d["levels"][1].update(path="/troops/{troop}/warriors"), "levels[1].path", "{level.field}"),
        (lambda d: d["levels"][1].update(params={"q": "a}b"}), "levels[1].params.q", "unbalanced '}'"),
    ],
)
def test_malformed_template(tmp_path: Path, mutate, where, problem):
    msg, path = spec_error(tmp_path, mutate)
    assert str(path) in msg and where in msg and problem in msg


def test_missing_primary_key_on_a_level_with_children(tmp_path: Path):
    msg, path = spec_error(tmp_path, lambda d: d["levels"][2].pop("primary_key"))
    assert str(path) in msg
    assert msg == f"{path}: levels[2].primary_key: required on every level that has children (datagroups has points)"


def test_leaf_level_needs_no_primary_key():
    data = demo_data()
    assert "primary_key" not in data["levels"][3]
    parse_spec(data)  # valid


@pytest.mark.parametrize(
    "mutate, clash",
    [
        (lambda d: d["levels"][2].update(name="warriors"), "levels[2]: name 'warriors' is already used by levels[1]"),
        (lambda d: d["levels"][1].update(alias="troop"), "levels[1]: name 'troop' is already used by levels[0]"),
        (lambda d: d["levels"][1].update(alias="troops"), "levels[1]: name 'troops' is already used by levels[0]"),
    ],
)
def test_duplicate_level_names(tmp_path: Path, mutate, clash):
    msg, path = spec_error(tmp_path, mutate)
    assert msg == f"{path}: {clash}"


@pytest.mark.parametrize("url", ["ftp://vendor.example.com", "vendor.example.com/v1", "http://", ""])
def test_bad_base_url(tmp_path: Path, url: str):
    msg, path = spec_error(tmp_path, lambda d: d.update(base_url=url))
    assert f"{path}: base_url: base_url must start with http:// or https://" in msg
    assert repr(url) in msg


def test_unknown_column_type(tmp_path: Path):
    msg, path = spec_error(tmp_path, lambda d: d["levels"][3].update(types={"ts": "datetime"}))
    assert str(path) in msg
    assert "levels[3].types" in msg and "'datetime'" in msg and "'ts'" in msg and "timestamp[s|ms|us|ns]" in msg


def test_good_column_types_accepted():
    data = demo_data()
    data["levels"][3]["types"] = {"a": "int64", "b": "decimal(12, 3)", "c": "timestamp[ms]", "d": "bool"}
    assert parse_spec(data).levels[3].types["b"] == "decimal(12, 3)"


def test_unset_variable_in_base_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HARVESTER_TEST_UNSET", raising=False)
    msg, path = spec_error(tmp_path, lambda d: d.update(base_url="${HARVESTER_TEST_UNSET}/v1"))
    assert f"{path}: base_url: environment variable HARVESTER_TEST_UNSET is not set and has no default" == msg


def test_set_variable_in_base_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARVESTER_TEST_HOST", "https://api.example.com")
    data = demo_data()
    data["base_url"] = "${HARVESTER_TEST_HOST}/v3"
    assert parse_spec(data).base_url == "https://api.example.com/v3"


def test_yaml_syntax_error(tmp_path: Path):
    path = tmp_path / "demo.yaml"
    path.write_text("name: demo\nlevels:\n  - name: troops\n    path: [/troops\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not valid YAML")
    assert "line" in msg


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("", "NoneType")])
def test_non_mapping_top_level(tmp_path: Path, text: str, kind: str):
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: expected a mapping at the top level, got {kind}"


def test_unreadable_file(tmp_path: Path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "missing.yaml")
    assert "missing.yaml: cannot read the spec" in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path: Path):
    def mutate(d):
        d["levels"][0]["pagination"]["size"] = -1
        d["levels"][1].pop("path")
        d["max_concurrency"] = 0

    msg, path = spec_error(tmp_path, mutate)
    lines = msg.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: ") for line in lines)
    assert {"levels[0].pagination.size", "levels[1].path", "max_concurrency"} <= {line.split(": ")[1] for line in lines}


# ---------------------------------------------------------------------------------------------------------------
# find_spec
# ---------------------------------------------------------------------------------------------------------------
def test_find_spec_in_the_sources_folder():
    assert find_spec(ROOT / "sources", "demo").name == "demo"


def test_find_spec_accepts_yml(tmp_path: Path):
    data = demo_data()
    data["name"] = "other"
    write_spec(tmp_path, data, "other.yml")
    assert find_spec(tmp_path, "other").name == "other"


def test_find_spec_unknown_source_lists_the_known_ones(tmp_path: Path):
    write_spec(tmp_path, demo_data(), "demo.yaml")
    with pytest.raises(SpecError) as info:
        find_spec(tmp_path, "nope")
    msg = str(info.value)
    assert "unknown source 'nope'" in msg and "nope.yaml" in msg and "['demo']" in msg


def test_find_spec_name_mismatch(tmp_path: Path):
    data = demo_data()  # name: demo
    path = write_spec(tmp_path, data, "copy.yaml")
    with pytest.raises(SpecError) as info:
        find_spec(tmp_path, "copy")
    assert str(info.value) == f"{path}: name is 'demo' but the file is for source 'copy'"


@pytest.mark.parametrize("source", ["Demo", "../demo", "", "demo/x"])
def test_find_spec_rejects_a_bad_source_name(tmp_path: Path, source: str):
    with pytest.raises(SpecError) as info:
        find_spec(ROOT / "sources", source)
    assert "is not a valid source name" in str(info.value)


def test_secret_name_follows_the_deployed_prefix(monkeypatch: pytest.MonkeyPatch):
    """The stack names the secrets it creates `{stack name}-{stack id}/{source}` and tells the functions the prefix;
    a spec's own `auth.secret` is used as written."""
    monkeypatch.setenv("HARVESTER_SECRET_PREFIX", "Harvester-1a2b3c4d/")
    spec = s.SourceSpec.model_validate({"name": "acme", "base_url": "https://api.example.com",
                                      "auth": {"type": "bearer", "env": "ACME_TOKEN"},
                                      "levels": [{"name": "items", "path": "/items"}]})
    assert spec.secret_name() == "Harvester-1a2b3c4d/acme"
    named = spec.model_copy(update={"auth": spec.auth.model_copy(update={"secret": "shared/acme"})})
    assert named.secret_name() == "shared/acme"
