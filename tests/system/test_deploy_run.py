"""Every container deploy/ ships, started as a local process with its own command, environment and mounts
(``container_proc.py``), and seen doing its job:

- Kubernetes, all in one (deploy/k8s): the two Redis of redis.yaml, then the Deployment's two replicas on a
  read-only root: both ready; a job accepted by one is answered by the other, from the registry's production
  model; feedback is accepted; jobs and feedback sit in the persisted, never-evicting Redis and survive its
  SIGKILL, cached captions sit in the LRU one.
- Kubernetes, split (deploy/k8s/split): the api and worker Deployments: the worker starts (no keys, on purpose)
  and captions the api's jobs with the registry's production model; without its allow_anonymous it would exit 2.
- Compose: both Redis services and the two replicas, behind the shipped nginx.conf.
- The retraining CronJob's container: trains on the volume's data, registers the model, promotes it as a canary.

The only substitutions (``Substitutions``): temporary folders for the container paths, a tiny model for the
baked-in weights, test values for Secrets and required Compose variables, a local redis-server (run with the
shipped Redis command) on a free port for each Redis service, a free port for each server, and, in Kubernetes,
``model.device: cpu`` and ``dtype: float32`` (the ConfigMap asks for CUDA; there is no GPU here).
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.deploy import DEPLOY, K8S, SPLIT, compose, compose_environ, documents
from tests.support.images import photo
from tests.support.nginx import Nginx
from tests.support.registry import cli, last_line
from tests.system.container_proc import (
    Container,
    ContainerProcess,
    Substitutions,
    compose_container,
    k8s_container,
    local_redis,
    redis_command,
)

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRETS = {"captioner-auth": {"api_keys": json.dumps([KEY]), "callback_secret": "test-callback-secret"}}
NO_GPU = {"CAPTIONER_MODEL__DEVICE": "cpu", "CAPTIONER_MODEL__DTYPE": "float32"}
CAPTION = "/api/v1/caption"


def configmaps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for d in documents(K8S).values() if d["kind"] == "ConfigMap"}


def pod_of(document: dict[str, Any]) -> dict[str, Any]:
    spec = document["spec"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"] if document["kind"] == "CronJob" else spec["template"]["spec"]
    return {**pod, "volumeClaimTemplates": spec.get("volumeClaimTemplates", [])}


def k8s_spec(document: dict[str, Any], claims: dict[str, Path], secrets: dict[str, Any] = SECRETS) -> Container:
    return k8s_container(pod_of(document), configmaps=configmaps(), secrets=secrets, claims=claims)


def probe_path(container: Container) -> str:
    return str(container.spec["readinessProbe"]["httpGet"]["path"])


def registry_with_production(lifecycle: Path, model_dir: Path) -> None:
    """A registry (configmap.yaml's registry.path on the volume) whose production version 1 is ``model_dir``."""
    registry = lifecycle / "registry"
    registered = cli("models", "register", str(model_dir), "--name", "captioner", "--registry", str(registry),
                     cwd=lifecycle)  # fmt: skip
    assert last_line(registered) == "1"
    promoted = cli("models", "promote", "captioner", "1", "--force", "--registry", str(registry), cwd=lifecycle)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr


def ended(url: str, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}{CAPTION}/{job_id}", headers=AUTH, timeout=10)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 200 and response.json()["status"] != "processing":
            return response.json()  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end at {url}")


def submit(url: str, seed: int, key: str) -> str:
    headers = {**AUTH, "Content-Type": "image/png", "Idempotency-Key": key}
    response = httpx.post(f"{url}{CAPTION}?mode=async", content=photo(seed), headers=headers, timeout=60)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def caption(url: str, seed: int) -> httpx.Response:
    return httpx.post(url + CAPTION, content=photo(seed), timeout=120,
                      headers={**AUTH, "Content-Type": "image/png", "Idempotency-Key": f"sync-{seed}"})  # fmt: skip


def config_of(redis: ContainerProcess, name: str) -> str:
    return redis_command(redis, "CONFIG", "GET", name).splitlines()[-1]


def keys(redis: ContainerProcess, pattern: str) -> list[str]:
    return [k for k in redis_command(redis, "KEYS", pattern).splitlines() if k]


class Fleet:
    """Processes started by a test, stopped at its end (servers first, Redis last)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[ContainerProcess] = []

    def folder(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def add(self, process: ContainerProcess) -> ContainerProcess:
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    # A short root: the model process's AF_UNIX sockets go in the container's /tmp, and a socket path may not be
    # longer than 107 bytes (pytest's tmp_path can be).
    root = Path(tempfile.mkdtemp(prefix="ctr-", dir="/tmp"))
    running = Fleet(root)
    try:
        yield running
    finally:
        running.close()
        shutil.rmtree(root, ignore_errors=True)


def start_k8s_redis(fleet: Fleet, claims: dict[str, Path]) -> tuple[ContainerProcess, ContainerProcess]:
    found = documents(K8S)
    state = fleet.add(local_redis(k8s_spec(found["StatefulSet/redis"], claims), fleet.folder("redis")))
    cache = fleet.add(local_redis(k8s_spec(found["Deployment/redis-cache"], claims), fleet.folder("redis-cache")))
    return state, cache


def k8s_hosts(state: ContainerProcess, cache: ContainerProcess) -> dict[str, str]:
    return {"redis.captioner.svc:6379": f"127.0.0.1:{state.port}",
            "redis-cache.captioner.svc:6379": f"127.0.0.1:{cache.port}"}  # fmt: skip


def assert_state_and_cache_apart(state: ContainerProcess, cache: ContainerProcess) -> None:
    assert config_of(state, "appendonly") == "yes" and config_of(state, "maxmemory-policy") == "noeviction"
    assert config_of(state, "appendfsync") == "always"  # a 202 is on disk before its answer: it survives a crash
    assert config_of(cache, "appendonly") == "no" and config_of(cache, "maxmemory-policy") == "allkeys-lru"
    assert keys(state, "captioner:job:v1:*") and keys(state, "captioner:caption:v1:*") == []
    assert keys(cache, "captioner:caption:v1:*") and keys(cache, "captioner:job*") == []


# --- Kubernetes, all in one ----------------------------------------------------------------------------------


def test_k8s_all_in_one_replicas_share_jobs_and_feedback_in_a_persisted_redis(
    fleet: Fleet, tiny_model_dir: Path
) -> None:
    claims = {"captioner-lifecycle": fleet.folder("pvc-lifecycle"), "data": fleet.folder("pvc-redis-data")}
    registry_with_production(claims["captioner-lifecycle"], tiny_model_dir)
    state, cache = start_k8s_redis(fleet, claims)
    deployment = documents(K8S)["Deployment/captioner"]
    assert deployment["spec"]["replicas"] == 2
    subs = Substitutions(hosts=k8s_hosts(state, cache), env=NO_GPU, model_dir=tiny_model_dir)
    spec = k8s_spec(deployment, claims)
    assert spec.read_only_root
    replicas = [fleet.add(ContainerProcess(spec, fleet.folder(f"pod-{i}"), subs, port_env="CAPTIONER_SERVER__PORT"))
                for i in range(2)]  # fmt: skip
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.wait_http(probe_path(spec))
    first, second = replicas

    job_id = submit(first.url, 1, "job-1")
    done = ended(second.url, job_id)  # accepted by one replica, answered by the other
    assert done["status"] == "success" and done["model"] == "captioner:1"  # the registry's production version
    answered = caption(second.url, 2)
    assert answered.status_code == 200 and answered.json()["model"] == "captioner:1"
    assert caption(first.url, 2).json()["cached"] is True  # the cache Redis is shared too
    feedback = httpx.post(first.url + "/api/v1/feedback", headers=AUTH, timeout=30,
                          json={"job_id": job_id, "caption": done["captions"][0]["text"], "rating": 5})  # fmt: skip
    assert feedback.status_code == 202, feedback.text
    assert_state_and_cache_apart(state, cache)
    assert redis_command(state, "XLEN", "captioner:feedback:v1") == "1"

    # The state Redis dies without warning and comes back from its append-only file: the job is still there.
    state.stop(signal.SIGKILL)
    assert (claims["data"] / "appendonlydir").is_dir()
    again = fleet.add(local_redis(k8s_spec(documents(K8S)["StatefulSet/redis"], claims), fleet.folder("redis-2"),
                                  port=state.port))  # fmt: skip
    assert redis_command(again, "XLEN", "captioner:feedback:v1") == "1"
    assert ended(first.url, job_id)["captions"] == done["captions"]
    assert all(replica.alive() for replica in replicas)


# --- Kubernetes, split ---------------------------------------------------------------------------------------


def test_k8s_split_worker_captions_the_api_jobs_with_the_registry_production_model(
    fleet: Fleet, tiny_model_dir: Path
) -> None:
    claims = {"captioner-lifecycle": fleet.folder("pvc-lifecycle"), "data": fleet.folder("pvc-redis-data")}
    registry_with_production(claims["captioner-lifecycle"], tiny_model_dir)
    state, cache = start_k8s_redis(fleet, claims)
    subs = Substitutions(hosts=k8s_hosts(state, cache), env=NO_GPU, model_dir=tiny_model_dir)
    found = documents(SPLIT)
    api_spec = k8s_spec(found["Deployment/captioner-api"], claims)
    worker_spec = k8s_spec(found["Deployment/captioner-worker"], claims)
    with pytest.raises(KeyError):  # the api pods never run without their keys
        k8s_spec(found["Deployment/captioner-api"], claims, secrets={})
    assert "CAPTIONER_AUTH__API_KEYS" not in worker_spec.env  # the worker needs none: see worker.yaml

    api = fleet.add(ContainerProcess(api_spec, fleet.folder("api"), subs, port_env="CAPTIONER_SERVER__PORT"))
    worker = fleet.add(ContainerProcess(worker_spec, fleet.folder("worker"), subs, port_env="CAPTIONER_SERVER__PORT"))
    api.start()
    worker.start()
    api.wait_http(probe_path(api_spec))
    worker.wait_http(probe_path(worker_spec))

    job_id = submit(api.url, 3, "job-3")
    done = ended(api.url, job_id)
    assert done["status"] == "success" and done["model"] == "captioner:1"
    relayed = caption(api.url, 4)  # sync, through the queue
    assert relayed.status_code == 200 and relayed.json()["model"] == "captioner:1"
    assert worker.url and httpx.get(worker.url + "/metrics", timeout=30).status_code == 200

    # Without its deliberate allow_anonymous, the worker refuses to start (0.0.0.0, no keys): exit 2.
    keyless = Container(**{**worker_spec.__dict__, "env": {k: v for k, v in worker_spec.env.items()
                                                           if k != "CAPTIONER_AUTH__ALLOW_ANONYMOUS"}})  # fmt: skip
    refused = fleet.add(ContainerProcess(keyless, fleet.folder("worker-keyless"), subs,
                                         port_env="CAPTIONER_SERVER__PORT")).start()  # fmt: skip
    assert refused.wait_exit(timeout_s=120) == 2
    assert "auth.api_keys" in refused.log()


# --- Compose -------------------------------------------------------------------------------------------------


def test_compose_replicas_behind_nginx_share_jobs_cache_and_feedback(fleet: Fleet, tiny_model_dir: Path) -> None:
    services = compose()["services"]
    volumes = {name: fleet.folder(f"volume-{name}") for name in compose().get("volumes", {})}
    started = {}
    for name in ("redis", "redis-cache"):
        container = compose_container(name, services[name], {}, volumes)
        started[name] = fleet.add(local_redis(container, fleet.folder(name)))
    state, cache = started["redis"], started["redis-cache"]
    subs = Substitutions(hosts={"redis-cache:6379": f"127.0.0.1:{cache.port}", "redis:6379": f"127.0.0.1:{state.port}"},
                         model_dir=tiny_model_dir)  # fmt: skip
    replicas = []
    for name in ("captioner-1", "captioner-2"):
        environ = compose_environ(services[name], CAPTIONER_AUTH__API_KEYS=json.dumps([KEY]))
        container = compose_container(name, services[name], environ, volumes)
        assert container.read_only_root
        replicas.append(fleet.add(ContainerProcess(container, fleet.folder(name), subs,
                                                   port_env="CAPTIONER_SERVER__PORT").start()))  # fmt: skip
    for replica in replicas:
        replica.wait_http("/readyz")
    first, second = replicas

    with Nginx(fleet.folder("nginx"), upstream_ports=[first.port, second.port]) as nginx:
        answered = caption(nginx.url, 5)
        assert answered.status_code == 200 and answered.json()["cached"] is False, answered.text + nginx.error_log()
        job_id = submit(nginx.url, 6, "job-6")
        rating = {"image_sha256": answered.json()["image_sha256"], "caption": "a cat", "rating": 1}
        feedback = httpx.post(nginx.url + "/api/v1/feedback", headers=AUTH, json=rating, timeout=30)
        assert feedback.status_code == 202, feedback.text
    for replica in replicas:  # either replica answers the job, and the caption, from the shared Redis
        assert ended(replica.url, job_id)["status"] == "success"
        assert caption(replica.url, 5).json()["cached"] is True
    assert_state_and_cache_apart(state, cache)
    assert redis_command(state, "XLEN", "captioner:feedback:v1") == "1"
    assert (volumes["redis-data"] / "appendonlydir").is_dir()


# --- the retraining CronJob ----------------------------------------------------------------------------------


def test_the_retrain_job_trains_registers_and_promotes_a_canary(fleet: Fleet, tiny_model_dir: Path) -> None:
    lifecycle = fleet.folder("pvc-lifecycle")
    registry_with_production(lifecycle, tiny_model_dir)
    for name, count, seed in (("new", 8, 1), ("val", 4, 2), ("gate", 4, 3)):
        done = cli("data", "synth", "--out", str(lifecycle / "data" / name), "--images", str(count), "--seed",
                   str(seed), cwd=lifecycle)  # fmt: skip
        assert done.returncode == 0, done.stderr
    cron = documents(K8S)["CronJob/captioner-retrain"]
    spec = k8s_spec(cron, {"captioner-lifecycle": lifecycle})
    assert spec.read_only_root
    subs = Substitutions(env=NO_GPU, model_dir=tiny_model_dir)
    job = fleet.add(ContainerProcess(spec, fleet.folder("retrain"), subs))
    assert job.start().wait_exit() == 0, job.log()

    aliases = yaml.safe_load((lifecycle / "registry" / "captioner" / "aliases.json").read_text())
    assert aliases["production"] == 1
    assert aliases["canary"] == {"version": 2, "weight": 10}
    meta = json.loads((lifecycle / "registry" / "captioner" / "2" / "meta.json").read_text())
    assert meta["parent"] == "models:/captioner/1"  # trained from production, as the script says


# --- the deploy files this runs ------------------------------------------------------------------------------


def test_every_shipped_container_is_run_by_a_test_above() -> None:
    """A container added to deploy/ without a run here fails: each is named by the tests of this file."""
    source = Path(__file__).read_text()
    k8s = {key for key, d in {**documents(K8S), **documents(SPLIT)}.items()
           if d["kind"] in ("Deployment", "StatefulSet", "CronJob", "Job", "DaemonSet")}  # fmt: skip
    assert all(f'"{key}"' in source for key in k8s), k8s
    assert all(f'"{name}"' in source for name, s in compose()["services"].items()
               if name.startswith(("captioner-", "redis"))), compose()["services"].keys()  # fmt: skip
    assert (DEPLOY / "compose.yaml").exists()
