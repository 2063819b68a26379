"""Apply a batch of events: all of it or none of it (pure; no ray import; the EventWriter wraps it).

Under the event log's lock: drop the ids already applied, recompute each affected user's row from the
bundle's log plus all their events (serve_app/events/user_rows.py), append the events to the log (fsync),
then `store.push("user_push", rows, to=PushMode.ONLINE_AND_OFFLINE)`. Only when the push has returned
are they acknowledged. When it fails the log is cut back and the rows as they were are pushed to the
online store again (it is written first, so it may hold the new ones): the client is told to retry,
and the retry applies the batch once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from serve_app.core.errors import DependencyError
from serve_app.events.log import EventLog
from serve_app.events.models import Event, split_new
from serve_app.events.user_rows import ROW_COLUMNS, EventModel, updated_row

log = logging.getLogger("ray.serve")

PUSH_SOURCE = "user_push"  # feature_repo/definitions.py
Push = Callable[[pd.DataFrame, bool], None]  # (rows, also_offline)


class EventStoreUnavailable(DependencyError):
    code = "store_unavailable"


@dataclass(frozen=True)
class Applied:
    accepted: int
    duplicates: int
    users: tuple[int, ...]  # whose rows changed
    push_ms: float = 0.0


def feast_push(repo: str | Path, fs_yaml: str | Path | None = None) -> Push:
    """`store.push` to the `user_push` PushSource of the repo's store."""
    from feast import FeatureStore
    from feast.data_source import PushMode

    store = FeatureStore(repo_path=str(repo), fs_yaml_file=Path(fs_yaml) if fs_yaml else None)

    def push(rows: pd.DataFrame, also_offline: bool) -> None:
        mode = PushMode.ONLINE_AND_OFFLINE if also_offline else PushMode.ONLINE
        store.push(PUSH_SOURCE, rows, to=mode)

    return push


def rows_frame(rows: Sequence[dict], stamp: datetime) -> pd.DataFrame:
    frame = pd.DataFrame([{name: r[name] for name in ROW_COLUMNS} for r in rows])
    for name in ("user_n_interactions", "user_n_recent"):
        frame[name] = frame[name].astype(np.int64)
    for name in ("user_days_since_last", "user_avg_rating"):
        frame[name] = frame[name].astype(np.float32)
    frame["event_timestamp"] = pd.Timestamp(stamp)
    return frame


class EventIngest:
    def __init__(self, event_log: EventLog, push: Push, clock: Callable[[], datetime] | None = None) -> None:
        self.log, self.push = event_log, push
        self.clock = clock or (lambda: datetime.now(UTC))
        self._last = datetime.min.replace(tzinfo=UTC)

    def apply(self, model: EventModel, events: Sequence[Event]) -> Applied:
        with self.log.locked():
            fresh, duplicates = split_new(events, self.log.known_ids())
            if not fresh:
                return Applied(0, duplicates, ())
            users = tuple(sorted({e.user_id for e in fresh}))
            # Computed before anything is written: a failure here leaves nothing to undo.
            after, by_user = model.events_after, {u: [e for e in fresh if e.user_id == u] for u in users}
            new = [updated_row(model, u, self.log.interactions_of(u, by_user[u], after)) for u in users]
            stamp = self._stamp(model)
            offset = self.log.append(fresh)
            start = time.perf_counter()
            try:
                self.push(rows_frame(new, stamp), True)
            except Exception as exc:
                self.log.truncate(offset)
                self._restore(model, users, stamp)
                raise EventStoreUnavailable(
                    f"the feature store refused the events ({type(exc).__name__}: {str(exc)[:200]}); "
                    "nothing was applied: send them again"
                ) from exc
            push_ms = (time.perf_counter() - start) * 1000
            self.log.commit()
            return Applied(len(fresh), duplicates, users, push_ms)

    def _stamp(self, model: EventModel) -> datetime:
        """The pushed rows' event time: now, but always after the build's rows and the last push (an
        online store may keep the row with the newest event time only, as Feast's Redis store does)."""
        after = max(model.built_at + timedelta(seconds=1), self._last + timedelta(microseconds=1))
        stamp = max(self.clock(), after)
        self._last = stamp
        return stamp

    def _restore(self, model: EventModel, users: tuple[int, ...], stamp: datetime) -> None:
        """Put back the online rows of before the batch (the online write comes before the offline
        one in Feast's push, so a failed offline write leaves the new rows online)."""
        try:
            after = model.events_after
            had = [u for u in users if len(self.log.events_of(u, after)) or len(model.history.seen(u))]
            old = [updated_row(model, u, self.log.interactions_of(u, (), after)) for u in had]
            if old:
                self.push(rows_frame(old, self._stamp(model)), False)
        except Exception as exc:  # the store is down: it holds no new row either
            log.warning("events: could not restore the online rows of %d users: %s", len(users), exc)
