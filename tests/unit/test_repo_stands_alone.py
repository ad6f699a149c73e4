"""The repository stands alone: no comment, doc or script points at files outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"(\.\./shared|shared/NOTES\.md|shared/reference|shared/seeds|NOTES\.md)")


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
