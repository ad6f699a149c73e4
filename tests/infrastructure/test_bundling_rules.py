"""What goes into a bundle, decided without running pip (the packaging test builds the real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacks.bundling import PLATFORMS, REQUIREMENTS_DIR, BundleSpec


def make_tree(root: Path) -> None:
    for rel in ["lambdas/__init__.py", "lambdas/plan.py", "lambdas/requirements/plan.txt", "harvester/__init__.py",
                "harvester/spec.py", "harvester/cli.py", "harvester/vendor/__init__.py", "harvester/local/engine.py",
                "harvester/lake/convert.py", "harvester/__pycache__/spec.cpython-311.pyc", "sources/demo.yaml",
                "sources/.hidden"]:  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")


def test_bundle_files_leave_out_the_laptop_parts_and_the_lake(tmp_path):
    make_tree(tmp_path)
    spec = BundleSpec("plan", tmp_path / "lambdas/requirements/plan.txt", root=tmp_path)
    assert [rel for _, rel in spec.files()] == [
        "lambdas/__init__.py", "lambdas/plan.py", "harvester/__init__.py", "harvester/spec.py", "sources/demo.yaml",
    ]  # fmt: skip
    lake = BundleSpec("convert", tmp_path / "lambdas/requirements/plan.txt", root=tmp_path, include=frozenset({"harvester/lake"}))
    assert "harvester/lake/convert.py" in [rel for _, rel in lake.files()]


def test_hash_follows_the_content(tmp_path):
    make_tree(tmp_path)
    spec = BundleSpec("plan", tmp_path / "lambdas/requirements/plan.txt", root=tmp_path)
    before = spec.asset_hash()
    (tmp_path / "harvester/cli.py").write_text("changed, but not bundled")
    assert spec.asset_hash() == before
    (tmp_path / "sources/demo.yaml").write_text("changed")
    assert spec.asset_hash() != before
    assert BundleSpec("plan", spec.requirements, root=tmp_path, architecture="x86_64").asset_hash() != spec.asset_hash()


@pytest.mark.parametrize("arch", sorted(PLATFORMS))
def test_pip_installs_only_lambda_wheels(arch):
    cmd = BundleSpec("fetch", REQUIREMENTS_DIR / "fetch.txt", architecture=arch).pip_command("/out")
    assert "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert cmd[cmd.index("--implementation") + 1] == "cp"
    platforms = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--platform"]
    assert platforms and all(p.endswith("aarch64" if arch == "arm64" else "x86_64") for p in platforms)


def test_requirements_keep_pyarrow_and_boto3_out():
    for name in ("plan", "fetch", "advance"):
        text = (REQUIREMENTS_DIR / f"{name}.txt").read_text().lower()
        lines = [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]
        assert not [line for line in lines if line.startswith(("pyarrow", "boto3", "botocore", "moto", "aiohttp"))], name
