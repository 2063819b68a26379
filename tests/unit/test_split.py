"""temporal_split: per-user time cut, disjoint ranker/eval users, short histories kept whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serve_app.offline.split import temporal_split


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


def test_every_holdout_interaction_is_later_than_the_users_training(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, holdout_fraction=0.2, min_interactions=5)
    last_train = split.train.groupby("user_id")["ts"].max()
    first_hold = split.holdout.groupby("user_id")["ts"].min()
    assert len(first_hold) > 0
    assert (first_hold > last_train.reindex(first_hold.index)).all()
    pd.testing.assert_series_equal(split.cutoff, first_hold, check_names=False)


def test_holdout_is_strictly_later_even_with_tied_timestamps() -> None:
    split = temporal_split(interactions(seed=1, ties=True), holdout_fraction=0.2, min_interactions=5)
    last_train = split.train.groupby("user_id")["ts"].max()
    first_hold = split.holdout.groupby("user_id")["ts"].min()
    assert (first_hold > last_train.reindex(first_hold.index)).all()


def test_holdout_size_is_the_fraction_with_at_least_one(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, holdout_fraction=0.2, min_interactions=5)
    size = ratings.groupby("user_id").size()
    held = split.holdout.groupby("user_id").size()
    eligible = size[size >= 5]
    expected = np.maximum(1, np.floor(eligible * 0.2)).astype(np.int64)
    pd.testing.assert_series_equal(held.sort_index(), expected.sort_index(), check_names=False)


def test_no_interaction_is_lost_or_duplicated(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings)
    both = pd.concat([split.train, split.holdout]).sort_values(["user_id", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(both, ratings.sort_values(["user_id", "ts"]).reset_index(drop=True))


def test_ranker_and_eval_users_are_disjoint_and_cover_the_split_users(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, seed=3)
    assert len(np.intersect1d(split.ranker_users, split.eval_users)) == 0
    assert len(split.ranker_users) > 0 and len(split.eval_users) > 0
    together = np.sort(np.concatenate([split.ranker_users, split.eval_users]))
    np.testing.assert_array_equal(together, np.sort(split.cutoff.index.to_numpy()))
    assert abs(len(split.ranker_users) - len(split.eval_users)) <= 1


def test_groups_are_capped_at_max_users_per_group(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, max_users_per_group=10)
    assert len(split.ranker_users) == len(split.eval_users) == 10
    assert len(np.intersect1d(split.ranker_users, split.eval_users)) == 0


def test_same_seed_same_groups_different_seed_different_groups(ratings: pd.DataFrame) -> None:
    a, b, c = (temporal_split(ratings, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.ranker_users, b.ranker_users)
    assert not np.array_equal(a.ranker_users, c.ranker_users)


def test_users_below_min_interactions_stay_whole_in_train(ratings: pd.DataFrame) -> None:
    split = temporal_split(ratings, min_interactions=12)
    size = ratings.groupby("user_id").size()
    short = size[size < 12].index
    assert len(short) > 0
    assert not split.holdout["user_id"].isin(short).any()
    pd.testing.assert_series_equal(split.train.groupby("user_id").size().loc[short], size.loc[short])
    assert not np.isin(short, split.cutoff.index).any()
    assert not np.isin(short, np.concatenate([split.ranker_users, split.eval_users])).any()


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
    assert split.cutoff.to_dict() == {1: 60}
    assert (split.train["user_id"] == 2).sum() == 6, "a user with no earlier second stays whole in train"
