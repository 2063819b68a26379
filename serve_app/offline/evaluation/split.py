"""Temporal holdout: for each evaluated user, a decision time; what they did from then on is the label.

Two protocols, named in the manifest:
- `per_user` (default): each user is cut at their own time, before the last `holdout_fraction` of
  their interactions. A single global time cut leaves only ~28 of ml-latest-small's 610 users on both
  sides, so this is the one that measures many users.
- `global`: one cut for everyone, at the time before the last `holdout_fraction` of all interactions.

Either way the protocol is strict: every model, baseline and feature used for a user's held-out
decision is computed from interactions strictly before that user's decision time (`cutoff`), by
everyone, never from the holdout or anything later (see offline/strict.py).

Users are split three ways: `ranker_users` train the ranker, `valid_users` choose hyperparameters
(`recsys tune`), `test_users` are reported and never used for any choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

Protocol = Literal["per_user", "global"]
Group = Literal["ranker", "valid", "test"]


@dataclass(frozen=True)
class TemporalSplit:
    protocol: Protocol
    ratings: pd.DataFrame  # every interaction, sorted by (user_id, ts)
    holdout: pd.DataFrame  # interactions of split users at or after their cutoff
    cutoff: pd.Series  # user_id -> decision time, unix seconds (features are as of cutoff - 1 s)
    ranker_users: np.ndarray
    valid_users: np.ndarray
    test_users: np.ndarray

    @property
    def users(self) -> np.ndarray:
        """Every user of the three groups, sorted."""
        return np.sort(np.concatenate([self.ranker_users, self.valid_users, self.test_users]))

    def group(self, name: Group) -> np.ndarray:
        return {"ranker": self.ranker_users, "valid": self.valid_users, "test": self.test_users}[name]

    def history(self, users: np.ndarray | None = None) -> pd.DataFrame:
        """The interactions of `users` (default: all split users) strictly before their own cutoff."""
        users = self.users if users is None else users
        part = self.ratings[self.ratings["user_id"].isin(users)]
        return part[part["ts"].to_numpy() < self.cutoff.reindex(part["user_id"]).to_numpy()]


def _per_user_cutoffs(ordered: pd.DataFrame, holdout_fraction: float, min_interactions: int) -> pd.Series:
    size = ordered.groupby("user_id", sort=False)["ts"].transform("size").to_numpy()
    position = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    n_hold = np.where(size >= min_interactions, np.maximum(1, np.floor(size * holdout_fraction)), 0)
    # Cut at a time, not a position: interactions sharing the cutoff second all go to the holdout.
    return ordered[position >= size - n_hold].groupby("user_id")["ts"].min()


def _global_cutoffs(ordered: pd.DataFrame, holdout_fraction: float, min_interactions: int) -> pd.Series:
    cut = int(np.quantile(ordered["ts"].to_numpy(), 1.0 - holdout_fraction))
    size = ordered.groupby("user_id")["ts"].size()
    users = size.index[size.to_numpy() >= min_interactions]
    return pd.Series(cut, index=pd.Index(users, name="user_id"), dtype=np.int64)


def temporal_split(
    ratings: pd.DataFrame,
    protocol: Protocol = "per_user",
    holdout_fraction: float = 0.2,
    min_interactions: int = 5,
    max_users_per_group: int = 3_000,
    valid_fraction: float = 0.2,
    seed: int = 0,
) -> TemporalSplit:
    ordered = ratings.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    cutoffs = (_per_user_cutoffs if protocol == "per_user" else _global_cutoffs)(
        ordered, holdout_fraction, min_interactions
    )
    user_cutoff = cutoffs.reindex(ordered["user_id"]).to_numpy()
    is_holdout = ordered["ts"].to_numpy() >= np.nan_to_num(user_cutoff, nan=np.inf)
    by_user = pd.Series(is_holdout).groupby(ordered["user_id"].to_numpy())
    # A user needs something before the decision to personalise from, and something after to check.
    both = by_user.any() & ~by_user.all()
    cutoffs = cutoffs[cutoffs.index.isin(both.index[both.to_numpy()])].astype(np.int64)
    holdout = ordered[is_holdout & ordered["user_id"].isin(cutoffs.index).to_numpy()]

    rng = np.random.default_rng(seed)
    users = rng.permutation(cutoffs.index.to_numpy())
    n_valid = round(len(users) * valid_fraction)
    rest = users[n_valid:]
    half = len(rest) // 2
    return TemporalSplit(
        protocol=protocol,
        ratings=ordered,
        holdout=holdout.reset_index(drop=True),
        cutoff=cutoffs,
        ranker_users=np.sort(rest[:half][:max_users_per_group]),
        valid_users=np.sort(users[:n_valid][:max_users_per_group]),
        test_users=np.sort(rest[half:][:max_users_per_group]),
    )
