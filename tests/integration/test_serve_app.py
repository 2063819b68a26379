"""The Serve application on a real local Ray cluster, called over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest

from serve_app.core.bundle import load_bundle
from serve_app.core.errors import BundleError
from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.request.flow import in_process_flow
from tests.conftest import local_serve, new_version_of, wait_for_version

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(built):
    from ray import serve

    from serve_app.serve.app import AppArgs, build_app

    args = AppArgs(
        bundle=str(built.bundle),
        feature_repo=str(built.repo),
        user_features_cache_ttl_s=0,
        request_timeout_s=5.0,
        stage_metrics_sample_rate=1.0,  # the metrics test counts every request's stages
    )
    with local_serve("recsys-test") as port:
        serve.run(build_app(args), name="recsys", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client, args


def known_users(built, n: int) -> list[int]:
    bundle = load_bundle(built.bundle)
    return [int(u) for u in bundle.history.user_ids[:n]]


def test_known_user_gets_k_distinct_unseen_items_equal_to_in_process(served, built):
    client, _ = served
    bundle = load_bundle(built.bundle)
    settings = SERVING_DEFAULTS.with_overrides(
        {"user_features_timeout_ms": 5_000, "user_features_cache_ttl_s": 0}
    )
    reference, _ = in_process_flow(built.bundle, built.repo, settings)
    for user_id in known_users(built, 5):
        response = client.post("/recommend", json={"user_id": user_id, "k": 10, "debug": True})
        assert response.status_code == 200, response.text
        body = response.json()
        ids = [i["item_id"] for i in body["items"]]
        scores = [i["score"] for i in body["items"]]
        assert len(ids) == 10 == len(set(ids))
        seen = set(bundle.items.item_ids[bundle.history.seen(user_id)].tolist())
        assert not seen & set(ids)
        assert scores == sorted(scores, reverse=True)
        assert body["fallback"] is None and body["degraded"] is False
        assert {"user_features", "retrieve", "filter", "rank", "total"} <= set(body["timings_ms"])
        expected = asyncio.run(reference.run(user_id, 10, ()))
        assert ids == expected.item_ids[:10].tolist()
        np.testing.assert_allclose(scores, expected.scores[:10], rtol=1e-5)


def test_exclusions_are_honoured(served, built):
    client, _ = served
    user_id = known_users(built, 1)[0]
    first = [
        i["item_id"] for i in client.post("/recommend", json={"user_id": user_id, "k": 5}).json()["items"]
    ]
    again = client.post(
        "/recommend", json={"user_id": user_id, "k": 5, "exclude_item_ids": first[:3], "debug": True}
    ).json()
    ids = [i["item_id"] for i in again["items"]]
    assert len(ids) == 5 and not set(first[:3]) & set(ids)
    assert again["filtered"]["request_exclude"] == 3


def test_unknown_user_gets_the_popularity_fallback(served, built):
    client, _ = served
    body = client.post("/recommend", json={"user_id": 987_654_321, "k": 7}).json()
    bundle = load_bundle(built.bundle)
    assert body["fallback"] == "unknown_user" and body["degraded"] is False
    assert [i["item_id"] for i in body["items"]] == bundle.items.item_ids[bundle.popular_rows[:7]].tolist()


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"k": 5}, 422, "user_id: Field required"),
        ({"user_id": 1, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({"user_id": 1, "k": 1_000_000}, 422, "k: Input should be less than or equal to 100"),
        ({"user_id": "1"}, 422, "user_id: Input should be a valid integer"),
        ({"user_id": 1, "k": "ten"}, 422, "k: Input should be a valid integer"),
        ({"user_id": 1, "verbose": True}, 422, "verbose: Extra inputs are not permitted"),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what_to_fix(served, payload, status, needle):
    client, _ = served
    response = client.post("/recommend", json=payload)
    assert response.status_code == status
    assert needle in response.json()["message"]


def test_ten_megabyte_body_is_refused_with_413(served):
    client, _ = served
    body = b'{"user_id": 1, "exclude_item_ids": [' + b"1," * 5_000_000 + b"1]}"
    response = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "bytes" in response.json()["message"]


def test_request_id_is_echoed_once(served, built):
    client, _ = served
    response = client.post(
        "/recommend", json={"user_id": known_users(built, 1)[0]}, headers={"X-Request-ID": "trace-abc-1"}
    )
    assert response.headers.get_list("x-request-id") == ["trace-abc-1"]
    assert response.json()["request_id"] == "trace-abc-1"


def test_health_version_and_openapi(served, built):
    client, _ = served
    version = load_bundle(built.bundle).version
    assert client.get("/healthz").json() == {"status": "ok", "bundle_version": version}
    stages = client.get("/version").json()["stages"]
    assert stages == {"retriever": version, "ranker": version, "event_writer": version}
    spec = client.get("/openapi.json").json()
    assert "/recommend" in spec["paths"] and "RecommendRequest" in spec["components"]["schemas"]


def test_online_store_unavailable_degrades_instead_of_failing(served, built):
    client, _ = served
    user_id = known_users(built, 40)[-1]  # not read before: no cached features to fall back on
    db = sqlite3.connect(built.repo / "data" / "online_store.db", timeout=0.1)
    db.execute("BEGIN EXCLUSIVE")  # the store now blocks every reader past their deadline
    try:
        response = client.post("/recommend", json={"user_id": user_id, "k": 5})
    finally:
        db.rollback()
        db.close()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] is True and len(body["items"]) == 5
    # The bundle's own vector for the user keeps retrieval and ranking going; the answer says why it
    # is degraded (the ranker had no user features).
    assert body["fallback"] is None and "online store" in body["degraded_reason"]


def test_a_hanging_store_costs_a_graph_request_the_features_deadline(served, built):
    """The Retriever reads the features itself, under user_features_timeout_ms (50 ms): with the store
    hanging, the answer comes degraded within that deadline plus the hops, not the request's (5 s
    here). The bound is generous: it tells a held deadline from a missed one, not a fast hop."""
    client, args = served
    user_id = known_users(built, 41)[-1]  # not read before: no cached features to fall back on
    db = sqlite3.connect(built.repo / "data" / "online_store.db", timeout=0.1)
    db.execute("BEGIN EXCLUSIVE")
    try:
        start = time.perf_counter()
        response = client.post("/recommend", json={"user_id": user_id, "k": 5, "debug": True})
        elapsed = time.perf_counter() - start
    finally:
        db.rollback()
        db.close()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["degraded"] is True and body["fallback"] is None and len(body["items"]) == 5
    assert f"did not answer within {args.user_features_timeout_ms:.0f} ms" in body["degraded_reason"]
    timeout_ms = args.user_features_timeout_ms
    assert timeout_ms * 0.9 <= body["timings_ms"]["user_features"] < 500
    assert elapsed < 0.5, f"{elapsed * 1000:.0f} ms with a {timeout_ms} ms features deadline"


def ray_metrics(*patterns: str, holds=lambda text: True, timeout_s: float = 90) -> str:
    """This node's Prometheus exposition from Ray's metrics agent, once it holds every pattern and
    `holds(text)` (Ray exports each replica's application metrics every few seconds, on its own clock,
    under its `ray_` namespace: the ingress's series may be there before a stage's, or behind it)."""
    import ray

    port = ray._private.worker._global_node.metrics_export_port
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(re.search(pattern, text) for pattern in patterns) and holds(text):
            return text
        time.sleep(2)
    missing = [p for p in patterns if not re.search(p, text)]
    raise AssertionError(f"no {missing!r}, or a count behind, among Ray's metrics after {timeout_s} s")


def series(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples of `name` that carry every label given."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            out.append(float(value))
    return out


def reads_of(text: str) -> float:
    return sum(
        series(text, "ray_recsys_stage_latency_ms_bucket", stage="user_features", topology="graph", le="+Inf")
    )


def totals_of(text: str) -> float:
    return sum(series(text, "ray_recsys_stage_latency_ms_bucket", stage="total", topology="graph", le="+Inf"))


def test_every_stage_and_outcome_is_exported_as_prometheus_metrics(served, built):
    client, _ = served
    for user_id in known_users(built, 3):
        assert client.post("/recommend", json={"user_id": user_id, "k": 5}).status_code == 200
    assert (
        client.post("/recommend", json={"user_id": 987_654_321, "k": 5}).json()["fallback"] == "unknown_user"
    )
    assert client.post("/recommend", json={"user_id": 1, "k": 0}).status_code == 422
    text = ray_metrics(
        r'ray_recsys_requests_total\{[^}]*outcome="invalid"',
        *(
            rf'ray_recsys_stage_latency_ms_bucket\{{[^}}]*stage="{stage}"'
            for stage in ("user_features", "rank")
        ),
        r'ray_recsys_batch_size_count\{[^}]*stage="rank"',
        holds=lambda text: reads_of(text) <= totals_of(text),
    )
    latency = "ray_recsys_stage_latency_ms_bucket"
    for stage in ("user_features", "retrieve", "filter", "rank", "total"):
        counts = series(text, latency, stage=stage, topology="graph", le="+Inf")
        assert counts and sum(counts) >= 3, f"no {stage} latencies"
    # One read per answered request, recorded once: by the Retriever, where the read runs (the answer's
    # timings carry it too, and the ingress must not count it again). Each replica exports on its own
    # clock, so the wait above lets every Ingress's totals catch up; a double count never would.
    assert reads_of(text) <= totals_of(text)
    requests = "ray_recsys_requests_total"
    assert sum(series(text, requests, outcome="ok", deployment="Ingress")) >= 3
    assert series(text, requests, outcome="fallback", reason="unknown_user")
    assert series(text, requests, outcome="invalid", reason="invalid_request")
    for stage in ("retrieve", "rank"):
        assert sum(series(text, "ray_recsys_batch_size_count", stage=stage)) >= 3
    version = load_bundle(built.bundle).version
    for deployment in ("Ingress", "Retriever", "Ranker"):
        assert series(text, "ray_recsys_bundle_info", version=version, deployment=deployment) == [1.0]


def test_colocated_topology_answers_like_the_graph(served, built):
    from ray import serve

    from serve_app.serve.app import AppArgs, build_app

    client, args = served
    colocated = AppArgs(**{**args.model_dump(), "topology": "colocated"})
    serve.run(build_app(colocated), name="colocated", route_prefix="/colocated")
    try:
        for user_id in [*known_users(built, 3), 987_654_321]:
            graph = client.post("/recommend", json={"user_id": user_id, "k": 10}).json()
            local = client.post("/colocated/recommend", json={"user_id": user_id, "k": 10}).json()
            assert local["items"] == graph["items"] and local["fallback"] == graph["fallback"]
        stages = client.get("/colocated/version").json()["stages"]
        assert stages == {"colocated": graph["bundle_version"], "event_writer": graph["bundle_version"]}
    finally:
        serve.delete("colocated")


def test_coalesced_stage_calls_answer_like_one_call_per_request(served, built):
    """ingress_batch_size 16: concurrent requests leave the ingress as batched handle calls
    (serve_app/serve/coalesce.py); each still gets exactly its own answer, fallbacks included."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from serve_app.serve.app import AppArgs, build_app

    client, args = served
    # A store read may take its time here (12 at once on a loaded CI machine): this is about batching.
    coalesced = AppArgs(**{**args.model_dump(), "ingress_batch_size": 16, "user_features_timeout_ms": 2000})
    serve.run(build_app(coalesced), name="coalesced", route_prefix="/coalesced")
    try:
        users = [*known_users(built, 24), 987_654_321]
        bodies = [{"user_id": u, "k": 10, "exclude_item_ids": [u % 50] if u % 3 == 0 else []} for u in users]
        one_by_one = [client.post("/recommend", json=b).json() for b in bodies]
        with ThreadPoolExecutor(12) as pool:  # concurrent, so the ingress has batches to form
            batched = list(pool.map(lambda b: client.post("/coalesced/recommend", json=b).json(), bodies))
        compared = 0
        for one, got in zip(one_by_one, batched, strict=True):
            assert got["user_id"] == one["user_id"] and not got["degraded"], got
            if not one["degraded"]:  # the reference's own store read may miss its 50 ms deadline
                assert got["items"] == one["items"] and got["fallback"] == one["fallback"]
                compared += 1
        assert compared >= 20
    finally:
        serve.delete("coalesced")


