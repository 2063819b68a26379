"""A tiny real bundle in memory (real FAISS index, real XGBoost model) for pure stage tests."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
import xgboost as xgb

from serve_app.core.artifacts import History, ItemIndex, ItemSnapshot, UserVectors
from serve_app.core.bundle import Bundle
from serve_app.core.features import FEATURE_NAMES, ITEM_FEATURES
from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.request.stages.filters import business_filters
from serve_app.request.stages.served import Served
from serve_app.request.stages.user_features import UserFeatureResult

DIM = 8
N_ITEMS = 300
MODEL_ID = "als-test"
BUNDLE_USERS = (1, 2, 500)  # users the bundle's own model has a vector for


def make_bundle(version: str = "v-test", seed: int = 0) -> Bundle:
    rng = np.random.default_rng(seed)
    item_ids = np.arange(1_000, 1_000 + N_ITEMS, dtype=np.int64)  # sorted, not equal to rows
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    index = ItemIndex(flat)
    columns = {name: rng.uniform(0, 50, N_ITEMS) for name in ITEM_FEATURES}
    columns["item_category"] = rng.integers(0, 4, N_ITEMS).astype(np.float64)
    x = rng.normal(size=(400, len(FEATURE_NAMES))).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 5] > 0).astype(np.float32)
    ranker = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES)),
        num_boost_round=5,
    )
    history = History(
        np.array([1, 2], dtype=np.int64),
        np.array([0, 3, 3], dtype=np.int64),
        np.array([0, 1, 2], dtype=np.int64),
    )
    popular = np.argsort(-columns["item_popularity_recent"])
    users = UserVectors(
        MODEL_ID,
        np.array(BUNDLE_USERS, dtype=np.int64),
        rng.normal(size=(len(BUNDLE_USERS), DIM)).astype(np.float32),
    )
    return Bundle(
        Path("/nonexistent"),
        version,
        {"embedding_dim": DIM, "model": {"id": MODEL_ID}},
        ItemSnapshot(item_ids, columns),
        popular,
        loaded_index=index,
        loaded_users=users,
        loaded_ranker=ranker,
        loaded_history=history,
    )


def served(bundle: Bundle, blocked: list[int] = (), filters: tuple | None = None) -> Served:
    """What a replica would serve: the bundle with its business filters (or the `filters` given)."""
    chosen = business_filters(bundle.items, blocked) if filters is None else filters
    return Served(bundle, chosen, SERVING_DEFAULTS)


def user(user_id: int = 1, seed: int = 1, **overrides) -> UserFeatureResult:
    rng = np.random.default_rng(seed)
    values = {
        "user_n_interactions": 12,
        "user_days_since_last": 1.5,
        "user_avg_rating": 3.5,
        "user_n_recent": 4,
        "user_category_share": [0.5, 0.25, 0.25, 0.0],
    }
    fields = {
        "user_id": user_id,
        "values": values,
        "embedding": rng.normal(size=DIM).astype(np.float32),
        "found": True,
        "source": "online",
        "reason": None,
        "embedding_model": MODEL_ID,
    }
    fields.update(overrides)
    return UserFeatureResult(**fields)


@pytest.fixture(scope="session")
def tiny_bundle() -> Bundle:
    return make_bundle()


class Held:
    """A ServingState already holding `current` (the flows only read it): one arm, no canary."""

    def __init__(self, current: Served) -> None:
        self.current = current

    def for_user(self, user_id: int) -> Served:
        return self.current

    def for_version(self, version: str) -> Served | None:
        return self.current if version == self.current.bundle.version else None
