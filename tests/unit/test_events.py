"""Events without Ray: validation, the row recomputed after events against what a build computes from
the same log, the event log's idempotency across writers, and all-or-nothing ingestion."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from serve_app.core import feature_rows
from serve_app.core.artifacts import ItemIndex
from serve_app.core.errors import DependencyError
from serve_app.core.features import USER_EMBEDDING, USER_FEATURES, USER_RECENT_ITEMS
from serve_app.events.ingest import EventIngest
from serve_app.events.log import EventLog
from serve_app.events.models import Event, EventsRequest, interactions
from serve_app.events.user_rows import EventModel, gram_of, updated_row
from serve_app.offline import feature_tables
from serve_app.offline.build import history_of
from serve_app.offline.config import EmbeddingConfig
from serve_app.offline.data import Interactions, load_movielens
from serve_app.offline.embeddings import Embeddings, fold_in_users, train_als
from serve_app.offline.synth import SynthSpec, generate, write_movielens
from tests.unit.conftest import make_bundle, served

CFG = EmbeddingConfig(factors=8, iterations=3)


def _model(data: Interactions, emb: Embeddings) -> EventModel:
    """What EventModel.from_bundle holds, from a log and its model directly (no bundle on disk)."""
    index = ItemIndex(faiss.IndexFlatIP(emb.item_factors.shape[1]))
    index.index.add(emb.item_factors)
    items = data.items.set_index("item_id").reindex(emb.item_ids)["category"].fillna(-1)
    return EventModel(
        "v1",
        emb.model_id,
        index,
        gram_of(index, chunk=37),  # several chunks: the sum over chunks is the whole Gram matrix
        history_of(data.ratings, emb),
        pd.DataFrame({"item_id": emb.item_ids, "category": items.to_numpy(np.int64)}),
        feature_rows.n_categories_of(data.items),
        CFG.alpha,
        CFG.recency_half_life,
        CFG.regularization,
        int(data.ratings["ts"].max()) + 1,
        datetime(2026, 1, 1, tzinfo=UTC),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Interactions, Embeddings, EventModel]:
    out = tmp_path_factory.mktemp("events")
    data = load_movielens(write_movielens(*generate(SynthSpec(n_items=200, n_users=40, seed=5)), out))
    emb = fold_in_users(train_als(data.ratings, CFG, 0, False), data.ratings, CFG)
    return data, emb, _model(data, emb)


def _event(n: int, user: int, item: int, at: int, kind: str = "view", value: float | None = None) -> Event:
    stamp = datetime.fromtimestamp(at, UTC).isoformat()
    return Event.model_validate(
        {"event_id": f"e-{n}", "user_id": user, "item_id": item, "event": kind, "timestamp": stamp}
        | ({"value": value} if value is not None else {})
    )


def _as_built(data: Interactions, emb: Embeddings, log: pd.DataFrame, user: int) -> dict:
    """The row a build writes for `user` from the interaction log `log` (the same model's items)."""
    log = log.sort_values("ts", kind="stable").drop_duplicates(["user_id", "item_id"], keep="last")
    refolded = fold_in_users(emb, log, CFG)
    rows = feature_tables.user_rows_final(
        log,
        data.items,
        refolded.user_factors,
        refolded.user_ids,
        emb.model_id,
        int(log["ts"].max()) + 1,
        pd.Timestamp("2026-01-01", tz="UTC"),
    )
    return rows.set_index("user_id").loc[user].to_dict()


def _assert_same(row: dict, built: dict) -> None:
    for name in USER_FEATURES:
        np.testing.assert_allclose(np.asarray(row[name], float), np.asarray(built[name], float), rtol=1e-5)
    np.testing.assert_allclose(row[USER_EMBEDDING], built[USER_EMBEDDING], rtol=1e-4, atol=1e-6)


def test_without_events_the_row_is_the_builds_row(world) -> None:
    data, emb, model = world
    user = int(emb.user_ids[3])
    row = updated_row(model, user, interactions([]))
    _assert_same(row, _as_built(data, emb, data.ratings, user))
    np.testing.assert_allclose(row[USER_EMBEDDING], emb.user_factors[3], rtol=1e-4, atol=1e-6)
    assert row["user_embedding_model"] == emb.model_id and len(row[USER_RECENT_ITEMS]) == 0


def test_after_events_the_row_is_what_a_build_of_the_same_log_computes(world) -> None:
    data, emb, model = world
    user = int(emb.user_ids[5])
    seen = set(data.ratings.loc[data.ratings["user_id"] == user, "item_id"])
    unseen = [int(i) for i in emb.item_ids if i not in seen][:2]
    again = int(next(iter(seen)))
    t0 = model.data_end + 3_600
    events = [
        _event(1, user, unseen[0], t0),
        _event(2, user, unseen[1], t0 + 60, "rating", 4.5),
        _event(3, user, again, t0 + 120, "click"),  # seen before: it moves to the end, unrated
    ]
    row = updated_row(model, user, interactions(events))
    combined = pd.concat([data.ratings, interactions(events)], ignore_index=True)
    built = _as_built(data, emb, combined, user)
    _assert_same(row, built)
    before = updated_row(model, user, interactions([]))
    assert row["user_n_interactions"] == before["user_n_interactions"] + 2
    assert row["user_days_since_last"] == pytest.approx(1 / 86_400)
    assert row[USER_RECENT_ITEMS].tolist() == [unseen[0], unseen[1], again]
    assert not np.allclose(row[USER_EMBEDDING], before[USER_EMBEDDING])


def test_an_unrated_event_leaves_the_average_rating_and_a_repeat_counts_once(world) -> None:
    data, emb, model = world
    user = int(emb.user_ids[7])
    seen = set(data.ratings.loc[data.ratings["user_id"] == user, "item_id"])
    item = next(int(i) for i in emb.item_ids if i not in seen)
    t0 = model.data_end + 10
    before = updated_row(model, user, interactions([]))
    view = updated_row(model, user, interactions([_event(1, user, item, t0)]))
    twice = updated_row(model, user, interactions([_event(1, user, item, t0), _event(2, user, item, t0)]))
    rated = updated_row(model, user, interactions([_event(1, user, item, t0, "rating", 0.5)]))
    assert view["user_avg_rating"] == pytest.approx(before["user_avg_rating"], rel=1e-6)
    assert rated["user_avg_rating"] < before["user_avg_rating"]
    assert view["user_n_interactions"] == before["user_n_interactions"] + 1
    _assert_same(twice, view)


def test_a_user_the_bundle_does_not_know_gets_a_row_and_a_vector_from_events(world) -> None:
    _, emb, model = world
    t0 = model.data_end + 10
    items = [int(i) for i in emb.item_ids[:3]]
    row = updated_row(
        model, 10_000_001, interactions([_event(i, 10_000_001, it, t0 + i) for i, it in enumerate(items)])
    )
    assert row["user_n_interactions"] == 3 == row["user_n_recent"]
    assert np.isnan(row["user_avg_rating"])  # views only: nothing rated
    assert np.linalg.norm(row[USER_EMBEDDING]) > 0
    assert float(np.sum(row["user_category_share"])) == pytest.approx(1.0, abs=1e-6)


NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"timestamp": "2026-01-01T00:00:00"}, "timezone"),
        ({"timestamp": (NOW + timedelta(days=1)).isoformat()}, "in the future"),
        ({"event": "rating"}, "needs a value"),
        ({"value": 3.0}, "carries no value"),
        ({"event": "rating", "value": 7.0}, "less than or equal to 5"),
        ({"event": "purchase"}, "'view', 'click' or 'rating'"),
        ({"event_id": "has space"}, "pattern"),
        ({"event_id": "x" * 129}, "pattern"),
        ({"user_id": "5"}, "valid integer"),
        ({"extra": 1}, "Extra inputs"),
    ],
)
def test_bad_events_are_refused_with_what_to_fix(change: dict, needle: str) -> None:
    good = {"event_id": "a:1", "user_id": 1, "item_id": 2, "event": "view", "timestamp": NOW.isoformat()}
    Event.model_validate(good)
    with pytest.raises(ValidationError, match=needle):
        Event.model_validate(good | change)


