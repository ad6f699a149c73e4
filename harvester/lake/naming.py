"""Column naming of the lake (no pyarrow: the query model and the CLI use it too).

* top-level record fields keep their name verbatim (``ts``, ``value``, ``_run_id``, ``_fetched_at``);
* nested objects are flattened, the path joined with a double underscore ``__``:
  ``_lineage.troops`` -> ``_lineage__troops``, ``location.lat`` -> ``location__lat``;
* lists stay list columns; an empty object adds no column.

Spec ``types`` may name a nested field either way (``location.lat`` or ``location__lat``).
"""

from __future__ import annotations

SEP = "__"
LINEAGE = "_lineage"
META_STRING_FIELDS = ("_source", "_run_id", "_level", "_fetched_at")
FETCHED_AT = "_fetched_at"
#: a keyed level's record key as text, as its children's `_lineage` holds it (the ancestor join's right side)
KEY = "_key"


def column_name(path: str) -> str:
    """Flattened column name of a spec field path (``a.b`` -> ``a__b``)."""
    return path.replace(".", SEP)


def lineage_column(level: str) -> str:
    """Column holding the key of the ancestor at ``level`` (``warriors`` -> ``_lineage__warriors``)."""
    return f"{LINEAGE}{SEP}{level}"
