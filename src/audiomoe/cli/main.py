"""``audiomoe`` entry point. Commands are discovered from ``audiomoe.cli.commands`` (a registry by module).

A command module defines ``register(subparsers) -> None``; its parser sets ``func(args) -> int | None``.
User-facing errors (bad config, bad input file) are printed as one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from audiomoe import __version__
from audiomoe.cli import commands

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
)


def command_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(commands.__path__))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``) one with just that command: importing every command module pulls in
    torch and transformers, which costs seconds a quick ``audiomoe data validate`` should not pay."""
    parser = argparse.ArgumentParser(prog="audiomoe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"audiomoe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        if only is None or name == only:
            importlib.import_module(f"{commands.__name__}.{name}").register(sub)
    return parser


def _requested_command(argv: list[str]) -> str | None:
    first = next((a for a in argv if not a.startswith("-")), None)
    name = first.replace("-", "_") if first else None
    return name if name in command_modules() else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"audiomoe {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
