"""Live exposure measures: the same numbers as the offline evaluation's, over a sliding window."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.offline.evaluation.metrics import exposure as offline_exposure
from serve_app.telemetry.exposure import ExposureWindow, gini, gini_with_zeros, top_popular_mask


def test_gini_sorting_only_shown_items_equals_gini_over_the_whole_catalogue() -> None:
    rng = np.random.default_rng(0)
    for n_catalogue in (1, 7, 1_000):
        counts = np.zeros(n_catalogue)
        shown = rng.choice(n_catalogue, size=max(1, n_catalogue // 3), replace=False)
        counts[shown] = rng.integers(1, 50, size=len(shown))
        assert gini_with_zeros(counts[counts > 0], n_catalogue) == pytest.approx(gini(counts))
    assert gini_with_zeros(np.array([]), 10) == 0.0


def test_top_popular_mask_takes_the_top_one_percent_and_at_least_one() -> None:
    popularity = np.arange(300, dtype=float)
    assert np.flatnonzero(top_popular_mask(popularity)).tolist() == [297, 298, 299]
    assert top_popular_mask(np.array([1.0, np.nan, 5.0])).tolist() == [False, False, True]


def test_window_forgets_the_oldest_answers_and_ignores_unknown_ids() -> None:
    ids = np.arange(100, 110)  # item ids; rows 0..9
    window = ExposureWindow(ids, top_popular_mask(np.arange(10.0)), window=2)
    window.add(np.array([109, 108]))
    window.add(np.array([101, 102, 5_000]))  # 5_000: not in the catalogue
    window.add(np.array([103, 109]))  # the first answer leaves the window
    rows, counts, answers = window.counts()
    assert rows.tolist() == [1, 2, 3, 9] and counts.tolist() == [1, 1, 1, 1] and answers == 2
    stats = window.stats()
    assert stats.coverage == pytest.approx(0.4)
    assert stats.top1pct_share == pytest.approx(0.25)  # item 109 (row 9) is the top 1% (1 of 10 items)


def test_live_measures_match_the_offline_evaluation_on_the_same_lists() -> None:
    rng = np.random.default_rng(1)
    n, lists = 500, [rng.choice(500, size=10, replace=False) for _ in range(200)]
    popularity = rng.random(n)
    top = top_popular_mask(popularity)
    ids = np.arange(n) * 7 + 3  # sorted item ids; row r is id 7r + 3
    window = ExposureWindow(ids, top, window=len(lists))
    for rows in lists:
        window.add(ids[rows])
    # offline: percentile of each shown item's popularity; the top 1% are those >= 0.99
    rank = np.argsort(np.argsort(popularity)) / (n - 1)
    pct = [np.where(top[r], 1.0, np.minimum(rank[r], 0.98)) for r in lists]
    offline = offline_exposure(lists, pct, n)
    live = window.stats()
    assert live.coverage == pytest.approx(offline["coverage@10"])
    assert live.gini == pytest.approx(offline["gini@10"])
    assert live.top1pct_share == pytest.approx(offline["top1pct_share@10"])
