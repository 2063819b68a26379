"""Candidate source: top-N items by inner product from the FAISS index, minus what must not be shown."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from serve_app.core.artifacts import ItemIndex
from serve_app.core.features import RECENT_ITEMS, retrieval_columns
from serve_app.request.stages import fallback
from serve_app.request.stages.filters import Filter, FilterContext, apply_filters, exclusion_budget
from serve_app.request.stages.scored import Scored
from serve_app.request.stages.user_features import UserFeatureResult

if TYPE_CHECKING:
    from serve_app.core.bundle import Bundle
    from serve_app.request.stages.served import Served


@dataclass(frozen=True)
class Candidates:
    """Item rows (positions in the bundle's item arrays) with retrieval scores, best first."""

    rows: np.ndarray  # int64
    scores: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.rows)

    def head(self, n: int) -> Candidates:
        return Candidates(self.rows[:n], self.scores[:n])


def retrieve(
    index: ItemIndex,
    queries: np.ndarray,
    n: int,
    filters: Sequence[Filter],
    contexts: Sequence[FilterContext],
    filter_ms: list[float] | None = None,
) -> list[tuple[Candidates, dict[str, int]]]:
    """Top-n candidates per query that survive `filters`, with what each filter removed (and, into
    `filter_ms` when given, the milliseconds each query's filtering took).

    Fetches n plus the largest exclusion budget in the batch, so filtered items never crowd out the n.
    """
    fetch = n + max((exclusion_budget(filters, c) for c in contexts), default=0)
    scores, rows = index.search(queries, fetch)
    out = []
    for s, r, ctx in zip(scores, rows, contexts, strict=True):
        start = time.perf_counter()
        valid = r >= 0
        s, r = s[valid], r[valid]
        keep, report = apply_filters(filters, r, ctx)
        out.append((Candidates(r[keep][:n].astype(np.int64), s[keep][:n].astype(np.float32)), report))
        if filter_ms is not None:
            filter_ms.append((time.perf_counter() - start) * 1000)
    return out


class Retrieved(NamedTuple):
    """What retrieval hands the ranker: the user's features, read by the retriever (the ranker's user
    inputs), and the candidates. A (features, candidates) pair, as `rank.rank_candidates` takes it."""

    features: UserFeatureResult
    candidates: Scored


def query_vector(features: UserFeatureResult, bundle: Bundle) -> tuple[np.ndarray | None, str | None]:
    """The user's vector in the bundle's model, or None and the fallback reason.

    The online store's vector when it is of the bundle's model (it may be fresher, e.g. folded in
    after new events), else the bundle's own vector for the user: that keeps a bundle served after a
    newer build (a rollback) answering as it did, and lets retrieval go on when the store is down.
    """
    reason = fallback.for_features(features, bundle.embedding_dim, bundle.model_id)
    if reason is None:
        return features.embedding, None
    own = bundle.users.get(features.user_id)
    return (own, None) if own is not None else (None, reason)


def candidate_features(index: ItemIndex, cands: Candidates, seen_rows: np.ndarray) -> dict[str, np.ndarray]:
    """The ranker's retrieval inputs, from the index's own vectors (the same model as the scores)."""
    recent = seen_rows[seen_rows >= 0][-RECENT_ITEMS:]
    return retrieval_columns(cands.scores, index.vectors(cands.rows), index.vectors(recent))


def retrieve_batch(
    served: Served, requests: Sequence[tuple[UserFeatureResult, int, Sequence[int]]]
) -> list[Scored]:
    """One FAISS search for the whole batch; each request is (features, n, exclude_item_ids).

    A user retrieval cannot serve gets an empty list with its fallback reason, for the ingress to settle.
    """
    start = time.perf_counter()
    bundle = served.bundle
    out: list[Scored | None] = [None] * len(requests)
    todo, vectors = [], []
    for i, (features, _, _) in enumerate(requests):
        vector, reason = query_vector(features, bundle)
        if vector is None:
            out[i] = fallback.no_vector(features, bundle.version, bundle.model_id, str(reason))
        else:
            todo.append(i)
            vectors.append(vector)
    if todo:
        queries = np.stack(vectors)
        contexts = [
            served.context(requests[i][0].user_id, tuple(requests[i][2]), requests[i][0].recent_item_ids)
            for i in todo
        ]
        n = max(requests[i][1] for i in todo)
        filter_ms: list[float] = []
        results = retrieve(bundle.index, queries, n, served.filters, contexts, filter_ms)
        for i, ctx, (cands, report), f_ms in zip(todo, contexts, results, filter_ms, strict=True):
            c = cands.head(requests[i][1])
            f = requests[i][0]
            out[i] = Scored(
                bundle.items.item_ids[c.rows],
                c.scores,
                bundle.version,
                report,
                degraded=f.degraded,
                reason=f.reason,
                features=candidate_features(bundle.index, c, ctx.seen_rows),
                timings_ms={"filter": f_ms},
                user_features=f.values,
            )
    elapsed = (time.perf_counter() - start) * 1000  # the whole stage, filtering included
    return [replace(s, timings_ms={**s.timings_ms, "retrieve": elapsed}) for s in out if s is not None]


def retrieve_read(
    served: Served,
    reads: Sequence[tuple[UserFeatureResult, float]],
    n: Sequence[int],
    exclude: Sequence[Sequence[int]],
) -> list[Retrieved]:
    """`retrieve_batch` over users whose features were just read (`UserFeatureReader.aget_many`: each
    read with its milliseconds, which join the stage timings as `user_features`)."""
    scored = retrieve_batch(served, [(f, k, e) for (f, _), k, e in zip(reads, n, exclude, strict=True)])
    return [
        Retrieved(f, replace(s, timings_ms={"user_features": ms, **s.timings_ms}))
        for (f, ms), s in zip(reads, scored, strict=True)
    ]
