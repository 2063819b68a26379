"""cluster/serve_config.yaml: valid for Serve's own schema, and deployable with `serve deploy`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.control.frontdoor import load_policy
from serve_app.serve.app import AppArgs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "cluster" / "serve_config.yaml"


def test_config_matches_serves_schema_and_our_app_args():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    [app] = schema.applications
    assert app.import_path == "serve_app.app:build_app"
    AppArgs.model_validate(app.args)  # unknown or mistyped args would fail the deploy
    deployments = {d.name: d for d in app.deployments}
    # the Retriever reads the features; the EventWriter takes POST /events
    assert set(deployments) == {"Ingress", "Retriever", "Ranker", "EventWriter"}
    assert deployments["EventWriter"].num_replicas == 1
    for name in ("Ingress", "Retriever", "Ranker"):
        # No single point of failure: a second replica answers while one is replaced (issue 9).
        assert_autoscaled_on_queue_depth(deployments[name].autoscaling_config)
        assert deployments[name].max_queued_requests > 0
    assert deployments["Ingress"].backpressure_config.retry_after_s > 0
    door = load_policy(ROOT / "cluster" / "balancer.graph.yaml")
    assert deployments["Ingress"].autoscaling_config["target_ongoing_requests"] < door.per_replica_in_flight
    # Brownout before refusal: both thresholds fire below what one Ingress admits at all.
    args = AppArgs.model_validate(app.args)
    limit = deployments["Ingress"].max_ongoing_requests
    assert args.brownout_rank_above < args.brownout_popular_above < limit
    assert schema.http_options.host == "127.0.0.1"


def test_colocated_config_matches_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(
        yaml.safe_load((ROOT / "cluster" / "serve_config.colocated.yaml").read_text())
    )
    [app] = schema.applications
    assert AppArgs.model_validate(app.args).topology == "colocated"
    # Colocated runs no stage deployments (naming one here would fail the deploy); the EventWriter
    # takes POST /events in both topologies.
    assert [d.name for d in app.deployments] == ["Ingress", "EventWriter"]
    # Two Ingress replicas at least: both cores, no single point of failure (docs/ops.md); a target
    # below what the door lets a replica hold, or a replica the door keeps full never asks for more.
    autoscaling = app.deployments[0].autoscaling_config
    assert_autoscaled_on_queue_depth(autoscaling)
    door = load_policy(ROOT / "cluster" / "balancer.yaml")
    assert autoscaling["target_ongoing_requests"] < door.per_replica_in_flight


def assert_autoscaled_on_queue_depth(autoscaling: dict) -> None:
    assert autoscaling["min_replicas"] >= 2 and autoscaling["max_replicas"] > autoscaling["min_replicas"]
    assert autoscaling["target_ongoing_requests"] > 0
    assert autoscaling["policy"]["policy_function"] == "serve_app.serve.autoscaling:queue_depth"


def test_unknown_app_arg_is_rejected():
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        AppArgs.model_validate({"bundel": "artifacts/current"})


@pytest.mark.slow
@pytest.mark.ray
def test_serve_deploy_against_a_head_started_here(built, tmp_path):
    from harness import cluster as local_cluster
    from harness import ray_head

    # RECSYS_HOME holds what the config's relative paths name: artifacts/current and feature_repo.
    home = tmp_path / "home"
    (home / "artifacts").mkdir(parents=True)
    os.symlink(built.bundle, home / "artifacts" / "current")
    os.symlink(built.repo, home / "feature_repo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A business rule in the app args: never recommend user 1's top item.
    blocked = top_item(built, user_id=1)
    config = yaml.safe_load(CONFIG.read_text())
    config["applications"][0]["args"]["blocked_item_ids"] = [blocked]
    with_rule = tmp_path / "serve_config.rule.yaml"
    with_rule.write_text(yaml.safe_dump(config))
    state_file = tmp_path / "cluster.json"
    state = ray_head.start_head(state_file, env={"RECSYS_HOME": str(home)})
    try:
        local_cluster.deploy(state, with_rule, http_port=port)
        local_cluster.wait_healthy(f"http://127.0.0.1:{port}", state, timeout_s=240)
        response = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": 1, "k": 3}, timeout=30)
        assert response.status_code == 200 and len(response.json()["items"]) == 3
        # The replicas resolved the config's relative paths against RECSYS_HOME, not this checkout.
        assert (
            response.json()["bundle_version"]
            == json.loads((built.bundle / "manifest.json").read_text())["version"]
        )
        assert blocked not in answer_ids(port, user_id=1)
        # With the app's proxy and replicas up, still nothing answers a caller without the token.
        audit = local_cluster_audit(state)
        assert not [a for a in audit if a[1] == "open"], audit
        assert any(s.process.startswith("ray::ServeReplica") for s, kind, _ in audit if kind == "refused")
        assert_in_place_rollout(state, port, built, tmp_path, with_rule, blocked)
        assert_overload_is_refused_fast(state, port, tmp_path)
    finally:
        assert local_cluster.stop(state_file)
    assert not state_file.exists()


def local_cluster_audit(state: dict) -> list:
    from harness.audit import audit

    return audit(state["pid"])


def assert_overload_is_refused_fast(state: dict, port: int, tmp_path) -> None:
    """The same config with the ingress allowed 1 request in flight and 1 queued: a burst must be
    refused with 503 + Retry-After (Serve's backpressure_config), never a hang or a 500."""
    from concurrent.futures import ThreadPoolExecutor

    from harness import cluster as local_cluster

    config = yaml.safe_load(CONFIG.read_text())
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    ingress.update(max_ongoing_requests=1, max_queued_requests=1)
    tiny = tmp_path / "serve_config.tiny-queue.yaml"
    tiny.write_text(yaml.safe_dump(config))
    local_cluster.deploy(state, tiny, http_port=port)
    local_cluster.wait_healthy(f"http://127.0.0.1:{port}", state, timeout_s=240)

    def call(i: int) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{port}/recommend", json={"user_id": 1 + i % 50, "k": 5}, timeout=30
        )

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(call, range(96)))
    codes = {r.status_code for r in responses}
    assert codes <= {200, 503}, codes
    refused = [r for r in responses if r.status_code == 503]
    assert refused and any(r.status_code == 200 for r in responses)
    assert all(r.headers.get("retry-after") == "1" for r in refused)


