"""URL templates: `/troops/{troop.id}/warriors`, `?troopId={troop.id}`.

`{level.field}` is a field of an ancestor record (by level name or alias); `{level.a.b}` reaches into a nested
object; `{{` and `}}` are literal braces. Values are URL-quoted when they go into a path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from harvester import dotted

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_REF = re.compile(r"^([a-z][a-z0-9_]*)\.([A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*)$")


class TemplateError(ValueError):
    """A template is malformed, or a record lacks a field the template needs."""


def _refs(text: str) -> list[tuple[str, str, re.Match]]:
    out = []
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok in ("{{", "}}"):
            continue
        if m.group(1) is None:
            raise TemplateError(f"unbalanced {tok!r} in {text!r} (write {tok * 2} for a literal brace)")
        ref = _REF.match(m.group(1).strip())
        if not ref:
            raise TemplateError(f"{{{m.group(1)}}} in {text!r} is not of the form {{level.field}}")
        out.append((ref.group(1), ref.group(2), m))
    return out


def references(text: str) -> list[tuple[str, str]]:
    """The (level, field) pairs a template uses, in order."""
    return [(lvl, field) for lvl, field, _ in _refs(text)]


def lookup(record: Mapping[str, Any], field: str) -> Any:
    """A record's field by its dotted path (harvester/dotted.py); KeyError when it has none."""
    if field in record:  # a lineage context keeps a nested field flat, under its dotted name (`meta.slug`)
        return record[field]
    return dotted.get(record, field)


def render(text: str, context: Mapping[str, Mapping[str, Any]], *, for_path: bool) -> str:
    """Fill a template from `context` ({level name or alias: record fields})."""
    refs = {m.start(): (level, field) for level, field, m in _refs(text)}  # parses and checks the template

    def fill(m: re.Match) -> str:
        if m.start() not in refs:  # `{{` or `}}`
            return m.group(0)[0]
        level, field = refs[m.start()]
        if level not in context:
            raise TemplateError(f"{text!r} needs {{{level}.{field}}} but no ancestor {level!r} is known")
        try:
            value = lookup(context[level], field)
        except KeyError:
            raise TemplateError(
                f"{text!r} needs {{{level}.{field}}} but the {level} record has no field {field!r}"
            ) from None
        if value is None:
            raise TemplateError(f"{text!r} needs {{{level}.{field}}} but it is null in the {level} record")
        value = str(value).lower() if isinstance(value, bool) else str(value)
        return quote(value, safe="") if for_path else value

    return _TOKEN.sub(fill, text)
