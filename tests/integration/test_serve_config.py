"""cluster/serve_config.yaml: valid for Serve's own schema, and deployable with `serve deploy`."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.app import AppArgs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "cluster" / "serve_config.yaml"


def test_config_matches_serves_schema_and_our_app_args():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    [app] = schema.applications
    assert app.import_path == "serve_app.app:build_app"
    AppArgs.model_validate(app.args)  # unknown or mistyped args would fail the deploy
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"Ingress", "UserFeatures", "Retriever", "Ranker"}
    for name in ("Retriever", "Ranker"):
        autoscaling = deployments[name].autoscaling_config
        assert autoscaling["target_ongoing_requests"] > 0 and autoscaling["max_replicas"] >= 1
        assert deployments[name].max_queued_requests > 0
    assert deployments["Ingress"].backpressure_config.retry_after_s > 0
    assert schema.http_options.host == "127.0.0.1"


def test_colocated_config_matches_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(
        yaml.safe_load((ROOT / "cluster" / "serve_config.colocated.yaml").read_text())
    )
    [app] = schema.applications
    assert AppArgs.model_validate(app.args).topology == "colocated"
    # Colocated runs no stage deployments: naming one here would fail the deploy.
    assert [d.name for d in app.deployments] == ["Ingress"]
    assert app.deployments[0].autoscaling_config["max_replicas"] >= 1


def test_unknown_app_arg_is_rejected():
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        AppArgs.model_validate({"bundel": "artifacts/current"})


@pytest.mark.slow
@pytest.mark.ray
def test_serve_deploy_against_a_head_started_here(built, tmp_path):
    from serve_app import local_cluster

    # RECSYS_HOME holds what the config's relative paths name: artifacts/current and feature_repo.
    home = tmp_path / "home"
    (home / "artifacts").mkdir(parents=True)
    os.symlink(built.bundle, home / "artifacts" / "current")
    os.symlink(built.repo, home / "feature_repo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state_file = tmp_path / "cluster.json"
    state = local_cluster.start_head(state_file, env={"RECSYS_HOME": str(home)})
    try:
        local_cluster.deploy(state, CONFIG, http_port=port)
        local_cluster.wait_healthy(f"http://127.0.0.1:{port}", state, timeout_s=240)
        response = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": 1, "k": 3}, timeout=30)
        assert response.status_code == 200 and len(response.json()["items"]) == 3
        # The replicas resolved the config's relative paths against RECSYS_HOME, not this checkout.
        assert (
            response.json()["bundle_version"]
            == json.loads((built.bundle / "manifest.json").read_text())["version"]
        )
        assert_in_place_rollout(state, port, built, tmp_path)
        assert_overload_is_refused_fast(state, port, tmp_path)
    finally:
        assert local_cluster.stop(state_file)
    assert not state_file.exists()


def assert_overload_is_refused_fast(state: dict, port: int, tmp_path) -> None:
    """The same config with the ingress allowed 1 request in flight and 1 queued: a burst must be
    refused with 503 + Retry-After (Serve's backpressure_config), never a hang or a 500."""
    from concurrent.futures import ThreadPoolExecutor

    from serve_app import local_cluster

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


def assert_in_place_rollout(state: dict, port: int, built, tmp_path) -> None:
    """The ops path for a new bundle: set it in the deployments' user_config and `serve deploy`. The
    app's code version is unchanged, so Serve calls reconfigure() on the running replicas; requests
    flowing meanwhile all succeed, none degraded, and /version then shows the new bundle everywhere."""
    import shutil
    import threading
    import time

    from serve_app import local_cluster

    new = tmp_path / "next"
    shutil.copytree(built.bundle, new)
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["version"] = "next-version"
    (new / "manifest.json").write_text(json.dumps(manifest))
    config = yaml.safe_load(CONFIG.read_text())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] in ("Ingress", "Retriever", "Ranker"):
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
                if r.status_code != 200 or r.json()["degraded"]:
                    problems.append(f"{r.status_code} {r.text[:120]}")

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        local_cluster.deploy(state, rolled, http_port=port)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            v = httpx.get(f"{base}/version", timeout=10).json()
            if v["bundle_version"] == "next-version" and set(v["stages"].values()) == {"next-version"}:
                break
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert count > 10 and not problems, problems[:3]
    v = httpx.get(f"{base}/version", timeout=10).json()
    assert v["bundle_version"] == "next-version" and set(v["stages"].values()) == {"next-version"}
