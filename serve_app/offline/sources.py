"""The Feast sources a build writes, and the training features read back.

User rows are written as of every decision time the evaluation reads and read back through Feast's
point-in-time join. Item features for training are computed exactly at each (item, decision time)
pair by `core/feature_rows.item_rows_at`, the function that also computes the serving rows, and joined
on that pair here: Feast's file offline store joins a view on its key alone and filters by time
afterwards, so a row per (candidate, decision time) costs it (rows per item)^2. On the default
synthetic catalogue that join passed 9 GB within 30 s and kept growing. The item source holds the
serving rows (`feast materialize-incremental` loads them into the online store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore

from serve_app.core.feature_rows import item_rows_at
from serve_app.offline import feast_ops, feature_tables
from serve_app.offline.data import Interactions
from serve_app.offline.embeddings import Embeddings
from serve_app.offline.evaluation.protocol import SeedRun
from serve_app.offline.evaluation.split import TemporalSplit


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
    # Without a served model (`recsys tune`) the item rows are stamped at the data's end: still
    # after every decision time, so they reach no training row.
    item_ids = served.item_ids if served is not None else data.items["item_id"].to_numpy()
    when = stamp if stamp is not None else pd.Timestamp(data_end, unit="s", tz="UTC")
    items = served_item_rows(data, item_ids).drop(columns="as_of").assign(event_timestamp=when)
    data_dir = repo / "data"
    feature_tables.write_parquet_atomic(
        pd.concat(users, ignore_index=True), data_dir / "user_features.parquet"
    )
    feature_tables.write_parquet_atomic(items, data_dir / "item_features.parquet")


def training_features(store: FeatureStore, data: Interactions, entities: pd.DataFrame) -> pd.DataFrame:
    """The ranker's raw features for (user_id, item_id, event_timestamp) rows, as of each row's time:
    user features through Feast's point-in-time join, item features exact at that time (see above).
    One row per input row, in input order; NaN where nothing was known yet."""
    out = feast_ops.historical_features(store, entities, views=(feast_ops.USER_VIEW,))
    # Item rows count interactions strictly before `as_of`: the end of the row's second.
    seconds = (entities["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    t = seconds.to_numpy(np.int64) + 1
    pairs = pd.DataFrame({"item_id": entities["item_id"].to_numpy(), "as_of": t}).drop_duplicates()
    items = item_rows_at(data.ratings, data.items, pairs["item_id"].to_numpy(), pairs["as_of"].to_numpy())
    out = out.assign(as_of=t).merge(items, on=["item_id", "as_of"], how="left", validate="many_to_one")
    return out.drop(columns="as_of")


def served_item_rows(data: Interactions, item_ids: np.ndarray) -> pd.DataFrame:
    data_end = int(data.ratings["ts"].max()) + 1
    return item_rows_at(data.ratings, data.items, item_ids, np.full(len(item_ids), data_end))
