"""POST /events on a real local Ray cluster over HTTP: an event reaches the user's next answer, a
repeat is not applied twice, a bad event or a store that is down changes nothing."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from serve_app.core.bundle import load_bundle
from serve_app.events.log import event_log_path
from tests.conftest import local_serve

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def served_events(built, tmp_path_factory):
    """The app over a copy of the session's Feast repo, so the events pushed here reach no other test."""
    from ray import serve

    from serve_app.serve.app import AppArgs, build_app

    repo = tmp_path_factory.mktemp("events") / "feature_repo"
    shutil.copytree(built.repo, repo)
    args = AppArgs(bundle=str(built.bundle), feature_repo=str(repo), request_timeout_s=5.0)
    # Both with the default 30 s cache: a user's answer right after their events must not come from
    # it (the graph's Retriever is told to read past it; the colocated ingress drops its own row).
    graph = args
    with local_serve("recsys-events-test") as port:
        serve.run(build_app(graph), name="recsys", route_prefix="/")
        serve.run(colocated_app(args, replicas=2), name="colocated", route_prefix="/colocated")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _warm(client, int(load_bundle(built.bundle).history.user_ids[0]))
            yield client, repo


def colocated_app(args, replicas: int):
    """The colocated app as cluster/serve_config.colocated.yaml runs it: `replicas` Ingress replicas,
    each with its own feature cache (build_app's wiring, with the replica count the config sets)."""
    from serve_app.core.paths import resolve_path
    from serve_app.serve.app import EventWriter, Ingress

    settings = args.serving().model_dump(mode="json")
    repo = str(resolve_path(args.feature_repo))
    events = EventWriter.options(user_config={}).bind(settings, repo, None)
    ingress = Ingress.options(user_config={}, num_replicas=replicas)
    return ingress.bind(settings, "colocated", feature_repo=repo, event_writer=events)


def _warm(client: httpx.Client, user_id: int, timeout_s: float = 60) -> None:
    """Until both apps answer undegraded: a first request on a loaded machine may meet a replica's
    cold first store read past its 50 ms deadline (degraded by design), which is not what these
    tests are about."""
    deadline = time.monotonic() + timeout_s
    for prefix in ("", "/colocated"):
        while True:
            body = client.post(f"{prefix}/recommend", json={"user_id": user_id, "k": 5}).json()
            if not body["degraded"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)


def _view(user_id: int, item_id: int) -> dict:
    return {
        "event_id": f"test-{uuid.uuid4().hex}",
        "user_id": user_id,
        "item_id": item_id,
        "event": "view",
        "timestamp": datetime.now(UTC).isoformat(),
    }


def _answer(client: httpx.Client, user_id: int, prefix: str = "") -> dict:
    # k=100: an item missing from a hundred is filtered, not merely moved down by the new vector.
    response = client.post(f"{prefix}/recommend", json={"user_id": user_id, "k": 100, "debug": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fallback"] is None and body["degraded"] is False, (body["degraded_reason"], body["fallback"])
    return body


def _ids(body: dict) -> list[int]:
    return [i["item_id"] for i in body["items"]]


def test_a_viewed_item_leaves_the_next_answer_and_a_repeat_is_not_applied_twice(served_events, built):
    client, repo = served_events
    user_id = int(load_bundle(built.bundle).history.user_ids[7])
    before = _answer(client, user_id)  # now cached for 30 s in the Retriever
    top = _ids(before)[0]
    event = _view(user_id, top)

    response = client.post("/events", json={"events": [event]})
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0}
    after = _answer(client, user_id)
    assert top not in _ids(after)
    n = before["user_features"]["user_n_interactions"]
    assert after["user_features"]["user_n_interactions"] == n + 1
    assert after["user_features"]["user_days_since_last"] < 1 / 24  # the event was just now
    assert after["filtered"]["already_seen"] >= 1

    again = client.post("/events", json={"events": [event]})
    assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicates": 1}
    assert _answer(client, user_id)["user_features"]["user_n_interactions"] == n + 1
    assert event_log_path(repo).read_text().count(event["event_id"]) == 1


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"timestamp": "2026-01-01T00:00:00"}, "timezone"),
        ({"event": "rating"}, "needs a value"),
        ({"user_id": "5"}, "valid integer"),
    ],
)
def test_a_bad_event_gets_422_and_changes_nothing(served_events, built, change, needle):
    client, repo = served_events
    user_id = int(load_bundle(built.bundle).history.user_ids[8])
    before = _answer(client, user_id)
    log = event_log_path(repo)
    size = log.stat().st_size if log.exists() else 0
    good = _view(user_id, _ids(before)[0])
    bad = _view(user_id, _ids(before)[1]) | change
    response = client.post("/events", json={"events": [good, bad]})
    assert response.status_code == 422 and needle in response.json()["message"], response.text
    assert "events.1" in response.json()["message"]  # which event to fix
    assert (log.stat().st_size if log.exists() else 0) == size
    assert _answer(client, user_id)["user_features"] == before["user_features"]


