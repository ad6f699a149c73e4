"""`harvest`, the command line (console script `harvest = harvester.cli:main`). One module per concern:

- `main`: the argument parser and the commands' entry points;
- `backend`: where a command acts, the local engine or the deployed stack (its CloudFormation outputs), as one
  `Backend` of boto3 clients and the ledger (harvester/ledger.py);
- `runs`: start, follow, resume and show runs, the same code for both modes;
- `local`: what only a local run has (the engine, its worker fleet, signals, the state folder);
- `query`: the query workflow's arguments and result;
- `view`: tables, JSON and the live progress display (rich);
- `codes`: the exit codes.
"""

from harvester.cli.codes import (  # noqa: F401 - the exit codes, as documented in README "When things fail"
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STATE,
    EXIT_TIMEOUT,
    exit_code,
)
from harvester.cli.local import MAX_PROCESSES, execute  # noqa: F401
from harvester.cli.local import stored_spec_file as _stored_spec  # noqa: F401
from harvester.cli.main import build_parser, main  # noqa: F401
from harvester.cli.query import parse_agg, parse_filter, query_lines, run_query  # noqa: F401
