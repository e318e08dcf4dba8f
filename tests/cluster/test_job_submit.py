"""A real local cluster (`ray start --head` on loopback) and `ray job submit` of a tiny run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY": str(BIN / "ray"),
        "MBMPO_RAY_PORT": "6490",
        "MBMPO_DASHBOARD_PORT": "8375",
        "MBMPO_RAY_TMP": f"/tmp/mbmpo_test_{os.getpid()}",
        "RAY_AUTH_MODE": "token",
    }
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run(["bash", "cluster/local.sh", "start", "0"], cwd=REPO, env=env,
                       check=True, timeout=180, capture_output=True)
        yield env
    finally:
        subprocess.run(["bash", "cluster/local.sh", "stop"], cwd=REPO, env=env, timeout=120)
        shutil.rmtree(env["MBMPO_RAY_TMP"], ignore_errors=True)


def test_job_submit_trains_and_checkpoints(cluster, tmp_path):
    out = tmp_path / "job_run"
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", "http://127.0.0.1:8375",
        "--working-dir", ".", "--runtime-env-json",
        '{"excludes": [".venv", "runs", ".git", "*.png"]}', "--",
        "python", "-m", "mbmpo_ray", "train", "--config", "pendulum", "--variant", "smoke",
        "--iterations", "2", "--address", "auto", "--output", str(out),
    ]
    last = None
    for _ in range(3):  # the job agent can take a few seconds to come up
        last = subprocess.run(cmd, cwd=REPO, env=cluster, capture_output=True, text=True,
                              timeout=600)
        if "No available agent" not in last.stdout + last.stderr:
            break
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert "succeeded" in last.stdout + last.stderr
    assert any((out / "checkpoint").iterdir())
    assert (out / "progress.csv").read_text().count("\n") == 3
