"""The raw features of users and items, computed from an interaction log as of a reference time.

One implementation for the build (offline/feature_tables.py: training rows as of each decision time,
serving rows as of the data's end) and for the event path (events/user_rows.py: a user's row after
new events; events/new_items.py: an item added after the build). Recency and "recent" counts are
measured against each row's own reference time, so a row means the same thing wherever it is read.
The ranker's transformation of these raw values is core/features.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from serve_app.core.features import USER_RECENT_ITEMS

DAY = 86_400.0
RECENT_DAYS = 30
YEAR_DAYS = 365


def n_categories_of(items: pd.DataFrame) -> int:
    """Length of `user_category_share`: one slot per category code of the catalogue."""
    return int(items["category"].max()) + 1 if len(items) else 0


def _category_shares(ratings: pd.DataFrame, items: pd.DataFrame, n_categories: int) -> pd.Series:
    """user_id -> float32 vector: share of the user's interactions in each category code (an item
    the catalogue does not know counts as an interaction of no category)."""
    category = (
        items.set_index("item_id")["category"].reindex(ratings["item_id"]).fillna(-1).to_numpy(np.int64)
    )
    users, user_pos = np.unique(ratings["user_id"].to_numpy(), return_inverse=True)
    counts = np.zeros((len(users), max(n_categories, 1)), dtype=np.float64)
    known = (category >= 0) & (category < n_categories)
    np.add.at(counts, (user_pos[known], category[known]), 1.0)
    shares = counts / np.maximum(np.bincount(user_pos, minlength=len(users)), 1)[:, None]
    return pd.Series(list(shares[:, :n_categories].astype(np.float32)), index=users)


def user_stats(
    ratings: pd.DataFrame, items: pd.DataFrame, reference: pd.Series, n_categories: int | None = None
) -> pd.DataFrame:
    """The user features of each user in `ratings` (user_id, item_id, rating, ts) as of
    `reference[user_id]` (unix s): the build's rows and, over one user's log plus new events, the rows
    serving pushes (serve_app/events/user_rows.py), so the two cannot drift apart. An unrated
    interaction (rating NaN: a view, a click) counts everywhere but in `user_avg_rating`.
    `n_categories`: the share vector's length (default: the categories of `items`)."""
    ref = reference.reindex(ratings["user_id"]).to_numpy()
    recent = ratings["ts"].to_numpy() >= ref - RECENT_DAYS * DAY
    grouped = ratings.assign(recent=recent).groupby("user_id")
    out = pd.DataFrame(
        {
            "user_n_interactions": grouped.size().astype(np.int64),
            "user_last_ts": grouped["ts"].max(),
            "user_avg_rating": grouped["rating"].mean().astype(np.float32),
            "user_n_recent": grouped["recent"].sum().astype(np.int64),
        }
    )
    out["user_days_since_last"] = (
        (reference.reindex(out.index).to_numpy() - out["user_last_ts"].to_numpy()) / DAY
    ).astype(np.float32)
    width = n_categories_of(items) if n_categories is None else n_categories
    out["user_category_share"] = _category_shares(ratings, items, width).reindex(out.index)
    # Items seen after the bundle was built are pushed here by serving (events); the bundle's own
    # history already holds every item of the rows a build writes.
    out[USER_RECENT_ITEMS] = [np.empty(0, np.int64)] * len(out)
    return out.drop(columns="user_last_ts").reset_index()


def item_rows_at(
    ratings: pd.DataFrame, items: pd.DataFrame, item_ids: np.ndarray, times: np.ndarray
) -> pd.DataFrame:
    """Item features of each (item_ids[j], times[j]) from interactions strictly before times[j].

    Exact at every requested time, not at a coarser grid: training rows read an item as of each
    user's own decision time, as serving reads the bundle's snapshot as of the data's end. Only pairs
    with at least one interaction by then get a row (the item was unknown at that time otherwise).
    Columns: item_id, as_of (the time), then ITEM_FEATURES.
    """
    item_ids, times = np.asarray(item_ids, np.int64), np.asarray(times, np.int64)
    order = np.lexsort((ratings["ts"].to_numpy(), ratings["item_id"].to_numpy()))
    it = ratings["item_id"].to_numpy()[order]
    ts = ratings["ts"].to_numpy()[order].astype(np.int64)
    # Unrated interactions (views, clicks: NaN) count as interactions, not in the average rating.
    rating = ratings["rating"].to_numpy(np.float64)[order]
    rating_sum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(rating, nan=0.0))])
    rated = np.concatenate([[0], np.cumsum(~np.isnan(rating))])
    known_ids, start = np.unique(it, return_index=True)
    pos = np.searchsorted(known_ids, item_ids).clip(0, max(len(known_ids) - 1, 0))
    known = (known_ids[pos] == item_ids) if len(known_ids) else np.zeros(len(item_ids), bool)
    # One sorted key over (item, time) answers "how many of this item's interactions are before t".
    span = int(max(ts.max(initial=0), times.max(initial=0))) + int(YEAR_DAYS * DAY) + 2
    keys = np.searchsorted(known_ids, it).astype(np.int64) * span + ts
    base = pos.astype(np.int64) * span
    first = start[pos]
    end = np.searchsorted(keys, base + times, side="left")
    count = np.where(known, end - first, 0)

    def since(days: int) -> np.ndarray:
        return np.searchsorted(keys, base + np.maximum(times - int(days * DAY), 0), side="left")

    recent_from, year_from = since(RECENT_DAYS), since(YEAR_DAYS)
    ok = count > 0
    first, end, count, times = first[ok], end[ok], count[ok], times[ok]
    out = pd.DataFrame(
        {
            "item_id": item_ids[ok],
            "as_of": times,
            "item_popularity": count.astype(np.int64),
            "item_popularity_recent": (end - np.maximum(recent_from[ok], first)).astype(np.int64),
            "item_popularity_year": (end - np.maximum(year_from[ok], first)).astype(np.int64),
            "item_age_days": ((times - ts[first]) / DAY).astype(np.float32),
            "item_days_since_last": ((times - ts[end - 1]) / DAY).astype(np.float32),
            "item_avg_rating": _mean(rating_sum[end] - rating_sum[first], rated[end] - rated[first]),
        }
    )
    out["item_category"] = (
        items.set_index("item_id")["category"].reindex(out["item_id"]).fillna(-1).astype(np.int64).to_numpy()
    )
    return out


def _mean(total: np.ndarray, n: np.ndarray) -> np.ndarray:
    """total / n as float32, NaN where n is 0 (nothing rated: unknown, XGBoost's missing value)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)
