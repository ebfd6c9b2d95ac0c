"""The ``captioner`` command line: ``serve``, ``init-model`` and the offline tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from captioner import __version__
from captioner.config import ROLES, ConfigError, Settings
from captioner.tools.caption.command import add_caption_command
from captioner.tools.cascade.command import add_cascade_commands
from captioner.tools.command_line import add_config_argument, settings_of
from captioner.tools.data_command import add_data_commands
from captioner.tools.drift_reference import add_drift_commands
from captioner.tools.eval.command import add_eval_command
from captioner.tools.feedback_export import add_feedback_commands
from captioner.tools.models.command import add_models_command
from captioner.tools.optimize.command import add_optimize_command
from captioner.tools.train.command import add_train_commands
from captioner.tools.usage_export import add_usage_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description="Production image-captioning server (BLIP).")
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server")
    add_config_argument(serve)
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="all: accept and caption; api: accept and answer, no model; worker: caption the job queue "
        "(api and worker need jobs.queue: redis)",
    )
    serve.set_defaults(run=_serve)

    init = commands.add_parser("init-model", help="write an untrained BLIP (random weights) for tests and benchmarks")
    # init_model.SIZES (not imported here: it imports torch, kept off `captioner --help`).
    init.add_argument(
        "--size",
        choices=("tiny", "mini", "small", "base"),
        default="tiny",
        help="tiny: tests; mini: a CPU teacher (trains in minutes); small: a CPU benchmark; base: BLIP-base's shape",
    )
    init.add_argument("--out", required=True, help="folder to write the model into")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(run=_init_model)

    for add_tool_commands in (
        add_caption_command,
        add_eval_command,
        add_data_commands,
        add_train_commands,
        add_optimize_command,
        add_models_command,
        add_feedback_commands,
        add_drift_commands,
        add_cascade_commands,
        add_usage_commands,
    ):
        add_tool_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for records of who ran what (models)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _init_model(args: argparse.Namespace) -> int:
    from captioner.tools.init_model import write_untrained_model  # torch: kept off `captioner --help`

    out = write_untrained_model(args.out, size=args.size, seed=args.seed)
    print(f"wrote an untrained BLIP ({args.size}, seed {args.seed}) to {out}")
    print(f"serve it with: CAPTIONER_MODEL__PATH={out} captioner serve")
    return 0


def _serve(args: argparse.Namespace) -> int:
    def load() -> Settings:
        settings = settings_of(args)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        return settings.replace("server", **overrides) if overrides else settings

    settings = load()
    from captioner.server import serve  # the app: kept off the light commands

    # A role the config can't serve, or an exposed port without keys, stops in one line (ConfigError, exit 2).

    # SIGHUP re-reads the same file, environment and flags (A/B weights; see captioner/serving/variants.py).
    return serve(settings, reload_settings=load, role=args.role)
