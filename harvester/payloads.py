"""The workflow's own payloads as pydantic models: what the states pass each other (statemachines/harvest.asl.json)
and what a Map item is. Validated where a handler receives them, dumped back to the same JSON (the definition
reads these keys: `$.level.manifest_key`, `$.level.max_concurrency`, `$.run.pk`, `$.batch.sk`, ...).

Every payload stays far below Step Functions' 256 KiB (keys, not data: docs/architecture.md, "State passed between
states"); tests/integration hold the real definition to that limit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LevelState(BaseModel):
    """`$.level`: the level the loop is on (Plan run writes level 0, Advance level the next one)."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    name: str
    count: int = Field(ge=1)  # levels in the spec
    manifest_key: str  # the Distributed Map's ItemReader key
    batches: int = Field(ge=0)  # Map items in the manifest
    parents: int = Field(ge=0)
    max_concurrency: int = Field(ge=1)  # the Map's MaxConcurrencyPath
    done: bool = False


class RunState(BaseModel):
    """The state between the harvest's states: `run` (the run's keys, passed through), `level`, `totals` and, after
    Advance level, `last_level`. Keys the workflow adds on its way are kept as they are."""

    model_config = ConfigDict(extra="allow")

    run: dict[str, Any]
    level: LevelState
    totals: dict[str, Any] = Field(default_factory=dict)


class MapItem(BaseModel):
    """One line of a level's manifest: a batch of parents (each the lineage its URL templates need), its ledger
    sort key, and the slice of the run's window when the window is cut in slices."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(min_length=1)
    sk: str | None = None
    parents: list[dict[str, Any]]
    window: dict[str, Any] | None = None


class FetchEvent(BaseModel):
    """The Fetch batch task's payload: the Harvest level Map's ItemSelector (`batch`, `run`, `level`, `workers`)."""

    model_config = ConfigDict(extra="forbid")

    run: dict[str, Any]
    level: int = Field(ge=0)
    batch: MapItem
    workers: int | None = None
