"""`make stop` while `make run` is still starting: the start ends, and so does everything it started,
including what it had not recorded yet (every process of a cluster carries its mark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import processes
from loadtest.targets import recsys_home

ROOT = Path(__file__).resolve().parents[2]


def _wait_for_head(state_file: Path, start: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert start.poll() is None, "the start ended before its head was recorded"
        if state_file.exists() and "pid" in json.loads(state_file.read_text() or "{}"):
            return
        time.sleep(0.2)
    raise AssertionError("the start did not record its head in time")


@pytest.mark.slow
@pytest.mark.ray
def test_a_stop_during_a_start_leaves_nothing_running(built, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "RECSYS_RUN_DIR": str(run_dir),  # a state file of its own, not this checkout's `make run`
        "RECSYS_HOME": str(recsys_home(built.bundle, built.repo, tmp_path)),
    }
    state_file = run_dir / "cluster.json"
    command = [sys.executable, "-m", "harness"]
    config = str(ROOT / "cluster" / "serve_config.colocated.yaml")
    with (tmp_path / "start.log").open("w") as log:
        start = subprocess.Popen(
            [*command, "start", "--config", config, "--throughput-optimized", "--balancer", "off"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_head(state_file, start)
        time.sleep(3)  # the head is coming up; the deploy, the Prometheus and the rest are still to come
        stopped = subprocess.run(
            [*command, "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        assert stopped.returncode == 0, stopped.stderr
        assert start.wait(30) != 0, "the start was ended, not completed"
        time.sleep(5)  # nothing is started after the stop returned
        assert processes.marked(state_file) == [], "a process of the stopped cluster is still running"
        assert not state_file.exists()
    finally:
        if start.poll() is None:
            start.kill()
        subprocess.run([*command, "stop"], cwd=ROOT, env=env, capture_output=True, timeout=180)
