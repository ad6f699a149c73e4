"""Dotted paths into JSON: `data.items`, `$.data`, `$` (the whole value), `meta.links.0.href` (integers index
lists, negative ones from the end). The one walker behind a spec's `records`, `total_path`, `cursor_path`,
`next_url_path`, `error_path` (harvester/paginate.py, harvester/client.py) and the fields of a URL template
(harvester/template.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_INDEX = re.compile(r"-?\d+")


def get(value: Any, path: str | None) -> Any:
    """The value at `path` in `value`; KeyError(path) when a step is missing."""
    if path in ("$", "", None):
        return value
    found = value
    for part in path.removeprefix("$.").split("."):
        if isinstance(found, Mapping) and part in found:
            found = found[part]
        elif isinstance(found, list) and _INDEX.fullmatch(part) and -len(found) <= int(part) < len(found):
            found = found[int(part)]
        else:
            raise KeyError(path)
    return found


def get_optional(value: Any, path: str | None) -> Any:
    """`get`, or None when there is no path or nothing at it."""
    if not path:
        return None
    try:
        return get(value, path)
    except KeyError:
        return None
