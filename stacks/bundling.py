"""Lambda bundles built on this machine, without Docker.

Each function's bundle is:

* the wheels of `lambdas/requirements/{name}.txt`, installed by pip for the Lambda runtime's Python and
  architecture (manylinux wheels only, never an sdist built for this machine), minus boto3/botocore/s3transfer
  which the runtime provides;
* the `lambdas/` package (only `.py` files);
* the `harvester/` package without the parts that only the laptop needs (`vendor/`, `local/`, `cli.py`:
  they import aiohttp and moto) and, unless the function asks for it, without `lake/` (pyarrow);
* the `sources/` folder (the specs the plan function reads from `HARVESTER_SOURCES_DIR=/var/task/sources`).

Why arm64 (Graviton): the functions are billed by duration and the fetch worker spends most of its time
waiting on a rate-limited vendor, so the 20% lower price per GB-second of arm64 is a straight saving; every
dependency (pydantic-core, PyYAML, wrapt; pyarrow for the lake functions) publishes manylinux aarch64 wheels
for CPython 3.12. `-c arch=x86_64` switches the whole app (functions and wheels) back if ever needed.

The asset hash is computed here from everything that goes into the bundle (requirement list, source files,
target platform), so `cdk synth` re-bundles only when one of them changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsii
import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS_DIR = ROOT / "lambdas" / "requirements"

PYTHON_VERSION = "3.12"
RUNTIME = lambda_.Runtime.PYTHON_3_12

#: pip platform tags per Lambda architecture (pyarrow 26 ships only manylinux_2_28 wheels, hence both)
PLATFORMS = {
    "arm64": ("manylinux2014_aarch64", "manylinux_2_28_aarch64"),
    "x86_64": ("manylinux2014_x86_64", "manylinux_2_28_x86_64"),
}
ARCHITECTURES = {"arm64": lambda_.Architecture.ARM_64, "x86_64": lambda_.Architecture.X86_64}

#: provided by the Lambda runtime; bundling them only adds ~30 MB (and a second botocore to shadow the first)
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")

#: packages copied into every bundle, and what is left out of each (top-level names inside the package)
PACKAGES = ("lambdas", "harvester")
ALWAYS_EXCLUDED = {"lambdas": frozenset({"requirements"}), "harvester": frozenset({"vendor", "local", "cli.py"})}
#: left out unless a function includes it: the Parquet lake needs pyarrow (~170 MB), only convert/query carry it
OPTIONAL_PARTS = frozenset({"harvester/lake"})
DATA_DIRS = ("sources",)

_SKIP = {"__pycache__", ".pytest_cache"}


def _package_files(root: Path = ROOT, include: frozenset[str] = frozenset()) -> list[tuple[Path, str]]:
    """(source file, path inside the bundle) of every file copied besides the wheels, sorted."""
    files: list[tuple[Path, str]] = []
    for folder in PACKAGES:
        base = root / folder
        if not base.is_dir():
            continue
        excluded = ALWAYS_EXCLUDED.get(folder, frozenset()) | {
            part.split("/", 1)[1] for part in OPTIONAL_PARTS - include if part.startswith(f"{folder}/")
        }
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if rel.parts[0] in excluded or _SKIP.intersection(rel.parts):
                continue
            files.append((path, f"{folder}/{rel.as_posix()}"))
    for folder in DATA_DIRS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = path.relative_to(base)
            if _SKIP.intersection(rel.parts) or path.name.startswith("."):
                continue
            files.append((path, f"{folder}/{rel.as_posix()}"))
    return files


@dataclass(frozen=True)
class BundleSpec:
    """What one function's bundle is made of."""

    name: str
    requirements: Path
    architecture: str = "arm64"
    root: Path = ROOT
    #: optional parts of the project this function needs (see OPTIONAL_PARTS), e.g. {"harvester/lake"}
    include: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.include) - OPTIONAL_PARTS
        if unknown:
            raise ValueError(f"function {self.name!r}: unknown optional parts {sorted(unknown)} (known: {sorted(OPTIONAL_PARTS)})")
        if self.architecture not in PLATFORMS:
            raise ValueError(f"architecture must be one of {sorted(PLATFORMS)}, got {self.architecture!r}")
        if not self.requirements.is_file():
            raise FileNotFoundError(f"requirements of function {self.name!r} not found: {self.requirements}")

    def files(self) -> list[tuple[Path, str]]:
        return _package_files(self.root, frozenset(self.include))

    def pip_command(self, target: str | Path) -> list[str]:
        cmd = [
            sys.executable, "-m", "pip", "install",
            "--quiet", "--disable-pip-version-check", "--no-warn-conflicts", "--no-compile",
            "--requirement", str(self.requirements),
            "--target", str(target),
            "--implementation", "cp",
            "--python-version", PYTHON_VERSION,
            "--only-binary=:all:",
        ]  # fmt: skip
        for platform in PLATFORMS[self.architecture]:
            cmd += ["--platform", platform]
        return cmd

    def asset_hash(self) -> str:
        h = hashlib.sha256()
        h.update(f"python{PYTHON_VERSION}|{self.architecture}|{'/'.join(RUNTIME_PROVIDED)}|{sorted(self.include)}\n".encode())
        h.update(self.requirements.read_bytes())
        for path, rel in self.files():
            h.update(f"\n{rel}\n".encode())
            h.update(path.read_bytes())
        return h.hexdigest()

    def build(self, output_dir: str | Path) -> Path:
        """Install the wheels and copy the project's code into `output_dir` (created if missing)."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PIP_NO_INPUT": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(self.pip_command(out), capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(
                f"pip could not install the wheels of function {self.name!r} for Lambda "
                f"(python {PYTHON_VERSION}, {self.architecture}):\n{proc.stdout}{proc.stderr}"
            )
        for entry in list(out.iterdir()):
            stem = entry.name.split("-")[0].lower()
            if stem in RUNTIME_PROVIDED or entry.name == "bin":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        for path, rel in self.files():
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        return out


#: finished bundles by content hash (gitignored `build/`): the CDK CLI re-stages assets on every synth, so
#: without this every `cdk synth` would run pip again. Set HARVESTER_BUNDLE_CACHE=off to always rebuild.
CACHE_DIR = ROOT / "build" / "lambda-bundles"


def cached_build(spec: BundleSpec, output_dir: str | Path) -> Path:
    """`spec.build` through the cache, then a copy into `output_dir`."""
    out = Path(output_dir)
    if os.environ.get("HARVESTER_BUNDLE_CACHE", "").lower() in ("off", "0", "false", "no"):
        return spec.build(out)
    cached = CACHE_DIR / f"{spec.name}-{spec.architecture}-{spec.asset_hash()[:16]}"
    if not cached.is_dir():
        tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        spec.build(tmp)
        for stale in CACHE_DIR.glob(f"{spec.name}-{spec.architecture}-*"):
            if stale.is_dir() and ".tmp-" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)  # keep one bundle per function and architecture
        os.replace(tmp, cached)
    shutil.copytree(cached, out, dirs_exist_ok=True)
    return out


@jsii.implements(cdk.ILocalBundling)
class LocalPipBundling:
    """CDK's hook for bundling without Docker: always bundles locally (there is no Docker to fall back to)."""

    def __init__(self, spec: BundleSpec) -> None:
        self.spec = spec

    def try_bundle(self, output_dir: str, *_options, **_kw) -> bool:  # jsii passes the BundlingOptions positionally
        cached_build(self.spec, output_dir)
        return True


def lambda_code(spec: BundleSpec) -> lambda_.Code:
    """`Code.from_asset` bundled by `LocalPipBundling`, hashed by what goes into the bundle."""
    return lambda_.Code.from_asset(
        str(spec.root / "lambdas"),
        asset_hash=spec.asset_hash(),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        bundling=cdk.BundlingOptions(
            # never pulled: local bundling always succeeds or raises; kept because CDK requires an image
            image=RUNTIME.bundling_image,
            local=LocalPipBundling(spec),
        ),
    )
