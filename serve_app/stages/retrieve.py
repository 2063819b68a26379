"""Candidate source: top-N items by inner product from the FAISS index, minus what must not be shown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from serve_app.stages.filters import Filter, FilterContext, apply_filters, exclusion_budget


@dataclass(frozen=True)
class Candidates:
    """Item rows (positions in the bundle's item arrays) with retrieval scores, best first."""

    rows: np.ndarray  # int64
    scores: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.rows)

    def head(self, n: int) -> Candidates:
        return Candidates(self.rows[:n], self.scores[:n])


def _search_params(index: faiss.Index, k: int) -> faiss.SearchParameters | None:
    # Per-call parameters, not attributes on the shared index, so concurrent searches cannot race.
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=max(index.hnsw.efSearch, k))
    return None


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of shape (len(queries), k); rows are -1 where the index had fewer results."""
    k = max(1, min(k, index.ntotal))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    params = _search_params(index, k)
    return index.search(q, k, params=params) if params is not None else index.search(q, k)


def retrieve(
    index: faiss.Index,
    queries: np.ndarray,
    n: int,
    filters: Sequence[Filter],
    contexts: Sequence[FilterContext],
) -> list[tuple[Candidates, dict[str, int]]]:
    """Top-n candidates per query that survive `filters`, with what each filter removed.

    Fetches n plus the largest exclusion budget in the batch, so filtered items never crowd out the n.
    """
    fetch = n + max((exclusion_budget(filters, c) for c in contexts), default=0)
    scores, rows = search(index, queries, fetch)
    out = []
    for s, r, ctx in zip(scores, rows, contexts, strict=True):
        valid = r >= 0
        s, r = s[valid], r[valid]
        keep, report = apply_filters(filters, r, ctx)
        out.append((Candidates(r[keep][:n].astype(np.int64), s[keep][:n].astype(np.float32)), report))
    return out
