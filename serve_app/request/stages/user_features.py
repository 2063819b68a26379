"""User features from the Feast online store, with a deadline and a small TTL cache.

A slow or failing store must not fail a request: the read has a deadline, and past it (or on an
error) the reader answers from the cache, even a stale entry, and says the answer is degraded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from serve_app.core.errors import ConfigError
from serve_app.core.features import (
    USER_EMBEDDING,
    USER_EMBEDDING_MODEL,
    USER_FEATURES,
    USER_ONLINE_SERVICE,
    USER_RECENT_ITEMS,
)
from serve_app.core.settings import SERVING_DEFAULTS, ServingSettings
from serve_app.request.stages.scored import EMPTY_IDS

Fetch = Callable[[int], dict[str, Any] | None]
Observe = Callable[["UserFeatureResult", float], None]  # (result, milliseconds the read took)
EVENT_TIME = "__event_time_s"  # the fetched row's event timestamp, next to the feature values
Source = Literal["online", "cache", "stale_cache", "none"]


@dataclass(frozen=True)
class UserFeatureResult:
    user_id: int
    values: dict[str, Any]  # USER_FEATURES -> value (None where the store has none)
    embedding: np.ndarray | None  # float32
    found: bool  # the store (or the cache) knows this user
    source: Source  # stale_cache and none: the store failed or missed its deadline
    reason: str | None = None  # why the store read failed
    embedding_model: str | None = None  # the model that produced `embedding`
    event_time_s: float | None = None  # when the store's row was computed (epoch s), when it says
    # Items of the user's events since the bundle was built, newest last (the seen filter adds them).
    recent_item_ids: np.ndarray = field(default_factory=lambda: EMPTY_IDS)

    @property
    def degraded(self) -> bool:
        return self.source in ("stale_cache", "none")


def feast_fetcher(repo: str | Path, fs_yaml: str | Path | None = None) -> Fetch:
    """One FeatureStore per process, reading the `user_online_v1` FeatureService (the embedding and its
    model id, and the ranker's user features); returns None for a user the online store does not know."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo), fs_yaml_file=Path(fs_yaml) if fs_yaml else None)
    # Feast leaves an unset ${VAR} in the yaml as it is; the Redis client would then fail every read
    # with a parse error, so say what is missing at start-up instead.
    connection = str(getattr(store.config.online_store, "connection_string", ""))
    if "${" in connection:
        raise ConfigError(
            f"{fs_yaml}: online store connection_string {connection!r} names an environment variable "
            "that is not set here (REDIS_CONNECTION_STRING: host:port of the Redis online store)"
        )
    service = store.get_feature_service(USER_ONLINE_SERVICE)
    names = (USER_EMBEDDING, USER_EMBEDDING_MODEL, *USER_FEATURES, USER_RECENT_ITEMS)

    def fetch(user_id: int) -> dict[str, Any] | None:
        response = store.get_online_features(features=service, entity_rows=[{"user_id": int(user_id)}])
        row = response.to_dict(include_event_timestamps=True)
        values = {name: row[name][0] for name in names}
        if all(v is None for v in values.values()):
            return None
        values[EVENT_TIME] = row.get(f"{USER_EMBEDDING}__ts", [None])[0] or None  # 0: the store has none
        return values

    return fetch


class UserFeatureReader:
    def __init__(
        self,
        fetch: Fetch,
        settings: ServingSettings = SERVING_DEFAULTS,
        max_entries: int = 100_000,
        observe: Observe | None = None,
    ) -> None:
        self._fetch = fetch
        self.observe = observe  # e.g. metrics.FeatureMetrics.observe: latency and age of every read
        self.max_entries = max_entries
        self.configure(settings)
        self._cache: OrderedDict[int, tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._lock = threading.Lock()
        # A store call that hangs keeps its thread; two workers let the next request try again.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="online-store")

    def configure(self, settings: ServingSettings) -> None:
        self.timeout_s = settings.user_features_timeout_ms / 1000
        self.ttl_s = settings.user_features_cache_ttl_s
        self.stale_s = settings.user_features_stale_s

    def _cached(self, user_id: int) -> tuple[float, dict[str, Any] | None] | None:
        with self._lock:
            hit = self._cache.get(user_id)
            if hit is not None:
                self._cache.move_to_end(user_id)
            return hit

    def _remember(self, user_id: int, values: dict[str, Any] | None) -> None:
        with self._lock:
            self._cache[user_id] = (time.monotonic(), values)
            self._cache.move_to_end(user_id)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)

    def _fresh(
        self, user_id: int
    ) -> tuple[UserFeatureResult | None, tuple[float, dict[str, Any] | None] | None]:
        hit = self._cached(user_id)
        if hit is not None and time.monotonic() - hit[0] <= self.ttl_s:
            return _result(user_id, hit[1], "cache"), hit
        return None, hit

    def _settle(self, user_id: int, hit, values: dict[str, Any] | None, error: BaseException | None):
        if error is None:
            self._remember(user_id, values)
            return _result(user_id, values, "online")
        reason = store_failure(error, self.timeout_s)
        if hit is not None and time.monotonic() - hit[0] <= self.stale_s:
            return _result(user_id, hit[1], "stale_cache", reason)
        return UserFeatureResult(user_id, {}, None, False, "none", reason)

    async def aget(self, user_id: int, refresh: bool = False) -> UserFeatureResult:
        return (await self.atimed(user_id, refresh))[0]

    async def atimed(self, user_id: int, refresh: bool = False) -> tuple[UserFeatureResult, float]:
        """The read and the milliseconds it took. Waits at most timeout_s for the store; the call runs
        on the pool, the loop keeps serving. `refresh`: past the cache to the store (the user's events
        were just pushed); a cached row still stands in if the store fails."""
        start = time.perf_counter()
        result = await self._aget(user_id, refresh)
        elapsed_ms = (time.perf_counter() - start) * 1000
        if self.observe is not None:
            self.observe(result, elapsed_ms)
        return result, elapsed_ms

    async def aget_many(
        self, user_ids: Sequence[int], refresh: Sequence[bool] | None = None
    ) -> list[tuple[UserFeatureResult, float]]:
        """`atimed` for each user, all at once: a batch waits for its slowest read, at most timeout_s
        (a read's wait on the pool's queue counts against its deadline), not for the sum of them."""
        flags = refresh if refresh is not None else [False] * len(user_ids)
        return list(await asyncio.gather(*(self.atimed(u, r) for u, r in zip(user_ids, flags, strict=True))))

    async def _aget(self, user_id: int, refresh: bool = False) -> UserFeatureResult:
        cached, hit = self._fresh(user_id)
        if cached is not None and not refresh:
            return cached
        future = asyncio.wrap_future(self._pool.submit(self._fetch, user_id))
        try:
            values = await asyncio.wait_for(future, timeout=self.timeout_s)
        except Exception as exc:
            return self._settle(user_id, hit, None, exc)
        return self._settle(user_id, hit, values, None)

    def forget(self, user_ids: Sequence[int]) -> None:
        """Drop these users' cached rows (their features were just pushed): the next read goes to the
        store. Only this process's cache; other replicas hear of the push (events/push_feed.py)."""
        with self._lock:
            for u in user_ids:
                self._cache.pop(int(u), None)

    def forget_all(self) -> None:
        """Drop every cached row (this replica cannot tell whose features were pushed meanwhile)."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        """Stop the store-reading threads (for callers that create readers and move on)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _result(
    user_id: int, values: dict[str, Any] | None, source: Source, reason: str | None = None
) -> UserFeatureResult:
    if values is None:
        return UserFeatureResult(user_id, {}, None, False, source, reason)
    raw = values.get(USER_EMBEDDING)
    embedding = np.asarray(raw, dtype=np.float32) if raw is not None else None
    values_by_name = {name: values.get(name) for name in USER_FEATURES}
    model = values.get(USER_EMBEDDING_MODEL)
    event_time = values.get(EVENT_TIME)
    recent = values.get(USER_RECENT_ITEMS)
    return UserFeatureResult(
        user_id,
        values_by_name,
        embedding,
        True,
        source,
        reason,
        str(model) if model else None,
        float(event_time) if event_time else None,
        np.asarray(recent, dtype=np.int64) if recent is not None and len(recent) else EMPTY_IDS,
    )


def store_failure(error: BaseException, timeout_s: float) -> str:
    """The degraded reason for an online-store read that failed or missed its deadline."""
    if isinstance(error, FutureTimeout | asyncio.TimeoutError):
        return f"online store did not answer within {timeout_s * 1000:.0f} ms"
    return f"online store failed: {type(error).__name__}: {error}"[:300]
