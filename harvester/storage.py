"""S3 layout and object formats. Every key is deterministic, so a retried step overwrites its own output.

See docs/architecture.md for the layout.
"""

from __future__ import annotations

import gzip
import io
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator


def run_prefix(source: str, run_id: str) -> str:
    return f"runs/{source}/{run_id}"


def spec_key(source: str, run_id: str) -> str:
    return f"{run_prefix(source, run_id)}/spec.json"


def manifest_key(source: str, run_id: str, level: int) -> str:
    return f"{run_prefix(source, run_id)}/manifests/{level}.json"


def children_prefix(source: str, run_id: str, level: int) -> str:
    """Where the batches of level `level - 1` put the Map items of level `level`."""
    return f"{run_prefix(source, run_id)}/children/{level}/"


def children_key(source: str, run_id: str, level: int, batch_id: str, part: int) -> str:
    return f"{children_prefix(source, run_id, level)}{batch_id}-{part:03d}.json"


def checkpoint_key(source: str, run_id: str, level: int, batch_id: str) -> str:
    return f"{run_prefix(source, run_id)}/checkpoints/{level}/{batch_id}.json"


def raw_prefix(source: str, run_id: str, level_name: str | None = None) -> str:
    base = f"raw/{source}/{run_id}/"
    return f"{base}{level_name}/" if level_name else base


def raw_key(source: str, run_id: str, level_name: str, batch_id: str, part: int) -> str:
    return f"{raw_prefix(source, run_id, level_name)}{batch_id}-{part:03d}.jsonl.gz"


def encode_ndjson_gz(records: Iterable[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    # mtime=0: the same records always give the same bytes (idempotent rewrites, stable ETags)
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz:
        for record in records:
            gz.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode())
            gz.write(b"\n")
    return buf.getvalue()


def decode_ndjson_gz(body: bytes) -> Iterator[dict[str, Any]]:
    for line in gzip.decompress(body).splitlines():
        if line.strip():
            yield json.loads(line)


class Store:
    """The run's bucket. Thin over an S3 client so tests and the local engine can hand in moto's."""

    def __init__(self, s3, bucket: str):
        self.s3 = s3
        self.bucket = bucket

    def put_json(self, key: str, value: Any) -> None:
        body = json.dumps(value, separators=(",", ":")).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def get_json(self, key: str, default: Any = ...) -> Any:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            if default is ...:
                raise
            return default
        return json.loads(body)

    def put_records(self, key: str, records: list[dict[str, Any]]) -> int:
        body = encode_ndjson_gz(records)
        self.s3.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/x-ndjson", ContentEncoding="gzip"
        )
        return len(body)

    def read_records(self, key: str) -> Iterator[dict[str, Any]]:
        return decode_ndjson_gz(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def get_many_json(self, keys: list[str], threads: int = 16) -> list[Any]:
        """Read many small JSON objects in parallel (a level may have thousands of child lists)."""
        if not keys:
            return []
        with ThreadPoolExecutor(max_workers=min(threads, len(keys))) as pool:
            return list(pool.map(self.get_json, keys))
