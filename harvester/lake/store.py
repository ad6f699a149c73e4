"""Object storage seen by the lake: S3 through a boto3 client, or a local directory.

Every lake function takes a ``store`` rather than a client so that the same code runs in a Lambda
(``S3Store(boto3.client("s3"), bucket)``), in tests on moto, and in the benchmarks on local disk
(``LocalStore(root)``). Keys are always S3-style (``processed/demo/points/...``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol


class ObjectStore(Protocol):
    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under ``prefix``, sorted by key."""
        ...

    def delete(self, keys: Iterable[str]) -> None: ...


class S3Store:
    def __init__(self, s3, bucket: str):
        self.s3 = s3
        self.bucket = bucket

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def list(self, prefix: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
        return sorted(out)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(p)

    def list(self, prefix: str) -> list[tuple[str, int]]:
        out = []
        base = self.root
        for dirpath, _, files in os.walk(base):
            for f in files:
                p = Path(dirpath) / f
                key = p.relative_to(base).as_posix()
                if key.startswith(prefix) and not key.endswith(".tmp"):
                    out.append((key, p.stat().st_size))
        return sorted(out)

    def delete(self, keys: Iterable[str]) -> None:
        for k in keys:
            try:
                self.path(k).unlink()
            except FileNotFoundError:
                pass


def get_many(store: ObjectStore, keys: list[str], threads: int = 8) -> list[bytes]:
    """Fetch several objects concurrently (network-bound in S3, so threads help even on 2 cores)."""
    if len(keys) <= 1:
        return [store.get(k) for k in keys]
    with ThreadPoolExecutor(max_workers=min(threads, len(keys))) as pool:
        return list(pool.map(store.get, keys))
