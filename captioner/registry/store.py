"""The registry on disk: ``Registry(root)`` registers versions, reads them, and changes aliases and records.

Layout (Triton's ``<name>/<version>/`` model repository, MLflow's aliases)::

    <root>/<name>/aliases.json           which version is production / canary (aliases.py), written atomically
    <root>/<name>/.lock                  flock'd by writers of this name
    <root>/<name>/<version>/model/       the model folder as registered (``captioner serve`` loads it), with the
                                         training card ``training.json`` when ``captioner train`` made it
    <root>/<name>/<version>/meta.json    lineage and records: parent, data hashes, weights hash, creation time,
                                         the command, gate scores and evaluations, promotions (forced ones too),
                                         automatic rollbacks
    <root>/<name>/<version>/gate-report.json   the last gate evaluation's full report (per-image captions)

Versions are integers from 1 per name. A version is copied into a hidden folder first and renamed into place
under the lock, so a reader sees either no version N or all of it. Registered models are never modified.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.model.weights import is_untrained
from captioner.registry.aliases import Aliases, now_iso
from captioner.registry.files import fsync_dir, locked, read_json, write_json

MODEL_DIR = "model"
META = "meta.json"
ALIASES = "aliases.json"
GATE_REPORT = "gate-report.json"
CARD = "training.json"  # what `captioner train` writes beside the weights
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Left behind by training runs; not part of the model.
_NOT_COPIED = shutil.ignore_patterns("checkpoints", "checkpoint-*", "runs", "*.tmp", ".*")
_CHUNK = 1 << 20


class RegistryError(Exception):
    """A registry operation that can't be done (unknown name or version, not a model folder, ...)."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RegistryError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-' (starting with one of the first two)"
        )
    return name


def weights_sha256(model_dir: Path) -> str | None:
    """One hash over a model folder's weight files, the same way ``tools/train/model_card.py`` hashes a parent."""
    files = sorted(
        f for f in [*model_dir.glob("*.safetensors"), *model_dir.glob("*.bin")] if f.name != "training_args.bin"
    )
    if not files:
        return None
    if len(files) == 1:
        return _sha256_file(files[0])
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{_sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Version:
    name: str
    number: int
    folder: Path
    meta: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.folder / MODEL_DIR

    @property
    def scores(self) -> dict[str, float]:
        return dict(self.meta.get("scores") or {})

    @property
    def ref(self) -> str:
        return f"models:/{self.name}/{self.number}"


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _folder(self, name: str) -> Path:
        return self.root / check_name(name)

    def aliases_path(self, name: str) -> Path:
        return self._folder(name) / ALIASES

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self._folder(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / META).is_file())

    def version(self, name: str, number: int) -> Version:
        folder = self._folder(name) / str(number)
        try:
            meta = read_json(folder / META)
        except FileNotFoundError:
            known = ", ".join(map(str, self.versions(name))) or "none"
            raise RegistryError(f"{name} has no version {number} in {self.root} (versions: {known})") from None
        return Version(name, number, folder, meta)

    def aliases(self, name: str) -> Aliases:
        try:
            return Aliases.from_json(read_json(self.aliases_path(name)))
        except FileNotFoundError:
            return Aliases()

    def register(self, source: Path, name: str, *, command: str, parent: str | None = None) -> Version:
        """Copy the model folder ``source`` in as the next version of ``name``."""
        if not (source / "config.json").is_file() or weights_sha256(source) is None:
            raise RegistryError(f"{source} is not a model folder (config.json and *.safetensors weights expected)")
        folder = self._folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        incoming = folder / f".incoming-{uuid.uuid4().hex}"
        try:
            shutil.copytree(source, incoming / MODEL_DIR, ignore=_NOT_COPIED)  # slow part: outside the lock
            meta = self._new_meta(name, source, incoming / MODEL_DIR, command=command, parent=parent)
            with locked(folder / ".lock"):
                number = max(self.versions(name), default=0) + 1
                write_json(incoming / META, {"name": name, "version": number, **meta})
                incoming.rename(folder / str(number))
                fsync_dir(folder)
        finally:
            if incoming.exists():
                shutil.rmtree(incoming, ignore_errors=True)
        return self.version(name, number)

    def _new_meta(self, name: str, source: Path, model: Path, *, command: str, parent: str | None) -> dict[str, Any]:
        card: dict[str, Any] = {}
        if (model / CARD).is_file():
            try:
                loaded = read_json(model / CARD)
                card = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                card = {}
        return {
            "created": now_iso(),
            "command": command,
            "source": str(source.resolve()),
            "parent": parent if parent is not None else self._lineage(card.get("parent")),
            # A distilled model's teacher (training card's distilled_from), resolved the same way as the parent.
            "distilled_from": self._lineage(card.get("distilled_from")),
            "weights_sha256": weights_sha256(model),
            "untrained": is_untrained(model),
            "card": CARD if card else None,
            "data": card.get("data") if isinstance(card.get("data"), dict) else {},
            "code_revision": card.get("code_revision"),
            "scores": {},
            "evaluations": [],
            "promotions": [],
            "forced": [],
            "rollbacks": [],
        }

    def _lineage(self, parent: Any) -> str | None:
        """The registered version whose weights a card's model entry (parent, teacher) names, else its name or
        path."""
        if not isinstance(parent, dict):
            return None
        wanted = parent.get("weights_sha256")
        if wanted:
            for other in self.names():
                for number in self.versions(other):
                    if self.version(other, number).meta.get("weights_sha256") == wanted:
                        return f"models:/{other}/{number}"
        found = parent.get("name") or parent.get("path")
        return str(found) if found else None

    def update_aliases(self, name: str, change: Callable[[Aliases], Aliases]) -> Aliases:
        """Read, change and write the aliases of ``name`` under its lock; returns what was written."""
        folder = self._folder(name)
        if not self.versions(name):
            raise RegistryError(f"no model called {name!r} is registered in {self.root}")
        with locked(folder / ".lock"):
            updated = change(self.aliases(name))
            write_json(folder / ALIASES, updated.to_json())
        return updated

    def update_meta(self, name: str, number: int, change: Callable[[dict[str, Any]], None]) -> Version:
        """Change a version's meta.json in place (``change`` mutates the dict) under the name's lock."""
        with locked(self._folder(name) / ".lock"):
            version = self.version(name, number)
            change(version.meta)
            write_json(version.folder / META, version.meta)
        return version

    def write_gate_report(self, name: str, number: int, report: dict[str, Any]) -> None:
        write_json(self.version(name, number).folder / GATE_REPORT, report)
