"""`cluster/local.sh stop` stops exactly its own cluster (no Ray needed: decoy processes).

It used to find its processes with `pgrep -f "$TMP"`: that killed a second cluster whose temp
dir shares the prefix and a `tail`/`less` reading one of its log files, and said "stopped"
when nothing was running."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def decoys(tmp_path):
    """Processes that mention the temp dir but are not its cluster: a daemon of a second
    cluster whose temp dir starts with ours, and a reader of one of our log files."""
    tmp = f"/tmp/mbmpo_stop_test_{os.getpid()}"
    logs = Path(tmp, "session_2026-01-01_00-00-00_1", "logs")
    logs.mkdir(parents=True)
    (logs / "raylet.out").write_text("log\n")
    procs = [
        subprocess.Popen(["bash", "-c", f'exec -a "raylet --log_dir={tmp}2/session_1/logs '
                                        f'--temp_dir={tmp}2" sleep 300']),
        subprocess.Popen(["tail", "-f", str(logs / "raylet.out")], stdout=subprocess.DEVNULL),
    ]
    try:
        yield tmp, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", tmp])


def test_stop_with_nothing_running_kills_nothing_and_says_so(decoys):
    tmp, procs = decoys
    env = {**os.environ, "RAY": str(BIN / "ray"), "MBMPO_RAY_TMP": tmp,
           "MBMPO_RAY_PORT": "6790"}
    res = subprocess.run(["bash", "cluster/local.sh", "stop"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "nothing running" in res.stdout and "stopped" not in res.stdout
    assert all(p.poll() is None for p in procs), "a process of no cluster of ours was killed"
