"""``audiomoe`` entry point. Commands are discovered from ``audiomoe.cli.commands`` (a registry by module).

A command module defines ``register(subparsers) -> None``; its parser sets ``func(args) -> int | None``.
Error contract: every user-facing error is one line (what, where, the fix), never a traceback. Exit codes:
0 success; 2 bad input (config, manifest, audio, option values, a changed config on ``--resume``); 3 the
environment (disk full, read-only or unwritable folders, other storage errors); 1 a bug: the traceback is printed
with a request to report it together with the output of ``audiomoe env``; 130 interrupted. ``--debug`` re-raises.
``--plugin MODULE_OR_FILE`` (before the command, repeatable) imports user code first (:mod:`audiomoe.plugins`),
so its registered adapters, encoders, tasks and metrics are known to every command.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from audiomoe import __version__
from audiomoe.allocator import configure_cpu_allocator
from audiomoe.cli import commands
from audiomoe.plugins import PluginError, load_plugins

# Bad input (exit 2): the user can fix it by changing what they gave.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    UnicodeError,
)
# The machine (exit 3): disk full, read-only, permissions, I/O errors.
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (OSError,)
BAD_INPUT, ENVIRONMENT, BUG = 2, 3, 1


def exit_code(err: BaseException) -> int:
    """The exit code of an exception under the error contract (see the module docstring)."""
    if isinstance(err, USER_ERRORS):
        return BAD_INPUT
    if isinstance(err, ENVIRONMENT_ERRORS):
        return ENVIRONMENT
    return BUG


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a multi-line message keeps its first line and counts the rest)."""
    lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    more = f" (+{len(lines) - 1} more lines; rerun with --debug)" if len(lines) > 1 else ""
    return lines[0] + more


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
    configure_cpu_allocator()  # before any tensor exists (torch reads it at its first CPU allocation)
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
    except KeyboardInterrupt:
        print(f"audiomoe {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        code = exit_code(err)
        if code == BUG:
            traceback.print_exc()
            print(
                f"audiomoe {args.command}: internal error ({type(err).__name__}: {one_line(err)}); this is a bug: "
                "please report it with the traceback above and the output of `audiomoe env`",
                file=sys.stderr,
            )
        else:
            print(f"audiomoe {args.command}: error: {one_line(err)}", file=sys.stderr)
        return code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
