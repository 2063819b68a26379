"""The ranker: XGBoost on retrieved candidates, labelled by what users did next (offline/protocol.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xgboost as xgb

from serve_app.core.errors import DataError
from serve_app.core.features import (
    FEATURE_NAMES,
    ITEM_FEATURES,
    RETRIEVAL_FEATURES,
    USER_FEATURES,
    model_matrix,
)
from serve_app.offline.config import RankerConfig


def matrix_from_frame(frame: pd.DataFrame) -> np.ndarray:
    """The training path into the shared transformation: columns of a historical-features frame."""
    return model_matrix(
        {name: frame[name].to_numpy() for name in USER_FEATURES},
        {name: frame[name].to_numpy() for name in ITEM_FEATURES},
        {name: frame[name].to_numpy() for name in RETRIEVAL_FEATURES},
    )


def train_ranker(frame: pd.DataFrame, cfg: RankerConfig, seed: int = 0) -> tuple[xgb.Booster, dict]:
    """XGBoost on users that have at least one positive among their candidates (grouped by user)."""
    useful = frame.groupby("user_id")["label"].transform("any")
    frame = frame[useful].sort_values(["user_id", "retrieval_rank"], kind="stable")
    users = frame["user_id"].unique()
    if len(users) < 4:
        raise DataError(
            f"only {len(users)} users have a held-out item among their retrieved candidates, the ranker "
            "needs at least 4: use more interactions (more users, or more per user)"
        )
    rng = np.random.default_rng(seed)
    valid_users = rng.choice(users, size=max(1, int(len(users) * cfg.validation_fraction)), replace=False)
    is_valid = frame["user_id"].isin(valid_users).to_numpy()

    def dmatrix(mask: np.ndarray) -> xgb.DMatrix:
        part = frame[mask]
        return xgb.DMatrix(
            matrix_from_frame(part),
            label=part["label"].to_numpy(np.float32),
            qid=part["user_id"].to_numpy(),
            feature_names=list(FEATURE_NAMES),
        )

    dtrain, dvalid = dmatrix(~is_valid), dmatrix(is_valid)
    params = {
        "objective": cfg.objective,
        "eval_metric": "ndcg@10" if cfg.objective.startswith("rank:") else "logloss",
        "max_depth": cfg.max_depth,
        "eta": cfg.learning_rate,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 1.0,
        "tree_method": "hist",
        "seed": seed,
        "nthread": 2,
    }
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=cfg.n_estimators,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=cfg.early_stopping_rounds,
        verbose_eval=False,
    )
    # Keep only the trees up to the best validation round.
    best = booster.best_iteration + 1
    booster = booster[:best]
    info = {
        "objective": cfg.objective,
        "trees": best,
        "train_rows": int((~is_valid).sum()),
        "train_users": int(len(users) - len(valid_users)),
        "positives": int(frame["label"].sum()),
    }
    return booster, info
