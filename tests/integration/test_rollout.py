"""`recsys rollout` against a real head and the shipped graph config, under steady traffic: a canary
of another model serves its share of users by their hash, per-arm counts reach Ray's metrics,
--rollback and a switch back give the exact previous answers, --promote serves the canary to all,
and no request fails at any step."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from harness import cluster, ray_head
from harness.ports import free_port
from loadtest.new_items import closest_users, rating_events
from serve_app.cli.main import main as recsys
from serve_app.control import rollout
from serve_app.core.bundle import load_bundle
from serve_app.offline.config import BuildConfig
from serve_app.request.canary import Split
from tests.conftest import Traffic, copy_feature_repo

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
USERS = list(range(1, 61))


def _answers(base: str) -> dict[int, tuple[str, list[int]]]:
    out = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for u in USERS:
            body = client.post("/recommend", json={"user_id": u, "k": 10}).json()
            assert not body["degraded"], body
            out[u] = (body["bundle_version"], [i["item_id"] for i in body["items"]])
    return out


@pytest.fixture(scope="module")
def two_models(built, tmp_path_factory):
    """The session's bundle (A) and another model of the same data (B), served from a home of their
    own: B's build applies and fills a Feast repo of its own, not the session's. (Not a copy of the
    session's repo: its registry names the session's SQLite tables, which an apply would drop.)"""
    from serve_app.offline.build import build
    from serve_app.offline.data import load_movielens

    home = tmp_path_factory.mktemp("rollout") / "home"
    repo = copy_feature_repo(home / "feature_repo")
    config = BuildConfig.model_validate(
        {"seed": 1, "embedding": {"factors": 48}, "eval_seeds": 1, "eval_snapshots": 2}
    )
    b, _ = build(load_movielens(built.data_dir), config, repo, home / "built", False)
    (home / "artifacts").mkdir()
    os.symlink(built.bundle, home / "artifacts" / "current")
    return home, built.bundle, b


@pytest.fixture(scope="module")
def service(two_models, tmp_path_factory):
    """A head started here with the shipped graph config deployed, serving A; its token in the env."""
    home = two_models[0]
    state_file = tmp_path_factory.mktemp("head") / "cluster.json"
    state = ray_head.start_head(state_file, env={"RECSYS_HOME": str(home)})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_TOKEN_PATH", state["token_path"])
        env.delenv("RAY_AUTH_TOKEN", raising=False)
        # The CLI reads the config's relative bundle paths from the service's home, as an operator's would.
        env.setenv("RECSYS_HOME", str(home))
        try:
            cluster.deploy(state, ROOT / "cluster" / "serve_config.yaml", http_port=port)
            cluster.wait_healthy(base, state, timeout_s=240)
            yield state, base
        finally:
            assert cluster.stop(state_file)


def test_canary_promote_and_rollback_under_traffic(two_models, service, tmp_path, capsys):
    _, a, b = two_models
    state, base = service
    version_a = json.loads((a / "manifest.json").read_text())["version"]
    version_b = json.loads((b / "manifest.json").read_text())["version"]
    where = ["--address", state["dashboard"], "--url", base, "--metrics", state["metrics"]]
    before = _answers(base)
    assert {v for v, _ in before.values()} == {version_a}
    with Traffic(base, USERS) as traffic:
        assert recsys(["rollout", str(b), "--share", "0.2", *where]) == 0
        assert "two_stage" in capsys.readouterr().out  # both evaluations, side by side
        token = Path(state["token_path"]).read_text().strip()
        serving = rollout.ServeAdmin(state["dashboard"], token, base).serving()
        assert serving.settled(version_a, version_b) and serving.share == 0.2
        split = Split(0.2, version_b)
        canary = _answers(base)
        for u, (version, items) in canary.items():
            if split.arm(u) == "canary":
                assert version == version_b, u
            else:
                assert (version, items) == before[u], u
        assert {v for v, _ in canary.values()} == {version_a, version_b}
        _wait_for_canary_counts(state["metrics"])
        # A held-out log whose items are each user's top item before: the main arm hits every time.
        log = tmp_path / "ratings.csv"
        rows = [f"{u},{items[0]},5.0,0" for u, (_, items) in before.items()]
        log.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
        capsys.readouterr()
        assert recsys(["rollout", "--replay", str(log), *where]) == 0
        replayed = capsys.readouterr().out
        main_users = sum(split.arm(u) == "main" for u in USERS)
        assert "main: hit rate@10 1.000" in replayed and f"of {main_users} users" in replayed
        assert "canary: hit rate@10" in replayed

        assert recsys(["rollout", "--rollback", *where]) == 0
        assert _answers(base) == before  # the very bundle it served, answering exactly as before

        assert recsys(["rollout", str(b), "--share", "0.2", *where]) == 0
        assert recsys(["rollout", "--promote", *where]) == 0
        assert {v for v, _ in _answers(base).values()} == {version_b}

        assert recsys(["rollout", str(a), "--now", *where]) == 0
        assert _answers(base) == before
    assert traffic.count > 50 and not traffic.failed, traffic.failed[:3]
    # A request caught between two stages on two bundles is answered unranked: that is by design.
    assert [r for r in traffic.degraded if r != "bundle_changed"] == []
    # A bundle that does not load is refused here, before anything is deployed.
    assert recsys(["rollout", str(tmp_path / "nothing-here"), *where]) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_a_new_item_is_served_without_a_rebuild(two_models, service, tmp_path, capsys):
    """Events of an item the bundle does not know, then `recsys items add --apply`: every replica
    serves the bundle plus the item (its version says so), and a user like its fans is shown it."""
    home, a, _ = two_models
    state, base = service
    bundle = load_bundle(a)
    target, fans = closest_users(bundle, 3, 15)
    new_id = int(bundle.items.item_ids.max()) + 1
    events = rating_events(fans, new_id)
    assert httpx.post(f"{base}/events", json={"events": events}, timeout=30).status_code == 202
    movies = tmp_path / "movies.csv"
    movies.write_text(f"movieId,title,genres\n{new_id},Arrived Today,Drama\n")
    where = ["--address", state["dashboard"], "--url", base]
    args = [
        "items",
        "add",
        str(movies),
        "--apply",
        "--repo",
        str(home / "feature_repo"),
        "--artifacts",
        str(tmp_path),
    ]
    assert recsys([*args, *where]) == 0, capsys.readouterr()
    version = httpx.get(f"{base}/version", timeout=10).json()
    assert (
        version["bundle_version"].startswith(bundle.version + "+items-")
        and version["item_delta"]["n_items"] == 1
    )
    assert set(version["stages"].values()) == {version["bundle_version"]}
    answer = httpx.post(f"{base}/recommend", json={"user_id": target, "k": 100}, timeout=30).json()
    assert (
        new_id in [i["item_id"] for i in answer["items"]]
        and answer["bundle_version"] == version["bundle_version"]
    )


def _wait_for_canary_counts(metrics: str, timeout_s: float = 60) -> None:
    """Ray exports the replicas' counters every few seconds: until both arms show up."""
    deadline = time.monotonic() + timeout_s
    counts: dict = {}
    while time.monotonic() < deadline:
        counts = rollout.arm_counts(httpx.get(metrics, timeout=10).text)
        if counts.get("canary", {}).get("ok") and counts.get("main", {}).get("ok"):
            return
        time.sleep(1)
    raise AssertionError(f"no per-arm counts in Ray's metrics: {counts}")
