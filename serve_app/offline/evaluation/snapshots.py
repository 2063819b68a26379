"""Retrieval as it could have run at each user's decision time: no interaction from after it.

One ALS model per snapshot time, trained on every interaction strictly before it; a user is served by
the latest snapshot at or before their cutoff, with their vector folded in (serve_app/core/fold_in.py) from
exactly their interactions before the cutoff. Items first seen after the snapshot cannot be retrieved,
as in production between two builds. The global protocol is the special case of one snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from serve_app.core.artifacts import ItemIndex
from serve_app.core.features import RECENT_ITEMS, RETRIEVAL_FEATURES, retrieval_columns
from serve_app.core.fold_in import confidence, fold_in, gram
from serve_app.offline.config import BuildConfig
from serve_app.offline.embeddings import Embeddings, fold_in_users, train_als
from serve_app.offline.evaluation.split import TemporalSplit
from serve_app.offline.index import QUERY_SAMPLE, build_index, resolve_kind
from serve_app.request.stages.filters import FilterContext, SeenFilter
from serve_app.request.stages.retrieve import retrieve

EMPTY = np.empty(0, np.int64)


@dataclass(frozen=True)
class SnapshotModel:
    time: int  # trained on interactions strictly before this unix time
    emb: Embeddings
    index: ItemIndex

    @property
    def model_id(self) -> str:
        return self.emb.model_id


@dataclass(frozen=True)
class UserQuery:
    user_id: int
    model: SnapshotModel
    vector: np.ndarray | None  # None: nothing the model knows in the user's history
    seen_rows: np.ndarray  # the user's history as rows of the model's items


def snapshot_times(cutoff: pd.Series, n: int) -> np.ndarray:
    """Quantiles of the cutoffs, the earliest included, so every user has a snapshot at or before."""
    qs = np.linspace(0.0, 1.0, max(n, 1) + 1)[:-1]
    return np.unique(np.quantile(cutoff.to_numpy(), qs, method="lower").astype(np.int64))


def default_snapshots(split: TemporalSplit) -> int:
    if split.protocol == "global":
        return 1
    # 24 on ml-latest-small (100k interactions; 12 scored 0.004-0.008 lower on the validation users,
    # the models being staler); fewer as each fit gets dearer, at least 2.
    return int(np.clip(2_400_000 // max(len(split.ratings), 1), 2, 24))


def train_snapshots(
    split: TemporalSplit, times: np.ndarray, cfg: BuildConfig, seed: int, progress: bool
) -> list[SnapshotModel]:
    ratings = split.ratings
    models = []
    for t in tqdm(times, desc=f"snapshot models (seed {seed})", leave=False, disable=not progress):
        before = ratings[ratings["ts"].to_numpy() < t]
        emb = train_als(before, cfg.embedding, seed, show_progress=False)
        index, _ = build_index(
            emb.item_factors, cfg.index, seed, _query_sample(before, emb, cfg, seed), cfg.n_candidates
        )
        models.append(SnapshotModel(int(t), emb, index))
    return models


def _query_sample(before: pd.DataFrame, emb: Embeddings, cfg: BuildConfig, seed: int) -> np.ndarray | None:
    """Folded-in vectors of some users, as the evaluation queries this model (for the IVF query scale)."""
    if resolve_kind(cfg.index, len(emb.item_ids)) != "ivf":
        return None
    users = before["user_id"].unique()
    chosen = np.random.default_rng(seed).choice(users, size=min(len(users), QUERY_SAMPLE), replace=False)
    return fold_in_users(emb, before[before["user_id"].isin(chosen)], cfg.embedding).user_factors


def user_queries(
    split: TemporalSplit, models: list[SnapshotModel], users: np.ndarray, cfg: BuildConfig
) -> list[UserQuery]:
    """Each user's snapshot model and folded-in vector, from their history before the cutoff."""
    times = np.array([m.time for m in models])
    history = split.history(users)
    by_user = {int(u): part for u, part in history.groupby("user_id")}
    grams = {m.time: gram(m.emb.item_factors) for m in models}
    emb_cfg = cfg.embedding
    out = []
    for u in users.tolist():
        model = models[int(np.searchsorted(times, split.cutoff.loc[u], side="right")) - 1]
        part = by_user.get(u)
        if part is None:
            out.append(UserQuery(u, model, None, EMPTY))
            continue
        rows = model.emb.item_rows(part["item_id"].to_numpy())  # oldest first
        later = np.arange(len(rows))[::-1]
        conf = confidence(part["rating"].to_numpy(), later, emb_cfg.alpha, emb_cfg.recency_half_life)
        known = rows >= 0
        vector = (
            fold_in(model.emb.item_factors, grams[model.time], rows, conf, emb_cfg.regularization)
            if known.any()
            else None
        )
        out.append(UserQuery(u, model, vector, rows[known]))
    return out


def candidates(queries: list[UserQuery], n: int) -> pd.DataFrame:
    """Top-n unseen items per user from their snapshot's index, with the model-invariant retrieval
    features (from the snapshot's own factors, as the retriever computes them from its index).
    Columns: user_id, item_id, the RETRIEVAL_FEATURES, retrieval_score."""
    parts = []
    by_model: dict[int, list[UserQuery]] = {}
    for q in queries:
        if q.vector is not None:
            by_model.setdefault(q.model.time, []).append(q)
    for group in by_model.values():
        model = group[0].model
        contexts = [FilterContext(q.user_id, q.seen_rows, EMPTY) for q in group]
        found = retrieve(model.index, np.stack([q.vector for q in group]), n, [SeenFilter()], contexts)
        for q, (cands, _) in zip(group, found, strict=True):
            factors = model.emb.item_factors
            cols = retrieval_columns(cands.scores, factors[cands.rows], factors[q.seen_rows[-RECENT_ITEMS:]])
            parts.append(
                pd.DataFrame(
                    {
                        "user_id": q.user_id,
                        "item_id": model.emb.item_ids[cands.rows],
                        **cols,
                        "retrieval_score": cands.scores,
                    }
                )
            )
    columns = ["user_id", "item_id", *RETRIEVAL_FEATURES, "retrieval_score"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
