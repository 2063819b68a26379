"""The Feast feature sources a build writes: one row per entity per time the value became known.

The statistics themselves come from serve_app/core/feature_rows.py, which the event path uses too, so
a row a build writes and the row serving pushes after new events cannot drift apart.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from serve_app.core.feature_rows import user_stats
from serve_app.core.features import USER_EMBEDDING, USER_EMBEDDING_MODEL


def _as_timestamp(unix_seconds: np.ndarray | int) -> pd.DatetimeIndex | pd.Timestamp:
    return pd.to_datetime(unix_seconds, unit="s", utc=True)


def user_rows_at_cutoffs(
    history: pd.DataFrame,
    items: pd.DataFrame,
    cutoff: pd.Series,
    vectors: dict[int, tuple[np.ndarray, str]],
) -> pd.DataFrame:
    """User features as of each user's own cutoff, from exactly that user's earlier interactions.

    `vectors[user_id]` is the user's vector at the cutoff and the id of the model it belongs to.
    """
    stats = user_stats(history[history["user_id"].isin(cutoff.index)], items, cutoff)
    users = stats["user_id"].tolist()
    stats[USER_EMBEDDING] = [vectors[u][0] if u in vectors else None for u in users]
    stats[USER_EMBEDDING_MODEL] = [vectors[u][1] if u in vectors else None for u in users]
    # One second before the first held-out interaction: what was known just before it happened.
    stats["event_timestamp"] = _as_timestamp(cutoff.loc[stats["user_id"]].to_numpy() - 1)
    return stats


def user_rows_final(
    ratings: pd.DataFrame,
    items: pd.DataFrame,
    embeddings: np.ndarray,
    user_ids: np.ndarray,
    model_id: str,
    as_of: int,
    stamp: pd.Timestamp,
) -> pd.DataFrame:
    """Serving rows: every user's features from all data as of `as_of`, stamped `stamp`, with the
    served model's vector and its id."""
    reference = pd.Series(as_of, index=pd.Index(user_ids, name="user_id"))
    stats = user_stats(ratings, items, reference)
    stats[USER_EMBEDDING] = list(embeddings[np.searchsorted(user_ids, stats["user_id"].to_numpy())])
    stats[USER_EMBEDDING_MODEL] = model_id
    stats["event_timestamp"] = stamp
    return stats


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
