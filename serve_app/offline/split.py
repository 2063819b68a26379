"""Per-user temporal holdout: each user's latest interactions are what we try to predict.

A single global time cut leaves only ~28 of ml-latest-small's 610 users on both sides, so each user is
cut at their own time instead; `cutoff` records it, and every feature used for that user's training or
evaluation rows is read as of that time (point-in-time correct through Feast).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TemporalSplit:
    train: pd.DataFrame
    holdout: pd.DataFrame
    cutoff: pd.Series  # user_id -> unix seconds of the user's first held-out interaction
    ranker_users: np.ndarray  # users whose holdout labels train the ranker
    eval_users: np.ndarray  # disjoint users whose holdout is the evaluation set


def temporal_split(
    ratings: pd.DataFrame,
    holdout_fraction: float = 0.2,
    min_interactions: int = 5,
    max_users_per_group: int = 3_000,
    seed: int = 0,
) -> TemporalSplit:
    ordered = ratings.sort_values(["user_id", "ts"], kind="stable")
    size = ordered.groupby("user_id", sort=False)["ts"].transform("size").to_numpy()
    position = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    n_hold = np.where(size >= min_interactions, np.maximum(1, np.floor(size * holdout_fraction)), 0)
    by_position = position >= size - n_hold
    # Cut at a time, not a position: interactions sharing the cutoff second all go to the holdout, so
    # every training interaction is strictly earlier than the features' "as of cutoff - 1s".
    cutoff = ordered[by_position].groupby("user_id")["ts"].min()
    user_cutoff = cutoff.reindex(ordered["user_id"]).to_numpy()
    is_holdout = ordered["ts"].to_numpy() >= np.nan_to_num(user_cutoff, nan=np.inf)
    has_train = pd.Series(~is_holdout).groupby(ordered["user_id"].to_numpy()).transform("any").to_numpy()
    is_holdout &= has_train  # a user whose interactions all share one second stays whole in train
    train, holdout = ordered[~is_holdout], ordered[is_holdout]
    cutoff = holdout.groupby("user_id")["ts"].min()

    rng = np.random.default_rng(seed)
    users = rng.permutation(cutoff.index.to_numpy())
    half = len(users) // 2
    ranker_users = np.sort(users[:half][:max_users_per_group])
    eval_users = np.sort(users[half:][:max_users_per_group])
    return TemporalSplit(
        train=train.reset_index(drop=True),
        holdout=holdout.reset_index(drop=True),
        cutoff=cutoff,
        ranker_users=ranker_users,
        eval_users=eval_users,
    )
