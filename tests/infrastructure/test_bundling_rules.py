"""What goes into a bundle, decided without running pip (the packaging test builds the real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacks.bundling import PLATFORMS, REQUIREMENTS_DIR, BundleError, BundleSpec

TREE = {
    "lambdas/__init__.py": "",
    "lambdas/plan.py": "from harvester import aws\nfrom harvester.spec import load_spec\n",
    "lambdas/convert.py": "def handler(e, c):\n    from harvester.lake.convert import run\n",
    "lambdas/bad.py": "import harvester.local.engine\n",
    "lambdas/requirements/plan.txt": "pyyaml\n",
    "harvester/__init__.py": "",
    "harvester/aws.py": "import boto3\nfrom . import storage\n",
    "harvester/storage.py": "import json\n",
    "harvester/spec.py": "from harvester.template import references\n",
    "harvester/template.py": "",
    "harvester/worker.py": "import httpx\n",
    "harvester/cli/__init__.py": "import aiohttp\n",
    "harvester/local/__init__.py": "",
    "harvester/local/engine.py": "import moto\n",
    "harvester/lake/__init__.py": "",
    "harvester/lake/convert.py": "import pyarrow\nfrom .schema import x\n",
    "harvester/lake/schema.py": "",
    "harvester/__pycache__/spec.cpython-311.pyc": "",
    "sources/demo.yaml": "name: demo\n",
    "sources/.hidden": "",
}


def make_tree(root: Path) -> None:
    for rel, text in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def spec_for(root: Path, name: str, **kw) -> BundleSpec:
    return BundleSpec(name, root / "lambdas/requirements/plan.txt", root=root, **kw)


def test_a_bundle_carries_exactly_what_its_handler_imports(tmp_path):
    make_tree(tmp_path)
    assert [rel for _, rel in spec_for(tmp_path, "plan").files()] == [
        "harvester/__init__.py", "harvester/aws.py", "harvester/spec.py", "harvester/storage.py",
        "harvester/template.py", "lambdas/__init__.py", "lambdas/plan.py", "sources/demo.yaml",
    ]


def test_lazy_and_relative_imports_are_followed(tmp_path):
    make_tree(tmp_path)
    files = [rel for _, rel in spec_for(tmp_path, "convert").files()]
    assert {"harvester/lake/__init__.py", "harvester/lake/convert.py", "harvester/lake/schema.py"} <= set(files)
    assert "harvester/worker.py" not in files


def test_laptop_only_code_is_refused(tmp_path):
    make_tree(tmp_path)
    with pytest.raises(BundleError, match="laptop-only"):
        spec_for(tmp_path, "bad").files()
    with pytest.raises(BundleError, match="not found"):
        spec_for(tmp_path, "missing").files()


def test_hash_follows_the_content(tmp_path):
    make_tree(tmp_path)
    spec = spec_for(tmp_path, "plan")
    before = spec.asset_hash()
    (tmp_path / "harvester/worker.py").write_text("changed, but not in this bundle")
    assert spec.asset_hash() == before
    (tmp_path / "harvester/template.py").write_text("# changed")
    assert spec.asset_hash() != before
    before = spec.asset_hash()
    (tmp_path / "sources/demo.yaml").write_text("changed")
    assert spec.asset_hash() != before
    assert spec_for(tmp_path, "plan", architecture="x86_64").asset_hash() != spec.asset_hash()


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