def top_item(built, user_id: int) -> int:
    from serve_app.core.settings import SERVING_DEFAULTS
    from serve_app.request.flow import in_process_flow

    flow, reader = in_process_flow(built.bundle, built.repo, SERVING_DEFAULTS)
    try:
        return int(asyncio.run(flow.run(user_id, 1, ())).item_ids[0])
    finally:
        reader.close()


def answer_ids(port: int, user_id: int) -> list[int]:
    body = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": user_id, "k": 10}, timeout=30)
    assert body.status_code == 200 and not body.json()["degraded"], body.text
    return [i["item_id"] for i in body.json()["items"]]


def assert_in_place_rollout(state: dict, port: int, built, tmp_path, deployed: Path, blocked: int) -> None:
    """The ops path for a new bundle: set it in the deployments' user_config and `serve deploy`. The
    app's code version is unchanged, so Serve calls reconfigure() on the running replicas; requests
    flowing meanwhile all succeed, none degraded but those caught between a Retriever and a Ranker on
    two bundles (answered in retrieval order: `bundle_changed`), and /version then shows the new
    bundle everywhere.
    The user_config names only the bundle: the business rule in the app args still holds."""
    import threading

    from harness import cluster as local_cluster
    from tests.conftest import new_version_of, wait_for_version

    new = new_version_of(built.bundle, tmp_path / "next", "next-version")
    config = yaml.safe_load(deployed.read_text())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] in ("Ingress", "Retriever", "Ranker", "EventWriter"):
            deployment["user_config"] = {"bundle": str(new)}
    rolled = tmp_path / "serve_config.next.yaml"
    rolled.write_text(yaml.safe_dump(config))

    base = f"http://127.0.0.1:{port}"
    problems: list[str] = []
    count = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal count
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/recommend", json={"user_id": 1 + count % 50, "k": 5})
                count += 1
                if r.status_code != 200 or (
                    r.json()["degraded"] and r.json()["fallback"] != "bundle_changed"
                ):
                    problems.append(f"{r.status_code} {r.text[:120]}")
                elif count % 50 == 1 and blocked in [i["item_id"] for i in r.json()["items"]]:
                    problems.append(f"blocked item {blocked} recommended to user 1")

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        local_cluster.deploy(state, rolled, http_port=port)
        wait_for_version(base, "next-version", timeout_s=120)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert count > 10 and not problems, problems[:3]
    v = httpx.get(f"{base}/version", timeout=10).json()
    assert v["bundle_version"] == "next-version" and set(v["stages"].values()) == {"next-version"}
    # The new bundle is a copy of the old: without the rule, user 1's top item would be back.
    assert blocked not in answer_ids(port, user_id=1)
