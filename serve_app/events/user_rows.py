"""A user's online feature row recomputed after new events, by the build's own functions (pure).

The row is a function of the user's whole interaction log: the bundle's log of that user (what its
model was trained on) plus every event of theirs since, combined as the build's loader combines a log
(one interaction per item, the latest kept). Its statistics come from `feature_rows.user_stats` and
its vector from `fold_in` against the bundle's item factors with the build's confidence weights, so a
row pushed now equals the row the next build would write from the same interactions, and applying the
same events twice (a retry) yields the same row, never a double count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from serve_app.core.artifacts import History, ItemIndex, ItemSnapshot
from serve_app.core.bundle import Bundle
from serve_app.core.feature_rows import user_stats
from serve_app.core.features import USER_EMBEDDING, USER_EMBEDDING_MODEL, USER_FEATURES, USER_RECENT_ITEMS
from serve_app.core.fold_in import confidence, fold_in

# Items of events since the build kept in the row (newest last) for the seen filter. Each one widens
# retrieval's over-fetch by one; a rebuild folds them into the bundle's history and empties the list.
MAX_RECENT_ITEMS = 1_000
ROW_COLUMNS = ("user_id", USER_EMBEDDING, USER_EMBEDDING_MODEL, *USER_FEATURES, USER_RECENT_ITEMS)


def gram_of(index: ItemIndex, chunk: int = 65_536) -> np.ndarray:
    """YᵀY of every item vector the index holds, in chunks (a 1M x 64 catalogue is never copied whole)."""
    yty = np.zeros((index.d, index.d), np.float64)
    for start in range(0, index.ntotal, chunk):
        y = index.vectors(np.arange(start, min(start + chunk, index.ntotal))).astype(np.float64)
        yty += y.T @ y
    return yty


@dataclass(frozen=True)
class EventModel:
    """What recomputing rows needs from one bundle, computed once when a replica loads it."""

    version: str
    model_id: str
    index: ItemIndex
    yty: np.ndarray
    history: History  # with its log (the bundle's "log" part)
    items: pd.DataFrame  # item_id, category: the catalogue as the build's user_stats reads it
    n_categories: int
    alpha: float
    half_life: float | None
    regularization: float
    data_end: int  # unix s: the build's reference time for its rows
    built_at: datetime  # the event time of the build's rows
    events_after: int = 0  # bytes of the event log the build already holds (offline/logged_events.py)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> EventModel:
        m = bundle.manifest
        embedding = m["build_config"]["embedding"]
        category = np.nan_to_num(bundle.items.columns["item_category"], nan=-1).astype(np.int64)
        n_categories = int(m.get("n_categories", category.max(initial=-1) + 1))
        data_end = pd.Timestamp(m["data_source"]["data_end"]).timestamp()
        return cls(
            bundle.version,
            bundle.model_id,
            bundle.index,
            gram_of(bundle.index),
            bundle.history,
            pd.DataFrame({"item_id": bundle.items.item_ids, "category": category}),
            n_categories,
            float(embedding["alpha"]),
            embedding.get("recency_half_life"),
            float(embedding["regularization"]),
            int(data_end),
            pd.Timestamp(m["created_at"]).to_pydatetime(),
            int(m["data_source"].get("event_log_bytes", 0)),
        )

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item id in the bundle (items added since included), -1 for one it does not know."""
        return self._rows.lookup(item_ids)

    @cached_property
    def _rows(self) -> ItemSnapshot:
        ids = self.items["item_id"].to_numpy(np.int64)  # appended items (item_delta.py) are unsorted
        return ItemSnapshot(ids, {}, np.argsort(ids, kind="stable"))

    def user_log(self, user_id: int, events: pd.DataFrame) -> pd.DataFrame:
        """The user's bundle log plus `events` (interaction rows of this user), oldest first, one
        interaction per item (the latest), as offline/data.load_movielens combines a log."""
        rows, ratings, ts = self.history.log(user_id)
        bundle_log = pd.DataFrame(
            {
                "user_id": np.int64(user_id),
                "item_id": self.items["item_id"].to_numpy()[rows],
                "rating": ratings.astype(np.float32),
                "ts": ts.astype(np.int64),
            }
        )
        frame = pd.concat([bundle_log, events[["user_id", "item_id", "rating", "ts"]]], ignore_index=True)
        frame = frame.sort_values("ts", kind="stable").drop_duplicates("item_id", keep="last")
        return frame.reset_index(drop=True)

    def vector(self, log: pd.DataFrame) -> np.ndarray:
        """The user's vector folded in from `log` (oldest first), as offline/embeddings.fold_in_users."""
        rows = self.rows_of(log["item_id"].to_numpy())
        later = len(rows) - 1 - np.arange(len(rows))
        conf = confidence(log["rating"].to_numpy(), later, self.alpha, self.half_life)
        known = rows >= 0
        local = np.full(len(rows), -1)
        local[known] = np.arange(int(known.sum()))
        return fold_in(self.index.vectors(rows[known]), self.yty, local, conf, self.regularization)


def updated_row(model: EventModel, user_id: int, events: pd.DataFrame) -> dict[str, Any]:
    """The user's online row (ROW_COLUMNS) from their bundle log and `events`: every interaction row of
    this user since the bundle was built (not only the newest), as `serve_app.events.interactions`.

    The reference time is where the next build would put it: the newest interaction plus a second,
    never before the bundle's data end.
    """
    events = events[events["user_id"] == user_id]
    log = model.user_log(user_id, events)
    as_of = max(model.data_end, int(log["ts"].max()) + 1)
    reference = pd.Series(as_of, index=pd.Index([user_id], name="user_id"))
    stats = user_stats(log, model.items, reference, model.n_categories).iloc[0]
    recent = events.sort_values("ts", kind="stable").drop_duplicates("item_id", keep="last")
    row: dict[str, Any] = {name: stats[name] for name in USER_FEATURES}
    row.update(
        {
            "user_id": int(user_id),
            USER_EMBEDDING: model.vector(log),
            USER_EMBEDDING_MODEL: model.model_id,
            USER_RECENT_ITEMS: recent["item_id"].to_numpy(np.int64)[-MAX_RECENT_ITEMS:],
        }
    )
    return {name: row[name] for name in ROW_COLUMNS}
