"""The real Lambda bundles, built as `cdk synth` builds them (pip, manylinux wheels for the Lambda runtime):
size under Lambda's 250 MB unzipped limit, only wheels and shared objects of the target platform, only what the
function's code imports, and the project code the handler needs.

Needs PyPI (pip downloads the wheels); takes a minute. Deselect with `-m "not packaging"`.
"""

from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

import pytest

from stacks.bundling import PLATFORMS, PYTHON_VERSION, REQUIREMENTS_DIR, RUNTIME_PROVIDED, BundleSpec
from stacks.config import HarvesterConfig

pytestmark = [pytest.mark.infrastructure, pytest.mark.packaging]

LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
#: ELF e_machine of each Lambda architecture
ELF_MACHINE = {"arm64": 183, "x86_64": 62}
FUNCTIONS = ("plan", "fetch", "advance")
#: never in these bundles: the laptop's engine and vendor, the Parquet lake, the runtime's own SDK
FORBIDDEN = {"moto", "aiohttp", "pyarrow", "duckdb", *RUNTIME_PROVIDED}
PY_TAG = "cp" + PYTHON_VERSION.replace(".", "")
ARCH = HarvesterConfig().arch  # what `cdk deploy` ships by default


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name in FUNCTIONS:
        spec = BundleSpec(name, REQUIREMENTS_DIR / f"{name}.txt", architecture=ARCH)
        out[name] = spec.build(tmp_path_factory.mktemp(f"bundle-{name}"))
    return out


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", FUNCTIONS)
def test_size_under_the_lambda_limit(bundles, name, tmp_path):
    size = _size(bundles[name])
    assert size < LAMBDA_UNZIPPED_LIMIT, f"{name}: {size / 2**20:.1f} MB unzipped"
    assert size < 60 * 2**20, f"{name}: {size / 2**20:.1f} MB; did pyarrow or botocore slip in?"
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(bundles[name].rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(bundles[name]))
    assert archive.stat().st_size < 50 * 2**20


@pytest.mark.parametrize("name", FUNCTIONS)
def test_only_wheels_for_the_lambda_platform(bundles, name):
    arch_suffix = PLATFORMS[ARCH][0].rsplit("_", 1)[-1]  # aarch64 or x86_64
    wheels = list(bundles[name].glob("*.dist-info/WHEEL"))
    assert wheels
    for wheel in wheels:
        tags = [line.split(":", 1)[1].strip() for line in wheel.read_text().splitlines() if line.startswith("Tag:")]
        assert tags, wheel
        for tag in tags:
            py, abi, plat = tag.split("-")
            if plat == "any":
                continue
            assert "manylinux" in plat and plat.endswith(arch_suffix), f"{wheel.parent.name}: {tag}"
            assert py in (PY_TAG, "cp32", "cp37", "cp38", "cp39") and (abi == PY_TAG or abi == "abi3"), f"{wheel.parent.name}: {tag}"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_shared_objects_are_for_the_lambda_cpu_and_python(bundles, name):
    for so in bundles[name].rglob("*.so*"):
        header = so.read_bytes()[:20]
        assert header[:4] == b"\x7fELF", so
        machine = int.from_bytes(header[18:20], "little")
        assert machine == ELF_MACHINE[ARCH], f"{so.relative_to(bundles[name])}: ELF machine {machine}"
        if "cpython-" in so.name:
            assert f"cpython-{PY_TAG[2:]}" in so.name, so.name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_project_code_the_handler_needs_and_nothing_else(bundles, name):
    root = bundles[name]
    assert (root / "lambdas" / f"{name}.py").is_file()
    assert (root / "lambdas" / "__init__.py").is_file() and (root / "harvester" / "__init__.py").is_file()
    assert sorted(p.name for p in (root / "sources").glob("*.y*ml")) == sorted(
        p.name for p in (REQUIREMENTS_DIR.parent.parent / "sources").glob("*.y*ml"))
    for absent in ("harvester/vendor", "harvester/local", "harvester/cli.py", "harvester/lake", "lambdas/requirements"):
        assert not (root / absent).exists(), absent
    top = {p.name.split(".")[0].split("-")[0].lower() for p in root.iterdir()}
    assert not (top & FORBIDDEN), top & FORBIDDEN
    assert not list(root.rglob("__pycache__"))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_import_of_the_bundled_code_is_in_the_bundle(bundles, name):
    """What the bundled project code imports is in the bundle, the standard library, or the runtime (boto3)."""
    root = bundles[name]
    available = {p.name.split(".")[0] for p in root.iterdir()} | set(sys.stdlib_module_names) | set(RUNTIME_PROVIDED)
    missing: dict[str, set[str]] = {}
    for py in [*(root / "lambdas").rglob("*.py"), *(root / "harvester").rglob("*.py")]:
        tree = ast.parse(py.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                if mod.split(".")[0] not in available:
                    missing.setdefault(mod, set()).add(str(py.relative_to(root)))
    assert not missing, f"imported by the {name} bundle but not in it: {missing}"
