"""deploy/: nginx.conf run by the real nginx, compose.yaml against the Compose spec's schema, the Kubernetes
manifests against Kubernetes' own schemas (kubernetes-validate, offline, strict), and the numbers the three
must share with config.yaml (ports, body limit, drain time, the HPA's metric) kept in step."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from captioner.config import ConfigError, Settings, load_settings
from captioner.http.body import body_limit
from captioner.observability.metrics import Metrics
from captioner.server import check_exposure
from tests.support.deploy import DEPLOY, K8S, compose, compose_environ, k8s, k8s_documents
from tests.support.nginx import DEPLOY_NGINX_CONF

DEFAULTS = Settings()


def nginx_directive(name: str) -> list[str]:
    """The values of every ``name ...;`` directive in deploy/nginx.conf."""
    return re.findall(rf"^\s*{name}\s+([^;]+);", DEPLOY_NGINX_CONF.read_text(), flags=re.MULTILINE)


def upstream_servers() -> list[str]:
    """The ``server host:port params`` lines of the upstream block (not the ``server {`` block)."""
    return re.findall(r"^\s*server\s+([\w.-]+:\d+[^;]*);", DEPLOY_NGINX_CONF.read_text(), flags=re.MULTILINE)


def replica_services() -> dict[str, Any]:
    return {name: spec for name, spec in compose()["services"].items() if name.startswith("captioner-")}


# --- nginx.conf --------------------------------------------------------------------------------------------


def test_nginx_body_limit_is_the_largest_body_the_server_accepts() -> None:
    (size,) = nginx_directive("client_max_body_size")
    expected = body_limit("application/json", DEFAULTS.limits.max_body_bytes)
    assert int(size) == expected
    assert f"over the limit of {expected} bytes" in DEPLOY_NGINX_CONF.read_text()  # its own 413 body says so


def test_nginx_balances_retries_and_health_checks_as_intended() -> None:
    assert re.search(r"^\s*least_conn;", DEPLOY_NGINX_CONF.read_text(), flags=re.MULTILINE)
    # Every request is retried on connection errors, timeouts, 502 and 503; a POST that reached a replica only in
    # @replayable, where location / sends captions with an Idempotency-Key (tests/system/test_nginx_replay.py).
    (default, replayable) = nginx_directive("proxy_next_upstream")
    assert set(default.split()) == {"error", "timeout", "http_502", "http_503"}
    assert set(replayable.split()) == {"error", "timeout", "http_502", "http_503", "non_idempotent"}
    text = DEPLOY_NGINX_CONF.read_text()
    assert text.index("location @replayable {") < text.index(replayable) < text.index("location @too_large")
    servers = upstream_servers()
    assert servers and all("max_fails=" in s and "fail_timeout=" in s for s in servers)
    (read_timeout,) = nginx_directive("proxy_read_timeout")
    assert float(read_timeout.rstrip("s")) > DEFAULTS.batching.request_timeout_s  # the server's 504 comes first
    assert "X-Request-ID $captioner_request_id" in nginx_directive("proxy_set_header")
    # Replaced, never appended to: a client's own X-Forwarded-For must not reach the replicas, which believe it.
    assert "X-Forwarded-For $remote_addr" in nginx_directive("proxy_set_header")
    assert "$proxy_add_x_forwarded_for" not in DEPLOY_NGINX_CONF.read_text()


def test_nginx_upstreams_compose_services_and_prometheus_targets_agree() -> None:
    upstreams = {s.split()[0] for s in upstream_servers()}
    services = replica_services()
    port = {spec["environment"]["CAPTIONER_SERVER__PORT"] for spec in services.values()}
    assert port == {str(DEFAULTS.server.port)}
    assert upstreams == {f"{name}:{DEFAULTS.server.port}" for name in services}
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "captioner"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == upstreams
    (listen,) = nginx_directive("listen")
    assert any(p.endswith(f":{listen}") for p in compose()["services"]["nginx"]["ports"])


# --- compose.yaml ------------------------------------------------------------------------------------------


def test_compose_gives_each_replica_its_own_gpu_and_a_drain_long_enough() -> None:
    services = replica_services()
    assert len(services) >= 2
    gpus = []
    for spec in services.values():
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        gpus.extend(device["device_ids"])
        drain = float(spec["environment"]["CAPTIONER_SERVER__DRAIN_TIMEOUT_S"])
        assert float(spec["stop_grace_period"].rstrip("s")) > drain
        assert "/readyz" in " ".join(spec["healthcheck"]["test"])
    assert len(gpus) == len(set(gpus)) == len(services)  # one GPU each, none shared
    everything = compose()["services"]
    assert "profiles" not in everything["redis"] and "profiles" not in everything["redis-cache"]  # always there
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in everything["nginx"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in everything["prometheus"]["volumes"]


def test_compose_environment_is_a_valid_captioner_config() -> None:
    (spec, *_) = replica_services().values()
    with pytest.raises(KeyError):  # compose refuses to start without keys
        compose_environ(spec)
    environ = compose_environ(spec, CAPTIONER_AUTH__API_KEYS='["sha256:' + "ab" * 32 + '"]')
    settings = load_settings(None, environ)
    assert settings.server.port == DEFAULTS.server.port
    assert settings.server.host == "0.0.0.0" and settings.auth.api_keys  # exposed, and therefore keyed
    check_exposure(settings)
    with pytest.raises(ConfigError, match=r"auth\.api_keys"):
        check_exposure(load_settings(None, {**environ, "CAPTIONER_AUTH__API_KEYS": "[]"}))
    # The fleet's contract: jobs, feedback and limits in the persisted state Redis, the cache in its own.
    assert settings.jobs.queue == "redis" and settings.jobs.redis_url == "redis://redis:6379/0"
    assert settings.rate_limit.redis_url == settings.jobs.redis_url
    assert settings.cache.redis_url == "redis://redis-cache:6379/0"


def test_compose_trusts_only_nginx_and_keeps_the_dashboards_local() -> None:
    everything = compose()["services"]
    (spec, *_) = replica_services().values()
    settings = load_settings(None, compose_environ(spec, CAPTIONER_AUTH__API_KEYS='["k"]'))
    nginx_address = everything["nginx"]["networks"]["backend"]["ipv4_address"]
    assert settings.server.forwarded_allow_ips == [nginx_address]
    assert "FORWARDED_ALLOW_IPS" not in spec["environment"]  # uvicorn's own variable is not read any more
    for name in ("prometheus", "grafana"):
        assert all(port.startswith("127.0.0.1:") for port in everything[name]["ports"]), name
    password = everything["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?")  # required: no admin/admin


# --- Kubernetes --------------------------------------------------------------------------------------------


def test_every_manifest_validates_strictly_against_the_kubernetes_schemas() -> None:
    documents = k8s_documents()
    kinds = {d["kind"] for d in documents.values()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= kinds
    for document in documents.values():
        if document["kind"] == "Kustomization":
            continue  # a kustomize file, not an API object
        kubernetes_validate.validate(document, kubernetes_validate.utils.latest_version(), strict=True)


def test_the_schema_check_catches_a_typo() -> None:
    deployment = k8s("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.utils.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(k8s("Kustomization")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_configmap_is_a_valid_config_and_the_pod_outlasts_its_drain(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(k8s("ConfigMap")["data"]["config.yaml"])
    settings = load_settings(config, {})
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == settings.server.port
    assert container["command"][-2:] == ["--config", "/etc/captioner/config.yaml"]
    assert {"mountPath": "/etc/captioner", "name": "config", "readOnly": True} in container["volumeMounts"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + settings.server.drain_timeout_s
    service = k8s("Service")
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    pod_labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_hpa_scales_on_a_metric_the_server_exports() -> None:
    hpa = k8s("HorizontalPodAutoscaler")
    names = [metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"]]
    # The queue, and the admission budget (fetching and decoding move it, the queue does not).
    assert names == ["captioner_queue_depth", "captioner_admission_in_use"]
    exported = {m.name for m in Metrics().registry.collect()}
    assert set(names) <= exported
    assert hpa["spec"]["scaleTargetRef"]["name"] == k8s("Deployment")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # never down to a single point of failure


def test_the_pod_is_locked_down() -> None:
    deployment = k8s("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    keys = next(e for e in container["env"] if e["name"] == "CAPTIONER_AUTH__API_KEYS")
    assert keys["valueFrom"]["secretKeyRef"]["optional"] is False  # no Secret, no pod: never an open replica
    scratch = [v for v in pod["volumes"] if "emptyDir" in v]
    assert scratch and all(v["emptyDir"].get("sizeLimit") for v in scratch)
    config = yaml.safe_load(k8s("ConfigMap")["data"]["config.yaml"])
    assert config["server"]["host"] == "0.0.0.0" and config["server"]["forwarded_allow_ips"] == []


def test_egress_is_dns_redis_and_public_http_only() -> None:
    policy = k8s("NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    blocks = [peer["ipBlock"] for rule in policy["spec"]["egress"] for peer in rule["to"] if "ipBlock" in peer]
    (public,) = blocks
    assert public["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8", "100.64.0.0/10"} <= set(
        public["except"]
    )
