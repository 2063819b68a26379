"""The Feast sources a build writes: rows as of every decision time the evaluation reads, and the
serving rows `feast materialize-incremental` loads into the online store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from serve_app.offline import feast_ops, feature_tables
from serve_app.offline.data import Interactions
from serve_app.offline.embeddings import Embeddings
from serve_app.offline.protocol import SeedRun
from serve_app.offline.split import TemporalSplit


def serving_stamp(repo: Path, data_end: int) -> pd.Timestamp:
    """When the serving rows become valid: now, but never before the data ends (else rows from the
    future would be visible to training rows through the point-in-time join) and never before the
    online store's last materialization (else materialize-incremental would skip them)."""
    stamp = max(
        pd.Timestamp(datetime.now(UTC).replace(microsecond=0)), pd.Timestamp(data_end, unit="s", tz="UTC")
    )
    last = feast_ops.last_materialized(repo)
    return max(stamp, last + timedelta(seconds=1)) if last is not None else stamp


def write_feature_sources(
    data: Interactions,
    split: TemporalSplit,
    runs: list[SeedRun],
    repo: Path,
    served: Embeddings | None = None,
    stamp: pd.Timestamp | None = None,
) -> None:
    """Training rows at every split user's decision time, and (with `served`) serving rows stamped
    `stamp`, holding the served model's user vectors and its id."""
    ratings = data.ratings
    data_end = int(ratings["ts"].max()) + 1
    vectors = {u: (q.vector, q.model.model_id) for u, q in runs[0].queries.items() if q.vector is not None}
    users = [
        feature_tables.user_rows_at_cutoffs(
            split.history(), data.items, split.cutoff.loc[split.users], vectors
        )
    ]
    if served is not None:
        users.append(
            feature_tables.user_rows_final(
                ratings, data.items, served.user_factors, served.user_ids, served.model_id, data_end, stamp
            )
        )
    # Items exactly as of each decision time they are read at (a row per candidate and cutoff).
    pairs = pd.concat([r.frame[["item_id", "user_id"]] for r in runs]).drop_duplicates()
    pairs = pairs.assign(t=split.cutoff.loc[pairs["user_id"]].to_numpy())[["item_id", "t"]].drop_duplicates()
    training = feature_tables.item_rows_at(
        ratings, data.items, pairs["item_id"].to_numpy(), pairs["t"].to_numpy()
    )
    training["event_timestamp"] = pd.to_datetime(training.pop("as_of") - 1, unit="s", utc=True)
    items = [training]
    if served is not None:
        serving = served_item_rows(data, served.item_ids).drop(columns="as_of")
        items.append(serving.assign(event_timestamp=stamp))
    data_dir = repo / "data"
    feature_tables.write_parquet_atomic(
        pd.concat(users, ignore_index=True), data_dir / "user_features.parquet"
    )
    items = pd.concat(items, ignore_index=True)
    feature_tables.write_parquet_atomic(items, data_dir / "item_features.parquet")


def served_item_rows(data: Interactions, item_ids: np.ndarray) -> pd.DataFrame:
    data_end = int(data.ratings["ts"].max()) + 1
    return feature_tables.item_rows_at(data.ratings, data.items, item_ids, np.full(len(item_ids), data_end))
