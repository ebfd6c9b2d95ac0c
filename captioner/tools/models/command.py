"""``captioner models``: the model registry from the command line.

    captioner models list [NAME] [--json]
    captioner models show NAME [VERSION]
    captioner models register PATH --name NAME [--parent REF]     (prints the new version as its last line)
    captioner models promote NAME VERSION [--canary PERCENT] [--force] [--rescore]
    captioner models rollback NAME [--reason TEXT]
    captioner models compare NAME [--server URL]

The registry is the config's ``registry.path`` or ``--registry DIR`` (see ``captioner/registry/``). ``promote``
runs the deploy gate first: candidate and production scored on the gate set (``gate.annotations`` +
``gate.images``) with ``captioner eval``'s evaluator, refused (exit 1, with the scores side by side) unless the
candidate's CIDEr is >= production's - ``gate.max_regression`` and >= ``gate.min_cider``; ``--force`` promotes
anyway and the registry records it. ``--canary P`` makes the version the ``canary`` at P % of the traffic
instead. ``rollback`` moves production back to the version before it and clears the canary. Servers with the
same ``registry.path`` follow every change within ``registry.poll_s``.

Exit status: 0 done, 1 refused (gate, or a change the aliases don't allow), 2 usage (unknown name or version,
no registry, no gate set without --force).
"""

from __future__ import annotations

import argparse
import getpass
import json
import shlex
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captioner.config import Settings
from captioner.registry.aliases import AliasError, Aliases
from captioner.registry.files import RegistryLockTimeout
from captioner.registry.gate import GATE_METRIC
from captioner.registry.store import Registry, RegistryError, Version
from captioner.tools.command_line import add_command, add_config_argument, settings_of
from captioner.tools.models.compare import compare
from captioner.tools.models.promote import promote


def add_models_command(commands: Any) -> None:
    """Register ``models`` and its actions on the top-level subparsers ``commands``."""
    models = add_command(
        commands,
        "models",
        help="the model registry: list, show, register, promote (gated), rollback, compare",
        doc=__doc__,
    )
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    add_config_argument(common)
    common.add_argument("--registry", metavar="DIR", help="the registry folder (default: the config's registry.path)")

    def action(name: str, run: Callable[[argparse.Namespace, Registry, Settings], int], text: str) -> Any:
        parser = actions.add_parser(name, parents=[common], help=text, description=text)
        parser.set_defaults(run=lambda args: _run(args, run))
        return parser

    listing = action("list", _list, "every version with its aliases and scores")
    listing.add_argument("name", nargs="?", help="only this model name")
    listing.add_argument("--json", action="store_true", help="a JSON array, one object per version")
    show = action("show", _show, "a model's aliases and history, or one version's record (JSON)")
    show.add_argument("name")
    show.add_argument("version", nargs="?", type=int)
    register = action("register", _register, "copy a model folder in as the next version")
    register.add_argument("path", type=Path, help="a model folder (`captioner train --out`, `init-model --out`)")
    register.add_argument("--name", required=True, help="model name in the registry")
    register.add_argument("--parent", help="lineage, if the training card doesn't give it (e.g. models:/NAME/3)")
    promoting = action("promote", promote, "gate a version, then make it production (or the canary)")
    promoting.add_argument("name")
    promoting.add_argument("version", type=int)
    promoting.add_argument("--canary", type=float, metavar="PERCENT", help="the canary at this share of traffic")
    promoting.add_argument("--force", action="store_true", help="promote even if the gate refuses (recorded)")
    promoting.add_argument("--rescore", action="store_true", help="score again even if stored scores match")
    rollback = action("rollback", _rollback, "production back to the previous production version; clears the canary")
    rollback.add_argument("name")
    rollback.add_argument("--reason", default="", help="why, for the record")
    comparing = action("compare", compare, "production and canary side by side (registry scores, live figures)")
    comparing.add_argument("name")
    comparing.add_argument("--server", metavar="URL", help="also show a running server's live figures")
    comparing.add_argument("--api-key", help="an admin-scope API key for --server (default: $CAPTIONER_API_KEY)")


