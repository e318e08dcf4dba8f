"""A real local cluster (`cluster/local.sh`: loopback only, token auth) and `ray job submit`
of a tiny run, as the README's recipe does it."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path, request):
    """A cluster of a head and ``request.param`` worker nodes (default 0), with its own HOME
    (so the auth token is created by local.sh), stopped afterwards even on failure. The venv
    is not on PATH (not activated): local.sh must give the nodes its python."""
    workers = getattr(request, "param", 0)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": ":".join(p for p in os.environ["PATH"].split(":")
                         if Path(p).resolve() != BIN.resolve()),
        "RAY": str(BIN / "ray"),
        "MBMPO_RAY_PORT": "6490",
        "MBMPO_DASHBOARD_PORT": "8375",
        "MBMPO_RAY_TMP": f"/tmp/mbmpo_test_{os.getpid()}",
        "RAY_AUTH_MODE": "token",
    }
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run(["bash", "cluster/local.sh", "start", str(workers)], cwd=REPO, env=env,
                       check=True, timeout=240, capture_output=True)
        yield env
    finally:
        subprocess.run(["bash", "cluster/local.sh", "stop"], cwd=REPO, env=env, timeout=120)
        shutil.rmtree(env["MBMPO_RAY_TMP"], ignore_errors=True)


def listeners(env) -> list[str]:
    """Local addresses of every listening TCP socket of the cluster's processes (`ss -ltnp`
    through `cluster/local.sh listeners`)."""
    res = subprocess.run(["bash", "cluster/local.sh", "listeners"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return res.stdout.split()


def assert_loopback_only(env) -> None:
    found = listeners(env)
    assert len(found) >= 6, found  # GCS, raylet, object manager, agents, dashboard, ...
    for addr in found:
        host = addr.rsplit(":", 1)[0]
        assert host in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"), f"{addr} in {found}"


def submit(cmd: list[str], env: dict) -> None:
    """``ray job submit ...``: it succeeds (retried while the job agent comes up)."""
    last = None
    for _ in range(3):  # the job agent can take a few seconds to come up
        last = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        if "No available agent" not in last.stdout + last.stderr:
            break
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert "succeeded" in last.stdout + last.stderr


def test_job_submit_trains_and_checkpoints(cluster, tmp_path):
    """The README's recipe: `python` of the entrypoint is the venv's although the venv is not
    activated; and the leftovers of a job that failed before its first iteration (run.json, a
    header-only progress.csv) do not block the retry."""
    out = tmp_path / "job_run"
    out.mkdir()
    (out / "run.json").write_text('{"algo": "mbmpo", "config": "pendulum"}')
    (out / "progress.csv").write_text("iteration,real_steps\n")
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", "http://127.0.0.1:8375", "--",
        "python", "-m", "mbmpo_ray", "train", "--config", "pendulum", "--variant", "smoke",
        "--iterations", "2", "--address", "auto", "--output", str(out),
    ]
    submit(cmd, cluster)
    # a complete checkpoint of the run's last iteration, not just some file
    state = pickle.loads((out / "checkpoint" / "algorithm_state.pkl").read_bytes())
    assert state["training_iteration"] == 2
    ours = state.get("model_based") or state["mbmpo"]  # the algorithm's own state
    assert ours["counters"]["real_steps"] == 200
    assert (out / "checkpoint" / "learner_group" / "learner" / "rl_module").is_dir()
    assert (out / "progress.csv").read_text().count("\n") == 3
    assert_loopback_only(cluster)  # the driver's and workers' sockets included


@pytest.mark.parametrize("cluster", [1], indirect=True)
def test_every_listener_of_every_node_is_loopback_and_tokens_are_required(cluster):
    """Head + 1 worker node: after a job that starts workers on both nodes, no listener of
    any cluster process is on a non-loopback address; the token file is 0600; the job API
    refuses a request without the token."""
    import stat
    import urllib.error
    import urllib.request

    job = ("import ray; ray.init(address='auto'); "
           "assert len(ray.nodes()) == 2, ray.nodes(); "
           "f = ray.remote(num_cpus=1)(lambda: 1); print(sum(ray.get([f.remote() for _ in "
           "range(4)])))")
    res = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", "http://127.0.0.1:8375", "--",
         "python", "-c", job], cwd=REPO, env=cluster, capture_output=True, text=True,
        timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert_loopback_only(cluster)
    token = Path(cluster["HOME"]) / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen("http://127.0.0.1:8375/api/jobs/", timeout=30)
    assert e.value.code in (401, 403)


def test_stop_stops_exactly_this_cluster(cluster):
    """Every process of the cluster goes; a process of a second cluster whose temp dir starts
    with ours and a reader of one of our logs stay; a second stop says nothing was running."""
    tmp = cluster["MBMPO_RAY_TMP"]
    log = next(Path(tmp).glob("session_*/logs/raylet.out"))
    decoys = [
        subprocess.Popen(["bash", "-c", f'exec -a "gcs_server --log_dir={tmp}2/session_1/logs"'
                                        " sleep 300"]),
        subprocess.Popen(["tail", "-f", str(log)], stdout=subprocess.DEVNULL),
    ]
    try:
        assert listeners(cluster)
        res = subprocess.run(["bash", "cluster/local.sh", "stop"], cwd=REPO, env=cluster,
                             capture_output=True, text=True, timeout=120)
        assert "stopped" in res.stdout, res.stdout + res.stderr
        assert all(p.poll() is None for p in decoys)
        assert listeners(cluster) == []
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert f"={tmp}/session_" not in ps
        res = subprocess.run(["bash", "cluster/local.sh", "stop"], cwd=REPO, env=cluster,
                             capture_output=True, text=True, timeout=120)
        assert "nothing running" in res.stdout
    finally:
        for p in decoys:
            p.kill()
            p.wait()


@pytest.mark.parametrize("cluster", [2], indirect=True)
def test_job_submit_with_two_learners_on_a_multi_node_cluster(cluster, tmp_path):
    """Head + 2 worker nodes (1 CPU each): `ray job submit` of each algorithm with
    `--num-learners 2` trains 2 iterations; its run.json records 2 learners (restated by
    --resume)."""
    for algo in ("mbmpo", "mbpo"):
        out = tmp_path / algo
        cmd = [
            str(BIN / "ray"), "job", "submit", "--address", "http://127.0.0.1:8375", "--",
            "python", "-m", "mbmpo_ray", "train", "--algo", algo, "--config", "pendulum",
            "--variant", "smoke", "--iterations", "2", "--stop-timesteps", "100000",
            "--num-learners", "2",
            "--address", "auto", "--output", str(out),
        ]
        submit(cmd, cluster)
        state = pickle.loads((out / "checkpoint" / "algorithm_state.pkl").read_bytes())
        assert state["training_iteration"] == 2, algo
        assert json.loads((out / "run.json").read_text())["num_learners"] == 2
        assert (out / "progress.csv").read_text().count("\n") == 3
