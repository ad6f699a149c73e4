#!/usr/bin/env python3
"""The app's cdk-nag acknowledgments as a Markdown table, kept in stacks/README.md between markers.

    python3 scripts/nag_acknowledgments.py            # print the table
    python3 scripts/nag_acknowledgments.py --write    # rewrite the table in stacks/README.md
    python3 scripts/nag_acknowledgments.py --check    # exit 1 if stacks/README.md lacks one the app makes
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DOC = ROOT / "stacks" / "README.md"
BEGIN, END = "<!-- nag-acknowledgments:begin -->", "<!-- nag-acknowledgments:end -->"


def current_table() -> str:
    import aws_cdk as cdk

    from stacks import nag
    from stacks.app import build_app

    stack = build_app(cdk.App(context={"nag": "false", "aws:cdk:bundling-stacks": []}))
    return nag.ack_table(stack, [s.name for s in stack.sources])


def documented_table(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip() + "\n"


def main(argv: list[str]) -> int:
    table = current_table()
    if "--write" in argv:
        text = DOC.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        DOC.write_text(text[:start] + "\n" + table + text[end:])
    elif "--check" in argv:
        documented = documented_table(DOC.read_text()).splitlines()
        missing = [row for row in table.splitlines() if row not in documented]
        if missing:
            print(f"{DOC} lacks cdk-nag acknowledgments the app makes; run {__file__} --write:", *missing,
                  sep="\n", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
