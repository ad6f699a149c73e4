"""The harvest's bucket (`HarvestBucket`: JSON state, gzip NDJSON records, listings, streamed JSON arrays) and the
raw records' format. The keys themselves are in harvester/s3keys.py (imported here for the callers that reach them
as `storage.<key>`); what each holds: docs/architecture.md, "S3 layout".
"""

from __future__ import annotations

import gzip
import io
import json
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harvester.s3keys import (  # noqa: F401 - the keys, one definition: harvester/s3keys.py
    checkpoint_key,
    children_key,
    children_prefix,
    cursors_key,
    manifest_key,
    raw_key,
    raw_prefix,
    run_prefix,
    spec_key,
)

#: bytes per part of a multipart upload: S3's smallest part (every part but the last must be at least 5 MiB,
#: https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html), so a streamed object holds one part in memory
PART_BYTES = 5 * 1024 * 1024


def encode_ndjson_gz(records: Iterable[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    # mtime=0: the same records always give the same bytes (idempotent rewrites, stable ETags)
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz:
        for record in records:
            gz.write(_json_line(record))
            gz.write(b"\n")
    return buf.getvalue()


def _json_line(record: Any) -> bytes:
    """One NDJSON line, UTF-8. A string with a lone surrogate (the vendor's `"\\ud83d"`, valid JSON text that
    Python decodes to a code point UTF-8 cannot hold) is written as the JSON escape it came as, not refused:
    one odd record must not lose its batch."""
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode()


def decode_ndjson_gz(body: bytes) -> Iterator[dict[str, Any]]:
    for line in gzip.decompress(body).splitlines():
        if line.strip():
            yield json.loads(line)


class HarvestBucket:
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

    def iter_keys(self, prefix: str) -> Iterator[str]:
        """The keys under `prefix` page by page, in S3's order (ascending UTF-8), none held beyond its page."""
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from (obj["Key"] for obj in page.get("Contents", []))

    def get_bytes(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def iter_bytes(self, keys: Iterable[str], threads: int = 8) -> Iterator[bytes]:
        """Small objects' bodies in the order of `keys`, read `threads` at a time with at most twice that many
        read ahead: a level may have thousands of child lists, never all in memory at once."""
        with ThreadPoolExecutor(max_workers=threads) as pool:
            ahead: deque = deque()
            for key in keys:
                ahead.append(pool.submit(self.get_bytes, key))
                if len(ahead) >= 2 * threads:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

    def put_json_array(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write one JSON array from `chunks`, each the JSON text of one or more of its elements (comma-separated),
        without holding it: a multipart upload of PART_BYTES parts (a plain PutObject when it fits in one). The
        multipart calls need s3:PutObject:
        https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html#mpuAndPermissions"""
        out = _StreamedObject(self.s3, self.bucket, key, "application/json")
        first = True
        try:
            out.write(b"[")
            for chunk in chunks:
                out.write(chunk if first else b"," + chunk)
                first = False
            out.write(b"]")
            out.close()
        except BaseException:
            out.abort()
            raise


class _StreamedObject:
    """An S3 object written piece by piece: parts of PART_BYTES go up as they fill (one part in memory)."""

    def __init__(self, s3, bucket: str, key: str, content_type: str, part_bytes: int = PART_BYTES):
        self.s3, self.bucket, self.key, self.content_type, self.part_bytes = s3, bucket, key, content_type, part_bytes
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.part_bytes:
            self._upload_part()

    def _upload_part(self) -> None:
        if self.upload_id is None:
            self.upload_id = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type)["UploadId"]
        number = len(self.parts) + 1
        etag = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
                                   Body=self.buffer)["ETag"]
        self.parts.append({"ETag": etag, "PartNumber": number})
        self.buffer = bytearray()  # a new one: the part sent is not copied, so it is not reused

    def close(self) -> None:
        if self.upload_id is None:  # it all fits in one part
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=self.buffer, ContentType=self.content_type)
            return
        if self.buffer:
            self._upload_part()
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                          MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        """Best effort: the bucket's lifecycle rule removes an upload left incomplete anyway."""
        if self.upload_id is None:
            return
        try:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
