"""The DynamoDB run ledger (single table). Item layout: docs/architecture.md.

The state machine writes run start and finish itself (direct DynamoDB integration); the workers write batch
items and failed calls; `advance` writes the per-level counts onto the run item.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Attr, Key

#: the table's key schema, shared by the CDK stack and the local engine
PARTITION_KEY = "pk"
SORT_KEY = "sk"
GSI_NAME = "gsi1"
GSI_PARTITION_KEY = "gsi1pk"
GSI_SORT_KEY = "gsi1sk"
TTL_ATTRIBUTE = "expires_at"
BATCH_PAGE = 500  # batch items per query page when a whole level is added up (bounded memory)


def run_pk(source: str, run_id: str) -> str:
    return f"RUN#{source}#{run_id}"


def window_pk(source: str) -> str:
    """The source's window bookmark item: pk `WINDOW#{source}`, sk `BOOKMARK`."""
    return f"WINDOW#{source}"


BOOKMARK_SK = "BOOKMARK"
CLAIM_ATTEMPTS = 8


def batch_sk(level: int, batch_id: str) -> str:
    return f"BATCH#{level:02d}#{batch_id}"


def expires_at(ttl_days: int, now: float | None = None) -> int:
    return int((now or time.time()) + ttl_days * 86400)


def create_table_kwargs(name: str) -> dict[str, Any]:
    """`create_table` arguments for the local engine and tests; the CDK stack declares the same schema."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": a, "AttributeType": "S"}
            for a in (PARTITION_KEY, SORT_KEY, GSI_PARTITION_KEY, GSI_SORT_KEY)
        ],
        "KeySchema": [
            {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": GSI_NAME,
                "KeySchema": [
                    {"AttributeName": GSI_PARTITION_KEY, "KeyType": "HASH"},
                    {"AttributeName": GSI_SORT_KEY, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal: make them JSON-friendly ints/floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class Ledger:
    def __init__(self, table):
        """`table` is a boto3 DynamoDB Table resource."""
        self.table = table

    # --- runs -------------------------------------------------------------------------------------------------
    def get_run(self, source: str, run_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: "RUN"}).get("Item")
        return _plain(item) if item else None

    def list_runs(self, source: str, limit: int = 20) -> list[dict[str, Any]]:
        resp = self.table.query(
            IndexName=GSI_NAME,
            KeyConditionExpression=Key(GSI_PARTITION_KEY).eq(f"SOURCE#{source}"),
            ScanIndexForward=False,
            Limit=limit,
        )
        return [_plain(i) for i in resp.get("Items", [])]

    def sources(self) -> list[str]:
        """Every source with a run, from the GSI (it holds run items only, so the scan reads no batch items)."""
        found: set[str] = set()
        kwargs: dict[str, Any] = {"IndexName": GSI_NAME, "ProjectionExpression": GSI_PARTITION_KEY}
        while True:
            resp = self.table.scan(**kwargs)
            found.update(i[GSI_PARTITION_KEY].removeprefix("SOURCE#") for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return sorted(found)
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def find_runs(self, run_id: str) -> list[dict[str, Any]]:
        """The run items with this run id, whatever their source (a GSI scan: run items only)."""
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"IndexName": GSI_NAME, "FilterExpression": Attr("run_id").eq(run_id)}
        while True:
            resp = self.table.scan(**kwargs)
            found.extend(_plain(i) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return found
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def record_level(self, source: str, run_id: str, level_name: str, counts: dict[str, int], totals: dict[str, int]) -> None:
        self.table.update_item(
            Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: "RUN"},
            UpdateExpression="SET #levels.#name = :counts, totals = :totals",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#levels": "levels", "#name": level_name},
            ExpressionAttributeValues={":counts": _dynamo(counts), ":totals": _dynamo(totals)},  # floats: token waits
        )

    def record_lake(self, source: str, run_id: str, lake: dict[str, Any]) -> None:
        """The convert stage's counts on the run item: `lake = {"levels": {level: {files, rows, bytes, partitions,
        bad_values}}, "groups": n, "converted_at": iso}` (replaced by each attempt: it counts the whole run)."""
        self.table.update_item(
            Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: "RUN"},
            UpdateExpression="SET lake = :lake",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":lake": _dynamo(lake)},
        )

    def record_attempt_calls(self, source: str, run_id: str, attempt: int, calls: int) -> None:
        self.table.update_item(
            Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: "RUN"},
            UpdateExpression="SET attempt_calls.#a = :c",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#a": str(attempt)},
            ExpressionAttributeValues={":c": calls},
        )

    def meter(self, source: str, run_id: str) -> dict[str, Any] | None:
        """What the run's Lambda invocations counted (harvester/metering.py), or None."""
        item = self.table.get_item(Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: "METER"}).get("Item")
        return {k: v for k, v in _plain(item).items() if k not in (PARTITION_KEY, SORT_KEY)} if item else None

    def record_cost(self, source: str, run_id: str, cost: dict[str, Any]) -> None:
        """The run's cost (harvester/cost.py `breakdown`) on the run item."""
        self.table.update_item(
            Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: "RUN"},
            UpdateExpression="SET cost = :cost",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":cost": _dynamo(cost)},
        )

    # --- the window bookmark --------------------------------------------------------------------------------------
    def get_bookmark(self, source: str) -> dict[str, Any] | None:
        """`end` (the end of the latest daily window that completed, written by the workflow's Commit window
        state), `claimed_end` (the end of the latest window handed out to a daily run) and who did each."""
        item = self.table.get_item(Key={PARTITION_KEY: window_pk(source), SORT_KEY: BOOKMARK_SK},
                                   ConsistentRead=True).get("Item")
        return _plain(item) if item else None

    def claim_window(self, source: str, run_id: str, take) -> dict[str, Any]:
        """Hand the next daily window to `run_id`: `take(claimed_end or None)` computes it from the end of the
        last window handed out, and a conditional update moves `claimed_end` on only if no other run moved it
        since it was read (optimistic concurrency: two runs of a source never take overlapping new windows; the
        loser reads again and takes what is left). Returns the window."""
        from botocore.exceptions import ClientError

        for _ in range(CLAIM_ATTEMPTS):
            seen = (self.get_bookmark(source) or {}).get("claimed_end")
            window = take(seen)
            condition = "attribute_not_exists(claimed_end)" if seen is None else "claimed_end = :seen"
            try:
                self.table.update_item(
                    Key={PARTITION_KEY: window_pk(source), SORT_KEY: BOOKMARK_SK},
                    UpdateExpression="SET claimed_end = :end, claimed_by = :run, claimed_start = :start",
                    ConditionExpression=condition,
                    ExpressionAttributeValues={":end": window["end"], ":run": run_id, ":start": window["new_start"],
                                               **({":seen": seen} if seen is not None else {})},
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                continue
            return window
        raise RuntimeError(f"could not take a window for source {source!r}: {CLAIM_ATTEMPTS} runs took one at once")

    # --- batches ----------------------------------------------------------------------------------------------
    def get_batch(self, source: str, run_id: str, level: int, batch_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(
            Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: batch_sk(level, batch_id)}, ConsistentRead=True
        ).get("Item")
        return _plain(item) if item else None

    def put_batch(self, source: str, run_id: str, level: int, batch_id: str, fields: dict[str, Any], ttl: int) -> None:
        item = {
            PARTITION_KEY: run_pk(source, run_id),
            SORT_KEY: batch_sk(level, batch_id),
            "batch_id": batch_id,
            "level": level,
            TTL_ATTRIBUTE: ttl,
            **fields,
        }
        self.table.put_item(Item=_dynamo(item))

    def reopen_batch(self, source: str, run_id: str, level: int, batch_id: str, reason: str) -> None:
        """A finished batch whose output is gone: no longer SUCCEEDED, so a resume fetches it again."""
        self.table.update_item(
            Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: batch_sk(level, batch_id)},
            UpdateExpression="SET #status = :reopened, reopened_because = :why",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":reopened": "REOPENED", ":why": reason[:500]},
        )

    def note_run(self, source: str, run_id: str, fields: dict[str, Any]) -> None:
        """Set a few informative attributes on the run item."""
        item = _dynamo(fields)
        self.table.update_item(
            Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: "RUN"},
            UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in item),
            ExpressionAttributeNames={f"#{k}": k for k in item},
            ExpressionAttributeValues={f":{k}": v for k, v in item.items()},
        )

    def put_progress(self, source: str, run_id: str, level: int, batch_id: str, fields: dict[str, Any], ttl: int) -> bool:
        """A running batch's figures so far (status RUNNING, ``last_attempt`` the run attempt it belongs to), so
        the ledger shows a long batch moving. Never overwrites the end of the same attempt: a progress write that
        arrives after the final one changes nothing; the end of an earlier attempt (a batch a resume retries)
        is overwritten. Returns whether it was written."""
        from botocore.exceptions import ClientError

        item = _dynamo({**fields, "batch_id": batch_id, "level": level, TTL_ATTRIBUTE: ttl})
        try:
            self.table.update_item(
                Key={PARTITION_KEY: run_pk(source, run_id), SORT_KEY: batch_sk(level, batch_id)},
                UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in item),
                ConditionExpression="attribute_not_exists(#status) OR #status = :running OR last_attempt < :last_attempt",
                ExpressionAttributeNames={**{f"#{k}": k for k in item}, "#status": "status"},
                ExpressionAttributeValues={**{f":{k}": v for k, v in item.items()}, ":running": "RUNNING"},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def put_failures(
        self, source: str, run_id: str, level: int, batch_id: str, failures: list[dict[str, Any]], ttl: int
    ) -> None:
        """One item per failed call. Numbered within the batch so a rerun overwrites, never piles up."""
        old = self._query(run_pk(source, run_id), f"FAIL#{level:02d}#{batch_id}#")
        with self.table.batch_writer() as writer:
            for n, failure in enumerate(failures):
                writer.put_item(
                    Item=_dynamo(
                        {
                            PARTITION_KEY: run_pk(source, run_id),
                            SORT_KEY: f"FAIL#{level:02d}#{batch_id}#{n:05d}",
                            "batch_id": batch_id,
                            "level": level,
                            TTL_ATTRIBUTE: ttl,
                            **failure,
                        }
                    )
                )
            for item in old[len(failures) :]:
                writer.delete_item(Key={PARTITION_KEY: item[PARTITION_KEY], SORT_KEY: item[SORT_KEY]})

    def batches(self, source: str, run_id: str, level: int | None = None) -> list[dict[str, Any]]:
        return list(self.iter_batches(source, run_id, level))

    def iter_batches(self, source: str, run_id: str, level: int | None = None) -> Iterator[dict[str, Any]]:
        """The batch items one query page at a time: a level may have 100,000 batches."""
        prefix = "BATCH#" if level is None else f"BATCH#{level:02d}#"
        return self._iter_query(run_pk(source, run_id), prefix, page=BATCH_PAGE)

    def failures(self, source: str, run_id: str, level: int | None = None) -> list[dict[str, Any]]:
        prefix = "FAIL#" if level is None else f"FAIL#{level:02d}#"
        return self._query(run_pk(source, run_id), prefix)

    def _query(self, pk: str, prefix: str) -> list[dict[str, Any]]:
        return list(self._iter_query(pk, prefix))

    def _iter_query(self, pk: str, prefix: str, page: int | None = None) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": Key(PARTITION_KEY).eq(pk) & Key(SORT_KEY).begins_with(prefix),
            "ConsistentRead": True,
        }
        if page:
            kwargs["Limit"] = page  # a page is also at most 1 MB on AWS, whatever the limit
        while True:
            resp = self.table.query(**kwargs)
            for item in resp.pop("Items", []):
                yield _plain(item)
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def _dynamo(value: Any) -> Any:
    """Floats are not accepted by boto3's DynamoDB serializer: store them as Decimal."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_dynamo(v) for v in value]
    return value
