"""The artifact types a bundle is made of, below both the stages and the bundle loader.

An `ItemIndex` (FAISS), the `UserVectors` of the same model, an `ItemSnapshot` (columnar item
features), a `History` (what each user has seen) and the XGBoost ranker. Item rows are positions in
the bundle's sorted item ids, the same in all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import faiss
import numpy as np
import xgboost as xgb

from serve_app.core.features import FEATURE_NAMES, ITEM_FEATURES


@dataclass(frozen=True)
class ItemIndex:
    """A FAISS index over item factors, searched by inner product (positions = item rows).

    IVF indexes hold the factors augmented with sqrt(M^2 - |x|^2), M the largest norm: the MIPS-to-L2
    reduction, under which the nearest vector by L2 is the one with the largest inner product. ALS
    item norms span orders of magnitude, and k-means on raw inner products then puts the items that
    matter in few, far lists (on 1M synthetic items, recall@200 vs exact: 0.65 at nprobe 64 without
    the reduction, 0.99 with it). Scores are exact inner products recomputed from the stored vectors.
    """

    index: faiss.Index
    mips_max_norm: float | None = None  # set when the vectors are augmented for L2 search
    # IVF: the norm queries are scaled to for the coarse search (None: as they come). Under the
    # reduction the lists are ranked by |c|^2 - 2 q.c, so a short query probes lists by their norm,
    # not its direction; the build picks what recalls more for its users (offline/index.py).
    query_norm: float | None = None

    def __post_init__(self) -> None:
        if self.mips_max_norm is not None:
            faiss.extract_index_ivf(self.index).make_direct_map()  # for reconstruct_batch

    @property
    def d(self) -> int:
        return self.index.d - (1 if self.mips_max_norm is not None else 0)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The item factors at `rows` (n, d), as stored (without the L2 reduction's coordinate)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.empty((0, self.d), np.float32)
        return self.index.reconstruct_batch(rows)[:, : self.d]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of shape (len(queries), k); rows are -1 where there were fewer results."""
        k = max(1, min(k, self.ntotal))
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.mips_max_norm is None:
            if isinstance(self.index, faiss.IndexHNSW):
                # Per-call parameters, not attributes on the shared index, so searches cannot race.
                params = faiss.SearchParametersHNSW(efSearch=max(self.index.hnsw.efSearch, k))
                return self.index.search(q, k, params=params)
            return self.index.search(q, k)
        probe = q
        if self.query_norm is not None:  # top-k by inner product does not change with q's scale
            norms = np.linalg.norm(q, axis=1, keepdims=True)
            probe = (q * (self.query_norm / np.where(norms > 0, norms, 1.0))).astype(np.float32)
        _, rows = self.index.search(np.hstack([probe, np.zeros((len(q), 1), np.float32)]), k)
        vectors = self.index.reconstruct_batch(np.maximum(rows, 0).ravel()).reshape(len(q), k, -1)
        scores = np.einsum("qkd,qd->qk", vectors[:, :, : self.d], q)
        scores[rows < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")  # L2 round-off can swap near-ties
        return np.take_along_axis(scores, order, 1).astype(np.float32), np.take_along_axis(rows, order, 1)

    def extended(self, vectors: np.ndarray) -> ItemIndex:
        """A copy with these item vectors added at the next rows (the held index is not changed: the
        bundle it belongs to keeps serving as it was). Under the MIPS-to-L2 reduction a vector longer
        than the build's largest norm gets the extra coordinate 0, which ranks it a little low."""
        index = faiss.clone_index(self.index)
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.mips_max_norm is not None:
            extra = np.sqrt(np.maximum(self.mips_max_norm**2 - (v.astype(np.float64) ** 2).sum(1), 0.0))
            v = np.ascontiguousarray(np.hstack([v, extra[:, None].astype(np.float32)]))
        index.add(v)
        return ItemIndex(index, self.mips_max_norm, self.query_norm)

    def exact_search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Exact top-k rows by inner product, from the vectors this index already holds (no copy):
        the ground truth of the online recall monitor. IVF: every list probed (under the MIPS-to-L2
        reduction the L2 order of [q, 0] is the inner-product order, whatever q's norm); HNSW: its flat
        storage. Costs a full scan per query: for sampled queries off the request path only."""
        k = max(1, min(k, self.ntotal))
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.mips_max_norm is not None:
            ivf = faiss.extract_index_ivf(self.index)
            params = faiss.SearchParametersIVF(nprobe=ivf.nlist)
            return self.index.search(np.hstack([q, np.zeros((len(q), 1), np.float32)]), k, params=params)[1]
        if isinstance(self.index, faiss.IndexHNSW):
            return faiss.downcast_index(self.index.storage).search(q, k)[1]
        return self.index.search(q, k)[1]


def augment_for_l2(item_factors: np.ndarray) -> tuple[np.ndarray, float]:
    """Item vectors with the extra coordinate of the MIPS-to-L2 reduction, and the norm M used."""
    norms = np.linalg.norm(item_factors, axis=1)
    m = float(norms.max()) if len(norms) else 0.0
    extra = np.sqrt(np.maximum(m**2 - norms**2, 0.0))[:, None]
    return np.ascontiguousarray(np.hstack([item_factors, extra]), dtype=np.float32), m


@dataclass(frozen=True)
class ItemSnapshot:
    """Columnar item features; row i describes item_ids[i], the same rows the FAISS index uses.

    A bundle's items are sorted by id; items added after the build (serve_app/core/item_delta.py) are
    appended, so the rows every other artifact holds stay valid, and `order` sorts the ids then."""

    item_ids: np.ndarray  # int64, sorted unless `order` is given
    columns: Mapping[str, np.ndarray]  # ITEM_FEATURES -> float64 arrays, NaN where unknown
    order: np.ndarray | None = None  # argsort of item_ids when they are not sorted

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {name: self.columns[name][rows] for name in ITEM_FEATURES}

    def lookup(self, item_ids: np.ndarray) -> np.ndarray:
        """The row of each item id, -1 for an id this snapshot does not hold."""
        ids, item_ids = self.item_ids, np.asarray(item_ids, dtype=np.int64)
        if not len(ids):
            return np.full(len(item_ids), -1, np.int64)
        pos = np.searchsorted(ids, item_ids, sorter=self.order).clip(0, len(ids) - 1)
        rows = pos if self.order is None else self.order[pos]
        return np.where(ids[rows] == item_ids, rows, -1)

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Rows of the known item ids, in their order; unknown ids are dropped."""
        ids = self.item_ids
        if self.order is None and len(ids):  # a bundle as built: the fewest numpy calls (hot path)
            pos = np.searchsorted(ids, item_ids).clip(0, len(ids) - 1)
            return pos[ids[pos] == item_ids]
        rows = self.lookup(item_ids)
        return rows[rows >= 0]

    def extended(self, item_ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> ItemSnapshot:
        """These items appended after the held ones (their rows follow the bundle's)."""
        ids = np.concatenate([self.item_ids, np.asarray(item_ids, dtype=np.int64)])
        cols = {
            n: np.concatenate([self.columns[n], np.asarray(columns[n], np.float64)]) for n in ITEM_FEATURES
        }
        return ItemSnapshot(ids, cols, np.argsort(ids, kind="stable"))


@dataclass(frozen=True)
class UserVectors:
    """The user factors of the model the bundle's index was built from (rows by sorted user id).

    Retrieval pairs a user vector only with item vectors of the same model; these are the bundle's own,
    so a bundle served again after a newer build still queries its index with its own model's vectors.
    """

    model_id: str
    user_ids: np.ndarray  # int64, sorted
    factors: np.ndarray  # float32 (n_users, dim)

    def get(self, user_id: int) -> np.ndarray | None:
        pos = int(np.searchsorted(self.user_ids, user_id))
        if pos < len(self.user_ids) and self.user_ids[pos] == user_id:
            return self.factors[pos]
        return None


@dataclass(frozen=True)
class History:
    """Items each user has already interacted with, as item rows (CSR by sorted user id), in time
    order. With `ratings` and `ts` (the bundle's "log" part) it is each user's whole interaction log
    the model was trained on: what recomputing a user's features after new events starts from."""

    user_ids: np.ndarray
    indptr: np.ndarray
    rows: np.ndarray
    ratings: np.ndarray | None = None  # float32, aligned with rows
    ts: np.ndarray | None = None  # int64 unix seconds, aligned with rows

    def _span(self, user_id: int) -> slice:
        pos = int(np.searchsorted(self.user_ids, user_id))
        if pos < len(self.user_ids) and self.user_ids[pos] == user_id:
            return slice(int(self.indptr[pos]), int(self.indptr[pos + 1]))
        return slice(0, 0)

    def seen(self, user_id: int) -> np.ndarray:
        return self.rows[self._span(user_id)]

    def log(self, user_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, ratings, ts) of the user's interactions, oldest first."""
        if self.ratings is None or self.ts is None:
            raise ValueError("this history was loaded without its log (ratings, ts)")
        span = self._span(user_id)
        return self.rows[span], self.ratings[span], self.ts[span]


def load_ranker(path: str) -> xgb.Booster:
    booster = xgb.Booster()
    booster.load_model(path)
    # One thread: replicas scale out by process, and 200 rows do not amortise a thread pool.
    booster.set_param({"nthread": 1})
    return booster


def check_ranker_features(booster: xgb.Booster) -> None:
    names = tuple(booster.feature_names or ())
    if names != FEATURE_NAMES:
        raise ValueError(f"ranker expects features {list(names)}, serving computes {list(FEATURE_NAMES)}")
