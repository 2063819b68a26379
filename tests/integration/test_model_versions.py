"""One model version end to end, on real builds (Feast on SQLite, ALS, FAISS, XGBoost).

A bundle served again after a newer build answers exactly as it did before that build; a vector of
another model is never paired with the bundle's items; a row dated in the future reaches no training
feature.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from serve_app.core.bundle import load_bundle
from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.offline.build import build
from serve_app.offline.config import BuildConfig
from serve_app.offline.data import load_movielens
from serve_app.offline.sources import training_features
from serve_app.offline.synth import SynthSpec, generate, write_movielens
from serve_app.request.flow import in_process_flow
from serve_app.request.stages.scored import Scored
from tests.conftest import copy_feature_repo

pytestmark = pytest.mark.slow
FAST = {"eval_seeds": 1, "eval_snapshots": 2}  # these tests are about versions, not figures
NEW_USER = 999_999
YEAR_2100 = 4_102_444_800


def _build(data_dir: Path, repo: Path, artifacts: Path, config: dict) -> Path:
    path, _ = build(load_movielens(data_dir), BuildConfig.model_validate(config), repo, artifacts, False)
    return path


def answers(bundle: Path, repo: Path, users: list[int]) -> dict[int, Scored]:
    flow, reader = in_process_flow(bundle, repo, SERVING_DEFAULTS)

    async def all_users() -> dict[int, Scored]:
        return {u: await flow.run(u, 10, ()) for u in users}

    try:
        return asyncio.run(all_users())
    finally:
        reader.close()


def point_current_at(artifacts: Path, bundle: Path) -> None:
    """What an operator does to roll back: `current` -> the older bundle, atomically."""
    tmp = artifacts / ".current.rollback"
    os.symlink(Path("bundles") / bundle.name, tmp)
    os.replace(tmp, artifacts / "current")


@dataclass(frozen=True)
class Rollback:
    a: Path
    b: Path
    repo: Path
    users: list[int]
    before: dict[int, Scored]  # answers of A before B was built
    after: dict[int, Scored]  # answers of A again, after B was built and `current` moved back


@pytest.fixture(scope="module")
def rollback(tmp_path_factory: pytest.TempPathFactory) -> Rollback:
    base = tmp_path_factory.mktemp("versions")
    ratings, movies = generate(SynthSpec(n_items=400, n_users=200, seed=21))
    data_a = write_movielens(ratings, movies, base / "data_a")
    repo, artifacts = copy_feature_repo(base / "repo"), base / "artifacts"
    a = _build(data_a, repo, artifacts, FAST)
    users = [int(u) for u in load_bundle(a).users.user_ids[:30]]
    before = answers(a, repo, users)

    # B: a later log (one new user) and another model: other seed, other number of factors.
    end = int(ratings["timestamp"].max())
    newcomer = pd.DataFrame(
        {
            "userId": NEW_USER,
            "movieId": movies["movieId"][:8],
            "rating": 4.0,
            "timestamp": end + np.arange(1, 9),
        }
    )
    data_b = write_movielens(pd.concat([ratings, newcomer], ignore_index=True), movies, base / "data_b")
    b = _build(data_b, repo, artifacts, {**FAST, "seed": 1, "embedding": {"factors": 48}})
    assert (artifacts / "current").resolve() == b
    point_current_at(artifacts, a)
    after = answers((artifacts / "current").resolve(), repo, users)
    return Rollback(a, b, repo, users, before, after)


def test_the_two_builds_are_different_models(rollback: Rollback) -> None:
    a, b = load_bundle(rollback.a), load_bundle(rollback.b)
    assert a.model_id != b.model_id and a.embedding_dim == 64 and b.embedding_dim == 48
    store = FeatureStore(repo_path=str(rollback.repo))
    row = store.get_online_features(
        features=["user_features:user_embedding_model"], entity_rows=[{"user_id": rollback.users[0]}]
    ).to_dict()
    assert row["user_embedding_model"] == [b.model_id], "the online store now holds B's vectors"


def test_a_rolled_back_bundle_answers_exactly_as_before_the_newer_build(rollback: Rollback) -> None:
    for u in rollback.users:
        before, after = rollback.before[u], rollback.after[u]
        assert before.fallback is None and not before.degraded
        assert after.fallback is None and not after.degraded, after.reason
        np.testing.assert_array_equal(after.item_ids[:10], before.item_ids[:10], err_msg=f"user {u}")


def test_a_user_only_the_newer_model_knows_is_a_flagged_fallback_on_the_older(rollback: Rollback) -> None:
    [on_a] = answers(rollback.a, rollback.repo, [NEW_USER]).values()
    assert on_a.fallback == "model_mismatch" and on_a.degraded and len(on_a.item_ids) == 10
    assert load_bundle(rollback.b).model_id in on_a.reason
    [on_b] = answers(rollback.b, rollback.repo, [NEW_USER]).values()
    assert on_b.fallback is None and not on_b.degraded


def test_a_future_dated_row_reaches_no_training_feature(tmp_path: Path) -> None:
    ratings, movies = generate(SynthSpec(n_items=300, n_users=120, seed=4))
    item = int(ratings["movieId"].value_counts().index[0])  # a popular item: it has training rows
    # A new user: four interactions in the data's time, the fifth in 2100 (their held-out one).
    start = int(ratings["timestamp"].min())
    planted = pd.DataFrame(
        {
            "userId": NEW_USER,
            "movieId": [*movies["movieId"][-4:], item],
            "rating": 4.0,
            "timestamp": [start + 10, start + 20, start + 30, start + 40, YEAR_2100],
        }
    )
    log = pd.concat([ratings, planted], ignore_index=True)
    data = write_movielens(log, movies, tmp_path / "data")
    repo = copy_feature_repo(tmp_path / "repo")
    bundle = _build(data, repo, tmp_path / "artifacts", FAST)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert pd.Timestamp(manifest["created_at"]) > pd.Timestamp(YEAR_2100, unit="s", tz="UTC")

    # Read as training reads: point-in-time, just before the planted interaction.
    at = pd.Timestamp(YEAR_2100 - 1, unit="s", tz="UTC")
    items = movies["movieId"].to_numpy()
    entities = pd.DataFrame({"user_id": NEW_USER, "item_id": items, "event_timestamp": at})
    frame = training_features(FeatureStore(repo_path=str(repo)), load_movielens(data), entities)
    assert (frame["user_n_interactions"] == 4).all(), "the user's features count only what came before"
    before = log[log["timestamp"] < YEAR_2100]["movieId"].value_counts()
    known = frame["item_popularity"].notna().to_numpy()
    popularity = frame["item_popularity"].to_numpy()[known].astype(np.int64)
    # Rows computed from the whole log (the serving rows) would count the 2100 interaction here.
    assert (popularity <= before.reindex(items[known]).fillna(0).to_numpy()).all()
    assert frame.loc[frame["item_id"] == item, "item_popularity"].iloc[0] <= before[item]
