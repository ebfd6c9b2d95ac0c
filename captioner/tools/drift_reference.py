"""``captioner drift save-reference``: freeze what "normal" looks like, so restarts compare against it.

Without a reference file every start learns its reference from the first ``drift.reference_size`` requests,
so a node restarted in the middle of an incident would call the incident normal. Two ways to make one:

- ``--server URL``: copy a running server's reference, learnt from its first requests (inputs and captions).
  Run it against a node that has served a known-good stretch of traffic. With auth on, the key (an admin key:
  ``auth.admin_keys``) is read from the ``CAPTIONER_API_KEY`` environment variable (never a command-line
  argument: those show in ``ps``).
- ``--images DIR``: compute the input features (size, brightness, colourfulness, format, bytes) of a folder
  of representative images, with the server's own decode and feature code. No model runs, so the caption
  features (confidence, length, vocabulary) are left out, and a server using the file learns those from its
  first requests.

Then point ``drift.reference_path`` at the file.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from captioner.config import Settings
from captioner.errors import CaptionerError
from captioner.observability.drift_features import InputFeatures
from captioner.observability.psi import DriftMonitor
from captioner.tools.command_line import add_command, runs

# Imported inside the functions that need them: images pulls in torch, which `captioner --help` should not pay.

API_KEY_ENV = "CAPTIONER_API_KEY"
# Below this, the reference's own sampling noise is a visible share of the alert threshold.
_FEW_IMAGES = 200


class DriftReferenceError(RuntimeError):
    """Why no reference was written, as one line for the operator."""


def add_drift_commands(commands: Any) -> None:
    """Register ``drift save-reference`` on the top-level subparsers ``commands``."""
    drift = commands.add_parser("drift", help="drift monitoring tools")
    actions = drift.add_subparsers(dest="drift_command", required=True, metavar="ACTION")
    save = add_command(
        actions, "save-reference", help="write a drift reference file for drift.reference_path", doc=__doc__
    )
    source = save.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", metavar="URL", help="copy the reference of the server at URL")
    source.add_argument("--images", metavar="DIR", help="compute input features from the images under DIR")
    save.add_argument("--out", required=True, metavar="FILE", help="where to write the reference (JSON)")
    runs(save, save_reference)  # --images: drift.bins and limits.max_pixels come from the config


def save_reference(args: argparse.Namespace, settings: Settings) -> int:
    from captioner.rollout.drift_watch import write_reference  # torch: kept off `captioner --help`

    try:
        if args.server:
            reference = reference_from_server(args.server, os.environ.get(API_KEY_ENV))
        else:
            reference = reference_from_images(Path(args.images), settings)
        try:
            DriftMonitor(reference=reference)  # the server will accept it
        except (ValueError, KeyError, TypeError) as exc:
            raise DriftReferenceError(f"not a usable drift reference: {exc}") from exc
    except DriftReferenceError as exc:
        print(f"drift save-reference: {exc}", file=sys.stderr)
        return 1
    write_reference(reference, args.out)
    features = ", ".join(sorted(reference["features"]))
    print(f"wrote {args.out}: {features}")
    print(f"use it with: drift.reference_path: {args.out}  (or CAPTIONER_DRIFT__REFERENCE_PATH={args.out})")
    return 0


def reference_from_server(url: str, api_key: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    target = url.rstrip("/") + "/api/v1/drift/reference"
    try:
        response = httpx.get(target, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise DriftReferenceError(f"cannot reach {target}: {exc}") from exc
    if response.status_code == 401:
        raise DriftReferenceError(f"{target} wants an API key: set {API_KEY_ENV}")
    if response.status_code == 403:
        raise DriftReferenceError(f"{target} wants an admin key (auth.admin_keys) in {API_KEY_ENV}")
    if response.status_code != 200:
        raise DriftReferenceError(f"{target} answered {response.status_code}: {response.text[:200]}")
    reference: dict[str, Any] = response.json()
    if not reference.get("features"):
        raise DriftReferenceError(
            "the server has no reference yet: it is learnt from its first drift.reference_size requests"
        )
    pending = reference.get("pending") or []
    if pending:
        print(f"note: still being learnt on the server, left out: {', '.join(pending)}")
    return reference


def reference_from_images(folder: Path, settings: Settings) -> dict[str, Any]:
    # torch: kept off `captioner --help`
    from captioner.model.preprocessing import ImagePreprocessor, pixel_sample
    from captioner.rollout.drift_watch import features_of

    if not folder.is_dir():
        raise DriftReferenceError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    # The server's decoder (EXIF orientation, limits, formats); the target size only steers JPEG draft decoding,
    # and the features come from a 64 px sample, so BLIP's 384 px is as good as the model's own.
    decoder = ImagePreprocessor(
        height=384, width=384, image_mean=(0, 0, 0), image_std=(1, 1, 1), max_pixels=settings.limits.max_pixels
    )

    def features(path: Path) -> InputFeatures | None:
        data = path.read_bytes()
        try:
            image, info = decoder.decode(data)
        except CaptionerError:
            return None  # not an image the server would caption: not part of "normal"
        return features_of(pixel_sample(image), info, len(data))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        found = [f for f in pool.map(features, files) if f is not None]
    if not found:
        raise DriftReferenceError(f"no decodable images under {folder} ({len(files)} files)")
    if len(found) < _FEW_IMAGES:
        print(f"note: {len(found)} images is a small reference; {_FEW_IMAGES}+ give steadier PSI")
    skipped = len(files) - len(found)
    if skipped:
        print(f"note: skipped {skipped} files that are not images the server accepts")
    monitor = DriftMonitor(window=len(found), reference_size=len(found), bins=settings.drift.bins)
    for f in found:
        monitor.observe_input(f)
    return monitor.reference_snapshot()
