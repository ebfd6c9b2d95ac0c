"""deploy/ read as data: the Compose file and the Kubernetes manifests, for the checks that keep them in step."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
SPLIT = K8S / "split"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def k8s_documents() -> dict[str, dict[str, Any]]:
    """Every document of deploy/k8s/*.yaml, keyed ``file:Kind/name``."""
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                name = document.get("metadata", {}).get("name", "")
                documents[f"{path.name}:{document['kind']}/{name}"] = document
    return documents


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    """The document of this kind named ``name``; without a name, the one named ``captioner``, or the only one."""
    documents = k8s_documents().items()
    of_kind = {key.split("/", 1)[1]: d for key, d in documents if key.split(":")[1].startswith(kind + "/")}
    if name is None and len(of_kind) > 1:
        name = "captioner"
    (document,) = [d for key, d in of_kind.items() if name is None or key == name]
    return document


def documents(folder: Path) -> dict[str, dict[str, Any]]:
    """Every document of ``folder/*.yaml``, keyed ``Kind/name``."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found[f"{document['kind']}/{document.get('metadata', {}).get('name', path.name)}"] = document
    return found


def compose_environ(spec: dict[str, Any], **given: str) -> dict[str, str]:
    """The replica's environment as Compose makes it: ${VAR:-default} -> default; ${VAR:?message} -> the value
    given here, or a KeyError (Compose refuses to start without it)."""

    def substitute(value: Any) -> str:
        text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
        return re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: given[m.group(1)], text)

    return {k: substitute(v) for k, v in spec["environment"].items()}
