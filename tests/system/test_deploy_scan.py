"""checkov, the infrastructure-as-code scanner, over deploy/ (Kubernetes manifests) and the Dockerfile: no failed
check. A finding we don't fix is skipped in the manifest itself (``checkov.io/skipN: CKV_ID=<reason>``), and each
skipped check must carry a reason and be explained in docs/operations.md ("What the scanner found").

checkov lives in its own virtual environment (``make checkov``: .venv-checkov), because its pins would
downgrade packages of requirements.lock (cachetools, packaging, networkx) in the server's. ``$CHECKOV`` may name
another binary."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs" / "operations.md"


def checkov_binary() -> str:
    binary = os.environ.get("CHECKOV") or str(REPO_ROOT / ".venv-checkov" / "bin" / "checkov")
    if not Path(binary).exists():
        raise AssertionError(f"{binary} is missing: run `make checkov` (a venv of its own, see the Makefile)")
    return binary


def scan(*target: str, framework: str) -> dict[str, Any]:
    """checkov's JSON report (offline: nothing downloaded, nothing uploaded)."""
    done = subprocess.run(
        [checkov_binary(), *target, "--framework", framework, "--output", "json", "--skip-download"],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO_ROOT,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    (found,) = [r for r in reports if r.get("check_type") == framework]
    assert found["summary"]["parsing_errors"] == 0, found["summary"]
    return found["results"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("target", "framework"), [(("-d", "deploy"), "kubernetes"),
                                                   (("-f", "Dockerfile"), "dockerfile")])  # fmt: skip
def test_checkov_finds_nothing_that_is_neither_fixed_nor_justified(target: tuple[str, ...], framework: str) -> None:
    results = scan(*target, framework=framework)
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in results["failed_checks"]]
    assert not failed, failed
    assert len(results["passed_checks"]) > 20  # it did scan the files
    documented = DOCS.read_text()
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} is skipped without a reason"
        assert check["check_id"] in documented, f"{check['check_id']} is skipped but not explained in {DOCS.name}"


def test_the_scan_catches_a_mistake(tmp_path: Path) -> None:
    """A privileged container with a writable root and a service-account token: checkov must say so."""
    (tmp_path / "bad.yaml").write_text(
        (REPO_ROOT / "deploy" / "k8s" / "split" / "api.yaml").read_text()
        .replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
        .replace("automountServiceAccountToken: false", "automountServiceAccountToken: true")
    )  # fmt: skip
    results = scan("-d", str(tmp_path), framework="kubernetes")
    assert {"CKV_K8S_22", "CKV_K8S_38"} <= {c["check_id"] for c in results["failed_checks"]}
