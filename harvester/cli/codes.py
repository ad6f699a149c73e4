"""Exit codes (README, "When things fail"): a script can tell a finished run from one to resume and from bad input.
The same in both modes (`--local` and the deployed stack)."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0  # the run (or command) succeeded
EXIT_FAILED = 1  # the run failed (a crash recorded on the run item): fix, then resume
EXIT_BAD_INPUT = 2  # bad spec, bad arguments, unknown run or stack: nothing was written
EXIT_INCOMPLETE = 3  # the run ended with failed batches (the ledger lists them): resume it
EXIT_STATE = 4  # the state folder is in use, damaged or out of disk space (the message names the file)
EXIT_TIMEOUT = 124  # --timeout ran out: the run was stopped (locally) or is still running (AWS), resume or follow it
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); 143 for SIGTERM: the run was stopped, resume it

#: errors of the Plan run step that mean the input was refused before anything was written (harvester/run.py)
BAD_INPUT_ERRORS = ("InputError", "SpecError")

#: the error the workflow records on the run item when batches failed (statemachines/harvest.asl.json)
INCOMPLETE_ERROR = "Harvest.Incomplete"


class BadInput(ValueError):
    """Unknown run, source or stack, or an option that does not apply: nothing was started or written."""


def shown_status(run: dict[str, Any]) -> str:
    """The run item's status as people read it: a run that ended with failed batches is INCOMPLETE (resume it), not
    FAILED (a crash)."""
    status = run.get("status", "?")
    if status == "FAILED" and run.get("error") == INCOMPLETE_ERROR:
        return "INCOMPLETE"
    return status


def exit_code(desc: dict[str, Any]) -> int:
    """From an execution description (or a run item: both carry status and error)."""
    if desc.get("status") == "SUCCEEDED":
        return EXIT_OK
    if desc.get("status") == "RUNNING":
        return EXIT_TIMEOUT
    if desc.get("error") in BAD_INPUT_ERRORS:
        return EXIT_BAD_INPUT
    return EXIT_INCOMPLETE if desc.get("error") == INCOMPLETE_ERROR else EXIT_FAILED
