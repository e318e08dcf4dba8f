"""The cluster configs keep their security promises (parsed, no cluster needed)."""

from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def _env(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _has_token(container) -> bool:
    env = _env(container)
    token = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    return env.get("RAY_AUTH_MODE", {}).get("value") == "token" and token.get("key") == "token"


def test_rayjob_is_fenced_and_every_pod_carries_the_token():
    job, policy, _ = yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text())
    spec = job["spec"]
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    templates = [head["template"], spec["submitterPodTemplate"],
                 *(g["template"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])]
    labels = policy["spec"]["podSelector"]["matchLabels"]
    for t in templates:
        assert all(_has_token(c) for c in t["spec"]["containers"])
        assert labels.items() <= t["metadata"]["labels"].items()  # selected by the policy
    assert spec["submissionMode"] == "K8sJobMode"
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    # ingress only from the job's own pods and the operator (dashboard port)
    own, operator = policy["spec"]["ingress"]
    assert own["from"] == [{"podSelector": {"matchLabels": labels}}]
    assert operator["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert operator["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kuberay-operator"}


def test_rayjob_results_outlive_the_job_on_a_declared_claim():
    """Results went to an emptyDir of the head pod, deleted with the cluster after the job.
    Now: a PersistentVolumeClaim declared in the file, mounted where --storage points in the
    head and every worker pod (Tune's storage must be shared across nodes)."""
    job, _, claim = yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    storage = job["spec"]["entrypoint"].split("--storage ")[1].split()[0]
    spec = job["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])
                  if m["mountPath"] == storage]
        assert len(mounts) == 1, pod
        volume = volumes[mounts[0]["name"]]
        assert "emptyDir" not in volume
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_aws_dashboard_on_loopback_and_token_everywhere():
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["worker_start_ray_commands"]
               if "ray start" in c)
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cfg["setup_commands"])


def test_local_cluster_script_binds_loopback_and_protects_the_token():
    text = (CLUSTER / "local.sh").read_text()
    assert "--node-ip-address 127.0.0.1" in text and "--dashboard-host 127.0.0.1" in text
    assert "umask 077" in text and 'chmod 600 "$TOKEN_FILE"' in text
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in text
