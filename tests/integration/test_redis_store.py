"""The Redis online store for real: a real redis-server, loaded with the real Feast CLI from the session's
build, read by the serving reader and the request flow, written by a push, killed and paused."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import redis
from feast import FeatureStore
from feast.data_source import PushMode

from harness import redis_server
from harness.redis_server import REDIS_ENV, REDIS_YAML
from serve_app.core.bundle import load_bundle
from serve_app.core.errors import ConfigError
from serve_app.core.features import USER_EMBEDDING, USER_EMBEDDING_MODEL, USER_FEATURES, USER_RECENT_ITEMS
from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.offline import feast_ops
from serve_app.request.flow import in_process_flow
from serve_app.request.stages.scored import Scored
from serve_app.request.stages.user_features import UserFeatureReader, feast_fetcher
from tests.conftest import LocalRedis

pytestmark = pytest.mark.slow
UNKNOWN = 987_654_321
# Reads never hit the cache, and a generous deadline: these compare answers, not speed.
COMPARE = SERVING_DEFAULTS.with_overrides({"user_features_timeout_ms": 5_000, "user_features_cache_ttl_s": 0})


@dataclass(frozen=True)
class OnRedis:
    yaml: Path
    loaded_until: datetime  # end of the materialization into Redis
    users: list[int]  # users the build knows, minus PUSHED
    pushed: int  # the one user the push test changes in Redis


@pytest.fixture(scope="module")
def on_redis(built, local_redis: LocalRedis) -> Iterator[OnRedis]:
    """The session's build loaded into a fresh redis-server with `feast apply` +
    `materialize-incremental`; REDIS_CONNECTION_STRING set for the module, as a replica has it."""
    env = {REDIS_ENV: local_redis.server.address}
    yaml = built.repo / REDIS_YAML
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(REDIS_ENV, env[REDIS_ENV])
        end = feast_ops.load_online_store(built.repo, yaml, env, fresh=True)
        known = [int(u) for u in load_bundle(built.bundle).history.user_ids]
        yield OnRedis(yaml, end, known[:-1], known[-1])


def same_answer(a: Scored, b: Scored, what: str) -> None:
    """Every field of the flow's answer but its timings."""
    np.testing.assert_equal(
        vars(dataclasses.replace(a, timings_ms={})), vars(dataclasses.replace(b, timings_ms={})), what
    )


