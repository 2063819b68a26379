"""`make run STORE=redis` on a head started here: the Serve app reads a real redis-server loaded with
the Feast CLI, answers like the SQLite flow, degrades while Redis hangs, and `stop` ends both."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness import cluster, ray_head, redis_server
from harness.ports import free_port
from serve_app.core.bundle import load_bundle
from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.request.flow import in_process_flow

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_the_app_on_redis_answers_like_sqlite_and_stop_ends_redis_too(built, tmp_path):
    if redis_server.executable() is None:
        pytest.skip("redis-server is not on PATH (.ci/run installs it: apt-get install redis-server)")
    home = tmp_path / "home"  # RECSYS_HOME: what the config's relative paths name
    (home / "artifacts").mkdir(parents=True)
    os.symlink(built.bundle, home / "artifacts" / "current")
    os.symlink(built.repo, home / "feature_repo")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    state_file = tmp_path / "cluster.json"
    # The replicas get the Redis address from the app's runtime_env only: not from this process.
    assert "REDIS_CONNECTION_STRING" not in os.environ
    state = ray_head.start_head(state_file, env={"RECSYS_HOME": str(home)})
    server = None
    try:
        server = cluster.start_redis(state, built.repo, state_file)
        assert json.loads(state_file.read_text())["redis"]["port"] == server.port
        cluster.deploy(state, ROOT / "cluster" / "serve_config.yaml", port, server.address)
        cluster.wait_healthy(base, state, timeout_s=240)
        users = [int(u) for u in load_bundle(built.bundle).history.user_ids]
        assert_answers_like_the_sqlite_flow(base, built, users[:4])
        # They really read Redis: paused, it makes a user not read before degraded, not SQLite.
        redis_server.pause(server, True)
        try:
            hung = recommend(base, users[40])
        finally:
            redis_server.pause(server, False)
        assert hung["degraded"] is True and "within 50 ms" in hung["degraded_reason"], hung
        assert len(hung["items"]) == 10
        back = recommend(base, users[41])
        assert back["degraded"] is False and back["fallback"] is None, back
    finally:
        assert cluster.stop(state_file)
    assert not state_file.exists()
    assert server is not None and not redis_server.ping(server.port), "make stop ends the redis-server"


def recommend(base: str, user_id: int) -> dict:
    response = httpx.post(f"{base}/recommend", json={"user_id": user_id, "k": 10}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def assert_answers_like_the_sqlite_flow(base: str, built, users: list[int]) -> None:
    settings = SERVING_DEFAULTS.with_overrides(
        {"user_features_timeout_ms": 5_000, "user_features_cache_ttl_s": 0}
    )
    reference, reader = in_process_flow(built.bundle, built.repo, settings)  # the SQLite store
    try:
        for user_id in users:
            body = recommend(base, user_id)
            assert body["degraded"] is False and body["fallback"] is None, body
            expected = asyncio.run(reference.run(user_id, 10, ()))
            assert [i["item_id"] for i in body["items"]] == expected.item_ids[:10].tolist()
            np.testing.assert_allclose([i["score"] for i in body["items"]], expected.scores[:10], rtol=1e-5)
    finally:
        reader.close()
