"""deploy/k8s/split: the API/worker topology (``serve --role api|worker`` over the Redis job queue), checked
like deploy/k8s is: strictly against Kubernetes' schemas, the configuration each pod runs loaded by captioner's
own loader and role check, and the worker HPA's metric one the server exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from captioner.config import check_role, load_settings
from captioner.observability.metrics import Metrics
from tests.support.paths import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
SPLIT = K8S / "split"


def documents(folder: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found[f"{document['kind']}/{document.get('metadata', {}).get('name', path.name)}"] = document
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def pod_settings(deployment: dict[str, Any], tmp_path: Path) -> Any:
    """The settings a pod runs: the base ConfigMap's config.yaml plus the container's plain env overrides."""
    config = tmp_path / "config.yaml"
    (configmap,) = [d for d in documents(K8S).values() if d["kind"] == "ConfigMap"]
    config.write_text(configmap["data"]["config.yaml"])
    env = {e["name"]: e["value"] for e in container(deployment)["env"] if "value" in e}
    return load_settings(config, env)


def test_every_split_manifest_validates_strictly() -> None:
    found = documents(SPLIT)
    assert {"Deployment/captioner-api", "Deployment/captioner-worker", "HorizontalPodAutoscaler/captioner-worker"} <= (
        found.keys()
    )
    for document in found.values():
        if document["kind"] != "Kustomization":
            kubernetes_validate.validate(document, kubernetes_validate.utils.latest_version(), strict=True)


def test_the_kustomization_lists_every_file_and_replaces_the_all_in_one_deployment() -> None:
    kustomization = yaml.safe_load((SPLIT / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {"..", *(p.name for p in SPLIT.glob("*.yaml"))} - {"kustomization.yaml"}
    patches = [yaml.safe_load(entry["patch"]) for entry in kustomization["patches"]]
    deleted = {(patch["kind"], patch["metadata"]["name"]) for patch in patches}
    assert deleted == {("Deployment", "captioner"), ("HorizontalPodAutoscaler", "captioner")}
    assert all("$patch: delete" in x["patch"] for x in kustomization["patches"])


def test_each_role_gets_a_config_it_can_serve_and_only_api_pods_get_traffic(tmp_path: Path) -> None:
    found = documents(SPLIT)
    service = documents(K8S)["Service/captioner"]
    for role in ("api", "worker"):
        deployment = found[f"Deployment/captioner-{role}"]
        command = container(deployment)["command"]
        assert command[command.index("--role") + 1] == role
        settings = pod_settings(deployment, tmp_path)
        check_role(role, settings)  # jobs.queue: redis, with a URL
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        selected = service["spec"]["selector"].items() <= labels.items()
        assert selected == (role == "api")  # a worker answers only probes and metrics: no traffic for it
        gpus = container(deployment)["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if role == "worker" else None)  # the API pods never load a model
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > settings.server.drain_timeout_s


def test_the_worker_hpa_scales_the_workers_on_the_queue_length_the_server_exports() -> None:
    hpa = documents(SPLIT)["HorizontalPodAutoscaler/captioner-worker"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "captioner-worker"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    name = metric["external"]["metric"]["name"]
    assert name == "captioner_job_queue_length"
    assert name in {m.name for m in Metrics().registry.collect()}
    # The adapter rule in the comment reads the same series.
    assert re.search(rf"seriesQuery: '{name}\{{", (SPLIT / "worker-hpa.yaml").read_text())
