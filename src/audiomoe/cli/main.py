"""``audiomoe`` entry point. Commands are discovered from ``audiomoe.cli.commands`` (a registry by module).

A command module defines ``register(subparsers) -> None``; its parser sets ``func(args) -> int | None``.
User-facing errors (bad config, bad input file) are printed as one line and exit 2, never a traceback.
``--plugin MODULE_OR_FILE`` (before the command, repeatable) imports user code first (:mod:`audiomoe.plugins`),
so its registered adapters, encoders, tasks and metrics are known to every command.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from audiomoe import __version__
from audiomoe.cli import commands
from audiomoe.plugins import PluginError, load_plugins

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
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import this module (dotted name or .py file) first, e.g. one that registers an adapter or a task "
        "(repeatable)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        if only is None or name == only:
            importlib.import_module(f"{commands.__name__}.{name}").register(sub)
    return parser


def _global_options(argv: list[str]) -> tuple[str | None, list[str]]:
    """The command name and the ``--plugin`` values, read from the options before the command."""
    plugins: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--plugin":
            value = next(tokens, None)
            plugins += [value] if value is not None else []  # a missing value: argparse says so below
        elif token.startswith("--plugin="):
            plugins.append(token.split("=", 1)[1])
        elif not token.startswith("-"):
            name = token.replace("-", "_")
            return (name if name in command_modules() else None), plugins
    return None, plugins


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, plugins = _global_options(argv)
    try:
        load_plugins(plugins)  # before the parsers: a command may list registry names as choices
    except PluginError as err:
        if "--debug" in argv:
            raise
        print(f"audiomoe: error: {err}", file=sys.stderr)
        return 2
    parser = build_parser(command)
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