def test_a_store_that_is_down_gets_503_and_the_retry_applies_once(served_events, built):
    client, repo = served_events
    user_id = int(load_bundle(built.bundle).history.user_ids[9])
    before = _answer(client, user_id)
    event = _view(user_id, _ids(before)[0])
    log = event_log_path(repo)
    size = log.stat().st_size if log.exists() else 0
    db = sqlite3.connect(repo / "data" / "online_store.db", timeout=0.1)
    db.execute("BEGIN EXCLUSIVE")  # every write (and read) now fails after its busy timeout
    try:
        response = client.post("/events", json={"events": [event]})
    finally:
        db.rollback()
        db.close()
    assert response.status_code == 503, response.text
    assert "nothing was applied" in response.json()["message"]
    assert response.headers["retry-after"] == "1"
    assert (log.stat().st_size if log.exists() else 0) == size
    assert _answer(client, user_id)["user_features"] == before["user_features"]

    retry = client.post("/events", json={"events": [event]})
    assert retry.status_code == 202 and retry.json() == {"accepted": 1, "duplicates": 0}
    assert _ids(before)[0] not in _ids(_answer(client, user_id))


def test_every_colocated_ingress_forgets_its_cached_row_on_an_event(served_events, built):
    """Two Ingress replicas, each caching the user's row for 30 s: the one that takes the event drops
    it at once, the other hears of the push from the EventWriter's feed within a poll (0.25 s)."""
    client, _ = served_events
    user_id = int(load_bundle(built.bundle).history.user_ids[10])
    asked = [_answer(client, user_id, "/colocated") for _ in range(12)]  # the proxy spreads them
    before = asked[0]
    top = _ids(before)[0]
    response = client.post("/colocated/events", json={"events": [_view(user_id, top)]})
    assert response.status_code == 202, response.text
    time.sleep(1.0)
    for _ in range(12):
        after = _answer(client, user_id, "/colocated")
        assert top not in _ids(after)
        n_before = before["user_features"]["user_n_interactions"]
        assert after["user_features"]["user_n_interactions"] == n_before + 1


def test_recsys_events_sends_a_file_and_a_resend_is_all_duplicates(served_events, built, tmp_path, capsys):
    from serve_app.cli.main import main

    client, _ = served_events
    user_id = int(load_bundle(built.bundle).history.user_ids[11])
    before = _answer(client, user_id)
    picks = _ids(before)[:2]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(_view(user_id, item)) + "\n" for item in picks))
    url = str(client.base_url)
    assert main(["events", str(path), "--url", url]) == 0
    assert "2 accepted, 0 duplicates" in capsys.readouterr().out
    assert main(["events", str(path), "--url", url, "--batch", "1"]) == 0
    assert "in 2 requests: 0 accepted, 2 duplicates" in capsys.readouterr().out
    after = _answer(client, user_id)
    assert not set(picks) & set(_ids(after))
    assert after["user_features"]["user_n_interactions"] == before["user_features"]["user_n_interactions"] + 2
