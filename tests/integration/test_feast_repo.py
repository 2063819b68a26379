"""The real Feast repo on SQLite: apply + materialize through the CLI, then online and historical reads."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from serve_app.core import feature_rows
from serve_app.core.errors import ConfigError
from serve_app.core.features import FEATURE_SERVICE, ITEM_FEATURES, USER_EMBEDDING, USER_FEATURES
from serve_app.offline import feast_ops, feature_tables
from tests.conftest import copy_feature_repo

pytestmark = pytest.mark.slow

NOW = datetime.now(UTC).replace(microsecond=0)
OLD_STAMP = pd.Timestamp(NOW - timedelta(days=2))
NEW_STAMP = pd.Timestamp(NOW - timedelta(hours=1))
BASE = 1_700_000_000
DAY = 86_400
USER_IDS = np.array([1, 2, 3, 4], dtype=np.int64)


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two snapshots per source: an old one and a newer one. User 3 only has the old row,
    user 4 and item 15 only the new one (their interactions come after the old snapshot)."""
    rng = np.random.default_rng(11)
    items = pd.DataFrame({"item_id": np.arange(10, 16), "title": "x", "category": [0, 1, 2, 0, 1, -1]})
    ratings = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2, 3, 3, 1, 2, 4, 4],
            "item_id": [10, 11, 12, 10, 13, 12, 14, 13, 15, 15, 11],
            "rating": np.float32([4, 3.5, 5, 2, 4, 3, 1, 4.5, 5, 2.5, 3]),
            "ts": BASE + DAY * np.array([1, 2, 3, 1, 4, 2, 5, 20, 21, 22, 23]),
        }
    )
    as_old, as_new = BASE + 10 * DAY, BASE + 30 * DAY
    emb_old, emb_new = (rng.normal(size=(len(USER_IDS), 8)).astype(np.float32) for _ in range(2))
    old = ratings[ratings["ts"] < as_old]
    users = pd.concat(
        [  # newest rows first: Feast must choose by event_timestamp, not by position
            feature_tables.user_rows_final(
                ratings[ratings["user_id"] != 3], items, emb_new, USER_IDS, "als-new", as_new, NEW_STAMP
            ),
            feature_tables.user_rows_final(old, items, emb_old, USER_IDS, "als-old", as_old, OLD_STAMP),
        ],
        ignore_index=True,
    )
    ids = items["item_id"].to_numpy()

    def item_rows(as_of: int, stamp: pd.Timestamp) -> pd.DataFrame:
        rows = feature_rows.item_rows_at(ratings, items, ids, np.full(len(ids), as_of))
        return rows.drop(columns="as_of").assign(event_timestamp=stamp)

    item_rows = pd.concat([item_rows(as_new, NEW_STAMP), item_rows(as_old, OLD_STAMP)], ignore_index=True)
    return users, item_rows


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    path = copy_feature_repo(tmp_path_factory.mktemp("feast") / "repo")
    users, items = _tables()
    feature_tables.write_parquet_atomic(users, path / "data" / "user_features.parquet")
    feature_tables.write_parquet_atomic(items, path / "data" / "item_features.parquet")
    feast_ops.apply(path)
    feast_ops.materialize_incremental(path, NOW)
    return path, users, items


