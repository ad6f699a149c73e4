"""Issue 11 case 8: every spec and input error exits 2 with one short line and writes nothing (no state folder),
whatever the spec holds: a missing credential, a vendor that does not answer, `.inf` or 1e308 rates, 10,000
levels, a non-UTF-8 file, YAML nested too deeply, an alias bomb, a bad `--query-file`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from harvester.cli import EXIT_BAD_INPUT, main
from harvester.spec import SpecError, load_spec


def spec_text(base_url: str = "http://127.0.0.1:9/v1", **top) -> str:
    spec = {"name": "bad", "base_url": base_url, "levels": [{"name": "items", "path": "/items"}], **top}
    return yaml.safe_dump(spec, sort_keys=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(tmp_path: Path, capsys, text: str | bytes, *extra: str) -> tuple[int, str]:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    state = tmp_path / "state"
    code = main(["run", "--local", str(path), "--state", str(state), *extra])
    err = capsys.readouterr().err
    assert not state.exists(), "nothing is written, not even the state folder"
    return code, err


def assert_one_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 600 and lines[0].startswith("error: "), err[:2000]
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


def test_a_missing_credential_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    code, err = run_cli(tmp_path, capsys, spec_text(auth={"type": "header", "env": "NO_SUCH_KEY_VAR"}))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "NO_SUCH_KEY_VAR")


def test_a_vendor_that_does_not_answer_is_one_line_and_writes_nothing(tmp_path, capsys):
    code, err = run_cli(tmp_path, capsys, spec_text(f"http://127.0.0.1:{free_port()}/v1"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "does not answer")


@pytest.mark.parametrize("rate, words", [(".inf", "rate_limit.requests_per_second"), ("1e308", "requests_per_second"),
                                         (".nan", "requests_per_second")])
def test_absurd_rates_are_refused_by_the_spec(rate, words, tmp_path, capsys):
    text = spec_text().replace("levels:", f"rate_limit: {{requests_per_second: {rate}}}\nlevels:")
    code, err = run_cli(tmp_path, capsys, text)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, words)


def test_ten_thousand_levels_are_refused(tmp_path, capsys):
    levels = [{"name": f"l{i}", "path": "/x", "primary_key": "id"} for i in range(10_000)]
    code, err = run_cli(tmp_path, capsys, json.dumps({"name": "bad", "base_url": "http://x", "levels": levels}))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "levels")


def test_a_spec_that_is_not_utf8_is_named(tmp_path, capsys):
    code, err = run_cli(tmp_path, capsys, spec_text().encode() + "# caf\xe9\n".encode("latin-1"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "bad.yaml", "UTF-8")


def test_yaml_nested_too_deeply_is_one_line(tmp_path, capsys):
    code, err = run_cli(tmp_path, capsys, spec_text() + "deep: " + "[" * 5000 + "]" * 5000 + "\n")
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "bad.yaml", "nest")


def test_an_alias_bomb_is_refused_in_one_line(tmp_path, capsys):
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    code, err = run_cli(tmp_path, capsys, spec_text() + "\n".join(bomb) + "\n")
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "bad.yaml")


def test_a_huge_spec_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(spec_text() + "# " + "x" * 2_000_000 + "\n")
    with pytest.raises(SpecError, match="big.yaml.*larger than"):
        load_spec(path)


def test_a_bad_query_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "q.json"
    bad.write_text("{not json")
    code = main(["query", "--local", "--query-file", str(bad), "--state", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "q.json")
    code = main(["query", "--local", "--query-file", str(tmp_path / "missing.json"), "--state", str(tmp_path / "s")])
    assert code == EXIT_BAD_INPUT
    assert_one_line(capsys.readouterr().err, "missing.json")


WINDOWED = [{"name": "items", "path": "/items",
             "window": {"start_param": "from", "end_param": "to", "initial_start": "2026-01-01"}}]


@pytest.mark.parametrize("spec, options, words", [
    ({"auth": {"type": "header", "env": "NO_SUCH_KEY_VAR"}}, [], ["NO_SUCH_KEY_VAR"]),
    ({}, ["--from", "2026-01-03", "--to", "2026-01-01"], ["window", "not after"]),
    ({}, ["--step", "1 day"], ["window", "'1 day'", "duration"]),
    ({}, ["--from", "2020-01-01", "--step", "PT1M"], ["window", "slices"]),
    ({"levels": [{"name": "items", "path": "/items"}]}, [], ["declares no window"]),
])
def test_a_backfill_that_cannot_run_is_one_line_and_writes_nothing(spec, options, words, tmp_path, capsys,
                                                                    monkeypatch):
    """As `harvest run --local`: checked before the state folder exists (it was: an execution that failed in
    Plan run, in a state folder created for it)."""
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    path = tmp_path / "bad.yaml"
    path.write_text(spec_text(**{"levels": WINDOWED, **spec}))
    state = tmp_path / "state"
    range_ = {"--from": "2026-01-01", "--to": "2026-01-03"}
    range_.update(dict(zip(options[::2], options[1::2])))
    code = main(["backfill", str(path), "--state", str(state), *[x for kv in range_.items() for x in kv]])
    err = capsys.readouterr().err
    assert not state.exists(), "nothing is written, not even the state folder"
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, *words)
