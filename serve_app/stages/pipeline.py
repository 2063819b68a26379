"""The request path as plain functions over a bundle: retrieve (+filter), rank, popularity fallback.

Serve deployments call these batch-wise; `Recommender` calls them in one process (the latency floor,
and the reference the served answers are checked against). Stages exchange item ids, not rows, so a
Retriever and a Ranker holding different bundle versions during a rollout still agree on items.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from serve_app.bundle import Bundle
from serve_app.features import model_matrix
from serve_app.stages import rank as rank_stage
from serve_app.stages.filters import (
    BlockedItemsFilter,
    Filter,
    FilterContext,
    RequestExcludeFilter,
    SeenFilter,
    apply_filters,
)
from serve_app.stages.retrieve import retrieve
from serve_app.stages.user_features import UserFeatureReader, UserFeatureResult

EMPTY_IDS = np.empty(0, np.int64)
EMPTY_SCORES = np.empty(0, np.float32)


@dataclass(frozen=True)
class Scored:
    """A ranked list of items, with where it came from."""

    item_ids: np.ndarray  # int64, best first
    scores: np.ndarray  # float32
    bundle_version: str
    filtered: dict[str, int] = field(default_factory=dict)
    fallback: str | None = None  # why the normal path could not produce this list
    timings_ms: dict[str, float] = field(default_factory=dict)  # compute time of each stage so far
    degraded: bool = False  # built from partial information (stale cache, a failed stage)
    reason: str | None = None  # what degraded it


def item_rows(bundle: Bundle, item_ids: np.ndarray) -> np.ndarray:
    """Rows of known item ids (the snapshot is sorted by id); unknown ids are dropped."""
    ids = bundle.items.item_ids
    pos = np.searchsorted(ids, item_ids).clip(0, max(len(ids) - 1, 0))
    return pos[ids[pos] == item_ids] if len(ids) else EMPTY_IDS


def filters_for(bundle: Bundle, blocked_item_ids: Sequence[int]) -> list[Filter]:
    blocked = item_rows(bundle, np.asarray(blocked_item_ids, dtype=np.int64))
    return [SeenFilter(), RequestExcludeFilter(), BlockedItemsFilter(blocked)]


def context(bundle: Bundle, user_id: int, exclude_item_ids: Sequence[int]) -> FilterContext:
    excluded = item_rows(bundle, np.asarray(exclude_item_ids, dtype=np.int64))
    return FilterContext(user_id, bundle.history.seen(user_id), excluded)


def cold_start_reason(features: UserFeatureResult, dim: int) -> str | None:
    """Why this user cannot be served by retrieval, or None when they can."""
    if not features.found:
        return (
            "user_features_unavailable" if features.source == "none" and features.degraded else "unknown_user"
        )
    if (
        features.embedding is None
        or features.embedding.shape != (dim,)
        or not np.isfinite(features.embedding).all()
    ):
        return "missing_embedding"
    return None


def retrieve_batch(
    bundle: Bundle,
    filters: Sequence[Filter],
    requests: Sequence[tuple[UserFeatureResult, int, Sequence[int]]],
) -> list[Scored]:
    """One FAISS search for the whole batch; each request is (features, n, exclude_item_ids)."""
    start = time.perf_counter()
    out: list[Scored | None] = [None] * len(requests)
    todo = []
    for i, (features, _, _) in enumerate(requests):
        reason = cold_start_reason(features, bundle.embedding_dim)
        if reason is not None:
            out[i] = Scored(
                EMPTY_IDS,
                EMPTY_SCORES,
                bundle.version,
                fallback=reason,
                degraded=features.degraded,
                reason=features.reason,
            )
        else:
            todo.append(i)
    if todo:
        queries = np.stack([requests[i][0].embedding for i in todo])
        contexts = [context(bundle, requests[i][0].user_id, requests[i][2]) for i in todo]
        n = max(requests[i][1] for i in todo)
        results = retrieve(bundle.index, queries, n, filters, contexts)
        for i, (cands, report) in zip(todo, results, strict=True):
            c = cands.head(requests[i][1])
            f = requests[i][0]
            out[i] = Scored(
                bundle.items.item_ids[c.rows],
                c.scores,
                bundle.version,
                report,
                degraded=f.degraded,
                reason=f.reason,
            )
    elapsed = (time.perf_counter() - start) * 1000
    return [replace(s, timings_ms={"retrieve": elapsed}) for s in out if s is not None]


def rank_batch(bundle: Bundle, requests: Sequence[tuple[UserFeatureResult, Scored]]) -> list[Scored]:
    """Score every request's candidates with one XGBoost call on the stacked matrix."""
    start = time.perf_counter()
    matrices, spans = [], []
    for features, cands in requests:
        rows = item_rows(bundle, cands.item_ids)
        if len(rows) != len(cands.item_ids):  # candidates from another bundle version: keep known ones
            known = np.isin(cands.item_ids, bundle.items.item_ids)
            cands = replace(cands, item_ids=cands.item_ids[known], scores=cands.scores[known])
        matrices.append(model_matrix(features.values, bundle.items.take(rows), cands.scores))
        spans.append(cands)
    scores = rank_stage.score(bundle.ranker, np.vstack(matrices)) if matrices else EMPTY_SCORES
    out, offset = [], 0
    elapsed = (time.perf_counter() - start) * 1000
    for cands, m in zip(spans, matrices, strict=True):
        s = scores[offset : offset + len(m)]
        offset += len(m)
        order = np.argsort(-s, kind="stable")
        out.append(
            replace(
                cands,
                item_ids=cands.item_ids[order],
                scores=s[order],
                bundle_version=bundle.version,
                timings_ms={**cands.timings_ms, "rank": elapsed},
            )
        )
    return out


