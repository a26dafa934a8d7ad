"""``audiomoe config``: the configs shipped with the package (as torchtune's ``tune ls`` / ``tune cp``).

    audiomoe config list                          # every shipped config, with its first comment line
    audiomoe config show paper-moe-qwen3-1.7b     # print it
    audiomoe config copy demo my-demo.yaml        # copy it to edit; then audiomoe train --config my-demo.yaml

Every ``--config`` option takes a shipped config name as well as a path.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="list, show or copy the configs shipped with the package",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="every shipped config").set_defaults(func=run_list)
    show = actions.add_parser("show", help="print a shipped config")
    show.add_argument("name")
    show.set_defaults(func=run_show)
    copy = actions.add_parser("copy", help="copy a shipped config to a file or folder, to edit")
    copy.add_argument("name")
    copy.add_argument(
        "dest", type=Path, help="file, or existing folder (the copy keeps the config's file name)"
    )
    copy.add_argument("--force", action="store_true", help="overwrite an existing file")
    copy.set_defaults(func=run_copy)


def _summary(path: Path) -> str:
    first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "")
    return first.lstrip("# ").strip()


def run_list(args: argparse.Namespace) -> int:
    from audiomoe.config import shipped_configs

    shipped = shipped_configs()
    width = max(map(len, shipped), default=0)
    for name, path in shipped.items():
        print(f"{name:<{width}}  {_summary(path)}")
    return 0


def _shipped(name: str) -> Path:
    from audiomoe.config import ConfigError, shipped_configs

    shipped = shipped_configs()
    key = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if key not in shipped:
        raise ConfigError(f"no shipped config {name!r}; shipped: {', '.join(shipped)}")
    return shipped[key]


def run_show(args: argparse.Namespace) -> int:
    print(_shipped(args.name).read_text(), end="")
    return 0


def run_copy(args: argparse.Namespace) -> int:
    source = _shipped(args.name)
    dest = args.dest / source.name if args.dest.is_dir() else args.dest
    if dest.exists() and not args.force:
        raise FileExistsError(f"{dest} exists; choose another destination or pass --force to overwrite it")
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"{dest.parent} is not a folder; create it first or copy elsewhere")
    shutil.copyfile(source, dest)
    print(f"copied {source.stem} to {dest}")
    return 0
