"""The local engine's state folder, written through as the run goes.

moto holds the bucket and the ledger table in memory; every write it applies is written to the folder before the
write returns, so a kill at any instant (SIGKILL, OOM, power loss of the process) loses at most the writes in
flight, never one that was acknowledged:

- `bucket/KEY`: one plain file per object, written to `bucket/.tmp/` and renamed into place (a reader sees the old
  bytes or the new ones, never half a file); a deleted object is deleted;
- `ledger.sqlite`: every ledger item (DynamoDB JSON) in SQLite, one autocommitted upsert or delete per write, WAL
  journal (readers such as `harvest runs` and `harvest query` read it during a run);
- `lock`: held (flock) by the command that runs harvests in the folder; a second one is refused with the pid and
  command of the first. The kernel drops the lock when that process dies, however it dies.

There is no save at exit and no second copy of the bucket. Older folders (`ledger.jsonl`, a `bucket.tmp` left by
an interrupted save) are taken over on first load.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from harvester.ledger import PARTITION_KEY, SORT_KEY, _plain

LEDGER_DB = "ledger.sqlite"
LOCK_FILE = "lock"


class StateError(RuntimeError):
    """The state folder cannot be read or written (damaged, disk full, in use): the message names the file and
    what to do."""


class StateBusy(StateError):
    """Another command is running harvests in this state folder."""


class LocalState:
    """One state folder: bucket objects as files, ledger items in SQLite, a writer's lock."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.bucket_dir = self.folder / "bucket"
        self.ledger_db = self.folder / LEDGER_DB
        self.lock_file = self.folder / LOCK_FILE
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._key_locks = [threading.RLock() for _ in range(64)]
        #: the first write that could not be made (disk full, ...): the run is not what the folder holds
        self.failure: StateError | None = None

    # --- the writer's lock ---------------------------------------------------------------------------------------
    def acquire(self, command: str) -> None:
        """Take the folder for a command that runs harvests; StateBusy names the process that holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateBusy(f"{self.folder} is in use by {holder}: wait for it to end, or use another --state "
                            f"folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({command}, since {time.strftime('%Y-%m-%d %H:%M:%S')})".encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._db is not None:
            with self._db_lock:
                self._db.close()
                self._db = None
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # --- the ledger database -------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                db = sqlite3.connect(self.ledger_db, isolation_level=None, check_same_thread=False, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL: a process crash never loses a committed write
                db.execute("CREATE TABLE IF NOT EXISTS items (pk TEXT NOT NULL, sk TEXT NOT NULL, item TEXT NOT NULL,"
                           " PRIMARY KEY (pk, sk))")
            except sqlite3.DatabaseError as exc:
                raise self._damaged(exc) from None
            self._db = db
        return self._db

    def _damaged(self, exc: Exception) -> StateError:
        if "full" in str(exc).lower():
            return StateError(f"disk full writing {self.ledger_db}: free some space, then resume the run")
        return StateError(f"{self.ledger_db} is damaged ({exc}): move it away to start a fresh ledger "
                          f"(the objects in {self.bucket_dir} stay)")

    def typed_items(self) -> list[dict[str, Any]]:
        """Every ledger item in DynamoDB JSON."""
        self._adopt_jsonl_ledger()
        if not self.ledger_db.exists():
            return []
        with self._db_lock:
            try:
                rows = self._connect().execute("SELECT pk, sk, item FROM items").fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._damaged(exc) from None
        out = []
        for pk, sk, text in rows:
            try:
                out.append(json.loads(text))
            except ValueError as exc:
                raise StateError(f"{self.ledger_db}: item {pk} / {sk} is not JSON ({exc})") from None
        return out

    def items(self) -> list[dict[str, Any]]:
        """Every ledger item as plain JSON values (what `harvest runs` shows)."""
        deserialize = TypeDeserializer().deserialize
        return [_plain({k: deserialize(v) for k, v in item.items()}) for item in self.typed_items()]

    def put_item(self, item: dict[str, Any]) -> None:
        self._write_db("INSERT OR REPLACE INTO items (pk, sk, item) VALUES (?, ?, ?)",
                       (item[PARTITION_KEY]["S"], item[SORT_KEY]["S"], json.dumps(item, separators=(",", ":"))))

    def delete_item(self, pk: str, sk: str) -> None:
        self._write_db("DELETE FROM items WHERE pk = ? AND sk = ?", (pk, sk))

    def _write_db(self, sql: str, params: tuple) -> None:
        with self._db_lock:
            try:
                self._connect().execute(sql, params)
            except sqlite3.DatabaseError as exc:
                raise self._fail(self._damaged(exc)) from None

    def _adopt_jsonl_ledger(self) -> None:
        """A folder written by an earlier version keeps its ledger as JSON lines: move it into the database."""
        old = self.folder / "ledger.jsonl"
        if not old.exists() or self.ledger_db.exists():
            return
        serialize = TypeSerializer().serialize
        rows = []
        for number, line in enumerate(old.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line, parse_float=Decimal, parse_int=Decimal)
            except ValueError as exc:
                raise StateError(f"{old}:{number}: not a JSON line ({exc}); fix or delete that line") from None
            rows.append({k: serialize(v) for k, v in item.items()})
        for item in rows:
            self.put_item(item)
        old.rename(old.with_suffix(".jsonl.migrated"))

    # --- objects -------------------------------------------------------------------------------------------------
    def object_path(self, key: str) -> Path:
        path = (self.bucket_dir / key).resolve()
        if self.bucket_dir.resolve() not in path.parents:
            raise StateError(f"object key {key!r} leaves {self.bucket_dir}")
        return path

    def object_keys(self) -> Iterator[tuple[str, Path]]:
        self._recover_interrupted_save()
        if not self.bucket_dir.exists():
            return
        for path in sorted(self.bucket_dir.rglob("*")):
            rel = path.relative_to(self.bucket_dir)
            if path.is_file() and rel.parts[0] != ".tmp":
                yield rel.as_posix(), path

    def put_object(self, key: str, body: bytes) -> None:
        path = self.object_path(key)
        tmp = self.bucket_dir / ".tmp" / uuid.uuid4().hex
        with self._key_lock(key):
            try:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(body)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise self._fail(self._os_error(exc, path)) from None

    def delete_object(self, key: str) -> None:
        with self._key_lock(key):
            self.object_path(key).unlink(missing_ok=True)

    def _key_lock(self, key: str) -> threading.RLock:
        return self._key_locks[hash(key) % len(self._key_locks)]

    def _os_error(self, exc: OSError, path: Path) -> StateError:
        if exc.errno == errno.ENOSPC:
            return StateError(f"disk full writing {path}: free some space, then resume the run")
        return StateError(f"cannot write {path}: {exc.strerror or exc}")

    def _fail(self, error: StateError) -> StateError:
        if self.failure is None:
            self.failure = error
        return error

    def _recover_interrupted_save(self) -> None:
        """Earlier versions saved by writing bucket.tmp, deleting bucket/ and renaming; a kill in between left the
        only complete copy in bucket.tmp."""
        old = self.folder / "bucket.tmp"
        if old.is_dir() and not self.bucket_dir.exists():
            old.rename(self.bucket_dir)

    # --- loading into moto ---------------------------------------------------------------------------------------
    def load(self, s3, bucket: str, dynamodb, table: str) -> None:
        """Everything in the folder into moto's bucket and table (written through nowhere: it is already here)."""
        with paused():
            for key, path in self.object_keys():
                s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            items = self.typed_items()
            for start in range(0, len(items), 25):
                requests = [{"PutRequest": {"Item": item}} for item in items[start:start + 25]]
                dynamodb.batch_write_item(RequestItems={table: requests})
        tmp = self.bucket_dir / ".tmp"
        if tmp.is_dir():  # half-written objects of a process that was killed
            for leftover in tmp.iterdir():
                leftover.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# write-through: moto's S3 and DynamoDB backends call the active state after every write they apply
