"""The local engine's IAM evaluator (harvester/local/iam/evaluate.py) decides as `@cloud-copilot/iam-simulate` does
on the policies `cdk synth` writes for this app: every action of every statement x matching and non-matching
resources x condition keys present (matching or not) and absent.

iam-simulate is AGPL-3.0: a devDependency in package.json for this test only (never bundled, never imported by
the package). `npm ci` installs it; without it the cross-check is skipped, saying so."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harvester.local import engine
from harvester.local.iam.evaluate import ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY, decide
from harvester.local.iam.policies import IamModel, model_file

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

ROOT = Path(__file__).resolve().parents[2]
SIMULATOR = ROOT / "tests" / "node" / "iam_simulate.mjs"
NAMES = {"REGION": engine.REGION, "ACCOUNT": engine.ACCOUNT, "BUCKET": engine.BUCKET, "TABLE": engine.TABLE}


def _as_list(value):
    return value if isinstance(value, list) else [value]


def sample(pattern: str) -> str:
    """A value the glob `pattern` matches."""
    return pattern.replace("*", "x/y").replace("?", "a")


def miss(pattern: str) -> str:
    """A value the glob `pattern` does not match: its fixed start with the last character changed."""
    fixed = pattern.split("*")[0].split("?")[0] or "x"
    head = fixed if fixed != pattern else pattern
    return head[:-1] + ("Z" if head[-1] != "Z" else "Y") + ("x/y" if head != pattern else "")


def elsewhere(pattern: str) -> str:
    """A matching resource of another account (S3: another bucket)."""
    value = sample(pattern)
    if value.startswith("arn:aws:s3:::"):
        return value.replace(engine.BUCKET, engine.BUCKET + "-other", 1)
    return value.replace(f":{engine.ACCOUNT}:", ":999999999999:", 1)


def contexts(statement: dict) -> list[dict]:
    """No key, a matching and a non-matching value of each condition key (a list for a multivalued key, which
    policies test with ForAnyValue:/ForAllValues:)."""
    out = [{}]
    for operator, values in statement.get("Condition", {}).items():
        for key, wanted in values.items():
            first = str(_as_list(wanted)[0])
            for value in (sample(first), miss(first) if first not in ("true", "false") else "maybe"):
                out.append({key: [value] if operator.startswith("For") else value})
    return out


def generated_requests(model: IamModel) -> list[tuple[str, str, str, dict]]:
    """(role, action, resource, context): each statement's actions x its resources (matching and not) x its
    condition keys (absent, matching, not matching), and each action x every other statement's resources."""
    requests = []
    for role, policies in sorted(model.roles.items()):
        statements = [s for p in policies for s in _as_list(p["Statement"])]
        resources = sorted({r for s in statements for r in _as_list(s.get("Resource", [])) if r != "*"})
        for s in statements:
            actions = [a.replace("*", "") for a in _as_list(s.get("Action", []))]
            own = [r for r in _as_list(s.get("Resource", [])) if r != "*"]
            targets = [sample(r) for r in own] + [miss(r) for r in own] + [elsewhere(r) for r in own]
            for action, resource, context in itertools.product(actions, targets, contexts(s)):
                requests.append((role, action, resource, context))
            for action, resource in itertools.product(actions, resources):
                if resource not in own and resource.split(":")[2] == action.split(":")[0]:
                    requests.append((role, action, sample(resource), {}))
    return sorted({(r, a, res, json.dumps(c, sort_keys=True)) for r, a, res, c in requests})


@pytest.fixture(scope="module")
def model() -> IamModel:
    return IamModel.from_file(model_file(NAMES))


@pytest.fixture(scope="module")
def simulator():
    if not (ROOT / "node_modules" / "@cloud-copilot" / "iam-simulate").is_dir():
        pytest.skip("node_modules lacks @cloud-copilot/iam-simulate (a devDependency): run `npm ci` to cross-check")
    if shutil.which("node") is None:
        pytest.skip("no `node` on PATH to run @cloud-copilot/iam-simulate")
    proc = subprocess.Popen(["node", str(SIMULATOR)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, bufsize=1)  # fmt: skip

    def ask(policies: list[dict], role: str, action: str, resource: str, context: dict) -> str:
        request = {"policies": policies, "action": action, "resource": resource, "account": engine.ACCOUNT,
                   "principal": f"arn:aws:iam::{engine.ACCOUNT}:role/{role}", "context": context}  # fmt: skip
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())["result"]

    yield ask
    proc.stdin.close()
    proc.wait(timeout=30)


def test_the_evaluator_agrees_with_iam_simulate_on_the_synthesized_policies(model, simulator):
    compared, refused, disagreements = 0, [], []
    decisions = {ALLOWED: 0, IMPLICIT_DENY: 0, EXPLICIT_DENY: 0}
    for role, action, resource, context_json in generated_requests(model):
        context = json.loads(context_json)
        theirs = simulator(model.roles[role], role, action, resource, context)
        if theirs not in decisions:  # a request iam-simulate rejects as invalid (e.g. a resource of another type)
            refused.append((action, resource))
            continue
        ours = decide(model.roles[role], action, resource, context)
        compared += 1
        decisions[ours] += 1
        if ours != theirs:
            disagreements.append((role, action, resource, context, ours, theirs))
    assert not disagreements, disagreements[:10]
    assert compared >= 300 and decisions[ALLOWED] >= 100 and decisions[IMPLICIT_DENY] >= 100, (compared, decisions)
    assert len(refused) < compared / 4, (len(refused), compared, refused[:20])


def test_conditions_on_absent_keys():
    """The semantics D2 hinges on: a plain StringLike on an absent key fails, ...IfExists passes."""
    def grant(operator):
        return [{"Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
                                "Condition": {operator: {"s3:prefix": ["runs/*"]}}}]}]  # fmt: skip

    assert decide(grant("StringLike"), "s3:ListBucket", "arn:aws:s3:::b", {}) == IMPLICIT_DENY
    assert decide(grant("StringLikeIfExists"), "s3:ListBucket", "arn:aws:s3:::b", {}) == ALLOWED
    assert decide(grant("StringLikeIfExists"), "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "raw/"}) == IMPLICIT_DENY
    assert decide(grant("StringLike"), "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "runs/a"}) == ALLOWED
