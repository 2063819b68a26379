"""recall@k, NDCG@k, intervals and exposure measures on examples computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serve_app.offline.evaluation.metrics import (
    bootstrap_indices,
    exposure,
    format_table,
    gini,
    interval,
    ndcg_at,
    per_user,
    recall_at,
)

REC = np.array([11, 12, 13, 14, 15])


@pytest.mark.parametrize(
    ("relevant", "k", "expected"),
    [
        ({12, 15, 99}, 3, 1 / 3),  # 12 in the top 3
        ({12, 15, 99}, 5, 2 / 3),  # 12 and 15 in the top 5; 99 never retrieved
        ({12, 15, 99}, 1, 0.0),
        ({11}, 10, 1.0),  # k beyond the list length
        ({98, 99}, 5, 0.0),
        (set(), 5, 0.0),  # a user with nothing held out scores 0, not a division by zero
    ],
)
def test_recall_at(relevant: set[int], k: int, expected: float) -> None:
    assert recall_at(REC, relevant, k) == pytest.approx(expected)


def test_ndcg_hits_at_ranks_2_and_3_of_2_relevant() -> None:
    dcg = 1 / math.log2(3) + 1 / math.log2(4)  # 0.6309 + 0.5
    ideal = 1 / math.log2(2) + 1 / math.log2(3)  # 1 + 0.6309
    assert ndcg_at(REC, {12, 13}, 3) == pytest.approx(dcg / ideal)
    assert ndcg_at(REC, {12, 13}, 3) == pytest.approx(0.69342, abs=1e-5)


def test_ndcg_perfect_order_is_one() -> None:
    assert ndcg_at(REC, {11, 12}, 5) == pytest.approx(1.0)


def test_ndcg_counts_only_the_top_k() -> None:
    # Relevant item at rank 5 is outside k=4; the one at rank 1 is inside.
    assert ndcg_at(REC, {11, 15}, 4) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_ndcg_ideal_is_capped_at_k() -> None:
    # 20 relevant items but k=3: a top 3 full of hits is perfect.
    assert ndcg_at(REC, set(range(11, 31)), 3) == pytest.approx(1.0)


def test_ndcg_single_hit_at_rank_4() -> None:
    assert ndcg_at(REC, {14}, 10) == pytest.approx(1 / math.log2(5))


@pytest.mark.parametrize(
    ("relevant", "recommended"), [(set(), REC), ({99}, REC), ({11}, np.empty(0, np.int64))]
)
def test_ndcg_zero_without_hits(relevant: set[int], recommended: np.ndarray) -> None:
    assert ndcg_at(recommended, relevant, 10) == 0.0


def test_per_user_scores_each_user_in_order() -> None:
    lists = [REC, np.array([21, 22])]
    relevant = [{11}, {99}]
    out = per_user(lists, relevant)
    assert {name: values.tolist() for name, values in out.items()} == {
        "recall@10": [1.0, 0.0],
        "recall@50": [1.0, 0.0],
        "ndcg@10": [1.0, 0.0],
    }


def test_gini_of_equal_exposure_is_zero_and_of_one_item_near_one() -> None:
    assert gini(np.array([3, 3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 12])) == pytest.approx(0.75)  # (n - 1) / n with n = 4
    assert gini(np.zeros(5)) == 0.0


def test_exposure_counts_coverage_popularity_and_concentration() -> None:
    lists = [np.array([1, 2]), np.array([1, 3])]
    percentiles = [np.array([0.995, 0.5]), np.array([0.995, 0.0])]
    out = exposure(lists, percentiles, n_catalogue=10, k=2)
    assert out["coverage@10"] == pytest.approx(0.3)
    assert out["popularity_pct@10"] == pytest.approx((0.995 * 2 + 0.5) / 4)
    assert out["top1pct_share@10"] == pytest.approx(0.5)
    assert out["gini@10"] == pytest.approx(gini(np.array([2, 1, 1, 0, 0, 0, 0, 0, 0, 0])))


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_users() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.uniform(size=50), rng.uniform(size=5_000)
    lo, hi = interval(small, bootstrap_indices(len(small)))
    assert lo < small.mean() < hi
    lo2, hi2 = interval(large, bootstrap_indices(len(large)))
    assert hi2 - lo2 < (hi - lo) / 5


def test_format_table_lists_every_method_with_intervals() -> None:
    def m(v: float) -> dict:
        out = {}
        for k in ("ndcg@10", "recall@10", "recall@50"):
            out[k], out[f"{k}_ci95"] = v, [v - 0.01, v + 0.01]
        return {**out, "coverage@10": 0.1, "popularity_pct@10": 0.9, "top1pct_share@10": 0.2, "gini@10": 0.8}

    table = format_table(
        {
            "protocol": "per_user",
            "n_users": 7,
            "seeds": [0, 1, 2],
            "methods": {"most_popular": m(0.1), "two_stage": m(0.4)},
            "comparisons": {"two_stage / most_popular, ndcg@10": {"mean": 4.0, "ci95": [3.0, 5.0]}},
            "index": {"kind": "flat", "n": 200, "recall_vs_exact": 1.0, "n_queries": 7},
            "timings_s": {"split": 0.1},
        }
    )
    assert "most_popular" in table and "two_stage" in table
    assert "0.4000 [0.3900, 0.4100]" in table and "7 test users" in table
    assert "two_stage / most_popular, ndcg@10: 4.0000 [3.0000, 5.0000]" in table
