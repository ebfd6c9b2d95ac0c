"""How an offline command joins ``captioner``'s command line: one way to add it, and the same ``--config``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from captioner.config import Settings, load_settings

SettingsRun = Callable[[argparse.Namespace, Settings], int]


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: config.yaml if it exists)")


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings a command runs with: ``--config``, else ./config.yaml if present, then the environment."""
    path = args.config
    if path is None and os.path.exists("config.yaml"):
        path = "config.yaml"
    return load_settings(path)


def add_command(commands: Any, name: str, *, help: str, doc: str | None) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` shows ``doc`` (its module's docstring) past the first paragraph."""
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        help=help,
        description=doc.split("\n\n", 1)[1] if doc and "\n\n" in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def runs(parser: argparse.ArgumentParser, run: SettingsRun) -> None:
    """Give ``parser`` the ``--config`` option and ``run(args, settings)`` as what it does."""
    add_config_argument(parser)
    parser.set_defaults(run=lambda args: run(args, settings_of(args)))