def test_a_request_holds_1_to_1000_events() -> None:
    one = {"event_id": "a", "user_id": 1, "item_id": 2, "event": "view", "timestamp": "2026-01-01T00:00:00Z"}
    with pytest.raises(ValidationError, match="at least 1"):
        EventsRequest.model_validate({"events": []})
    with pytest.raises(ValidationError, match="at most 1000"):
        EventsRequest.model_validate({"events": [one] * 1_001})


def test_seen_items_include_the_online_rows_recent_items() -> None:
    bundle = make_bundle()
    s = served(bundle)
    recent = bundle.items.item_ids[[7, 1]]  # row 1 is in user 1's history already
    ctx = s.context(1, (), recent)
    assert ctx.seen_rows.tolist() == [0, 2, 7, 1]  # the history, then the events, newest last
    assert s.context(1, ()).seen_rows.tolist() == [0, 1, 2]


class Store:
    """The store's push as Feast's: records what it was given, or fails like a store that is down."""

    def __init__(self) -> None:
        self.pushed: list[tuple[pd.DataFrame, bool]] = []
        self.down = False

    def push(self, rows: pd.DataFrame, also_offline: bool) -> None:
        if self.down and also_offline:
            raise ConnectionError("store down")
        self.pushed.append((rows, also_offline))


