"""The repository stands alone: no comment, doc or script points at files outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

ROOT = Path(__file__).resolve().parents[2]
# "NOTES P6" is a section of notes kept outside the repository, as much as a path to them
OUTSIDE = re.compile(r"(\.\./shared|shared/NOTES\.md|shared/reference|shared/seeds|NOTES\.md|\bNOTES [A-Z]\d)")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / p for p in out if Path(p).suffix in {".py", ".md", ".sh", ".json", ".yaml", ".yml", ".txt", ".toml"}
            or p.startswith(".ci/")]


def test_no_file_points_outside_the_repository():
    found = []
    for path in tracked_text_files():
        if path.name == Path(__file__).name or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


def test_every_linked_doc_exists():
    """Docs and docstrings name files such as docs/architecture.md: each one exists in the repository."""
    missing = []
    for path in tracked_text_files():
        if not path.is_file():
            continue
        for ref in re.findall(r"\bdocs/[\w./-]+\.md\b", path.read_text(encoding="utf-8", errors="replace")):
            if not (ROOT / ref).exists():
                missing.append(f"{path.relative_to(ROOT)} -> {ref}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_no_harvest_code_imports_the_simulator():
    """The simulated vendor is for tests, benches and `harvest demo`: its dependencies (aiohttp) are an extra, so a
    harvest (Lambda bundles, the local engine, the CLI's run commands) must never import it at module level."""
    allowed = {"harvester/cli/main.py", "harvester/cli/demo.py"}  # `harvest demo` / `harvest vendor`, lazily
    found = []
    for path in sorted((ROOT / "harvester").rglob("*.py")) + sorted((ROOT / "lambdas").rglob("*.py")) \
            + sorted((ROOT / "stacks").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("harvester/simulator/"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"^\s*(from|import)\s+harvester\.simulator", line):
                if rel not in allowed or not line.startswith((" ", "\t")):
                    found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