def _run(args: argparse.Namespace, run: Callable[[argparse.Namespace, Registry, Settings], int]) -> int:
    settings = settings_of(args)
    root = args.registry or settings.registry.path
    if not root:
        print("no registry: set registry.path in the config or pass --registry DIR", file=sys.stderr)
        return 2
    args.by = who(args)
    try:
        return run(args, Registry(root), settings)
    except RegistryError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (AliasError, RegistryLockTimeout) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1


def who(args: argparse.Namespace) -> str:
    """For the records: the command line, and the user and host it ran as."""
    argv = getattr(args, "argv", None) or sys.argv[1:]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        user = "?"
    return f"captioner {shlex.join(argv)} ({user}@{socket.gethostname()})"


def version_summary(version: Version, aliases: Aliases) -> dict[str, Any]:
    """One ``list --json`` object."""
    summary: dict[str, Any] = {
        "name": version.name,
        "version": version.number,
        "aliases": aliases.of(version.number),
        "parent": version.meta.get("parent"),
        "distilled_from": version.meta.get("distilled_from"),  # a distilled model's teacher
        "scores": version.scores,
        "created": version.meta.get("created"),
        "untrained": bool(version.meta.get("untrained")),
        "forced": bool(version.meta.get("forced")),
        "path": str(version.model_dir),
    }
    if aliases.canary is not None and aliases.canary.version == version.number:
        summary["canary_weight"] = aliases.canary.weight
    return summary


def _list(args: argparse.Namespace, registry: Registry, settings: Settings) -> int:
    names = [args.name] if args.name else registry.names()
    rows = []
    for name in names:
        aliases = registry.aliases(name)
        rows += [version_summary(registry.version(name, n), aliases) for n in registry.versions(name)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models in {registry.root}")
        return 0
    print(f"{'NAME':<16} {'VERSION':>7}  {'ALIASES':<20} {GATE_METRIC:>8}  {'CREATED':<25} PARENT")
    for row in rows:
        aliases_text = ",".join(row["aliases"]) + (f" ({row['canary_weight']:g}%)" if "canary_weight" in row else "")
        cider = row["scores"].get(GATE_METRIC)
        print(
            f"{row['name']:<16} {row['version']:>7}  {aliases_text or '-':<20} "
            f"{'-' if cider is None else f'{cider:.4f}':>8}  {row['created'] or '-':<25} {row['parent'] or '-'}"
        )
    return 0


def _show(args: argparse.Namespace, registry: Registry, settings: Settings) -> int:
    aliases = registry.aliases(args.name)
    if args.version is None:
        if not registry.versions(args.name):
            raise RegistryError(f"no model called {args.name!r} is registered in {registry.root}")
        document: dict[str, Any] = {"name": args.name, "versions": registry.versions(args.name), **aliases.to_json()}
    else:
        version = registry.version(args.name, args.version)
        document = {**version.meta, "aliases": aliases.of(version.number), "path": str(version.model_dir)}
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


def _register(args: argparse.Namespace, registry: Registry, settings: Settings) -> int:
    parent = args.parent
    if parent is not None and parent.isdigit():
        parent = f"models:/{args.name}/{registry.version(args.name, int(parent)).number}"
    version = registry.register(args.path, args.name, command=args.by, parent=parent)
    print(f"registered {args.path} as {version.ref} (parent: {version.meta.get('parent') or 'unknown'})")
    print(version.number)  # the last line: scripts read the new version from here
    return 0


def _rollback(args: argparse.Namespace, registry: Registry, settings: Settings) -> int:
    before = registry.aliases(args.name)
    after = registry.update_aliases(args.name, lambda a: a.rolled_back(by=args.by, reason=args.reason))
    cleared = f"; canary {before.canary.version} cleared" if before.canary is not None else ""
    print(f"{args.name}: production is version {after.production} again (was {before.production}){cleared}")
    return 0
