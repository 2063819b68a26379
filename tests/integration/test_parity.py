"""Training/serving parity on a real build: the historical path and the online path give one matrix."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from serve_app.core.bundle import Bundle, load_bundle
from serve_app.core.features import (
    FEATURE_NAMES,
    RECENT_ITEMS,
    USER_EMBEDDING,
    USER_EMBEDDING_MODEL,
    USER_FEATURES,
    model_matrix,
    retrieval_columns,
)
from serve_app.offline import feast_ops
from serve_app.offline.training import matrix_from_frame
from serve_app.request.stages.filters import FilterContext, SeenFilter
from serve_app.request.stages.retrieve import Candidates, candidate_features, retrieve

N_CANDIDATES = 60
pytestmark = pytest.mark.slow  # they share the session's real build (`built`)


@pytest.fixture(scope="module")
def bundle(built) -> Bundle:
    return load_bundle(built.bundle)


@pytest.fixture(scope="module")
def store(built) -> FeatureStore:
    return FeatureStore(repo_path=str(built.repo))


@pytest.fixture(scope="module")
def users(bundle: Bundle) -> list[int]:
    ids = bundle.history.user_ids
    return [int(ids[0]), int(ids[len(ids) // 3]), int(ids[len(ids) // 2]), int(ids[-1])]


def online_user(store: FeatureStore, user_id: int) -> dict[str, Any]:
    """One user's online features exactly as the online store returns them (scalars and lists)."""
    names = (USER_EMBEDDING, USER_EMBEDDING_MODEL, *USER_FEATURES)
    row = store.get_online_features(
        features=[f"user_features:{n}" for n in names], entity_rows=[{"user_id": user_id}]
    ).to_dict()
    return {name: row[name][0] for name in names}


def candidates(bundle: Bundle, user_id: int, embedding: list[float]) -> Candidates:
    query = np.asarray(embedding, dtype=np.float32)[None, :]
    ctx = FilterContext(user_id, bundle.history.seen(user_id), np.empty(0, np.int64))
    ((cands, _),) = retrieve(bundle.index, query, N_CANDIDATES, [SeenFilter()], [ctx])
    return cands


def training_matrix(store: FeatureStore, bundle: Bundle, user_id: int, cands: Candidates) -> np.ndarray:
    """The training path: point-in-time historical features after the build stamp, then the frame."""
    after_build = pd.Timestamp(bundle.manifest["created_at"]) + timedelta(minutes=5)
    entities = pd.DataFrame(
        {
            "user_id": user_id,
            "item_id": bundle.items.item_ids[cands.rows],
            "event_timestamp": after_build,
        }
    )
    frame = feast_ops.historical_features(store, entities)
    # As offline/strict.py computes them: from the model's factor matrix and the user's history.
    factors = bundle.index.vectors(np.arange(bundle.index.ntotal))
    recent = factors[bundle.history.seen(user_id)[-RECENT_ITEMS:]]
    for name, values in retrieval_columns(cands.scores, factors[cands.rows], recent).items():
        frame[name] = values
    return matrix_from_frame(frame)


def test_training_and_serving_paths_give_identical_matrices(
    store: FeatureStore, bundle: Bundle, users: list[int]
) -> None:
    for user_id in users:
        online = online_user(store, user_id)
        assert online[USER_EMBEDDING] is not None, f"user {user_id} has no online features"
        # The online store's vector is the bundle's model's, and equal to the bundle's own copy.
        assert online[USER_EMBEDDING_MODEL] == bundle.model_id
        np.testing.assert_array_equal(
            np.asarray(online[USER_EMBEDDING], np.float32), bundle.users.get(user_id)
        )
        cands = candidates(bundle, user_id, online[USER_EMBEDDING])
        assert len(cands) == N_CANDIDATES
        serving = model_matrix(
            {name: online[name] for name in USER_FEATURES},
            bundle.items.take(cands.rows),
            candidate_features(bundle.index, cands, bundle.history.seen(user_id)),
        )
        training = training_matrix(store, bundle, user_id, cands)
        assert serving.shape == training.shape == (N_CANDIDATES, len(FEATURE_NAMES))
        np.testing.assert_array_equal(serving, training, err_msg=f"user {user_id}")
        # The matrices carry information: a user with history has a known category share somewhere.
        assert np.isfinite(serving[:, FEATURE_NAMES.index("user_item_category_share")]).any()
        assert np.isfinite(serving[:, FEATURE_NAMES.index("history_sim_max")]).all()


def test_historical_item_features_after_the_build_equal_the_bundle_snapshot(
    store: FeatureStore, bundle: Bundle
) -> None:
    rows = np.arange(0, len(bundle.items.item_ids), 7)
    after_build = pd.Timestamp(bundle.manifest["created_at"]) + timedelta(minutes=5)
    entities = pd.DataFrame(
        {
            "user_id": int(bundle.history.user_ids[0]),
            "item_id": bundle.items.item_ids[rows],
            "event_timestamp": after_build,
        }
    )
    frame = feast_ops.historical_features(store, entities)
    for name, expected in bundle.items.take(rows).items():
        np.testing.assert_array_equal(frame[name].to_numpy(np.float64), expected, err_msg=name)
