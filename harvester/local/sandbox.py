"""A Lambda execution environment as a local process, held to its function's limits as Lambda holds it.

One `Sandbox` is one worker process running one function's handler, invocation after invocation (a warm
container). While an invocation runs, the engine's thread that waits for it watches three limits of the
function's catalog entry (harvester/functions.py) and stops the process when one is passed, reporting what Lambda
reports (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html):

- timeout: the process is killed at the deadline; the invocation fails with `Sandbox.Timedout`
  ("Task timed out after N seconds"), as Lambda stops a handler at the function's timeout;
- memory: the process's resident set (Linux: /proc/<pid>/statm, sampled every POLL_S) over the function's memory
  size kills it; the invocation fails with `Runtime.OutOfMemory`, as Lambda reports a runtime killed for memory.
  Resident memory, not an address-space rlimit (setrlimit RLIMIT_AS): Python, threads and pyarrow reserve far more
  virtual memory than they touch, and a MemoryError raised inside the handler could be caught by it, where Lambda's
  kill cannot be;
- ephemeral storage: the process's TMPDIR (its /tmp, kept for the process's life as Lambda keeps /tmp between
  warm invocations) over the function's ephemeral storage size kills it; the invocation fails with the error an
  unhandled ENOSPC gives on Lambda (`OSError`, "[Errno 28] No space left on device").

A process that exits (or is killed from outside) fails the invocation it runs, or the next one handed to it, with
`Runtime.ExitError`, as Lambda reports a runtime that exited.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from harvester.functions import FunctionDef

#: how often a running invocation's limits are checked (memory and time every POLL_S, /tmp every DISK_POLL_S)
POLL_S = 0.05
DISK_POLL_S = 0.5
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class LimitExceeded(Exception):
    """An invocation stopped by its sandbox: the error type and message the state machine sees."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type
        self.stack: list[str] = []


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (None where /proc is not available: memory is then not enforced)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return None


def disk_mb(folder: str) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 2**20


def _main(conn, endpoint: str, tmpdir: str, target: str, engine_pid: int | None = None) -> None:
    """The worker process: import the handler (warm), then run invocations until told to stop."""
    from harvester.local import container  # noqa: PLC0415 - in the worker process

    container.init_worker(endpoint, engine_pid)
    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = tmpdir
    conn.send(("ready", container.warm([target])))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        conn.send(container.invoke(*request))


class Sandbox:
    """One worker process for one function."""

    def __init__(self, ctx, function: FunctionDef, name: str, endpoint: str, tmp_root: str):
        self.function = function
        self.name = name
        self.tmpdir = tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_root)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_main, args=(child, endpoint, self.tmpdir, function.target, os.getpid()),
                                   daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(120):
            self.kill()
            raise LimitExceeded("Runtime.ExitError", f"the worker process of {name} did not start")
        self.conn.recv()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def invoke(self, timeout: float, event: dict[str, Any], env: dict[str, str]) -> tuple[str, Any]:
        """Run one invocation; returns the worker's ("ok", result) or ("error", (type, message, stack)); raises
        LimitExceeded when the sandbox stopped it."""
        env = {k: v for k, v in env.items() if k != "TMPDIR"}  # the sandbox's own /tmp
        try:
            self.conn.send((self.function.target, self.name, timeout, event, env, self.function.memory_mb))
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise self._exited() from None
        deadline = time.monotonic() + timeout
        next_disk = time.monotonic() + DISK_POLL_S
        while True:
            try:
                if self.conn.poll(POLL_S):
                    answer = self.conn.recv()
                    self._check_disk()  # what the handler left in /tmp (on Lambda its write would have failed)
                    return answer
            except (EOFError, OSError):
                raise self._exited() from None
            now = time.monotonic()
            self._check_running(now, deadline, timeout)
            if now >= next_disk:
                next_disk = now + DISK_POLL_S
                self._check_disk()

    def _check_running(self, now: float, deadline: float, timeout: float) -> None:
        if not self.alive():
            raise self._exited()
        if now >= deadline:
            self.kill()
            raise LimitExceeded("Sandbox.Timedout", f"Task timed out after {timeout:.2f} seconds")
        used = rss_mb(self.pid)
        if used is not None and used > self.function.memory_mb:
            self.kill()
            raise LimitExceeded("Runtime.OutOfMemory", f"Error: Runtime exited with error: signal: killed "
                                f"(resident memory {used:.0f} MB over the function's {self.function.memory_mb} MB)")

    def _check_disk(self) -> None:
        used = disk_mb(self.tmpdir)
        if used > self.function.ephemeral_mb:
            self.kill()
            raise LimitExceeded("OSError", f"[Errno 28] No space left on device: /tmp holds {used:.0f} MB, over the "
                                f"function's ephemeral storage of {self.function.ephemeral_mb} MB")

    def _exited(self) -> LimitExceeded:
        self.process.join(1)
        return LimitExceeded("Runtime.ExitError",
                             f"the worker process running {self.name} exited (exit code {self.process.exitcode})")

    def signal(self, signum: int) -> None:
        if self.process.is_alive():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.process.join(5)
        except (OSError, ValueError):
            pass
        self.kill()


def tmp_root() -> str:
    """A folder for the sandboxes' /tmp folders of one engine."""
    return tempfile.mkdtemp(prefix="harvester-sandboxes-")


def remove(folder: str | Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)

