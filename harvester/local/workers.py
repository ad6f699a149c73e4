"""Lambda containers as processes: with `processes=N` every function of the local engine runs in worker processes.

On AWS every fetch invocation has a CPU of its own; in one Python process the whole fleet shares one GIL with
moto's executor, and a worker's wake-ups come late enough that leased rate-limit tokens expire unused (the
rate-limit benchmark measured utilisation 0.77 at 50 r/s that way), and a handler in the engine's process cannot
be stopped at its timeout or held to its memory. Here every handler runs in worker processes, one function per
process, as a Lambda container would (harvester/local/sandbox.py holds each to its function's timeout, memory and
ephemeral storage; harvester/local/container.py is what runs inside):

- the parent (the engine) keeps moto in memory and serves it over HTTP on 127.0.0.1 (moto's
  `ThreadedMotoServer`, which shares the in-process backends), so workers read and write the same bucket and
  ledger table, and the shared rate limiter's bucket item, through plain boto3 with `AWS_ENDPOINT_URL`;
- a worker process runs the real handler (e.g. `lambdas.fetch:handler`) with a Lambda-like context whose clock
  starts when the invocation starts in the worker (a busy pool queues invocations, as reserved concurrency
  would);
- the handler's result, or its error's type and message, comes back to the executor, which sees exactly what
  it sees from an in-process handler (a raised error becomes the task's Error and Cause).

Processes come from a forkserver that imported the heavy libraries once, so a new worker costs a fork, not a
Python start-up. A worker process that dies (killed from outside) fails its invocation with the error AWS
reports when a Lambda runtime exits, `Runtime.ExitError`; one stopped at a limit fails it with `Sandbox.Timedout`,
`Runtime.OutOfMemory` or an ENOSPC `OSError`: the batch is recorded as failed and a resume continues it from its
checkpoint.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harvester.functions import FunctionDef
from harvester.local import sandbox

#: libraries a worker needs, imported once by the forkserver instead of once per worker process
PRELOAD = ["boto3", "botocore.session", "httpx", "pydantic", "aws_lambda_powertools", "yaml"]


class RemoteError(Exception):
    """A handler's error raised in a worker process, with the name the state machine sees."""

    def __init__(self, error_type: str, message: str, stack: list[str]):
        super().__init__(message)
        self.error_type = error_type
        self.stack = stack


class WorkerPool:
    """Runs handlers in worker processes that talk to moto at `endpoint`: for each function of `functions`, up to
    `size` sandboxes (harvester/local/sandbox.py: one process each, held to the function's timeout, memory and
    ephemeral storage), reused while they live; an invocation waits for a free one when all `size` are busy, as
    reserved concurrency would make it wait. `warm` names the functions whose sandboxes start with the pool."""

    def __init__(self, size: int, endpoint: str, functions: dict[str, FunctionDef], warm: tuple[str, ...] = ("fetch",)):
        self.size = size
        self.endpoint = endpoint
        self.functions = functions
        self.warm = warm
        self._ctx = None
        self._tmp = sandbox.tmp_root()
        self._idle: dict[str, list[sandbox.Sandbox]] = {name: [] for name in functions}
        self._busy: dict[str, set[sandbox.Sandbox]] = {name: set() for name in functions}
        self._starting: dict[str, int] = dict.fromkeys(functions, 0)
        self._cond = threading.Condition()
        self._closed = False

    def _context(self):
        if self._ctx is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                self._ctx = multiprocessing.get_context("forkserver")
                self._ctx.set_forkserver_preload(PRELOAD)
            else:  # Windows: each worker starts Python (slower start, same behaviour)
                self._ctx = multiprocessing.get_context("spawn")
        return self._ctx

    def _new(self, short: str) -> sandbox.Sandbox:
        return sandbox.Sandbox(self._context(), self.functions[short], f"harvester-{short}", self.endpoint, self._tmp)

    def start(self) -> None:
        """Start the warm functions' sandboxes and import their handlers now (warm containers): a worker that
        starts in the middle of a level would hold its share of the rate for its start-up time."""
        for short in self.warm:
            if short in self.functions:
                with ThreadPoolExecutor(self.size) as starter:
                    self._idle[short] += list(starter.map(lambda _, short=short: self._new(short), range(self.size)))

    def _acquire(self, short: str) -> sandbox.Sandbox:
        with self._cond:
            while True:
                if self._idle[short]:
                    box = self._idle[short].pop()
                    self._busy[short].add(box)
                    return box
                if len(self._busy[short]) + self._starting[short] < self.size:
                    self._starting[short] += 1
                    break
                self._cond.wait()
        try:
            box = self._new(short)  # a cold start, outside the lock
        finally:
            with self._cond:
                self._starting[short] -= 1
        with self._cond:
            self._busy[short].add(box)
        return box

    def _release(self, short: str, box: sandbox.Sandbox, healthy: bool) -> None:
        with self._cond:
            self._busy[short].discard(box)
            if healthy and not self._closed:
                self._idle[short].append(box)
            self._cond.notify()
        if not healthy or self._closed:
            box.kill()

    def invoke(self, target: str, name: str, timeout: float, event: dict[str, Any]) -> Any:
        short = name.removeprefix("harvester-")
        box = self._acquire(short)
        healthy = False
        try:
            status, value = box.invoke(timeout, event, dict(os.environ))
            healthy = True
        except sandbox.LimitExceeded as exc:
            raise RemoteError(exc.error_type, str(exc), []) from None
        finally:
            self._release(short, box, healthy)
        if status == "error":
            raise RemoteError(*value)
        return value

    def pids(self, function: str | None = None) -> list[int]:
        """The worker processes running now (of one function: "fetch", ...)."""
        with self._cond:
            names = [function] if function else list(self.functions)
            return [b.pid for n in names for b in [*self._idle[n], *self._busy[n]] if b.alive()]

    def terminate(self, grace: float = 3.0) -> None:
        """Stop every worker now (Ctrl-C, SIGTERM, --timeout): SIGTERM to the busy ones, SIGKILL for every process
        still alive after `grace` seconds. Invocations in flight fail as Runtime.ExitError."""
        with self._cond:
            self._closed = True
            busy = [b for n in self.functions for b in self._busy[n]]
            boxes = busy + [b for n in self.functions for b in self._idle[n]]
            for n in self.functions:
                self._idle[n].clear()
        for box in busy:
            box.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(b.alive() for b in busy) and time.monotonic() < deadline:
            time.sleep(0.05)
        for box in boxes:
            box.kill()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            boxes = [b for n in self.functions for b in [*self._idle[n], *self._busy[n]]]
            for n in self.functions:
                self._idle[n].clear()
        for box in boxes:
            box.stop()
        sandbox.remove(self._tmp)
