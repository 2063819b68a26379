"""User features from the Feast online store, with a deadline and a small TTL cache.

A slow or failing store must not fail a request: the read has a deadline, and past it (or on an
error) the reader answers from the cache, even a stale entry, and says the answer is degraded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from serve_app.features import USER_EMBEDDING, USER_FEATURES

Fetch = Callable[[int], dict[str, Any] | None]
Source = Literal["online", "cache", "stale_cache", "none"]


@dataclass(frozen=True)
class UserFeatureResult:
    user_id: int
    values: dict[str, Any]  # USER_FEATURES -> value (None where the store has none)
    embedding: np.ndarray | None  # float32
    found: bool  # the store (or the cache) knows this user
    source: Source
    degraded: bool
    reason: str | None = None


def feast_fetcher(repo: str | Path, fs_yaml: str | Path | None = None) -> Fetch:
    """One FeatureStore per process; returns None for a user the online store does not know."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo), fs_yaml_file=Path(fs_yaml) if fs_yaml else None)
    refs = [f"user_features:{name}" for name in (USER_EMBEDDING, *USER_FEATURES)]

    def fetch(user_id: int) -> dict[str, Any] | None:
        row = store.get_online_features(features=refs, entity_rows=[{"user_id": int(user_id)}]).to_dict()
        values = {name: row[name][0] for name in (USER_EMBEDDING, *USER_FEATURES)}
        return None if all(v is None for v in values.values()) else values

    return fetch


class UserFeatureReader:
    def __init__(
        self,
        fetch: Fetch,
        timeout_s: float = 0.05,
        ttl_s: float = 30.0,
        stale_s: float = 3_600.0,
        max_entries: int = 100_000,
    ) -> None:
        self._fetch = fetch
        self.timeout_s, self.ttl_s, self.stale_s, self.max_entries = timeout_s, ttl_s, stale_s, max_entries
        self._cache: OrderedDict[int, tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._lock = threading.Lock()
        # A store call that hangs keeps its thread; two workers let the next request try again.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="online-store")

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
            return _result(user_id, hit[1], "cache", degraded=False), hit
        return None, hit

    def _settle(self, user_id: int, hit, values: dict[str, Any] | None, error: BaseException | None):
        if error is None:
            self._remember(user_id, values)
            return _result(user_id, values, "online", degraded=False)
        if isinstance(error, FutureTimeout | asyncio.TimeoutError):
            reason = f"online store did not answer within {self.timeout_s * 1000:.0f} ms"
        else:
            reason = f"online store failed: {type(error).__name__}: {error}"[:300]
        if hit is not None and time.monotonic() - hit[0] <= self.stale_s:
            return _result(user_id, hit[1], "stale_cache", degraded=True, reason=reason)
        return UserFeatureResult(user_id, {}, None, False, "none", degraded=True, reason=reason)

    def get(self, user_id: int) -> UserFeatureResult:
        """Blocking read (in-process pipeline); waits at most timeout_s for the store."""
        cached, hit = self._fresh(user_id)
        if cached is not None:
            return cached
        try:
            values = self._pool.submit(self._fetch, user_id).result(timeout=self.timeout_s)
        except Exception as exc:  # any store failure degrades the answer, never fails the request
            return self._settle(user_id, hit, None, exc)
        return self._settle(user_id, hit, values, None)

    async def aget(self, user_id: int) -> UserFeatureResult:
        """The same read for an event loop: the store call runs on the pool, the loop keeps serving."""
        cached, hit = self._fresh(user_id)
        if cached is not None:
            return cached
        future = asyncio.wrap_future(self._pool.submit(self._fetch, user_id))
        try:
            values = await asyncio.wait_for(future, timeout=self.timeout_s)
        except Exception as exc:
            return self._settle(user_id, hit, None, exc)
        return self._settle(user_id, hit, values, None)

    def close(self) -> None:
        """Stop the store-reading threads (for callers that create readers and move on)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _result(
    user_id: int, values: dict[str, Any] | None, source: Source, degraded: bool, reason: str | None = None
) -> UserFeatureResult:
    if values is None:
        return UserFeatureResult(user_id, {}, None, False, source, degraded, reason)
    raw = values.get(USER_EMBEDDING)
    embedding = np.asarray(raw, dtype=np.float32) if raw is not None else None
    return UserFeatureResult(
        user_id, {name: values.get(name) for name in USER_FEATURES}, embedding, True, source, degraded, reason
    )
