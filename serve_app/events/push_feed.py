"""Whose features the EventWriter just pushed, heard by every ingress replica within a poll.

A user's events reach the online store at once, but every replica that reads features keeps a row per
user for `user_features_cache_ttl_s` (30 s). The ingress that took the events drops that user's row
and reads past the cache; its sibling replicas would serve the stale row until it expires. So the
EventWriter records each push in a `PushFeed`, and each ingress polls it (`follow`) a few times a
second: users it hears of are read past the cache from then on, as if it had taken their events.

A cursor is (epoch, sequence number). An ingress that cannot be told what it missed (the writer
restarted, or the ingress fell further behind than the feed keeps) gets `users=None`: every cached
row may be stale, so it drops them all, once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger("ray.serve")
Cursor = tuple[str, int]  # (the feed's epoch, the last sequence number heard)
POLL_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Pushed:
    cursor: Cursor
    users: tuple[int, ...] | None  # None: cannot tell who; treat every cached row as stale


class PushFeed:
    """The last `keep` users pushed, in order. Lives in the EventWriter; polled by ingresses."""

    def __init__(self, keep: int = 100_000) -> None:
        self.epoch = uuid.uuid4().hex  # a new writer is a new feed: its numbers start again
        self._seq = 0
        self._log: deque[tuple[int, int]] = deque(maxlen=keep)  # (sequence number, user id)
        self._lock = threading.Lock()  # Serve may run sync methods in a thread pool

    def record(self, user_ids: Iterable[int]) -> None:
        with self._lock:
            for user in user_ids:
                self._seq += 1
                self._log.append((self._seq, int(user)))

    def since(self, cursor: Cursor | None) -> Pushed:
        with self._lock:
            return self._since(cursor)

    def _since(self, cursor: Cursor | None) -> Pushed:
        now = (self.epoch, self._seq)
        if cursor is None or cursor[0] != self.epoch or cursor[1] > self._seq:
            return Pushed(now, None)  # a first poll, or a feed this ingress has not followed
        heard = cursor[1]
        if self._log and self._log[0][0] > heard + 1:
            return Pushed(now, None)  # what it missed has been dropped from the feed
        news: list[int] = []
        for seq, user in reversed(self._log):  # newest first: a poll costs what it returns
            if seq <= heard:
                break
            news.append(user)
        return Pushed(now, tuple(dict.fromkeys(reversed(news))))


async def follow(
    poll: Callable[[Cursor | None], Awaitable[Pushed]],
    heard: Callable[[Pushed], None],
    interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Poll the feed every `interval_s` and hand each answer to `heard`, forever; a poll that fails
    (the writer is restarting) is retried at the next tick with the same cursor."""
    cursor: Cursor | None = None
    failing = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            pushed = await asyncio.wait_for(poll(cursor), timeout=max(1.0, 4 * interval_s))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the writer's: try again at the next tick
            if not failing:
                log.warning("the event writer's push feed did not answer (%s); retrying", type(exc).__name__)
            failing = True
            continue
        failing = False
        heard(pushed)
        cursor = pushed.cursor


class RecentlyPushed:
    """Users whose events this ingress pushed in the last `ttl_s`: their reads go past every replica's
    cache (`refresh`), so a user sees their own event in the next answer wherever it is computed,
    while everyone else's reads keep the cache. Bounded: the oldest users are dropped first."""

    def __init__(self, ttl_s: float, max_users: int = 100_000) -> None:
        self.ttl_s, self.max_users = ttl_s, max_users
        self._at: OrderedDict[int, float] = OrderedDict()

    def add(self, user_ids: Sequence[int]) -> None:
        now = time.monotonic()
        for u in user_ids:
            self._at[int(u)] = now
            self._at.move_to_end(int(u))
        while self._at and (
            len(self._at) > self.max_users or now - next(iter(self._at.values())) > self.ttl_s
        ):
            self._at.popitem(last=False)

    def __contains__(self, user_id: int) -> bool:
        at = self._at.get(user_id)
        return at is not None and time.monotonic() - at <= self.ttl_s
