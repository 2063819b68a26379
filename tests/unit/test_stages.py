"""Retrieval, filtering, ranking and the popularity fallback over a real tiny bundle (no Ray)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from serve_app.core.features import RECENT_ITEMS, model_matrix, retrieval_columns
from serve_app.request.stages import fallback
from serve_app.request.stages.filters import (
    BlockedItemsFilter,
    FilterContext,
    RequestExcludeFilter,
    SeenFilter,
    apply_filters,
)
from serve_app.request.stages.rank import rank_batch, score
from serve_app.request.stages.retrieve import retrieve_batch
from tests.unit.conftest import MODEL_ID, make_bundle, served, user


def test_filters_report_what_each_removed_once():
    rows = np.arange(10)
    ctx = FilterContext(1, seen_rows=np.array([1, 2, 3]), excluded_rows=np.array([3, 4]))
    keep, report = apply_filters(
        [SeenFilter(), RequestExcludeFilter(), BlockedItemsFilter(np.array([4, 5]))], rows, ctx
    )
    assert rows[keep].tolist() == [0, 6, 7, 8, 9]
    # Row 3 is both seen and excluded: it counts for the first filter only; row 4 for request_exclude.
    assert report == {"already_seen": 3, "request_exclude": 1, "blocked_items": 1}


def test_retrieval_returns_n_unseen_unexcluded_candidates_best_first(tiny_bundle):
    features = user(user_id=1)
    exclude = tuple(int(i) for i in tiny_bundle.items.item_ids[5:25])
    [got] = retrieve_batch(served(tiny_bundle, blocked=[1_010]), [(features, 50, exclude)])
    assert len(got.item_ids) == 50 and len(set(got.item_ids.tolist())) == 50
    seen_ids = set(tiny_bundle.items.item_ids[tiny_bundle.history.seen(1)].tolist())
    assert not seen_ids & set(got.item_ids.tolist())
    assert not set(exclude) & set(got.item_ids.tolist())
    assert 1_010 not in got.item_ids
    assert np.all(np.diff(got.scores) <= 1e-6)
    # The scores are the inner products of the user's embedding with those items.
    rows = tiny_bundle.items.rows_of(got.item_ids)
    vectors = tiny_bundle.index.index.reconstruct_n(0, tiny_bundle.index.ntotal)[rows]
    np.testing.assert_allclose(got.scores, vectors @ features.embedding, rtol=1e-5)


def test_cold_start_reasons_for_a_user_the_bundle_has_no_vector_for():
    bundle = make_bundle()
    unknown = user(77, found=False, values={}, embedding=None)
    store_down = user(77, found=False, values={}, embedding=None, source="none", reason="timeout")
    no_embedding = user(77, embedding=None)
    wrong_dim = user(77, embedding=np.ones(3, np.float32))
    other_model = user(77, embedding_model="als-newer")
    results = retrieve_batch(
        served(bundle, filters=()),
        [(f, 10, ()) for f in (unknown, store_down, no_embedding, wrong_dim, other_model)],
    )
    assert [r.fallback for r in results] == [
        "unknown_user",
        "user_features_unavailable",
        "missing_embedding",
        "missing_embedding",
        "model_mismatch",
    ]
    assert [r.degraded for r in results] == [False, True, False, False, True]
    assert "als-newer" in results[-1].reason and MODEL_ID in results[-1].reason


def test_a_vector_of_another_model_is_replaced_by_the_bundles_own():
    bundle = make_bundle()
    own = bundle.users.get(1)
    newer = user(1, embedding=np.full(8, 9.0, np.float32), embedding_model="als-newer")
    [got] = retrieve_batch(served(bundle, filters=()), [(newer, 20, ())])
    [expected] = retrieve_batch(served(bundle, filters=()), [(user(1, embedding=own), 20, ())])
    assert got.fallback is None and not got.degraded
    np.testing.assert_array_equal(got.item_ids, expected.item_ids)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6)


def test_a_vector_of_the_bundles_model_from_the_store_is_preferred():
    bundle = make_bundle()
    pushed = user(1, embedding=-bundle.users.get(1))  # e.g. folded in after new events
    [got] = retrieve_batch(served(bundle, filters=()), [(pushed, 20, ())])
    rows = bundle.items.rows_of(got.item_ids)
    vectors = bundle.index.index.reconstruct_n(0, bundle.index.ntotal)[rows]
    np.testing.assert_allclose(got.scores, vectors @ pushed.embedding, rtol=1e-5)


def test_store_down_still_retrieves_with_the_bundles_vector_and_says_degraded():
    bundle = make_bundle()
    down = user(2, found=False, values={}, embedding=None, source="none", reason="online store failed: X")
    [got] = retrieve_batch(served(bundle, filters=()), [(down, 10, ())])
    assert got.fallback is None and len(got.item_ids) == 10
    assert got.degraded and got.reason == "online store failed: X"


def test_ranking_orders_by_the_model_and_matches_a_direct_call(tiny_bundle):
    features = user()
    [cands] = retrieve_batch(served(tiny_bundle, filters=()), [(features, 40, ())])
    [ranked] = rank_batch(tiny_bundle, [(features, cands)])
    assert sorted(ranked.item_ids.tolist()) == sorted(cands.item_ids.tolist())
    assert np.all(np.diff(ranked.scores) <= 0)
    rows = tiny_bundle.items.rows_of(cands.item_ids)
    vectors = tiny_bundle.index.index.reconstruct_n(0, tiny_bundle.index.ntotal)
    recent = vectors[tiny_bundle.history.seen(features.user_id)[-RECENT_ITEMS:]]
    retrieval = retrieval_columns(cands.scores, vectors[rows], recent)
    assert np.isfinite(retrieval["history_sim_max"]).all()
    direct = score(tiny_bundle.ranker, model_matrix(features.values, tiny_bundle.items.take(rows), retrieval))
    by_id = dict(zip(cands.item_ids.tolist(), direct.tolist(), strict=True))
    np.testing.assert_allclose(ranked.scores, [by_id[i] for i in ranked.item_ids.tolist()], rtol=1e-6)
    assert set(ranked.timings_ms) == {"retrieve", "filter", "rank"}


def test_batched_ranking_equals_one_at_a_time(tiny_bundle):
    requests = []
    for seed in range(5):
        f = user(user_id=10 + seed, seed=seed)
        [c] = retrieve_batch(served(tiny_bundle, filters=()), [(f, 30, ())])
        requests.append((f, c))
    together = rank_batch(tiny_bundle, requests)
    for request, batched in zip(requests, together, strict=True):
        [alone] = rank_batch(tiny_bundle, [request])
        np.testing.assert_array_equal(alone.item_ids, batched.item_ids)
        np.testing.assert_allclose(alone.scores, batched.scores, rtol=1e-6)


def test_ranker_on_another_bundle_version_keeps_only_items_it_knows(tiny_bundle):
    features = user()
    [cands] = retrieve_batch(served(tiny_bundle, filters=()), [(features, 20, ())])
    foreign = replace(
        cands,
        item_ids=np.concatenate([cands.item_ids, [999_999]]),
        scores=np.concatenate([cands.scores, [0.1]]).astype(np.float32),
        features={k: np.append(v, 0.5) for k, v in cands.features.items()},
    )
    [ranked] = rank_batch(tiny_bundle, [(features, foreign)])
    assert 999_999 not in ranked.item_ids and len(ranked.item_ids) == 20
    [same] = rank_batch(tiny_bundle, [(features, cands)])  # the known items keep their inputs
    np.testing.assert_allclose(ranked.scores, same.scores, rtol=1e-6)


def test_popularity_fallback_applies_the_same_filters(tiny_bundle):
    top = tiny_bundle.items.item_ids[tiny_bundle.popular_rows[:3]]
    got = fallback.popular(served(tiny_bundle), 77, 10, (int(top[0]),), "unknown_user")
    assert got.fallback == "unknown_user" and len(got.item_ids) == 10
    assert int(top[0]) not in got.item_ids and got.item_ids[0] == top[1]
    assert got.filtered["request_exclude"] == 1
