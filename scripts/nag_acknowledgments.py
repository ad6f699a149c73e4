#!/usr/bin/env python3
"""Print every cdk-nag acknowledgment of the app as a Markdown table (for the README).

    python3 scripts/nag_acknowledgments.py [-c key=value ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> int:
    import aws_cdk as cdk

    from stacks.app import build_app

    context: dict[str, str] = {"nag": "false", "aws:cdk:bundling-stacks": []}  # type: ignore[dict-item]
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--context"):
            key, _, value = next(args).partition("=")
            context[key] = value
    stack = build_app(cdk.App(context=context))
    print("| construct | finding | reason |")
    print("| --- | --- | --- |")
    for ack in stack.nag_acknowledgments:
        path = ack.path.removeprefix(f"{stack.stack_name}/")
        print(f"| `{path}` | `{ack.rule}` | {ack.reason} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
