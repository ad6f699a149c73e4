"""The sources the stack deploys: every spec in `sources/`, parsed by the one parser (`harvester/spec.py`).

A spec that `harvest run` would refuse fails `cdk synth` with the same message (the file, the field, the
problem), schedule included. The spec's `base_url` may reference environment variables (`${VAR:-default}`);
the plan function resolves them with its own environment, so a variable without a default fails here as it
would fail there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harvester.spec import Schedule, SourceSpec, SpecError, load_spec
from stacks.bundling import ROOT

SOURCES_DIR = ROOT / "sources"


class SourceConfigError(SpecError):
    """The specs in sources/ cannot be deployed together (the message names the file)."""


@dataclass(frozen=True)
class SourceInfo:
    """A deployed source: its spec and the file it came from."""

    spec: SourceSpec
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def secret_name(self) -> str | None:
        """The secret the spec names (`auth.secret`), or None: the stack creates one named from its own name and id."""
        return self.spec.auth.secret if self.spec.auth and self.spec.auth.secret else None

    @property
    def default_secret(self) -> bool:
        """True if the secret is the one the stack creates (`{stack}-{id}/{name}`), not an existing one."""
        return self.secret_name is None

    @property
    def schedule(self) -> Schedule | None:
        return self.spec.schedule

    @property
    def levels(self) -> tuple[str, ...]:
        """Level names in order (the `level` dimension of the fetch metrics)."""
        return tuple(level.name for level in self.spec.levels)

    @property
    def requests_per_second(self) -> float | None:
        """The vendor's limit, if the spec sets one (drawn on the dashboard)."""
        return self.spec.rate_limit.requests_per_second if self.spec.rate_limit else None


def read_source(path: Path) -> SourceInfo:
    spec = load_spec(path)
    if path.stem != spec.name:
        raise SourceConfigError(f"{path}: name is {spec.name!r} but the file is named {path.name}; they must agree")
    return SourceInfo(spec=spec, path=path)


def discover(folder: Path = SOURCES_DIR) -> list[SourceInfo]:
    paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
    infos = [read_source(p) for p in paths]
    seen: dict[str, Path] = {}
    for info in infos:
        if info.name in seen:
            raise SourceConfigError(f"{info.path}: source {info.name!r} is also defined in {seen[info.name]}")
        seen[info.name] = info.path
    return infos