def newest(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame.sort_values("event_timestamp").groupby(key).tail(1).set_index(key)


def assert_same_value(online: object, expected: object, name: str) -> None:
    if isinstance(expected, np.ndarray):  # Array(Float32) features
        np.testing.assert_array_equal(np.asarray(online, dtype=np.float32), expected, err_msg=name)
    elif isinstance(expected, np.floating):
        assert np.float32(online) == expected, name
    else:
        assert online == expected, name


def test_online_user_features_are_the_newest_parquet_rows(
    repo: tuple[Path, pd.DataFrame, pd.DataFrame],
) -> None:
    path, users, _ = repo
    names = (USER_EMBEDDING, *USER_FEATURES)
    online = (
        FeatureStore(repo_path=str(path))
        .get_online_features(
            features=[f"user_features:{n}" for n in names],
            entity_rows=[{"user_id": int(u)} for u in [*USER_IDS, 999]],
        )
        .to_dict()
    )
    expected = newest(users, "user_id")
    assert expected.loc[3, "event_timestamp"] == OLD_STAMP and expected.loc[1, "event_timestamp"] == NEW_STAMP
    for i, user in enumerate(USER_IDS):
        for name in names:
            assert_same_value(online[name][i], expected.loc[user, name], f"user {user} {name}")
    assert all(online[name][-1] is None for name in names), "an unknown user has no features"


def test_serving_reads_the_user_online_feature_service_and_items_stay_offline(
    repo: tuple[Path, pd.DataFrame, pd.DataFrame],
) -> None:
    """Serving reads users through the `user_online_v1` FeatureService (what feast_fetcher uses); item
    features are offline only: the Ranker holds them from the bundle, so materializing them is waste."""
    from serve_app.request.stages.user_features import EVENT_TIME, feast_fetcher

    path, users, _ = repo
    fetch = feast_fetcher(path)
    expected = newest(users, "user_id")
    for user in USER_IDS:
        row = fetch(user)
        assert row is not None
        for name in (USER_EMBEDDING, *USER_FEATURES):
            assert_same_value(row[name], expected.loc[user, name], f"user {user} {name}")
        # The row's event time comes along: recsys_user_feature_age_s is measured from it.
        assert row[EVENT_TIME] == int(expected.loc[user, "event_timestamp"].timestamp()), f"user {user}"
    assert fetch(999) is None, "an unknown user has no features"
    store = FeatureStore(repo_path=str(path))
    assert store.get_feature_view("item_features").online is False


def test_historical_features_are_point_in_time(repo: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    path, users, _ = repo
    times = [OLD_STAMP - timedelta(hours=1), OLD_STAMP + timedelta(hours=1), NEW_STAMP + timedelta(minutes=1)]
    entities = pd.DataFrame({"user_id": 1, "item_id": 10, "event_timestamp": times})
    out = feast_ops.historical_features(FeatureStore(repo_path=str(path)), entities)
    assert len(out) == 3 and list(out["event_timestamp"]) == times
    rows = users[users["user_id"] == 1].set_index("event_timestamp")
    assert pd.isna(out["user_avg_rating"].iat[0]), "nothing was known before the first row"
    assert out["user_avg_rating"].iat[1] == rows.loc[OLD_STAMP, "user_avg_rating"]
    assert out["user_avg_rating"].iat[2] == rows.loc[NEW_STAMP, "user_avg_rating"]
    assert out["user_n_interactions"].iat[2] == rows.loc[NEW_STAMP, "user_n_interactions"] == 4


def test_check_feature_service_accepts_the_real_repo(repo: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    store = FeatureStore(repo_path=str(repo[0]))
    feast_ops.check_feature_service(store)
    names = [
        f.name
        for p in store.get_feature_service(FEATURE_SERVICE).feature_view_projections
        for f in p.features
    ]
    assert tuple(names) == USER_FEATURES + ITEM_FEATURES


def test_check_feature_service_rejects_a_service_that_drifted(
    repo: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    edited = shutil.copytree(repo[0], tmp_path / "repo")
    source = (edited / "definitions.py").read_text()
    # Drop user_n_recent from the ranker FeatureService (the list entry, not the schema Field).
    dropped, count = re.subn(r'\n\s+"user_n_recent",\n', "\n", source)
    assert count == 1
    (edited / "definitions.py").write_text(dropped)
    feast_ops.apply(edited)
    store = FeatureStore(repo_path=str(edited))
    with pytest.raises(ConfigError, match=FEATURE_SERVICE) as err:
        feast_ops.check_feature_service(store)
    assert "user_n_recent" in str(err.value)


def test_feast_cli_failure_is_a_config_error_with_the_command(tmp_path: Path) -> None:
    broken = copy_feature_repo(tmp_path / "repo")
    (broken / "definitions.py").write_text("from feast import Entity\nuser = Entity(\n")
    with pytest.raises(ConfigError, match=r"feast -c .* apply` failed"):
        feast_ops.apply(broken)