def rank_candidates(bundle: Bundle, requests: Sequence[tuple[UserFeatureResult, Scored]]) -> list[Scored]:
    """rank_batch over the requests that have candidates; fallbacks and empty lists pass through."""
    out = [c for _, c in requests]
    todo = [i for i, (_, c) in enumerate(requests) if c.fallback is None and len(c.item_ids)]
    for i, ranked in zip(todo, rank_batch(bundle, [requests[i] for i in todo]), strict=True):
        out[i] = ranked
    return out


def popular(
    bundle: Bundle,
    filters: Sequence[Filter],
    user_id: int,
    k: int,
    exclude_item_ids: Sequence[int],
    reason: str,
) -> Scored:
    """The popularity fallback, with the same filters as the normal path."""
    start = time.perf_counter()
    rows = bundle.popular_rows
    keep, report = apply_filters(filters, rows, context(bundle, user_id, exclude_item_ids))
    rows = rows[keep][:k]
    scores = bundle.items.columns["item_popularity_recent"][rows].astype(np.float32)
    elapsed = (time.perf_counter() - start) * 1000
    return Scored(bundle.items.item_ids[rows], scores, bundle.version, report, reason, {"fallback": elapsed})


@dataclass(frozen=True)
class Recommendation:
    user_id: int
    item_ids: np.ndarray
    scores: np.ndarray
    bundle_version: str
    degraded: bool
    fallback: str | None
    timings_ms: dict[str, float]
    filtered: dict[str, int]


class Recommender:
    """The whole pipeline in one process: the floor the served graph is measured against."""

    def __init__(
        self,
        bundle: Bundle,
        reader: UserFeatureReader,
        n_candidates: int = 200,
        blocked_item_ids: Sequence[int] = (),
    ) -> None:
        self.bundle, self.reader, self.n_candidates = bundle, reader, n_candidates
        self.filters = filters_for(bundle, blocked_item_ids)

    def recommend(self, user_id: int, k: int = 10, exclude_item_ids: Sequence[int] = ()) -> Recommendation:
        t0 = time.perf_counter()
        features = self.reader.get(user_id)
        t1 = time.perf_counter()
        cands = retrieve_batch(self.bundle, self.filters, [(features, self.n_candidates, exclude_item_ids)])[
            0
        ]
        if cands.fallback is not None:
            result = popular(self.bundle, self.filters, user_id, k, exclude_item_ids, cands.fallback)
        else:
            result = rank_batch(self.bundle, [(features, cands)])[0]
        timings = {
            "user_features": (t1 - t0) * 1000,
            **cands.timings_ms,
            **result.timings_ms,
            "total": (time.perf_counter() - t0) * 1000,
        }
        return Recommendation(
            user_id,
            result.item_ids[:k],
            result.scores[:k],
            self.bundle.version,
            degraded=features.degraded,
            fallback=result.fallback,
            timings_ms=timings,
            filtered=cands.filtered,
        )