# ---------------------------------------------------------------------------------------------------------------
_ACTIVE: tuple[LocalState, str, str] | None = None  # (state, bucket, table)
_PAUSED = threading.local()


@contextmanager
def paused():
    _PAUSED.on = True
    try:
        yield
    finally:
        _PAUSED.on = False


def _target(bucket: str | None = None, table: str | None = None) -> LocalState | None:
    if _ACTIVE is None or getattr(_PAUSED, "on", False):
        return None
    state, our_bucket, our_table = _ACTIVE
    if (bucket is not None and bucket != our_bucket) or (table is not None and table != our_table):
        return None
    return state


@contextmanager
def writing_through(state: LocalState, bucket: str, table: str):
    """While active, every write moto applies to `bucket` and `table` is written to `state`'s folder."""
    global _ACTIVE
    install()
    _ACTIVE = (state, bucket, table)
    try:
        yield state
    finally:
        _ACTIVE = None


def install() -> None:
    """Wrap moto's S3 and DynamoDB backends (idempotent)."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.s3.models import S3Backend

    from harvester.local.moto_patches import _DYNAMODB_LOCK

    def wrap(cls, name, after):
        original = getattr(cls, name)
        if getattr(original, "_harvester_write_through", False):
            return

        @functools.wraps(original)
        def method(self, *args, **kwargs):
            return after(self, original, *args, **kwargs)

        method._harvester_write_through = True  # type: ignore[attr-defined]
        setattr(cls, name, method)

    def s3_put(backend, original, bucket_name, key_name, value, *args, **kwargs):
        state = _target(bucket=bucket_name)
        if state is None:
            return original(backend, bucket_name, key_name, value, *args, **kwargs)
        with state._key_lock(key_name):  # the file follows the writes to a key in their order
            key = original(backend, bucket_name, key_name, value, *args, **kwargs)
            state.put_object(key_name, bytes(key.value))
        return key

    def s3_delete(backend, original, bucket_name, key_name, *args, **kwargs):
        result = original(backend, bucket_name, key_name, *args, **kwargs)
        state = _target(bucket=bucket_name)
        if state is not None:
            state.delete_object(key_name)
        return result

    def s3_delete_many(backend, original, bucket_name, objects, *args, **kwargs):
        result = original(backend, bucket_name, objects, *args, **kwargs)
        state = _target(bucket=bucket_name)
        if state is not None:
            for obj in objects:
                state.delete_object(obj["Key"])
        return result

    def ddb_write(key_of):
        def after(backend, original, table_name, *args, **kwargs):
            state = _target(table=table_name)
            if state is None:
                return original(backend, table_name, *args, **kwargs)
            with _DYNAMODB_LOCK:  # the write and its mirror in one step: the file never lags behind an older value
                result = original(backend, table_name, *args, **kwargs)
                key = key_of(args, kwargs)
                item = backend.get_item(table_name, key)
                if item is None:
                    state.delete_item(key[PARTITION_KEY]["S"], key[SORT_KEY]["S"])
                else:
                    state.put_item(item.to_json()["Attributes"])
            return result

        return after

    def item_key(args, kwargs):
        attrs = args[0] if args else kwargs["item_attrs"]
        return {PARTITION_KEY: attrs[PARTITION_KEY], SORT_KEY: attrs[SORT_KEY]}

    def given_key(args, kwargs):
        return args[0] if args else kwargs["key"]

    wrap(S3Backend, "put_object", s3_put)
    wrap(S3Backend, "delete_object", s3_delete)
    wrap(S3Backend, "delete_objects", s3_delete_many)
    wrap(DynamoDBBackend, "put_item", ddb_write(item_key))
    wrap(DynamoDBBackend, "update_item", ddb_write(given_key))
    wrap(DynamoDBBackend, "delete_item", ddb_write(given_key))
