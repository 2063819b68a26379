"""The parts of the strict protocol, against brute force: fold-in, item features at any time,
popularity at each decision time, and snapshot models that never see their future."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from serve_app.core.feature_rows import DAY, item_rows_at
from serve_app.core.fold_in import confidence, fold_in, gram
from serve_app.offline.config import BuildConfig
from serve_app.offline.evaluation.popularity import popularity_at_cutoffs
from serve_app.offline.evaluation.snapshots import snapshot_times, train_snapshots, user_queries
from serve_app.offline.evaluation.split import temporal_split


def log(seed: int = 0, n: int = 3_000, users: int = 60, items: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(1, users + 1, n),
            "item_id": rng.integers(1, items + 1, n),
            "rating": rng.choice([1.0, 3.0, 5.0], n).astype(np.float32),
            "ts": rng.integers(0, 400 * 86_400, n),
        }
    )
    return frame.drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)


def test_fold_in_is_the_least_squares_step_implicit_takes() -> None:
    matrix = sp.random(30, 50, density=0.2, random_state=1, format="csr", dtype=np.float32) * 3
    with threadpool_limits(1, "blas"):  # as train_als runs it
        model = AlternatingLeastSquares(
            factors=8, regularization=0.5, alpha=2.0, iterations=5, random_state=0
        )
        model.fit(matrix, show_progress=False)
    row = matrix[3]
    expected = model.recalculate_user(3, row)
    got = fold_in(model.item_factors, gram(model.item_factors), row.indices, 2.0 * row.data, 0.5)
    np.testing.assert_allclose(got, np.asarray(expected).ravel(), rtol=1e-3, atol=1e-4)


def test_recency_halves_confidence_every_half_life_later_interactions() -> None:
    c = confidence(np.array([5.0, 5.0, 5.0]), np.array([20, 10, 0]), alpha=2.0, half_life=10)
    np.testing.assert_allclose(c / c[-1], [0.25, 0.5, 1.0])
    np.testing.assert_allclose(confidence(np.array([5.0]), np.array([7]), 2.0, None), [4.0])


def test_item_rows_at_any_time_count_only_what_came_before() -> None:
    ratings = log()
    items = pd.DataFrame({"item_id": np.arange(1, 81), "category": np.arange(80) % 4})
    rng = np.random.default_rng(2)
    ids, times = rng.integers(1, 82, 400), rng.integers(0, 420 * 86_400, 400)  # 81 is never seen
    rows = item_rows_at(ratings, items, ids, times)
    for r in rows.itertuples():
        past = ratings[(ratings["item_id"] == r.item_id) & (ratings["ts"] < r.as_of)]
        assert r.item_popularity == len(past) > 0
        assert r.item_popularity_recent == (past["ts"] >= r.as_of - 30 * DAY).sum()
        assert r.item_popularity_year == (past["ts"] >= r.as_of - 365 * DAY).sum()
        assert r.item_days_since_last == pytest.approx((r.as_of - past["ts"].max()) / DAY, rel=1e-5)
        assert r.item_avg_rating == pytest.approx(past["rating"].mean(), rel=1e-5)
    expected = sum(
        ((ratings["item_id"] == i) & (ratings["ts"] < t)).any() for i, t in zip(ids, times, strict=True)
    )
    assert len(rows) == expected, "a pair gets a row exactly when the item had been seen by then"


def test_popularity_at_each_cutoff_ignores_later_interactions_and_seen_items() -> None:
    ratings = log(seed=3)
    cutoff = pd.Series([100 * 86_400, 300 * 86_400], index=pd.Index([1, 2], name="user_id"))
    seen = {1: np.array([5, 6]), 2: np.empty(0, np.int64)}
    pop = popularity_at_cutoffs(ratings, cutoff, seen, depth=10)
    for user, t in cutoff.items():
        counts = ratings[ratings["ts"] < t]["item_id"].value_counts()
        counts = counts.drop(seen[user], errors="ignore")
        top = counts.reset_index().sort_values(["count", "item_id"], ascending=[False, True])
        np.testing.assert_array_equal(pop.lists[user], top["item_id"].to_numpy()[:10])
        assert pop.of(user, pop.lists[user][:1])[0] > 0.9


def test_snapshot_models_never_see_their_future_and_users_get_the_latest_before_their_cutoff() -> None:
    ratings = log(seed=4, n=6_000)
    cfg = BuildConfig.model_validate({"embedding": {"factors": 8, "iterations": 3}, "eval_seeds": 1})
    split = temporal_split(ratings, min_interactions=5)
    times = snapshot_times(split.cutoff.loc[split.users], 4)
    models = train_snapshots(split, times, cfg, seed=0, progress=False)
    for model in models:
        seen_before = np.unique(ratings[ratings["ts"] < model.time]["item_id"])
        np.testing.assert_array_equal(model.emb.item_ids, seen_before)
    for q in user_queries(split, models, split.test_users, cfg):
        assert q.model.time <= split.cutoff.loc[q.user_id]
        later = [m for m in models if q.model.time < m.time <= split.cutoff.loc[q.user_id]]
        assert not later, "the latest snapshot at or before the cutoff"
