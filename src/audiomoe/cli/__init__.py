"""Command-line interface: ``audiomoe <command>``; each command is a module in ``audiomoe.cli.commands``."""
