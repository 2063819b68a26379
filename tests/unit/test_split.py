"""temporal_split: per-user or global decision times, three disjoint user groups, strict histories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serve_app.offline.evaluation.split import temporal_split


def interactions(n_users: int = 60, seed: int = 0, ties: bool = False) -> pd.DataFrame:
    """Users with 1..40 interactions in shuffled row order; distinct timestamps unless `ties`."""
    rng = np.random.default_rng(seed)
    parts = []
    for user in range(1, n_users + 1):
        n = int(rng.integers(1, 41))
        ts = rng.choice(np.arange(1_000_000, 1_100_000), n, replace=False)
        if ties:
            ts = ts // 20_000 * 20_000  # many interactions in the same second, as MovieLens has
        parts.append(
            pd.DataFrame(
                {
                    "user_id": user,
                    "item_id": rng.choice(500, n, replace=False),
                    "rating": np.float32(4.0),
                    "ts": ts,
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return interactions()


def test_every_holdout_interaction_is_at_or_after_the_users_decision_time(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, holdout_fraction=0.2, min_interactions=5)
    last_history = split.history().groupby("user_id")["ts"].max()
    first_hold = split.holdout.groupby("user_id")["ts"].min()
    assert len(first_hold) > 0
    assert (first_hold > last_history.reindex(first_hold.index)).all()
    pd.testing.assert_series_equal(split.cutoff.sort_index(), first_hold, check_names=False)


def test_holdout_is_strictly_later_even_with_tied_timestamps() -> None:
    split = temporal_split(interactions(seed=1, ties=True), holdout_fraction=0.2, min_interactions=5)
    last_history = split.history().groupby("user_id")["ts"].max()
    first_hold = split.holdout.groupby("user_id")["ts"].min()
    assert (first_hold > last_history.reindex(first_hold.index)).all()


def test_holdout_size_is_the_fraction_with_at_least_one(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, holdout_fraction=0.2, min_interactions=5)
    size = ratings.groupby("user_id").size()
    held = split.holdout.groupby("user_id").size()
    eligible = size[size >= 5]
    expected = np.maximum(1, np.floor(eligible * 0.2)).astype(np.int64)
    pd.testing.assert_series_equal(held.sort_index(), expected.sort_index(), check_names=False)


def test_history_and_holdout_are_each_split_users_whole_log(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings)
    both = pd.concat([split.history(), split.holdout]).sort_values(["user_id", "ts"]).reset_index(drop=True)
    mine = ratings[ratings["user_id"].isin(split.cutoff.index)]
    pd.testing.assert_frame_equal(both, mine.sort_values(["user_id", "ts"]).reset_index(drop=True))


def test_three_groups_are_disjoint_and_cover_the_split_users(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, seed=3, valid_fraction=0.2)
    groups = (split.ranker_users, split.valid_users, split.test_users)
    for a in range(3):
        assert len(groups[a]) > 0
        for b in range(a + 1, 3):
            assert len(np.intersect1d(groups[a], groups[b])) == 0
    np.testing.assert_array_equal(split.users, np.sort(split.cutoff.index.to_numpy()))
    assert abs(len(split.valid_users) - 0.2 * len(split.users)) <= 1
    assert abs(len(split.ranker_users) - len(split.test_users)) <= 1


def test_groups_are_capped_at_max_users_per_group(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, max_users_per_group=5)
    assert len(split.ranker_users) == len(split.test_users) == len(split.valid_users) == 5


def test_same_seed_same_groups_different_seed_different_groups(ratings: pd.DataFrame) -> None:
    a, b, c = (temporal_split(ratings, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.test_users, b.test_users)
    assert not np.array_equal(a.test_users, c.test_users)


def test_users_below_min_interactions_are_not_split(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, min_interactions=12)
    size = ratings.groupby("user_id").size()
    short = size[size < 12].index
    assert len(short) > 0
    assert not split.holdout["user_id"].isin(short).any()
    assert not np.isin(short, split.cutoff.index).any()
    assert not np.isin(short, split.users).any()
    # ... but their interactions stay in the log every model is trained from.
    assert split.ratings["user_id"].isin(short).sum() == size.loc[short].sum()


def test_same_second_interactions_all_go_to_the_holdout() -> None:
    ratings = pd.DataFrame(
        {
            "user_id": [1] * 8 + [2] * 6,
            "item_id": list(range(8)) + list(range(6)),
            "rating": np.float32(3.0),
            # user 1: the last three share a second; user 2: everything in one second
            "ts": [10, 20, 30, 40, 50, 60, 60, 60] + [5] * 6,
        }
    )
    split = temporal_split(ratings, holdout_fraction=0.2, min_interactions=5)
    held = split.holdout.groupby("user_id")["item_id"].apply(sorted).to_dict()
    assert held == {1: [5, 6, 7]}, "the whole tied second is held out, not just floor(8 * 0.2) = 1 row"
    assert split.cutoff.to_dict() == {1: 60}, "a user with nothing before their cutoff is not split"


def test_global_protocol_cuts_everyone_at_one_time(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, protocol="global", holdout_fraction=0.2)
    cut = int(np.quantile(ratings["ts"], 0.8))
    assert split.protocol == "global" and len(split.cutoff) > 0
    assert (split.cutoff == cut).all()
    assert (split.holdout["ts"] >= cut).all() and (split.history()["ts"] < cut).all()
    for u in split.users:  # each split user has a past to personalise from and a future to check
        assert (split.history()["user_id"] == u).any() and (split.holdout["user_id"] == u).any()


def test_tuning_folds_cover_every_non_test_user_once_and_never_a_test_user(ratings: pd.DataFrame) -> None:
    from serve_app.offline.evaluation.tune import cv_folds

    split = temporal_split(ratings, valid_fraction=0.2)
    pool = np.concatenate([split.ranker_users, split.valid_users])
    folds = cv_folds(split, 3, seed=0)
    held = np.concatenate([f.valid_users for f in folds])
    assert sorted(held.tolist()) == sorted(pool.tolist())
    for fold in folds:
        assert not np.intersect1d(fold.ranker_users, fold.valid_users).size
        assert sorted(np.concatenate([fold.ranker_users, fold.valid_users]).tolist()) == sorted(pool.tolist())
        np.testing.assert_array_equal(fold.test_users, split.test_users)