def test_the_server_listens_on_loopback_only_and_stop_spares_other_processes(local_redis: LocalRedis):
    server = local_redis.server
    listening = {
        c.laddr.ip
        for c in psutil.Process(server.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {"127.0.0.1"}
    # Only a redis-server on that port is ever signalled: a recycled pid (here, this process) is not.
    assert redis_server.stop(dataclasses.replace(server, pid=os.getpid())) is False
    assert redis_server.ping(server.port)


def test_every_user_reads_the_same_from_redis_as_from_sqlite(built, local_redis: LocalRedis, on_redis):
    sqlite, from_redis = feast_fetcher(built.repo), feast_fetcher(built.repo, on_redis.yaml)
    users = [*on_redis.users, UNKNOWN]
    rows = {user: (sqlite(user), from_redis(user)) for user in users}
    assert [u for u, (row, _) in rows.items() if row is None] == [UNKNOWN]
    for user, (row, redis_row) in rows.items():
        np.testing.assert_equal(redis_row, row, f"user {user}")
    # The rows really are in Redis: one hash per user materialized (the pushed user's too).
    keys = redis.Redis(port=local_redis.server.port).dbsize()
    assert keys == len(on_redis.users) + 1


def test_the_request_flow_answers_identically_on_both_stores(built, on_redis):
    sqlite_flow, sqlite_reader = in_process_flow(built.bundle, built.repo, COMPARE)
    redis_flow, redis_reader = in_process_flow(built.bundle, built.repo, COMPARE, on_redis.yaml)
    try:
        for user in [*on_redis.users[::8], UNKNOWN]:
            first = asyncio.run(sqlite_flow.run(user, 10, ()))
            same_answer(asyncio.run(redis_flow.run(user, 10, ())), first, f"user {user}")
            exclude = tuple(int(i) for i in first.item_ids[:2])
            same_answer(
                asyncio.run(redis_flow.run(user, 10, exclude)),
                asyncio.run(sqlite_flow.run(user, 10, exclude)),
                f"user {user} excluding {exclude}",
            )
            if user != UNKNOWN:  # equal because both are the two-stage answer, not two fallbacks
                assert first.fallback is None and not first.degraded, (user, first.reason)
    finally:
        sqlite_reader.close()
        redis_reader.close()


def test_a_push_lands_in_redis_and_the_reader_sees_it(built, on_redis):
    user = on_redis.pushed
    before = feast_fetcher(built.repo, on_redis.yaml)(user)
    assert before is not None
    changed = {"user_n_interactions": before["user_n_interactions"] + 1_000, "user_avg_rating": 1.25}
    # Newer than the materialized row: Feast's Redis writer keeps the newest by event time. Whole
    # seconds: Feast answers event times in seconds.
    pushed_at = pd.Timestamp(on_redis.loaded_until + timedelta(minutes=1)).floor("s")
    # A push names every field of the view (user_recent_items too: serve_app/events/ingest.py pushes it).
    names = (USER_EMBEDDING, USER_EMBEDDING_MODEL, *USER_FEATURES, USER_RECENT_ITEMS)
    features = {name: before[name] for name in names}
    row = {**features, **changed, "user_id": user, "event_timestamp": pushed_at}
    store = FeatureStore(repo_path=str(built.repo), fs_yaml_file=on_redis.yaml)
    store.push("user_push", pd.DataFrame([row]), to=PushMode.ONLINE)
    reader = UserFeatureReader(feast_fetcher(built.repo, on_redis.yaml), COMPARE)
    try:
        result = asyncio.run(reader.aget(user))
    finally:
        reader.close()
    assert result.source == "online" and not result.degraded
    assert {name: result.values[name] for name in changed} == changed
    assert result.event_time_s == pushed_at.timestamp(), "the pushed row, with its event time"
    np.testing.assert_array_equal(result.embedding, np.asarray(before["user_embedding"], np.float32))
    assert feast_fetcher(built.repo)(user) == before, "a push to Redis leaves the SQLite store alone"


@pytest.mark.parametrize("failure", ["killed", "paused"])
def test_redis_down_degrades_within_the_deadline_and_back_answers_as_before(
    built, local_redis: LocalRedis, on_redis, failure: str
):
    """killed: connections are refused (fails at once: no retries); paused (SIGSTOP): connections
    hang, so the 50 ms feature deadline answers, and the socket timeout frees the reading thread."""
    settings = SERVING_DEFAULTS.with_overrides({"user_features_cache_ttl_s": 0})
    deadline_ms = settings.user_features_timeout_ms
    flow, reader = in_process_flow(built.bundle, built.repo, settings, on_redis.yaml)
    users = on_redis.users[:12]
    raw_fetch = feast_fetcher(built.repo, on_redis.yaml)  # no deadline of its own: the client's timeouts
    raw_fetch(users[0])
    try:
        before = {user: asyncio.run(flow.run(user, 10, ())) for user in users}
        assert not any(answer.degraded for answer in before.values())
        if failure == "killed":
            redis_server.kill(local_redis.server)
        else:
            redis_server.pause(local_redis.server, True)
        try:
            read_ms, answers = [], []
            for user in users:
                start = time.perf_counter()
                features = asyncio.run(reader.aget(user))
                read_ms.append((time.perf_counter() - start) * 1000)
                assert features.degraded, features
                answers.append(asyncio.run(flow.run(user, 10, ())))
            # Past the deadline the reader walks away, but its thread is still reading: the client's
            # own timeouts must end that read (not wait 3 s here, nor forever), or threads pile up.
            pool = ThreadPoolExecutor(1)
            try:
                with pytest.raises(redis.ConnectionError if failure == "killed" else redis.TimeoutError):
                    pool.submit(raw_fetch, users[0]).result(timeout=3)
            finally:
                pool.shutdown(wait=False)
        finally:
            if failure == "killed":
                local_redis.restart()
            else:
                redis_server.pause(local_redis.server, False)
        print(f"{failure}: feature reads p50 {statistics.median(read_ms):.1f} ms, max {max(read_ms):.1f} ms")
        for answer in answers:
            assert answer.degraded and len(answer.item_ids) >= 10, answer.reason
            assert "online store" in answer.reason
        # Slack above the deadline for a loaded 2-core machine; a client retrying would take seconds.
        assert max(read_ms) < deadline_ms + 150, read_ms
        if failure == "killed":  # refused connections fail fast instead of using up the deadline
            assert statistics.median(read_ms) < deadline_ms / 2, read_ms
            assert all("ConnectionError" in a.reason for a in answers), answers[0].reason
        else:
            assert all(f"within {deadline_ms:.0f} ms" in a.reason for a in answers), answers[0].reason
        recovered = wait_until_normal(flow, users[0], timeout_s=3.0)
        assert recovered is not None, "still degraded 3 s after Redis came back"
        for user in users:
            same_answer(asyncio.run(flow.run(user, 10, ())), before[user], f"user {user} after {failure}")
    finally:
        reader.close()


def wait_until_normal(flow, user: int, timeout_s: float) -> Scored | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = asyncio.run(flow.run(user, 10, ()))
        if not answer.degraded:
            return answer
        time.sleep(0.05)
    return None


def test_the_redis_yaml_without_its_address_is_refused_at_start(built, on_redis, monkeypatch):
    monkeypatch.delenv(REDIS_ENV)
    with pytest.raises(ConfigError, match=REDIS_ENV):
        feast_fetcher(built.repo, on_redis.yaml)
