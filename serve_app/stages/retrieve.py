"""Candidate source: top-N items by inner product from the FAISS index, minus what must not be shown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np


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
    index: faiss.Index, queries: np.ndarray, n: int, exclude: Sequence[np.ndarray]
) -> list[Candidates]:
    """Top-n candidates per query that are not in that query's `exclude` rows.

    Fetches n + the largest exclusion set in the batch, so excluded items never crowd out the n.
    """
    fetch = n + max((len(e) for e in exclude), default=0)
    scores, rows = search(index, queries, fetch)
    out = []
    for s, r, ex in zip(scores, rows, exclude, strict=True):
        keep = r >= 0
        if len(ex):
            keep &= ~np.isin(r, ex)
        out.append(Candidates(r[keep][:n].astype(np.int64), s[keep][:n].astype(np.float32)))
    return out
