"""A small IAM policy evaluator: one account, identity policies and resource policies, no SCPs or boundaries.

The rules (IAM User Guide, "Policy evaluation logic",
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
an explicit Deny wins, else an Allow, else the request is implicitly denied. Action names are case-insensitive
globs; Resource/NotResource ARNs are matched segment by segment with `*` and `?` (a wildcard never spans the
`:` between service, region and account); conditions support the string, ARN, Bool, numeric and Null operators,
`...IfExists`, `ForAnyValue:`/`ForAllValues:` and policy variables `${key}` (IAM User Guide, "Condition operators",
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html).
A condition key absent from the request makes its condition false, except for the negated operators,
`...IfExists` and `ForAllValues:` ("the condition evaluates to true if the key is not present").

tests/unit/test_iam_evaluate.py cross-checks this module against `@cloud-copilot/iam-simulate` on the policies
`cdk synth` writes for this app.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

ALLOWED = "Allowed"
EXPLICIT_DENY = "ExplicitlyDenied"
IMPLICIT_DENY = "ImplicitlyDenied"

_VARIABLE = re.compile(r"\$\{([^}]+)\}")
_STAR, _QMARK = "\x00STAR\x00", "\x00QMARK\x00"  # a literal * or ? (from ${*}, ${?} or a variable's value)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


@lru_cache(maxsize=8192)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern:
    out = []
    for part in re.split(f"({_STAR}|{_QMARK})", pattern):
        if part == _STAR:
            out.append(r"\*")
        elif part == _QMARK:
            out.append(r"\?")
        else:
            out.append("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in part))
    return re.compile("^" + "".join(out) + "$", re.S | (re.I if ignore_case else 0))


def _like(pattern: str, value: str, ignore_case: bool = False) -> bool:
    return _glob(pattern, ignore_case).match(value) is not None


def _substitute(value: str, context: dict) -> str | None:
    """Policy variables replaced from the request context; None when one names an absent key (the element then
    matches nothing)."""
    if "${" not in value:
        return value
    missing = False

    def replace(match: re.Match) -> str:
        nonlocal missing
        key = match.group(1)
        if key in ("*", "?", "$"):
            return {"*": _STAR, "?": _QMARK, "$": "$"}[key]
        default = None
        if "," in key:  # ${key, 'default'}
            key, default = (s.strip() for s in key.split(",", 1))
            default = default.strip("'")
        found = context.get(key, default)
        if found is None or isinstance(found, list):
            missing = True
            return ""
        return str(found).replace("*", _STAR).replace("?", _QMARK)

    out = _VARIABLE.sub(replace, value)
    return None if missing else out


def arn_matches(pattern: str, arn: str) -> bool:
    if pattern == "*":
        return True
    p, a = pattern.split(":", 5), arn.split(":", 5)
    if len(p) != 6 or len(a) != 6:
        return _like(pattern, arn)
    return all(_like(x, y) for x, y in zip(p, a))


def _num(x: Any) -> float:
    return float(x)


_OPERATORS = {
    "StringEquals": lambda p, v: p == v,
    "StringEqualsIgnoreCase": lambda p, v: p.lower() == v.lower(),
    "StringLike": _like,
    "ArnEquals": arn_matches,
    "ArnLike": arn_matches,
    "Bool": lambda p, v: p.lower() == v.lower(),
    "NumericEquals": lambda p, v: _num(v) == _num(p),
    "NumericLessThan": lambda p, v: _num(v) < _num(p),
    "NumericLessThanEquals": lambda p, v: _num(v) <= _num(p),
    "NumericGreaterThan": lambda p, v: _num(v) > _num(p),
    "NumericGreaterThanEquals": lambda p, v: _num(v) >= _num(p),
}
_NEGATED = {"StringNotEquals": "StringEquals", "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
            "StringNotLike": "StringLike", "ArnNotEquals": "ArnEquals", "ArnNotLike": "ArnLike",
            "NumericNotEquals": "NumericEquals"}  # fmt: skip


def _condition_holds(operator: str, key: str, policy_values: Any, context: dict) -> bool:
    qualifier, _, op = operator.rpartition(":")
    if_exists = op.endswith("IfExists")
    op = op.removesuffix("IfExists")
    values = [str(v) for v in _as_list(policy_values)]
    if op == "Null":
        return (key not in context) == (values[0].lower() == "true")
    negated = op in _NEGATED
    base = _NEGATED.get(op, op)
    if base not in _OPERATORS:
        raise ValueError(f"condition operator {operator} is not supported")
    if key not in context:
        return if_exists or negated or qualifier == "ForAllValues"
    patterns = [s for s in (_substitute(v, context) for v in values) if s is not None]

    def one(value: str) -> bool:
        hit = any(_OPERATORS[base](p, value) for p in patterns)
        return not hit if negated else hit

    raw = context[key]
    if isinstance(raw, (list, tuple)) and not qualifier:
        # a multivalued key (e.g. states:StateMachineQualifier, aws:TagKeys) needs ForAnyValue:/ForAllValues:; a
        # single-valued operator does not match it ("Single-valued vs. multivalued context keys",
        # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html)
        return False
    raw_values = raw if isinstance(raw, (list, tuple)) else [raw]
    request_values = [str(v).lower() if isinstance(v, bool) else str(v) for v in raw_values]
    if qualifier == "ForAllValues":
        return all(one(v) for v in request_values)
    return any(one(v) for v in request_values)


def _principal_matches(element: Any, principal: dict | None) -> bool:
    """`Principal` of a resource policy against the caller, e.g. {"Service": "cloudwatch.amazonaws.com"} or
    {"AWS": "arn:aws:iam::123456789012:role/x"}; "*" (or {"AWS": "*"}) is everyone."""
    if element == "*":
        return True
    if principal is None:
        return False
    for kind, wanted in element.items():
        for w in _as_list(wanted):
            if kind == "AWS" and w == "*":
                return True
            if kind == "AWS" and principal.get("AWS") and (
                w == principal["AWS"] or w in (principal.get("Account"), f"arn:aws:iam::{principal.get('Account')}:root")
            ):
                return True
            if kind != "AWS" and principal.get(kind) == w:
                return True
    return False


def statement_applies(st: dict, action: str, resource: str, context: dict, principal: dict | None = None) -> bool:
    if "Principal" in st and not _principal_matches(st["Principal"], principal):
        return False
    if "NotPrincipal" in st and _principal_matches(st["NotPrincipal"], principal):
        return False
    if "Action" in st:
        if not any(_like(a, action, True) for a in _as_list(st["Action"])):
            return False
    elif any(_like(a, action, True) for a in _as_list(st.get("NotAction", []))):
        return False
    if "Resource" in st:
        patterns = [_substitute(r, context) for r in _as_list(st["Resource"])]
        if not any(p is not None and arn_matches(p, resource) for p in patterns):
            return False
    elif "NotResource" in st:
        patterns = [_substitute(r, context) for r in _as_list(st["NotResource"])]
        if any(p is not None and arn_matches(p, resource) for p in patterns):
            return False
    return all(_condition_holds(op, key, values, context)
               for op, keys in st.get("Condition", {}).items() for key, values in keys.items())  # fmt: skip


def decide(policies: Iterable[dict], action: str, resource: str, context: dict | None = None,
           principal: dict | None = None) -> str:
    """ALLOWED, EXPLICIT_DENY or IMPLICIT_DENY for one request against every statement of `policies`."""
    context = context or {}
    allowed = False
    for policy in policies:
        for st in _as_list(policy.get("Statement", [])):
            if statement_applies(st, action, resource, context, principal):
                if st["Effect"] == "Deny":
                    return EXPLICIT_DENY
                allowed = True
    return ALLOWED if allowed else IMPLICIT_DENY
