"""Compute the Feast feature sources: one row per entity per time the value became known.

Recency and "recent" counts are measured against the row's own reference time, so a row means the
same thing whether it is read for training (as of a user's cutoff) or served (as of the data's end).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

DAY = 86_400.0
RECENT_DAYS = 30


def _as_timestamp(unix_seconds: np.ndarray | int) -> pd.DatetimeIndex | pd.Timestamp:
    return pd.to_datetime(unix_seconds, unit="s", utc=True)


def user_rows_at_cutoffs(
    train: pd.DataFrame, items: pd.DataFrame, cutoff: pd.Series, embeddings: np.ndarray, user_ids: np.ndarray
) -> pd.DataFrame:
    """User features as of each user's own cutoff, from exactly that user's earlier interactions.

    `embeddings[i]` belongs to `user_ids[i]` (the model trained on `train`).
    """
    stats = _user_stats(train[train["user_id"].isin(cutoff.index)], items, cutoff)
    rows = np.searchsorted(user_ids, stats["user_id"].to_numpy())
    stats["user_embedding"] = list(embeddings[rows].astype(np.float32))
    # One second before the first held-out interaction: what was known just before it happened.
    stats["event_timestamp"] = _as_timestamp(cutoff.loc[stats["user_id"]].to_numpy() - 1)
    return stats


def user_rows_final(
    ratings: pd.DataFrame,
    items: pd.DataFrame,
    embeddings: np.ndarray,
    user_ids: np.ndarray,
    as_of: int,
    stamp: pd.Timestamp,
) -> pd.DataFrame:
    """Serving rows: every user's features from all data as of `as_of`, stamped `stamp`."""
    reference = pd.Series(as_of, index=pd.Index(user_ids, name="user_id"))
    stats = _user_stats(ratings, items, reference)
    stats["user_embedding"] = list(embeddings[np.searchsorted(user_ids, stats["user_id"].to_numpy())])
    stats["event_timestamp"] = stamp
    return stats


def _category_shares(ratings: pd.DataFrame, items: pd.DataFrame) -> pd.Series:
    """user_id -> float32 vector: share of the user's interactions in each category code."""
    n_categories = int(items["category"].max()) + 1 if len(items) else 0
    category = items.set_index("item_id")["category"].reindex(ratings["item_id"]).to_numpy()
    users, user_pos = np.unique(ratings["user_id"].to_numpy(), return_inverse=True)
    counts = np.zeros((len(users), max(n_categories, 1)), dtype=np.float64)
    known = category >= 0
    np.add.at(counts, (user_pos[known], category[known]), 1.0)
    shares = counts / np.maximum(np.bincount(user_pos, minlength=len(users)), 1)[:, None]
    return pd.Series(list(shares[:, :n_categories].astype(np.float32)), index=users)


def _user_stats(ratings: pd.DataFrame, items: pd.DataFrame, reference: pd.Series) -> pd.DataFrame:
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
    out["user_category_share"] = _category_shares(ratings, items).reindex(out.index)
    return out.drop(columns="user_last_ts").reset_index()


def item_rows_as_of(
    ratings: pd.DataFrame, items: pd.DataFrame, emb_norm: pd.Series, as_of: int, stamp: pd.Timestamp
) -> pd.DataFrame:
    """Item features from interactions strictly before `as_of`, stamped `stamp`.

    Only items with at least one interaction by then get a row (the rest are unknown at that time).
    `emb_norm` maps item_id -> norm of its factors in the model that is current at `stamp`.
    """
    past = ratings[ratings["ts"] < as_of]
    recent = past["ts"].to_numpy() >= as_of - RECENT_DAYS * DAY
    grouped = past.assign(recent=recent).groupby("item_id")
    out = pd.DataFrame(
        {
            "item_popularity": grouped.size().astype(np.int64),
            "item_popularity_recent": grouped["recent"].sum().astype(np.int64),
            "item_age_days": ((as_of - grouped["ts"].min()) / DAY).astype(np.float32),
            "item_days_since_last": ((as_of - grouped["ts"].max()) / DAY).astype(np.float32),
            "item_avg_rating": grouped["rating"].mean().astype(np.float32),
        }
    )
    out["item_emb_norm"] = emb_norm.reindex(out.index).to_numpy(np.float32)
    out["item_category"] = (
        items.set_index("item_id")["category"].reindex(out.index).fillna(-1).astype(np.int64)
    )
    out = out.reset_index()
    out["event_timestamp"] = stamp
    return out


def item_snapshot_times(cutoffs: np.ndarray, n_snapshots: int) -> np.ndarray:
    """Grid of item-snapshot times spanning the users' cutoffs (quantiles, deduplicated)."""
    qs = np.linspace(0.0, 1.0, n_snapshots)
    return np.unique(np.quantile(cutoffs, qs).astype(np.int64))


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
