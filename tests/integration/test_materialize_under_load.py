"""`feast materialize` (the real CLI) while the service answers steady traffic that reads every user's
row from the store (no cache): no request fails and none is degraded, in the graph topology."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from serve_app.core.bundle import load_bundle
from tests.conftest import Traffic, local_serve

pytestmark = [pytest.mark.ray, pytest.mark.slow]
FEAST = Path(sys.executable).parent / "feast"


def test_materialize_under_traffic_fails_and_degrades_nothing(built, tmp_path):
    from ray import serve

    from serve_app.serve.app import AppArgs, build_app

    # A copy of the session's repo (materialize writes this copy's online store; it applies nothing,
    # so the copied registry's tables stay the session's own).
    repo = tmp_path / "feature_repo"
    shutil.copytree(built.repo, repo)
    users = [int(u) for u in load_bundle(built.bundle, parts=("history",)).history.user_ids]
    # No cache: every request reads the user's row from the store that materialize is writing.
    args = AppArgs(bundle=str(built.bundle), feature_repo=str(repo), user_features_cache_ttl_s=0)
    with local_serve("recsys-materialize-test") as port:
        serve.run(build_app(args), name="recsys", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        _warm(base, users[0])
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        with Traffic(base, users, clients=3) as traffic:
            time.sleep(2)
            before, started = traffic.count, time.monotonic()
            for argv in (["materialize", "2000-01-01T00:00:00", now], ["materialize-incremental", now]):
                done = subprocess.run([str(FEAST), "-c", str(repo), *argv], capture_output=True, text=True)
                assert done.returncode == 0, done.stderr[-2000:]
            during, took_s = traffic.count - before, time.monotonic() - started
            print(f"materialize + materialize-incremental: {took_s:.1f} s, {during} requests meanwhile")
            time.sleep(2)
    assert during > 20, f"only {during} requests while materializing"
    assert not traffic.failed, traffic.failed[:3]
    assert not traffic.degraded, (len(traffic.degraded), traffic.degraded[:3])


def _warm(base: str, user_id: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = httpx.post(f"{base}/recommend", json={"user_id": user_id, "k": 5}, timeout=30).json()
        if not body["degraded"]:
            return
        time.sleep(0.5)
