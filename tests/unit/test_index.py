"""FAISS index building (flat / IVF / HNSW / auto) and candidate retrieval with exclusions."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from serve_app.offline.config import IndexConfig
from serve_app.offline.index import build_index, index_recall, resolve_kind
from serve_app.request.stages.filters import (
    BlockedItemsFilter,
    FilterContext,
    RequestExcludeFilter,
    SeenFilter,
)
from serve_app.request.stages.retrieve import retrieve

N_ITEMS, DIM, K = 5_000, 32, 100


@pytest.fixture(scope="module")
def catalogue() -> tuple[np.ndarray, np.ndarray]:
    """Clustered item vectors (like ALS factors) and queries drawn near the same clusters."""
    rng = np.random.default_rng(7)
    centers = rng.normal(0, 1, (50, DIM))
    items = centers[rng.integers(0, 50, N_ITEMS)] + rng.normal(0, 0.5, (N_ITEMS, DIM))
    queries = centers[rng.integers(0, 50, 100)] + rng.normal(0, 0.5, (100, DIM))
    return items.astype(np.float32), queries.astype(np.float32)


def exact_order(items: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """All item rows per query, best inner product first (numpy, independent of FAISS)."""
    return np.argsort(-(queries.astype(np.float64) @ items.astype(np.float64).T), axis=1, kind="stable")


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def test_flat_is_exact(catalogue: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = catalogue
    index, params = build_index(items, IndexConfig(kind="flat"))
    assert isinstance(index.index, faiss.IndexFlatIP)
    assert params == {"kind": "flat", "dim": DIM, "n_items": N_ITEMS, "metric": "inner_product"}
    _, rows = index.search(queries, K)
    assert recall(rows, exact_order(items, queries)[:, :K]) == 1.0
    assert index_recall(index, items, queries, K) == 1.0


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_at_100(catalogue: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    items, queries = catalogue
    cfg = IndexConfig(kind=kind)
    index, params = build_index(items, cfg, seed=0)
    assert index.ntotal == N_ITEMS
    assert params["kind"] == kind
    _, rows = index.search(queries, K)
    assert (rows >= 0).all()
    measured = recall(rows, exact_order(items, queries)[:, :K])
    assert measured >= 0.9, f"{kind} recall@{K} = {measured:.3f}"
    assert index_recall(index, items, queries, K) == pytest.approx(measured)


def test_ivf_parameters_follow_the_config(catalogue: tuple[np.ndarray, np.ndarray]) -> None:
    items, _ = catalogue
    index, params = build_index(items, IndexConfig(kind="ivf", ivf_nlist=64, ivf_nprobe=8))
    assert isinstance(index.index, faiss.IndexIVFFlat)
    assert (index.index.nlist, index.index.nprobe) == (64, 8)
    assert (params["nlist"], params["nprobe"]) == (64, 8)


def skewed_catalogue(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Items in 40 directions with norms spread over an order of magnitude (ALS-like), and queries
    along the same directions but much shorter than the items (as recency-weighted user vectors)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def around(n: int) -> np.ndarray:
        d = centers[rng.integers(0, 40, n)] + rng.normal(0, 0.05, (n, DIM))
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    items = around(20_000) * np.exp(rng.normal(0.0, 0.6, 20_000))[:, None]
    return items.astype(np.float32), (around(300) * 0.05).astype(np.float32)


def test_ivf_scales_short_queries_when_that_recalls_more_and_scores_stay_exact() -> None:
    items, queries = skewed_catalogue()
    cfg = IndexConfig(kind="ivf", ivf_nlist=128, ivf_nprobe=8)
    plain, plain_params = build_index(items, cfg, seed=0)
    chosen, params = build_index(items, cfg, seed=0, queries=queries, depth=K)
    assert "query_norm" not in plain_params and plain.query_norm is None
    recalls = params["recall_by_query_scale"]
    # Measured: 0.98 scaled against 0.10 as they come (short queries probe lists by their norm).
    assert recalls["scaled_to_max_item_norm"] > 0.9 and recalls["as_is"] < 0.5
    assert chosen.query_norm == pytest.approx(chosen.mips_max_norm) == params["query_norm"]
    truth = exact_order(items, queries)[:, :K]
    _, plain_rows = plain.search(queries, K)
    scores, rows = chosen.search(queries, K)
    assert recall(rows, truth) > recall(plain_rows, truth)
    # Scaling only steers which lists are probed: the scores are the queries' own inner products.
    valid = rows >= 0
    expected = np.einsum("qkd,qd->qk", items[np.maximum(rows, 0)], queries)
    np.testing.assert_allclose(scores[valid], expected[valid], rtol=1e-4, atol=1e-9)


def test_ivf_keeps_queries_as_they_come_when_scaling_does_not_help(
    catalogue: tuple[np.ndarray, np.ndarray],
) -> None:
    items, queries = catalogue
    index, params = build_index(items, IndexConfig(kind="ivf"), seed=0, queries=queries, depth=K)
    recalls = params["recall_by_query_scale"]
    assert (index.query_norm is None) == (recalls["as_is"] >= recalls["scaled_to_max_item_norm"])


def test_hnsw_parameters_follow_the_config(catalogue: tuple[np.ndarray, np.ndarray]) -> None:
    items, _ = catalogue
    index, params = build_index(items[:500], IndexConfig(kind="hnsw", hnsw_m=16, hnsw_ef_search=300))
    assert isinstance(index.index, faiss.IndexHNSWFlat)
    assert index.index.hnsw.efSearch == 300
    assert (params["m"], params["ef_search"]) == (16, 300)


@pytest.mark.parametrize(("n_items", "expected"), [(999, "flat"), (1_000, "ivf"), (4_000, "ivf")])
def test_auto_is_flat_below_exact_threshold_and_ivf_above(
    catalogue: tuple[np.ndarray, np.ndarray], n_items: int, expected: str
) -> None:
    items, _ = catalogue
    cfg = IndexConfig(kind="auto", exact_threshold=1_000)
    assert resolve_kind(cfg, n_items) == expected
    index, params = build_index(items[:n_items], cfg)
    assert params["kind"] == expected
    assert isinstance(index.index, faiss.IndexFlatIP if expected == "flat" else faiss.IndexIVFFlat)
    assert index.ntotal == n_items


def ctx(seen: np.ndarray, excluded: np.ndarray | None = None, user: int = 1) -> FilterContext:
    return FilterContext(
        user, np.asarray(seen, np.int64), np.asarray(excluded if excluded is not None else [], np.int64)
    )


def test_retrieve_excludes_rows_and_still_returns_n_in_score_order(
    catalogue: tuple[np.ndarray, np.ndarray],
) -> None:
    items, queries = catalogue
    index, _ = build_index(items, IndexConfig(kind="flat"))
    order = exact_order(items, queries[:3])
    n = 50
    # Query 0 has seen its 30 best items, query 1 excludes a scattered set, query 2 nothing.
    contexts = [ctx(order[0, :30]), ctx([], order[1, [0, 2, 4, 8, 16, 32, 64]]), ctx([])]
    filters = [SeenFilter(), RequestExcludeFilter()]
    result = retrieve(index, queries[:3], n, filters, contexts)
    assert len(result) == 3
    for q, ((cands, report), c) in enumerate(zip(result, contexts, strict=True)):
        gone = np.concatenate([c.seen_rows, c.excluded_rows])
        assert len(cands) == n
        assert not np.isin(cands.rows, gone).any()
        assert np.all(np.diff(cands.scores) <= 0), "scores must be in descending order"
        expected = [r for r in order[q] if r not in set(gone.tolist())][:n]
        np.testing.assert_array_equal(cands.rows, expected)
        np.testing.assert_allclose(cands.scores, items[cands.rows] @ queries[q], rtol=1e-5)
        assert cands.rows.dtype == np.int64 and cands.scores.dtype == np.float32
        assert report == {"already_seen": len(c.seen_rows), "request_exclude": len(c.excluded_rows)}


def test_retrieve_ignores_unknown_rows_in_exclusions(catalogue: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = catalogue
    index, _ = build_index(items, IndexConfig(kind="flat"))
    best = exact_order(items, queries[:1])[0, 0]
    ((cands, _),) = retrieve(index, queries[:1], 20, [SeenFilter()], [ctx([-1, -1, best])])
    assert len(cands) == 20 and (cands.rows >= 0).all() and best not in cands.rows


def test_blocked_items_never_come_back(catalogue: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = catalogue
    index, _ = build_index(items, IndexConfig(kind="flat"))
    blocked = exact_order(items, queries[:2])[:, :25].reshape(-1)
    results = retrieve(index, queries[:2], 40, [BlockedItemsFilter(blocked)], [ctx([]), ctx([])])
    for cands, report in results:
        assert len(cands) == 40 and not np.isin(cands.rows, blocked).any()
        assert report["blocked_items"] >= 25


def test_hnsw_retrieve_returns_n_even_above_ef_search(catalogue: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = catalogue
    index, _ = build_index(items, IndexConfig(kind="hnsw", hnsw_ef_search=64))
    ((cands, _),) = retrieve(index, queries[:1], 300, [SeenFilter()], [ctx(np.arange(100))])
    assert len(cands) == 300
    assert len(np.unique(cands.rows)) == 300
    assert not np.isin(cands.rows, np.arange(100)).any()


def test_retrieve_more_than_the_catalogue_returns_every_other_item() -> None:
    items = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    index, _ = build_index(items, IndexConfig(kind="flat"))
    ((cands, _),) = retrieve(index, items[:1], 100, [SeenFilter()], [ctx([0, 1, 2])])
    assert sorted(cands.rows.tolist()) == list(range(3, 40))


def test_ivf_mips_reduction_finds_high_norm_items_and_scores_exactly() -> None:
    # ALS-like factors: directions in clusters, norms spanning three orders of magnitude.
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(20, DIM))
    items = (centres[rng.integers(0, 20, 20_000)] + 0.3 * rng.normal(size=(20_000, DIM))).astype(np.float32)
    items *= np.exp(rng.normal(0, 1.5, 20_000))[:, None].astype(np.float32)
    queries = rng.normal(size=(50, DIM)).astype(np.float32)
    index, params = build_index(items, IndexConfig(kind="ivf"))
    assert params["mips_to_l2"] and index.d == DIM and index.index.d == DIM + 1
    assert index_recall(index, items, queries, 100) >= 0.95
    scores, rows = index.search(queries, 100)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", items[rows], queries), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
