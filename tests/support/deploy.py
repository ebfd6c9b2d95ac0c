"""deploy/ read as data: the Compose file and the Kubernetes manifests, for the checks that keep them in step."""

from __future__ import annotations

from typing import Any

import yaml

from tests.support.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def k8s_documents() -> dict[str, dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents[f"{path.name}:{document['kind']}"] = document
    return documents


def k8s(kind: str) -> dict[str, Any]:
    """The one manifest of this kind in deploy/k8s/."""
    (document,) = [d for key, d in k8s_documents().items() if key.endswith(":" + kind)]
    return document
