"""deploy/k8s: the retraining Job template (train -> register -> gated promote) and the registry volume it shares
with the servers. kubernetes-validate checks the schemas (test_deploy.py); this checks that the pieces fit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from captioner.config import load_settings
from tests.support.deploy import k8s


def test_the_retrain_template_is_suspended_and_shares_config_and_registry_with_the_servers(tmp_path: Path) -> None:
    cron = k8s("CronJob", "captioner-retrain")
    assert cron["spec"]["suspend"] is True  # a template: Jobs are made from it (webhook receiver, or by hand)
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    server = k8s("Deployment")["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in (*pod["volumes"], *server["volumes"])
              if "persistentVolumeClaim" in v}  # fmt: skip
    pvc = k8s("PersistentVolumeClaim", "captioner-lifecycle")
    assert claims == {pvc["metadata"]["name"]}
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # every pod and the Job mount it
    assert any(v.get("configMap", {}).get("name") == "captioner-config" for v in pod["volumes"])
    config = tmp_path / "config.yaml"
    config.write_text(k8s("ConfigMap")["data"]["config.yaml"])
    settings = load_settings(config, {})
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    server_mounts = {m["name"]: m["mountPath"] for m in server["containers"][0]["volumeMounts"]}
    assert settings.registry.path.startswith(mounts["lifecycle"] + "/")
    assert server_mounts["lifecycle"] == mounts["lifecycle"]
    assert settings.gate.annotations.startswith(mounts["lifecycle"] + "/")
    script = container["args"][0]
    assert "captioner train" in script and "captioner models register" in script
    promote = next(line for line in script.splitlines() if "captioner models promote" in line)
    assert "--force" not in promote  # gated: a refused model fails the Job
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True, check=False).returncode == 0
