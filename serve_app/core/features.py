"""The one feature transformation, shared by training and serving (no training/serving skew).

Training passes columns of a `get_historical_features` frame; serving passes one user's online
features (scalars) and the bundle's item snapshot columns. Both end in `model_matrix`, whose column
order is `FEATURE_NAMES`, which the bundle manifest and the XGBoost model record and the loader checks.

The ranker is trained on candidates of the evaluation models and served on those of the bundle's own
model, so nothing it reads may depend on which ALS model produced it: raw inner products and factor
norms shift between models (the median top-200 score moved 0.62 -> 0.70 on ml-latest-small), ranks
and ratios to the user's best score do not, and cosine similarities between two items of one model
move little (median 0.40 from the evaluation's models, 0.42 from the served one: the manifest's
`ranker_input_shift`). `retrieval_columns` is that view, computed where the vectors are (the
retriever, the evaluation's snapshot models) and handed to the ranker with the candidates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

FEATURE_SERVICE = "ranker_v1"
USER_ONLINE_SERVICE = "user_online_v1"
USER_EMBEDDING = "user_embedding"
USER_EMBEDDING_MODEL = "user_embedding_model"  # id of the model that produced user_embedding
# Items the user interacted with after the bundle was built (events), newest last: the seen filter
# adds them to the bundle's history. Not a ranker input.
USER_RECENT_ITEMS = "user_recent_items"

# Raw Feast features, in the ranker FeatureService's order.
USER_FEATURES: tuple[str, ...] = (
    "user_n_interactions",
    "user_days_since_last",
    "user_avg_rating",
    "user_n_recent",
    "user_category_share",
)
ITEM_FEATURES: tuple[str, ...] = (
    "item_popularity",
    "item_popularity_recent",
    "item_popularity_year",
    "item_age_days",
    "item_days_since_last",
    "item_avg_rating",
    "item_category",
)
RETRIEVAL_FEATURES: tuple[str, ...] = (
    "retrieval_rank",
    "retrieval_score_ratio",
    "history_sim_max",  # largest cosine similarity to the user's RECENT_ITEMS latest items
    "history_sim_last",  # cosine similarity to the user's latest item
)
# The user's latest items the candidates are compared with. Both similarities together raised the
# ranker's NDCG@10 gain over retrieval-only from +0.0041 to +0.0074 in cross-validation over
# ml-latest-small's ranker and validation users (5 x 3 folds, never the test users; docs/offline.md).
RECENT_ITEMS = 10

FEATURE_NAMES: tuple[str, ...] = (
    "retrieval_rank",
    "retrieval_score_ratio",
    "history_sim_max",
    "history_sim_last",
    "user_log_interactions",
    "user_days_since_last",
    "user_avg_rating",
    "user_log_recent",
    "item_log_popularity",
    "item_log_popularity_recent",
    "item_log_popularity_year",
    "item_age_days",
    "item_days_since_last",
    "item_avg_rating",
    "item_category",
    "rating_gap",
    "user_item_category_share",
)


def _column(values: Any, n: int) -> np.ndarray:
    """float64 column of length n; None/NA -> NaN (XGBoost's missing value), scalars broadcast."""
    if values is None:
        return np.full(n, np.nan)
    if np.ndim(values) == 0:
        return np.full(n, np.nan if pd.isna(values) else float(values))
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        # Object columns from Feast frames (pandas NA, None): coerce once, missing -> NaN.
        arr = pd.to_numeric(pd.Series(arr), errors="coerce").to_numpy(np.float64, na_value=np.nan)
    arr = arr.astype(np.float64, copy=False)
    if arr.shape != (n,):
        raise ValueError(f"feature column has shape {arr.shape}, expected ({n},)")
    return arr


def _category_share(shares: Any, category: np.ndarray) -> np.ndarray:
    """Share of the user's past interactions in each candidate's category (NaN when unknown).

    `shares` is one vector (serving: one user) or one vector per row (training frames).
    """
    n = category.shape[0]
    out = np.full(n, np.nan)
    if shares is None:
        return out
    arr = np.asarray(shares) if not isinstance(shares, np.ndarray) else shares
    if arr.dtype.kind in "fiu" and arr.ndim == 1:  # one user's vector (serving)
        table = arr.astype(np.float64)[None, :]
        row_of = np.zeros(n, dtype=np.int64)
    elif arr.dtype.kind in "fiu" and arr.ndim == 2:  # one vector per row, all the same length
        table = arr.astype(np.float64)
        row_of = np.arange(n)
    else:  # object column from a Feast frame: per-row vectors, None/NaN where the user was unknown
        vectors = [
            np.asarray(v, dtype=np.float64).reshape(-1) if np.ndim(v) == 1 else np.empty(0) for v in arr
        ]
        width = max((len(v) for v in vectors), default=0)
        table = np.full((len(vectors), width), np.nan)
        for i, v in enumerate(vectors):
            table[i, : len(v)] = v
        row_of = np.arange(n)
    if len(row_of) and row_of[-1] > 0 and table.shape[0] != n:  # per-row input of the wrong length
        raise ValueError(f"user_category_share has {table.shape[0]} rows, expected {n}")
    valid = np.isfinite(category) & (category >= 0) & (category < table.shape[1])
    out[valid] = table[row_of[valid], category[valid].astype(np.int64)]
    return out


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), in float32: on the request path
    `retrieval_columns` took 63 us per request in float64 with np.divide's `where`, 37 us now."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", v, v))
    norms[norms == 0] = 1.0
    return v / norms[:, None]


