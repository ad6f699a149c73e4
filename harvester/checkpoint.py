"""A batch's checkpoint (`runs/{source}/{run_id}/checkpoints/{level}/{batch_id}.json`): which parents are done, the
parts written, the lists cut by the deadline and where they go on, calls failed per attempt, and the counts so far.
Written after every part by harvester/worker.py and read back by the next attempt (docs/architecture.md, "A fetch
invocation and the Lambda deadline")."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Checkpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    done: list[str] = Field(default_factory=list)  # parent keys whose lists are complete
    parts: int = 0  # raw parts written; the next one is numbered `parts`
    records: int = 0
    children: int = 0  # next-level parents written
    bytes: int = 0
    calls_by_attempt: dict[str, int] = Field(default_factory=dict)
    pages: int = 0
    throttled: int = 0
    retries: int = 0
    invocations: int = 0
    token_wait_seconds: float = 0.0
    limiter_writes: int = 0
    tokens_expired: int = 0
    cpu_seconds: float = 0.0  # the worker process's CPU on this batch, all invocations
    bad_records: int = 0
    duplicates: int = 0
    #: parent key -> the failed call (url, status, reason, excerpt) and the attempt it failed in
    failed: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: parent key -> a list cut short: {"next": page request, "fetched": records stored, "parts", "recent_keys"}
    partial: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: the cursor variant of a window: parent key -> the largest cursor field seen
    cursors: dict[str, Any] | None = None
    #: sends, 429s and retries per second (harvester/timeline.py): the run report's raw data
    timeline: dict[str, Any] | None = None

    @classmethod
    def load(cls, stored: dict[str, Any] | None) -> Checkpoint:
        return cls.model_validate(stored or {})

    def dump(self) -> dict[str, Any]:
        """The JSON written to S3 (`cursors` only for a cursor window)."""
        return self.model_dump(exclude_none=True)
