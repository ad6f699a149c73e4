"""Patches that make moto behave like AWS where the harvester relies on it.

See shared/NOTES.md. Each patch is an idempotent ``install_*`` function.
"""

from __future__ import annotations

import functools
import threading

# One process-wide lock for every DynamoDB item write/read in moto (NOTES P6).
_DYNAMODB_LOCK = threading.RLock()
_DYNAMODB_METHODS = (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "transact_write_items",
    "batch_write_item",
)


def install_dynamodb_lock() -> None:
    """P6: moto applies a conditional write without a lock, so two threads can both pass the
    same condition (lost updates, a rate limiter granting more tokens than exist). On AWS these
    writes are atomic. Wrap the backend's item operations in one process-wide lock."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in _DYNAMODB_METHODS:
        original = getattr(DynamoDBBackend, name)
        if getattr(original, "_harvester_locked", False):
            continue

        def make(fn):
            @functools.wraps(fn)
            def locked(self, *args, **kwargs):
                with _DYNAMODB_LOCK:
                    return fn(self, *args, **kwargs)

            locked._harvester_locked = True  # type: ignore[attr-defined]
            return locked

        setattr(DynamoDBBackend, name, make(original))
