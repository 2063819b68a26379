"""Build the FAISS index over item factors and measure what approximation costs in recall."""

from __future__ import annotations

import math

import faiss
import numpy as np

from serve_app.artifacts import ItemIndex, augment_for_l2
from serve_app.config import IndexConfig


def resolve_kind(cfg: IndexConfig, n_items: int) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    return "flat" if n_items < cfg.exact_threshold else "ivf"


def build_index(item_factors: np.ndarray, cfg: IndexConfig, seed: int = 0) -> tuple[ItemIndex, dict]:
    """Return the index (positions = item rows) and the parameters that describe it."""
    x = np.ascontiguousarray(item_factors, dtype=np.float32)
    n, dim = x.shape
    kind = resolve_kind(cfg, n)
    params: dict = {"kind": kind, "dim": dim, "n_items": n, "metric": "inner_product"}
    mips_max_norm = None
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        x, mips_max_norm = augment_for_l2(x)
        nlist = cfg.ivf_nlist or int(min(65_536, max(16, 2 * math.sqrt(n))))
        nlist = min(nlist, max(1, n // 39))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim + 1), dim + 1, nlist)
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        index.cp.seed = seed
        index.train(sample)
        index.nprobe = min(cfg.ivf_nprobe, nlist)
        params.update(nlist=nlist, nprobe=index.nprobe, mips_to_l2=True, mips_max_norm=mips_max_norm)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.hnsw.efSearch = cfg.hnsw_ef_search
        params.update(m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, ef_search=cfg.hnsw_ef_search)
    else:  # pragma: no cover - pydantic restricts the values
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(x)
    return ItemIndex(index, mips_max_norm), params


def exact_top(item_factors: np.ndarray, queries: np.ndarray, n: int) -> np.ndarray:
    """Exact top-n rows by inner product (ground truth for recall)."""
    exact = faiss.IndexFlatIP(item_factors.shape[1])
    exact.add(np.ascontiguousarray(item_factors, dtype=np.float32))
    _, rows = exact.search(np.ascontiguousarray(queries, dtype=np.float32), n)
    return rows


def index_recall(index: ItemIndex, item_factors: np.ndarray, queries: np.ndarray, n: int) -> float:
    """Mean fraction of the exact top-n that the index returns in its top-n."""
    n = min(n, item_factors.shape[0])
    truth = exact_top(item_factors, queries, n)
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), n)
    hits = [len(np.intersect1d(t, g[g >= 0], assume_unique=True)) for t, g in zip(truth, got, strict=True)]
    return float(np.mean(hits) / n)
