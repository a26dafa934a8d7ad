"""``audiomoe env``: the machine and software, and what audiomoe chooses on it (precision, threads).

    audiomoe env                 # aligned "key: value" lines, to paste next to a figure or into an issue
    audiomoe env --json env.json

Offline and quick (a second or two: torch is imported, the other packages' versions are read from metadata; the
bf16 probe runs once per machine and torch version, then its verdict is read from ``~/.cache/audiomoe``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "env",
        help="print the machine, the software versions and the precision/threads audiomoe picks here",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", type=Path, help="also write the same as JSON here")
    parser.set_defaults(func=run)


def format_info(info: dict[str, Any]) -> str:
    """``key: value`` lines with the values aligned; nested dicts as ``k=v`` pairs, lists comma-joined."""

    def show(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k}={show(v)}" for k, v in value.items())
        if isinstance(value, list):
            return ", ".join(map(str, value)) or "none"
        return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    width = max(map(len, info)) + 1
    return "\n".join(f"{key + ':':<{width}} {show(value)}" for key, value in info.items())


def run(args: argparse.Namespace) -> int:
    from audiomoe import runtime

    info = runtime.machine_info()
    print(format_info(info))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