def retrieval_columns(
    scores: np.ndarray, candidates: np.ndarray, recent: np.ndarray
) -> dict[str, np.ndarray]:
    """RETRIEVAL_FEATURES of one user's candidates.

    `scores` are the retrieval scores, best first; `candidates` the candidates' item vectors (n, d)
    and `recent` the vectors of the user's latest items (m, d), oldest first, m <= RECENT_ITEMS, of
    the same model. The ratio to the best score is NaN when that score is not positive (no scale to
    compare with); the similarities are NaN when the user has no recent item.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    top = s[0] if n else np.nan
    ratio = s / top if top > 0 else np.full(n, np.nan)
    recent = np.asarray(recent)[-RECENT_ITEMS:]
    if n and len(recent):
        sims = _unit(candidates) @ _unit(recent).T
        sim_max, sim_last = sims.max(axis=1), sims[:, -1]
    else:
        sim_max = sim_last = np.full(n, np.nan)
    return {
        "retrieval_rank": np.arange(n, dtype=np.float64),
        "retrieval_score_ratio": ratio,
        "history_sim_max": sim_max,
        "history_sim_last": sim_last,
    }


def model_matrix(
    user: Mapping[str, Any], items: Mapping[str, Any], retrieval: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The ranker's input: one float32 row per candidate, columns in FEATURE_NAMES order.

    `user` maps USER_FEATURES to scalars (one user) or arrays (one per row); `items` maps
    ITEM_FEATURES to arrays; `retrieval` maps RETRIEVAL_FEATURES to arrays (`retrieval_columns`),
    all aligned. Missing user and item keys become NaN.
    """
    rank = np.asarray(retrieval["retrieval_rank"], dtype=np.float64)
    n = rank.shape[0]
    u = {name: _column(user.get(name), n) for name in USER_FEATURES if name != "user_category_share"}
    it = {name: _column(items.get(name), n) for name in ITEM_FEATURES}
    category_share = _category_share(user.get("user_category_share"), it["item_category"])
    columns = (
        rank,
        _column(retrieval["retrieval_score_ratio"], n),
        _column(retrieval["history_sim_max"], n),
        _column(retrieval["history_sim_last"], n),
        np.log1p(u["user_n_interactions"]),
        u["user_days_since_last"],
        u["user_avg_rating"],
        np.log1p(u["user_n_recent"]),
        np.log1p(it["item_popularity"]),
        np.log1p(it["item_popularity_recent"]),
        np.log1p(it["item_popularity_year"]),
        it["item_age_days"],
        it["item_days_since_last"],
        it["item_avg_rating"],
        it["item_category"],
        it["item_avg_rating"] - u["user_avg_rating"],
        category_share,
    )
    return np.column_stack(columns).astype(np.float32)