def test_ingestion_is_idempotent_across_writers_and_restarts(world, tmp_path: Path) -> None:
    _, emb, model = world
    user, t0 = int(emb.user_ids[2]), model.data_end + 100
    batch = [_event(i, user, int(emb.item_ids[i]), t0 + i) for i in range(3)]
    store = Store()
    first = EventIngest(EventLog(tmp_path / "events.jsonl"), store.push).apply(model, batch)
    assert (first.accepted, first.duplicates, first.users) == (3, 0, (user,))
    row = store.pushed[-1][0].iloc[0]
    # Another writer (a restarted replica) reads the ids from the file: nothing is applied twice.
    other = EventIngest(EventLog(tmp_path / "events.jsonl"), store.push)
    again = other.apply(model, [*batch, batch[0], _event(9, user, int(emb.item_ids[9]), t0 + 9)])
    assert (again.accepted, again.duplicates) == (1, 4)
    latest = store.pushed[-1][0].iloc[0]
    assert latest["user_n_interactions"] == row["user_n_interactions"] + 1
    assert store.pushed[-1][1] is True  # online and offline
    assert list(latest.index[-1:]) == ["event_timestamp"]
    assert latest["event_timestamp"] > row["event_timestamp"]


def test_a_store_that_is_down_gets_503_and_nothing_is_applied(world, tmp_path: Path) -> None:
    _, emb, model = world
    user, t0 = int(emb.user_ids[4]), model.data_end + 100
    store = Store()
    ingest = EventIngest(EventLog(tmp_path / "events.jsonl"), store.push)
    ingest.apply(model, [_event(1, user, int(emb.item_ids[1]), t0)])
    size = (tmp_path / "events.jsonl").stat().st_size
    store.down = True
    with pytest.raises(DependencyError, match="nothing was applied"):
        ingest.apply(model, [_event(2, user, int(emb.item_ids[2]), t0 + 1)])
    assert (tmp_path / "events.jsonl").stat().st_size == size
    restored, online_only = store.pushed[-1]
    assert online_only is False and restored.iloc[0]["user_recent_items"].tolist() == [int(emb.item_ids[1])]
    store.down = False
    retry = ingest.apply(model, [_event(2, user, int(emb.item_ids[2]), t0 + 1)])
    assert (retry.accepted, retry.duplicates) == (1, 0)


def test_a_line_cut_off_by_a_crash_is_dropped_not_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    with log.locked():
        log.append([_event(1, 1, 2, 1_700_000_000)])
        log.commit()
    with path.open("ab") as fh:
        fh.write(b'{"event_id": "half')
    fresh = EventLog(path)
    with fresh.locked():
        assert fresh.known_ids() == {"e-1"}
    assert path.read_bytes().endswith(b"}\n")


def test_an_events_file_is_read_as_jsonl_or_json_and_a_bad_line_is_named(tmp_path: Path) -> None:
    from serve_app.cli.events import read_events
    from serve_app.core.errors import DataError

    one = {"event_id": "a", "user_id": 1, "item_id": 2, "event": "view", "timestamp": "2026-01-01T00:00:00Z"}
    two = one | {"event_id": "b", "event": "rating", "value": 4.0}
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(f"{json.dumps(one)}\n\n{json.dumps(two)}\n")
    assert read_events(jsonl) == [one, two]
    listed = tmp_path / "events.json"
    listed.write_text(json.dumps({"events": [one, two]}, indent=2))
    assert read_events(listed) == [one, two]
    jsonl.write_text(f"{json.dumps(one)}\n{json.dumps(one | {'value': 3.0})}\n")
    with pytest.raises(DataError, match=r"events.jsonl:2: .*carries no value"):
        read_events(jsonl)


def test_a_build_adds_the_logged_events_to_its_interaction_log(world, tmp_path: Path) -> None:
    from serve_app.offline.logged_events import with_logged_events

    data, emb, model = world
    user, t0 = int(emb.user_ids[1]), model.data_end + 100
    unknown_item = int(data.items["item_id"].max()) + 1_000
    log = EventLog(tmp_path / "events.jsonl")
    with log.locked():
        log.append([_event(1, user, int(emb.item_ids[0]), t0), _event(2, user, unknown_item, t0 + 1)])
        log.commit()
        size = log.size
    merged, info = with_logged_events(data, tmp_path / "events.jsonl")
    assert info | {"event_log": None} == {
        "event_log": None,
        "event_log_bytes": size,
        "n_events": 2,
        "skipped_events": 1,  # not in movies.csv: nothing to show, as the loader skips such ratings
    }
    last = merged.ratings.iloc[-1]
    assert (last["user_id"], last["item_id"], last["ts"]) == (user, int(emb.item_ids[0]), t0)
    assert np.isnan(last["rating"])  # a view
    assert not merged.ratings.duplicated(["user_id", "item_id"]).any()
    assert with_logged_events(data, tmp_path / "absent.jsonl")[0] is data


def test_item_features_average_only_rated_interactions() -> None:
    items = pd.DataFrame({"item_id": [1], "title": "x", "category": [0]})
    log = pd.DataFrame(
        {"user_id": [1, 2, 3], "item_id": [1, 1, 1], "rating": np.float32([4, np.nan, 2]), "ts": [10, 20, 30]}
    )
    row = feature_rows.item_rows_at(log, items, np.array([1, 1]), np.array([25, 31])).set_index("as_of")
    assert row.loc[25, "item_popularity"] == 2 and row.loc[25, "item_avg_rating"] == 4.0
    assert row.loc[31, "item_popularity"] == 3 and row.loc[31, "item_avg_rating"] == 3.0
