"""Events survive a rebuild: the next `recsys build` reads the event log, and its rows agree with the
rows serving pushed for the same events (real Feast push and build; no Ray)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from serve_app.core.bundle import load_bundle
from serve_app.core.features import USER_FEATURES
from serve_app.events.ingest import EventIngest, feast_push
from serve_app.events.log import EventLog, event_log_path
from serve_app.events.models import Event
from serve_app.events.user_rows import EventModel, updated_row
from serve_app.offline import feast_ops
from serve_app.offline.build import build
from serve_app.offline.config import BuildConfig
from serve_app.offline.data import load_movielens
from serve_app.request.stages.user_features import feast_fetcher

pytestmark = pytest.mark.slow


def _own_repo(built, tmp_path):
    """The session's Feast sources with a registry and online store of their own. A copied registry
    names the original's SQLite tables, which `feast apply` in the copy (the rebuild) would drop."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(built.repo, repo, ignore=shutil.ignore_patterns("registry.db", "online_store.db"))
    feast_ops.apply(repo)
    stamp = pd.Timestamp(load_bundle(built.bundle, ()).manifest["created_at"])
    feast_ops.materialize_incremental(repo, (stamp + pd.Timedelta(seconds=1)).to_pydatetime())
    return repo


def test_a_rebuild_keeps_the_events_and_agrees_with_the_pushed_rows(built, tmp_path):
    repo = _own_repo(built, tmp_path)
    bundle = load_bundle(built.bundle, ("index", "log"))
    model = EventModel.from_bundle(bundle)
    user = int(bundle.history.user_ids[12])
    seen = set(bundle.items.item_ids[bundle.history.seen(user)].tolist())
    picks = [int(i) for i in bundle.items.item_ids if int(i) not in seen][:2]
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        Event(event_id="r-1", user_id=user, item_id=picks[0], event="view", timestamp=now),
        Event(event_id="r-2", user_id=user, item_id=picks[1], event="rating", timestamp=now, value=5.0),
    ]
    ingest = EventIngest(EventLog(event_log_path(repo)), feast_push(repo))
    assert ingest.apply(model, events).accepted == 2
    fetch = feast_fetcher(repo)
    pushed = fetch(user)
    assert pushed["user_recent_items"] == picks

    data = load_movielens(built.data_dir)
    path, _ = build(data, BuildConfig(), repo, tmp_path / "artifacts", progress=False)
    rebuilt = load_bundle(path, ("index", "log"))
    assert rebuilt.manifest["data_source"]["n_events"] == 2
    assert rebuilt.manifest["data_source"]["event_log_bytes"] == event_log_path(repo).stat().st_size
    assert set(picks) <= set(rebuilt.items.item_ids[rebuilt.history.seen(user)].tolist())
    row = feast_fetcher(repo)(user)  # the build's row, materialized over the pushed one
    assert row["user_embedding_model"] == rebuilt.model_id and row["user_recent_items"] == []
    for name in USER_FEATURES:
        np.testing.assert_allclose(np.asarray(row[name], float), np.asarray(pushed[name], float), rtol=1e-5)
    # Serving on the new bundle applies only the events after those it holds: none yet.
    again = EventModel.from_bundle(rebuilt)
    with EventLog(event_log_path(repo)).locked() as log:
        after = updated_row(again, user, log.interactions_of(user, (), again.events_after))
    assert after["user_n_interactions"] == row["user_n_interactions"] and len(after["user_recent_items"]) == 0


def test_a_bundle_built_before_events_serves_on_and_refuses_events_with_what_to_do(built, tmp_path):
    """The EventWriter over a bundle whose history has no log: it starts (the app deploys, requests
    are answered by the other deployments) and answers events 503 saying to rebuild."""
    from serve_app.core.artifacts import History
    from serve_app.core.bundle import write_bundle
    from serve_app.core.settings import SERVING_DEFAULTS
    from serve_app.serve.deployments import EventWriter

    full = load_bundle(built.bundle)
    h = full.history
    old = tmp_path / "old-bundle"
    write_bundle(
        old,
        index=full.index,
        users=full.users,
        ranker=full.ranker,
        item_ids=full.items.item_ids,
        item_columns=dict(full.items.columns),
        popular_rows=full.popular_rows,
        history=History(h.user_ids, h.indptr, h.rows),  # no ratings, no times
        manifest=full.manifest,
    )
    load_bundle(old)  # still a good bundle for recommendations
    repo = tmp_path / "feature_repo"
    shutil.copytree(built.repo, repo)
    settings = SERVING_DEFAULTS.with_overrides({"bundle": str(old)}).model_dump(mode="json")
    writer = EventWriter.func_or_class(settings, str(repo), None)
    writer.reconfigure({})
    now = datetime.now(UTC)
    event = Event(event_id="o-1", user_id=1, item_id=int(full.items.item_ids[0]), event="view", timestamp=now)
    answer = writer.apply([event])
    assert answer["status"] == 503 and "rebuild it" in answer["message"]
    assert writer.version()["version"].startswith("unavailable")
    assert not event_log_path(repo).exists()
