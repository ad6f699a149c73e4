"""`harvest`, the command line (console script `harvest = harvester.cli:main`). One module per concern:

- `main`: the argument parser and the commands' entry points;
- `backend`: where a command acts, the local engine or the deployed stack (its CloudFormation outputs), as one
  `Backend` of boto3 clients and the ledger (harvester/ledger.py);
- `runs`: start, follow, resume and show runs, the same code for both modes;
- `local`: a local run followed live (harvester/local/session.py runs it), stopped on signals;
- `query`: the query workflow's arguments and result;
- `demo`: `harvest demo`, the simulated vendor harvested and checked against its own books;
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
