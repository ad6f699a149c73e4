"""The sources the stack deploys: every spec in `sources/` (its name, secret and schedule).

Read straight from the YAML so that synth depends on nothing but PyYAML and never on environment variables a
spec's `base_url` may reference; the full validation is the plan function's job (and the unit tests').
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from stacks.bundling import ROOT

SOURCES_DIR = ROOT / "sources"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


class SourceConfigError(ValueError):
    """A spec in sources/ cannot be deployed (the message names the file and the field)."""


@dataclass(frozen=True)
class Schedule:
    cron: str  # EventBridge Scheduler cron body, e.g. "0 3 * * ? *" (written `cron(...)` or bare in the spec)
    timezone: str = "UTC"
    enabled: bool = True

    @property
    def expression(self) -> str:
        body = self.cron.strip()
        return body if body.startswith("cron(") else f"cron({body})"


@dataclass(frozen=True)
class SourceInfo:
    name: str
    path: Path
    #: the secret the spec names (`auth.secret`), or None: the stack creates one named from its own name and id
    secret_name: str | None
    schedule: Schedule | None
    #: level names in order (the `level` dimension of the fetch metrics)
    levels: tuple[str, ...] = ()
    #: the vendor's limit in requests per second, if the spec sets one (drawn on the dashboard)
    requests_per_second: float | None = None

    @property
    def default_secret(self) -> bool:
        """True if the secret is the one the stack creates (`{stack}-{id}/{name}`), not an existing one."""
        return self.secret_name is None


def _schedule(raw: object, path: Path) -> Schedule | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("cron"), str) or not raw["cron"].strip():
        raise SourceConfigError(f"{path}: schedule: expected a mapping with a cron expression (cron: '0 3 * * ? *')")
    timezone = raw.get("timezone") or "UTC"
    enabled = raw.get("enabled", True)
    if not isinstance(timezone, str) or not isinstance(enabled, bool):
        raise SourceConfigError(f"{path}: schedule: timezone must be a string and enabled true or false")
    return Schedule(cron=raw["cron"], timezone=timezone, enabled=enabled)


def read_source(path: Path) -> SourceInfo:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SourceConfigError(f"{path}: cannot read the spec: {exc}") from None
    if not isinstance(data, dict):
        raise SourceConfigError(f"{path}: expected a mapping at the top level")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SourceConfigError(f"{path}: name: expected lowercase letters, digits and '-' (got {name!r})")
    if path.stem != name:
        raise SourceConfigError(f"{path}: name is {name!r} but the file is named {path.name}; they must agree")
    auth = data.get("auth") if isinstance(data.get("auth"), dict) else {}
    secret = auth.get("secret") or None
    levels = data.get("levels") if isinstance(data.get("levels"), list) else []
    level_names = tuple(str(lv["name"]) for lv in levels if isinstance(lv, dict) and lv.get("name"))
    rate = data.get("rate_limit") if isinstance(data.get("rate_limit"), dict) else {}
    rps = rate.get("requests_per_second")
    return SourceInfo(
        name=name,
        path=path,
        secret_name=str(secret) if secret else None,
        schedule=_schedule(data.get("schedule"), path),
        levels=level_names,
        requests_per_second=float(rps) if isinstance(rps, (int, float)) and not isinstance(rps, bool) else None,
    )


def discover(folder: Path = SOURCES_DIR) -> list[SourceInfo]:
    paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
    infos = [read_source(p) for p in paths]
    seen: dict[str, Path] = {}
    for info in infos:
        if info.name in seen:
            raise SourceConfigError(f"{info.path}: source {info.name!r} is also defined in {seen[info.name]}")
        seen[info.name] = info.path
    return infos
