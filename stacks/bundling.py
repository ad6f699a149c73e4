"""Lambda bundles built on this machine, without Docker.

Each function's bundle is:

* the wheels of `lambdas/requirements/{name}.txt`, installed by pip for the Lambda runtime's Python and
  architecture (manylinux wheels only, never an sdist built for this machine), minus boto3/botocore/s3transfer
  which the runtime provides;
* the handler's module and every project module (`lambdas.*`, `harvester.*`) it imports, transitively (found
  by reading the imports, so each bundle carries only what its function imports: no `harvester/lake` (pyarrow)
  in the fetch bundle); the laptop-only parts (`harvester/simulator`, `harvester/local`, `harvester/cli/`: they
  import aiohttp and moto) are refused if a handler ever imports them;
* the `sources/` folder (the specs the plan function reads from `HARVESTER_SOURCES_DIR=/var/task/sources`).

Why arm64 (Graviton): the functions are billed by duration and the fetch worker spends most of its time
waiting on a rate-limited vendor, so the 20% lower price per GB-second of arm64 is a straight saving; every
dependency (pydantic-core, PyYAML, wrapt; pyarrow for the lake functions) publishes manylinux aarch64 wheels
for CPython 3.12. `-c arch=x86_64` switches the whole app (functions and wheels) back if ever needed.

The asset hash is computed here from everything that goes into the bundle (requirement list, source files,
target platform), so `cdk synth` re-bundles only when one of them changes.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
import jsii
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

#: never needed at run time and pruned from installed wheels: test suites, C headers, Cython sources
PRUNE = ("pyarrow/tests", "pyarrow/include", "pyarrow/src", "pyarrow/**/*.pyx", "pyarrow/**/*.pxd",
         "numpy/tests", "numpy/*/tests", "numpy/_core/include")

#: project packages whose modules a bundle carries: exactly those the handler imports, transitively
PACKAGES = ("lambdas", "harvester")
#: laptop-only code (aiohttp, moto): a handler that imports it is refused at synth
NEVER_BUNDLED = ("harvester/simulator", "harvester/local", "harvester/cli/")
DATA_DIRS = ("sources",)

_SKIP = {"__pycache__", ".pytest_cache"}


class BundleError(ValueError):
    """A function's bundle cannot be made (missing handler module, laptop-only import, ...)."""


def _module_file(root: Path, dotted: str) -> Path | None:
    parts = dotted.split(".")
    if not parts or parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def import_closure(root: Path, module: str) -> list[Path]:
    """The project files `module` needs: itself, every project module it imports (at top level or inside a
    function, absolute or relative), transitively, and their packages' `__init__.py`. Sorted."""
    if _module_file(root, module) is None:
        raise BundleError(f"handler module {module!r} not found under {root}")
    seen: dict[Path, str] = {}
    todo = [module]
    while todo:
        mod = todo.pop()
        path = _module_file(root, mod)
        if path is None or path in seen:
            continue
        seen[path] = mod
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package[: len(package) - (node.level - 1)]
                    base = ".".join([*base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                todo.append(base)
                todo += [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import submodule`
    return sorted(seen)


def _data_files(root: Path) -> list[tuple[Path, str]]:
    files = []
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
    #: the handler's module (`lambdas.plan`); the bundle carries it and what it imports from the project
    module: str = ""
    architecture: str = "arm64"
    root: Path = ROOT

    def __post_init__(self) -> None:
        if self.architecture not in PLATFORMS:
            raise ValueError(f"architecture must be one of {sorted(PLATFORMS)}, got {self.architecture!r}")
        if not self.requirements.is_file():
            raise FileNotFoundError(f"requirements of function {self.name!r} not found: {self.requirements}")

    @property
    def handler_module(self) -> str:
        return self.module or f"lambdas.{self.name}"

    def files(self) -> list[tuple[Path, str]]:
        """(source file, path inside the bundle) of every file copied besides the wheels, sorted."""
        code = [(p, p.relative_to(self.root).as_posix()) for p in import_closure(self.root, self.handler_module)]
        banned = [rel for _, rel in code if rel.startswith(NEVER_BUNDLED)]
        if banned:
            raise BundleError(
                f"function {self.name!r}: {self.handler_module} imports laptop-only code {banned} "
                "(it needs aiohttp/moto, which Lambda bundles do not carry)"
            )
        return code + _data_files(self.root)

    def pip_command(self, target: str | Path) -> list[str]:
        cmd = [
            sys.executable, "-m", "pip", "install",
            "--quiet", "--disable-pip-version-check", "--no-warn-conflicts", "--no-compile",
            "--requirement", str(self.requirements),
            "--target", str(target),
            "--implementation", "cp",
            "--python-version", PYTHON_VERSION,
            "--only-binary=:all:",
        ]
        for platform in PLATFORMS[self.architecture]:
            cmd += ["--platform", platform]
        return cmd

    def asset_hash(self) -> str:
        h = hashlib.sha256()
        h.update(f"python{PYTHON_VERSION}|{self.architecture}|{RUNTIME_PROVIDED}|{PRUNE}\n".encode())
        h.update(self.requirements.read_bytes())
        for path, rel in self.files():
            h.update(f"\n{rel}\n".encode())
            h.update(path.read_bytes())
        return h.hexdigest()

    def install_wheels(self, output_dir: str | Path) -> Path:
        """pip-install the requirement list's wheels for Lambda into `output_dir`, minus what the runtime has."""
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
        for pattern in PRUNE:
            for path in list(out.glob(pattern)):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return out

    def copy_code(self, output_dir: str | Path) -> Path:
        out = Path(output_dir)
        for path, rel in self.files():
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        return out

    def build(self, output_dir: str | Path) -> Path:
        """Install the wheels and copy the project's code into `output_dir` (created if missing)."""
        return self.copy_code(self.install_wheels(output_dir))

    def wheels_key(self) -> str:
        """What the installed wheels depend on: the requirement list, the platform, the Python version."""
        h = hashlib.sha256(f"python{PYTHON_VERSION}|{self.architecture}|{RUNTIME_PROVIDED}|{PRUNE}\n".encode())
        lines = (line.split("#", 1)[0].strip() for line in self.requirements.read_text().splitlines())
        h.update("\n".join(sorted(line for line in lines if line)).encode())  # comments and order do not matter
        return f"wheels-{self.architecture}-{h.hexdigest()[:16]}"


#: installed wheels by requirement list (gitignored `build/`): the CDK CLI re-stages assets on every synth,
#: and functions that share a list (convert and query: pyarrow) share one pip run. A list resolves again
#: only when it changes; HARVESTER_BUNDLE_CACHE=off always runs pip.
CACHE_DIR = ROOT / "build" / "lambda-bundles"


def cached_build(spec: BundleSpec, output_dir: str | Path) -> Path:
    """The wheels from the cache (pip runs on a miss), then the function's code, into `output_dir`."""
    out = Path(output_dir)
    if os.environ.get("HARVESTER_BUNDLE_CACHE", "").lower() in ("off", "0", "false", "no"):
        return spec.build(out)
    cached = CACHE_DIR / spec.wheels_key()
    if not cached.is_dir():
        tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        spec.install_wheels(tmp)
        try:
            os.replace(tmp, cached)
        except OSError:  # another process finished the same list first
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cached, out, dirs_exist_ok=True)
    return spec.copy_code(out)


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
