"""The CLI is a thin layer: short functions (one parser function per command), and it reaches nothing private of
the objects it drives: local runs go through the public API of harvester/local/session.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

ROOT = Path(__file__).resolve().parents[2]
CLI = sorted((ROOT / "harvester" / "cli").glob("*.py")) + [ROOT / "harvester" / "local" / "session.py"]
MAX_LINES = 80


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_cli_functions_are_short():
    long = [f"{p.relative_to(ROOT)}: {f.name} is {f.end_lineno - f.lineno + 1} lines"
            for p in CLI for f in functions(p) if f.end_lineno - f.lineno + 1 > MAX_LINES]
    assert not long, "\n".join(long)


def test_every_command_registers_itself_in_one_line():
    import importlib

    main = importlib.import_module("harvester.cli.main")  # the package re-exports the function `main`
    parser = main.build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]  # argparse keeps its subparsers here
    assert list(sub.choices) == [f.__name__.removeprefix("_add_") for f in main.COMMANDS]


def test_cli_reaches_nothing_private_of_other_objects():
    """`obj._name` where obj is not self/cls (dunders and private names of the module itself are fine)."""
    found = []
    for path in CLI:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__"):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if owner not in ("self", "cls"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)
