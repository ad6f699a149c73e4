"""The real Lambda bundles, built as `cdk synth` builds them (pip, manylinux wheels for the Lambda runtime):
size under Lambda's 250 MB unzipped limit, only wheels and shared objects of the target platform, only what the
function's code imports, and the project code the handler needs.

Needs PyPI (pip downloads the wheels; the lake's pyarrow is ~45 MB); takes a minute or two on a cold cache.
Deselect with `-m "not packaging"`.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from harvester.functions import FUNCTION_CATALOG
from stacks.bundling import (
    PLATFORMS,
    PYTHON_VERSION,
    REQUIREMENTS_DIR,
    ROOT,
    RUNTIME_PROVIDED,
    BundleSpec,
    cached_build,
)
from stacks.config import HarvesterConfig

pytestmark = [pytest.mark.infrastructure, pytest.mark.packaging]

LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
#: ELF e_machine of each Lambda architecture
ELF_MACHINE = {"arm64": 183, "x86_64": 62}
#: every function of the catalog whose handler module exists (convert/query only once the lake is there)
FUNCTIONS = tuple(n for n, f in FUNCTION_CATALOG.items()
                  if (ROOT / (f.handler.rsplit(".", 1)[0].replace(".", "/") + ".py")).is_file())
HARVEST_FUNCTIONS = ("plan", "fetch", "advance")
#: never in any bundle: the laptop's engine and vendor, the runtime's own SDK; pyarrow only in the lake's
FORBIDDEN = {"moto", "aiohttp", "duckdb", "matplotlib", "playwright", *RUNTIME_PROVIDED}
PY_TAG = "cp" + PYTHON_VERSION.replace(".", "")
ARCH = HarvesterConfig().arch  # what `cdk deploy` ships by default


def spec_of(name: str) -> BundleSpec:
    f = FUNCTION_CATALOG[name]
    return BundleSpec(name, REQUIREMENTS_DIR / f.requirements, module=f.handler.rsplit(".", 1)[0], architecture=ARCH)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Built as `cdk synth` builds them (pip's output cached in build/ per requirement list;
    HARVESTER_BUNDLE_CACHE=off makes this test run pip afresh)."""
    return {name: cached_build(spec_of(name), tmp_path_factory.mktemp(f"bundle-{name}")) for name in FUNCTIONS}


def test_the_harvest_functions_are_all_there():
    assert set(HARVEST_FUNCTIONS) <= set(FUNCTIONS)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", FUNCTIONS)
def test_size_under_the_lambda_limit(bundles, name):
    """250 MB unzipped is Lambda's limit for code uploaded from S3, as CDK does (the 50 MB zipped limit is for
    direct uploads only and does not apply)."""
    size = _size(bundles[name])
    assert size < LAMBDA_UNZIPPED_LIMIT, f"{name}: {size / 2**20:.1f} MB unzipped"
    if name in HARVEST_FUNCTIONS:
        assert size < 60 * 2**20, f"{name}: {size / 2**20:.1f} MB; did pyarrow or botocore slip in?"
    else:
        assert size < 0.9 * LAMBDA_UNZIPPED_LIMIT, f"{name}: {size / 2**20:.1f} MB leaves too little headroom"


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
            assert py in (PY_TAG, "cp32", "cp37", "cp38", "cp39"), f"{wheel.parent.name}: {tag}"
            assert abi == PY_TAG or abi == "abi3", f"{wheel.parent.name}: {tag}"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_shared_objects_are_for_the_lambda_cpu_and_python(bundles, name):
    for so in (p for p in bundles[name].rglob("*") if re.search(r"\.so(\.\d+)*$", p.name)):
        header = so.read_bytes()[:20]
        assert header[:4] == b"\x7fELF", so
        machine = int.from_bytes(header[18:20], "little")
        assert machine == ELF_MACHINE[ARCH], f"{so.relative_to(bundles[name])}: ELF machine {machine}"
        if "cpython-" in so.name:
            assert f"cpython-{PY_TAG[2:]}" in so.name, so.name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_project_code_the_handler_needs_and_nothing_else(bundles, name):
    root = bundles[name]
    assert (root / (FUNCTION_CATALOG[name].handler.rsplit(".", 1)[0].replace(".", "/") + ".py")).is_file()
    assert (root / "lambdas" / "__init__.py").is_file() and (root / "harvester" / "__init__.py").is_file()
    assert sorted(p.name for p in (root / "sources").glob("*.y*ml")) == sorted(
        p.name for p in (REQUIREMENTS_DIR.parent.parent / "sources").glob("*.y*ml"))
    absent = ["harvester/simulator", "harvester/local", "harvester/cli", "lambdas/requirements"]
    if name in HARVEST_FUNCTIONS:
        absent.append("harvester/lake")
    for path in absent:
        assert not (root / path).exists(), path
    top = {p.name.split(".")[0].split("-")[0].lower() for p in root.iterdir()}
    forbidden = FORBIDDEN | ({"pyarrow", "numpy"} if name in HARVEST_FUNCTIONS else set())
    assert not (top & forbidden), top & forbidden
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
