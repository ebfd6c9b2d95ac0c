"""``captioner caption PATH...``: caption image files and folders offline, or through a running server.

- Folders are searched recursively for image files (by extension; hidden files and folders are left out);
  files named on the command line are always tried, whatever their extension.
- Results go to ``--out`` (``.jsonl`` or ``.csv``, see ``batch_output``) as each image finishes. Re-running
  with the same ``--out`` skips every path already in it, so a long run can be stopped and resumed.
- A file that can't be captioned (not an image, corrupt, too large, unreadable) is reported on stderr with the
  API's error code and skipped; the summary counts it and the exit status is 1. Nothing is written for it, so
  a later run tries it again.
- Without ``--server`` the model runs in this process through the server's own batching code; with
  ``--server URL`` the files are posted to that server, ``--concurrency`` at a time.

Exit status: 0 when every file was captioned (or already done), 1 when some failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.serving.options import parse_num_captions
from captioner.tools.caption.backends import (
    BackendUnavailable,
    CaptionBackend,
    FileFailed,
    LocalBackend,
    ServerBackend,
    default_api_key,
    offline_settings,
)
from captioner.tools.caption.output import CaptionRecord, OutputError, open_output, path_key
from captioner.tools.command_line import add_command, runs

# What a folder search picks up. HEIC and AVIF are listed so that a phone's folder reports them (the server
# names the format it can't read) instead of skipping them silently.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".ico",
     ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".heic", ".heif"}
)  # fmt: skip


@dataclass(frozen=True)
class Failure:
    path: str
    code: str
    message: str


def find_images(arguments: Sequence[str]) -> tuple[list[Path], list[Failure]]:
    """The files to caption, in a stable order without duplicates, and the arguments that don't exist."""
    found: list[Path] = []
    missing: list[Failure] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = path_key(str(path))
        if key not in seen:
            seen.add(key)
            found.append(path)

    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            for folder, subfolders, files in os.walk(path):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        add(Path(folder) / name)
        elif path.exists():
            add(path)
        else:
            missing.append(Failure(argument, "not_found", "no such file or folder"))
    return found, missing


async def collect_captions(
    paths: Sequence[Path],
    backend: CaptionBackend,
    *,
    on_failure: Callable[[Failure], None] = lambda failure: None,
    on_progress: Callable[[], None] = lambda: None,
) -> tuple[dict[str, CaptionRecord], list[Failure]]:
    """``caption_files`` kept in memory: each path's record (keyed by ``path_key``) and the failures, each of which
    is also passed to ``on_failure`` as it happens."""
    records: dict[str, CaptionRecord] = {}
    failures: list[Failure] = []

    def failed(failure: Failure) -> None:
        failures.append(failure)
        on_failure(failure)

    await caption_files(paths, backend, on_record=lambda record: records.__setitem__(path_key(record.path), record),
                        on_failure=failed, on_progress=on_progress)  # fmt: skip
    return records, failures


async def caption_files(
    paths: Sequence[Path],
    backend: CaptionBackend,
    *,
    on_record: Callable[[CaptionRecord], None],
    on_failure: Callable[[Failure], None],
    on_progress: Callable[[], None] = lambda: None,
) -> None:
    """Caption ``paths`` with ``backend.concurrency`` requests in flight; one bad file never stops the rest."""
    queue = iter(paths)

    async def worker() -> None:
        for path in queue:  # a shared iterator: each path goes to exactly one worker
            try:
                record = await backend.caption(path)
            except FileFailed as failed:
                on_failure(Failure(str(path), failed.code, failed.message))
            else:
                on_record(record)
            on_progress()

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(backend.concurrency, len(paths)))):
            group.create_task(worker())


async def open_backend(
    settings: Settings,
    *,
    server: str | None,
    api_key: str | None,
    num_captions: int | None,
    batch_size: int | None,
    concurrency: int,
) -> CaptionBackend:
    if server is not None:
        if batch_size is not None:
            print("note: --batch-size is for local captioning; the server batches by its own config", file=sys.stderr)
        remote = ServerBackend(
            server,
            num_captions=num_captions,
            api_key=api_key,
            concurrency=concurrency,
            max_bytes=settings.limits.max_body_bytes,
        )
        try:
            await remote.check()
        except BackendUnavailable:
            await remote.aclose()
            raise
        return remote
    local = offline_settings(settings, batch_size)
    count = parse_num_captions(num_captions, local.generation.num_captions, local.generation.max_num_captions)
    return await LocalBackend.start(local, count)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``caption`` and ``eval``: local batching, or a server to send the images to."""
    parser.add_argument(
        "--batch-size", type=positive, help="images per generate call, locally (default: batching.max_batch_size)"
    )
    parser.add_argument(
        "--server", metavar="URL", help="send the images to this running server instead of loading the model here"
    )
    parser.add_argument(
        "--api-key", default=default_api_key(), help="API key for --server (default: $CAPTIONER_API_KEY)"
    )
    parser.add_argument("--concurrency", type=positive, default=8, help="requests in flight with --server (default: 8)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, and folders to search recursively")
    parser.add_argument(
        "--out", help="results file, .jsonl or .csv (default: JSON Lines on stdout); paths already in it are skipped"
    )
    parser.add_argument("--num-captions", type=positive, help="captions per image (default: generation.num_captions)")
    add_client_arguments(parser)


def add_caption_command(commands: Any) -> None:
    """Register ``caption`` on the top-level subparsers ``commands``."""
    caption = add_command(
        commands, "caption", help="caption image files and folders (offline, or through --server)", doc=__doc__
    )
    add_arguments(caption)
    runs(caption, run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_run(args, settings))
    except KeyboardInterrupt:
        print("interrupted: every image done so far is in --out; run the same command to resume", file=sys.stderr)
        return 130


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    started = time.monotonic()
    try:
        output = open_output(args.out)
    except OutputError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    with output:
        paths, failures = find_images(args.paths)
        todo = [p for p in paths if path_key(str(p)) not in output.done]
        skipped = len(paths) - len(todo)
        for failure in failures:
            _report(failure, print)
        captioned = 0
        if todo:
            try:
                backend = await open_backend(
                    settings,
                    server=args.server,
                    api_key=args.api_key,
                    num_captions=args.num_captions,
                    batch_size=args.batch_size,
                    concurrency=args.concurrency,
                )
            except (BackendUnavailable, CaptionerError) as exc:
                print(str(exc), file=sys.stderr)
                return 2
            progress: Any = tqdm(total=len(todo), unit="img", desc="captioning", file=sys.stderr, disable=None)

            def record(result: CaptionRecord) -> None:
                nonlocal captioned
                output.write(result)
                captioned += 1

            def failed(failure: Failure) -> None:
                failures.append(failure)
                _report(failure, lambda text, **kw: progress.write(text, file=sys.stderr))

            try:
                await caption_files(todo, backend, on_record=record, on_failure=failed, on_progress=progress.update)
            finally:
                progress.close()
                await backend.aclose()
    elapsed = time.monotonic() - started
    where = f" (in {args.out})" if skipped else ""
    rate = f", {captioned / elapsed:.1f} images/s" if captioned and elapsed > 0 else ""
    print(
        f"{len(paths)} images found: {captioned} captioned, {skipped} already done{where}, "
        f"{len(failures)} failed ({elapsed:.1f} s{rate})",
        file=sys.stderr,
    )
    return 1 if failures else 0


def _report(failure: Failure, write: Callable[..., Any]) -> None:
    write(f"failed: {failure.path}: {failure.code}: {failure.message}", file=sys.stderr)


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
