"""The workflow definition files and the substitutions that turn them into runnable definitions.

`statemachines/harvest.asl.json` (the harvest, with its convert stage) and `statemachines/query.asl.json` (the
query workflow over the lake) are the single source of truth. CDK hands it to Step Functions with
`definition_substitutions`; the local engine applies the very same `${Key}` substitutions textually.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFINITION_PATH = ROOT / "statemachines" / "harvest.asl.json"
QUERY_DEFINITION_PATH = ROOT / "statemachines" / "query.asl.json"

#: every `${Key}` the harvest definition may contain; CDK must supply exactly these
SUBSTITUTION_KEYS = (
    "PlanFunctionArn",
    "FetchFunctionArn",
    "AdvanceFunctionArn",
    "ConvertFunctionArn",
    "BucketName",
    "LedgerTableName",
)

#: every `${Key}` the query definition may contain; CDK must supply exactly these to the query state machine
QUERY_SUBSTITUTION_KEYS = (
    "QueryFunctionArn",
    "BucketName",
)

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def placeholders(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text))


def render(text: str, substitutions: dict[str, str]) -> str:
    """Replace `${Key}` placeholders as CloudFormation's DefinitionSubstitutions does.

    Raises KeyError naming any placeholder without a value, so a typo never reaches an execution.
    """
    missing = placeholders(text) - set(substitutions)
    if missing:
        raise KeyError(f"definition placeholders without a value: {sorted(missing)}")
    rendered = _PLACEHOLDER.sub(lambda m: substitutions[m.group(1)], text)
    json.loads(rendered)  # fail here, not inside the executor, if the result is not JSON
    return rendered


def load(path: Path = DEFINITION_PATH) -> str:
    return path.read_text(encoding="utf-8")
