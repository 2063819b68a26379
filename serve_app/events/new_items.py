"""New items' vectors and features, from their first interactions (`recsys items add`).

Each new item's vector is folded in from its logged events against the serving bundle's own user
factors: the ALS item step, the same least squares as a user's fold-in with the roles swapped
(confidence `alpha` x the interaction's weight, the build's regularisation). Its ranker features come
from `item_rows_at`, the build's own function. The result is written as an item delta
(core/item_delta.py) that the replicas take through `user_config.item_delta`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from serve_app.core.bundle import Bundle
from serve_app.core.feature_rows import item_rows_at
from serve_app.core.features import ITEM_FEATURES
from serve_app.core.fold_in import confidence, fold_in, gram

MIN_KNOWN_USERS = 1  # an item needs interactions of users the model knows to get a vector


def new_item_rows(
    bundle: Bundle, items: pd.DataFrame, events: pd.DataFrame, as_of: int
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[str]]:
    """(item_ids, factors, columns, skipped) for `items` (item_id, category) not in the bundle, from
    `events` (user_id, item_id, rating, ts: their interactions). Items without an interaction of a user
    the model knows are skipped, with why."""
    embedding = bundle.manifest["build_config"]["embedding"]
    users = bundle.users
    known = np.isin(items["item_id"].to_numpy(), bundle.items.item_ids)
    skipped = [f"item {i}: already in bundle {bundle.version}" for i in items["item_id"][known]]
    items = items[~known]
    ids, vectors, kept = [], [], []
    xtx = gram(users.factors)
    for item_id in items["item_id"].to_numpy(np.int64):
        mine = events[events["item_id"] == item_id].drop_duplicates("user_id", keep="last")
        rows = np.searchsorted(users.user_ids, mine["user_id"].to_numpy()).clip(0, len(users.user_ids) - 1)
        rows = np.where(users.user_ids[rows] == mine["user_id"].to_numpy(), rows, -1)
        if int((rows >= 0).sum()) < MIN_KNOWN_USERS:
            skipped.append(f"item {item_id}: no interaction of a user model {bundle.model_id} knows yet")
            continue
        conf = confidence(mine["rating"].to_numpy(), np.zeros(len(mine)), float(embedding["alpha"]), None)
        vectors.append(fold_in(users.factors, xtx, rows, conf, float(embedding["regularization"])))
        ids.append(item_id)
        kept.append(mine)
    ids_arr = np.asarray(ids, dtype=np.int64)
    factors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), bundle.embedding_dim)
    if not len(ids):
        return ids_arr, factors, {n: np.empty(0) for n in ITEM_FEATURES}, skipped
    rows = item_rows_at(pd.concat(kept), items, ids_arr, np.full(len(ids), as_of, np.int64))
    rows = rows.set_index("item_id").reindex(ids_arr)
    return ids_arr, factors, {n: rows[n].to_numpy(np.float64) for n in ITEM_FEATURES}, skipped
