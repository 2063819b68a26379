"""The online-store reader's deadline, cache and degradation, with a controllable store (no Feast)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.request.stages.user_features import EVENT_TIME, UserFeatureReader

ROW = {
    "user_embedding": [0.5, 0.25],
    "user_n_interactions": 3,
    "user_days_since_last": 1.0,
    "user_avg_rating": 4.0,
    "user_n_recent": 1,
    "user_category_share": [1.0],
}


class Store:
    """Answers, hangs or fails on demand, and counts calls."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, user_id: int):
        self.calls += 1
        if self.mode == "hang":
            self.release.wait(5)
        if self.mode == "fail":
            raise ConnectionError("store is down")
        return None if user_id < 0 else dict(ROW)


@pytest.fixture
def read():
    def call(reader: UserFeatureReader, user_id: int):
        return asyncio.run(reader.aget(user_id))

    return call


def reader_of(
    store: Store, timeout_s: float, ttl_s: float = 30, stale_s: float = 3_600, **kw
) -> UserFeatureReader:
    settings = SERVING_DEFAULTS.with_overrides(
        {
            "user_features_timeout_ms": timeout_s * 1000,
            "user_features_cache_ttl_s": ttl_s,
            "user_features_stale_s": stale_s,
        }
    )
    return UserFeatureReader(store, settings, **kw)


def test_fresh_read_then_cache_hit(read):
    store = Store()
    reader = reader_of(store, timeout_s=1.0, ttl_s=60)
    first, second = read(reader, 7), read(reader, 7)
    assert (first.source, second.source) == ("online", "cache")
    assert store.calls == 1 and first.found and not first.degraded
    np.testing.assert_array_equal(first.embedding, np.array([0.5, 0.25], np.float32))
    assert first.values["user_n_interactions"] == 3


def test_unknown_user_is_found_false_not_degraded(read):
    result = read(reader_of(Store(), timeout_s=1.0), -5)
    assert not result.found and not result.degraded and result.source == "online"


def test_timeout_without_cache_degrades_quickly(read):
    store = Store()
    store.mode = "hang"
    reader = reader_of(store, timeout_s=0.05)
    start = time.monotonic()
    result = read(reader, 7)
    assert time.monotonic() - start < 1.0
    assert result.degraded and not result.found and result.source == "none"
    assert "50 ms" in result.reason
    store.release.set()


def test_failure_serves_stale_cache_and_says_so(read):
    store = Store()
    reader = reader_of(store, timeout_s=1.0, ttl_s=0.0, stale_s=60)
    assert read(reader, 7).source == "online"
    store.mode = "fail"
    result = read(reader, 7)
    assert result.source == "stale_cache" and result.degraded and result.found
    assert "ConnectionError" in result.reason


def test_cache_is_bounded():
    reader = reader_of(Store(), timeout_s=1.0, max_entries=3)
    for user_id in range(10):
        asyncio.run(reader.aget(user_id))
    assert len(reader._cache) == 3


def test_every_read_is_observed_with_its_time_and_the_rows_event_time(read):
    """What metrics.FeatureMetrics records: the read's latency and, when the row says, its event time
    (cache hits too: a cached row is as old as when the store computed it)."""
    store, seen = Store(), []
    stamped = {**ROW, EVENT_TIME: 1_700_000_000}
    store_with_time = lambda user_id: dict(stamped)  # noqa: E731
    reader = reader_of(store, timeout_s=0.05, ttl_s=60, observe=lambda r, ms: seen.append((r, ms)))
    reader._fetch = store_with_time
    read(reader, 7)
    read(reader, 7)
    store.mode = "hang"
    reader._fetch = store
    hung = read(reader, 8)
    store.release.set()
    assert [(r.source, r.event_time_s) for r, _ in seen] == [
        ("online", 1_700_000_000.0),
        ("cache", 1_700_000_000.0),
        ("none", None),
    ]
    assert hung.degraded and seen[-1][1] >= 50  # the deadline, measured
    assert all(ms >= 0 for _, ms in seen)


def test_a_batch_of_reads_waits_for_the_deadline_once_not_once_per_user():
    """The retriever reads its batch's users together (aget_many): with the store hanging, the batch
    is answered after about one deadline, each user degraded and timed, in the order asked."""
    store = Store()
    store.mode = "hang"
    reader = reader_of(store, timeout_s=0.1)
    start = time.monotonic()
    reads = asyncio.run(reader.aget_many([11, 12, 13, 14, 15, 16]))
    elapsed = time.monotonic() - start
    store.release.set()
    reader.close()
    assert elapsed < 0.4, elapsed  # one at a time would take 0.6 s
    assert [r.user_id for r, _ in reads] == [11, 12, 13, 14, 15, 16]
    assert all(r.degraded and r.source == "none" and ms >= 100 for r, ms in reads)


def test_a_refresh_read_goes_past_the_cache_and_a_failed_one_falls_back_on_it():
    store = Store()
    reader = reader_of(store, timeout_s=1.0, ttl_s=60, stale_s=60)
    assert asyncio.run(reader.aget(7)).source == "online"
    assert asyncio.run(reader.aget(7)).source == "cache" and store.calls == 1
    fresh = asyncio.run(reader.aget(7, refresh=True))
    assert fresh.source == "online" and store.calls == 2
    batch = asyncio.run(reader.aget_many([7, 7], [False, True]))
    assert [r.source for r, _ in batch] == ["cache", "online"] and store.calls == 3
    store.mode = "fail"
    assert asyncio.run(reader.aget(7, refresh=True)).source == "stale_cache"
