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
from tests.support.deploy import K8S, SPLIT, documents


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


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions In/NotIn/Exists) against a pod's labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {"In": present and labels.get(key) in values, "NotIn": labels.get(key) not in values,
                "Exists": present, "DoesNotExist": not present}[operator]:  # fmt: skip
            return False
    return True


def pods() -> dict[str, dict[str, Any]]:
    """Every pod template of deploy/k8s and deploy/k8s/split, by its workload's kind/name."""
    found = {}
    for key, document in {**documents(K8S), **documents(SPLIT)}.items():
        spec = document.get("spec", {})
        if document["kind"] == "CronJob":
            found[key] = spec["jobTemplate"]["spec"]["template"]
        elif "template" in spec:
            found[key] = spec["template"]
    return found


def test_every_pod_is_locked_down_and_writes_only_to_volumes() -> None:
    assert {"Deployment/captioner", "Deployment/captioner-api", "Deployment/captioner-worker", "StatefulSet/redis",
            "Deployment/redis-cache", "CronJob/captioner-retrain"} <= pods().keys()  # fmt: skip
    for key, template in pods().items():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, key
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, key
        assert pod["securityContext"]["runAsNonRoot"] is True, key
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False, key
            assert security["capabilities"]["drop"] == ["ALL"], key
        scratch = [v for v in pod.get("volumes", []) if "emptyDir" in v]
        assert all(v["emptyDir"].get("sizeLimit") for v in scratch), key


def test_the_network_policies_cover_every_pod_and_only_workers_go_without_keys(tmp_path: Path) -> None:
    policies = {key: d for key, d in documents(K8S).items() if d["kind"] == "NetworkPolicy"}
    for key, template in pods().items():
        labels = template["metadata"]["labels"]
        covering = [name for name, p in policies.items() if selects(p["spec"]["podSelector"], labels)]
        assert len(covering) == 1, (key, covering)  # exactly one policy says what each pod may do
    captioner = policies["NetworkPolicy/captioner"]["spec"]["podSelector"]
    for name in ("Deployment/captioner", "Deployment/captioner-api", "Deployment/captioner-worker"):
        assert selects(captioner, pods()[name]["metadata"]["labels"]), name
    redis_in = policies["NetworkPolicy/redis"]["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert selects(redis_in, pods()["Deployment/captioner-worker"]["metadata"]["labels"])
    assert not selects(redis_in, pods()["CronJob/captioner-retrain"]["metadata"]["labels"])

    # auth.allow_anonymous: only where the pod serves nothing but probes and metrics (--role worker).
    config = yaml.safe_load(documents(K8S)["ConfigMap/captioner-config"]["data"]["config.yaml"])
    assert "allow_anonymous" not in config.get("auth", {})
    for key, template in pods().items():
        for spec in template["spec"]["containers"]:
            anonymous = any(e["name"] == "CAPTIONER_AUTH__ALLOW_ANONYMOUS" for e in spec.get("env", []))
            command = spec.get("command", [])
            assert anonymous == (command[:2] == ["captioner", "serve"] and "worker" in command), key
    worker = documents(SPLIT)["Deployment/captioner-worker"]
    settings = pod_settings(worker, tmp_path)
    assert settings.auth.allow_anonymous and not settings.auth.api_keys
    mounts = {m["mountPath"] for m in container(worker)["volumeMounts"]}
    assert settings.registry.path.startswith("/lifecycle/") and "/lifecycle" in mounts  # serves the registry