def test_bad_bundle_is_refused_at_deploy_and_the_old_one_keeps_serving(served, built, tmp_path):
    from serve_app.serve.app import AppArgs, build_app

    client, args = served
    bad = new_version_of(built.bundle, tmp_path / "bad", "bad-version")
    (bad / "ranker.ubj").write_bytes(b"not a model")
    with pytest.raises(BundleError, match=r"ranker\.ubj"):
        build_app(AppArgs(**{**args.model_dump(), "bundle": str(bad)}))
    assert client.get("/healthz").json()["bundle_version"] == load_bundle(built.bundle).version


def test_redeploy_with_a_new_bundle_while_requests_flow(served, built, tmp_path):
    """serve.run with new args is a new code version: Serve replaces every replica (the in-place
    reconfigure() rollout is tested through `serve deploy` in test_serve_config.py). No request fails;
    one caught on a replica being replaced may be answered degraded, and then says why."""
    from ray import serve

    from serve_app.serve.app import AppArgs, build_app

    client, args = served
    new = new_version_of(built.bundle, tmp_path / "next", "next-version")
    users = known_users(built, 20)
    failures: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            i = 0
            while not stop.is_set():
                r = c.post("/recommend", json={"user_id": users[i % len(users)], "k": 5})
                statuses.append(r.status_code)
                if r.status_code != 200 or (r.json()["degraded"] and not r.json()["degraded_reason"]):
                    failures.append(f"{r.status_code} {r.text[:200]}")
                i += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(1.0)
        serve.run(
            build_app(AppArgs(**{**args.model_dump(), "bundle": str(new)})), name="recsys", route_prefix="/"
        )
        wait_for_version(str(client.base_url), "next-version", timeout_s=60)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert len(statuses) > 10 and not failures, failures[:3]
    version = client.get("/version").json()
    assert version["bundle_version"] == "next-version"
    assert version["stages"] == {
        "retriever": "next-version",
        "ranker": "next-version",
        "event_writer": "next-version",
    }
