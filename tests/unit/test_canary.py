"""Canary arms by a stable hash, the rollout's config steps, and per-arm counts (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serve_app.control import rollout
from serve_app.core.errors import ConfigError
from serve_app.request.canary import CANARY, MAIN, Split, share_point


def test_the_split_is_stable_and_close_to_its_share():
    split = Split(0.1, "v2")
    users = np.arange(1, 20_001)

    def canary_mask(s: Split) -> np.ndarray:
        return np.array([s.arm(int(u)) == CANARY for u in users])

    mask = canary_mask(split)
    assert abs(mask.mean() - 0.1) < 0.01  # 20k users: the sampling error is ~0.002
    again = Split(0.1, "v2")
    assert all(
        again.arm(int(u)) == (CANARY if m else MAIN) for u, m in zip(users[:500], mask[:500], strict=True)
    )
    # A bigger share keeps every user the smaller one had (promotion in steps never moves users back).
    assert not (mask & ~canary_mask(Split(0.5, "v2"))).any()
    # Another canary (another salt) samples other users.
    overlap = (mask & canary_mask(Split(0.1, "v3"))).mean()
    assert overlap < 0.02
    assert canary_mask(Split(0.0, "v2")).sum() == 0 and canary_mask(Split(1.0, "v2")).all()
    assert 0 <= share_point(7, "v2") < 1


GRAPH_APP = {
    "name": "recsys",
    "import_path": "serve_app.app:build_app",
    "args": {"topology": "graph", "bundle": "artifacts/current"},
    "deployments": [
        {"name": "Ingress", "max_ongoing_requests": 64},
        {"name": "Retriever", "user_config": {"n_candidates": 100, "canary_share": 0.3}},
        {"name": "Ranker"},
    ],
}


def _user_configs(app: dict) -> dict[str, dict]:
    return {d["name"]: d.get("user_config") for d in app["deployments"]}


def test_a_canary_step_names_both_bundles_on_every_holder_and_keeps_other_keys():
    app = rollout.canary_config(GRAPH_APP, "/b/v1", "/b/v2", 0.1)
    configs = _user_configs(app)
    assert set(configs) == {"Ingress", "Retriever", "Ranker", "EventWriter"}  # EventWriter added
    want = {"bundle": "/b/v1", "canary_bundle": "/b/v2", "canary_share": 0.1}
    assert configs["Ingress"] == configs["Ranker"] == configs["EventWriter"] == want
    assert configs["Retriever"] == {"n_candidates": 100, **want}
    assert app["deployments"][0]["max_ongoing_requests"] == 64  # options other than user_config kept
    assert "user_config" not in GRAPH_APP["deployments"][0]  # the running config is not modified


def test_promote_and_rollback_drop_the_canary_keys():
    running = rollout.canary_config(GRAPH_APP, "/b/v1", "/b/v2", 0.1)
    promoted = _user_configs(rollout.single_config(running, "/b/v2"))
    assert promoted["Ingress"] == {"bundle": "/b/v2"}
    assert promoted["Retriever"] == {"n_candidates": 100, "bundle": "/b/v2"}
    back = _user_configs(rollout.single_config(running, "/b/v1"))
    assert back["Ranker"] == {"bundle": "/b/v1"}


def test_colocated_holders_are_the_ingress_and_the_event_writer():
    app = {"name": "recsys", "args": {"topology": "colocated"}, "deployments": [{"name": "Ingress"}]}
    assert set(_user_configs(rollout.canary_config(app, "a", "b", 0.5))) == {"Ingress", "EventWriter"}


def _version(main="v1", canary=None, canary_stages=None, stages=None, refused=None) -> dict:
    out = {"bundle_version": main, "stages": stages or {"retriever": main}}
    if canary:
        out["canary"] = {
            "bundle_version": canary,
            "share": 0.1,
            "stages": canary_stages or {"retriever": canary},
        }
    return {**out, "refused": refused}


@pytest.fixture
def artifacts(tmp_path):
    """An artifacts directory holding bundles v1, v2 and v3, `current` on v3 (a build after v1 serves)."""
    for version in ("v1", "v2", "v3"):
        (tmp_path / "bundles" / version).mkdir(parents=True)
        (tmp_path / "bundles" / version / "manifest.json").write_text(json.dumps({"version": version}))
    (tmp_path / "current").symlink_to(Path("bundles") / "v3")
    return tmp_path


def _deployed(artifacts, canary=None, delta=None) -> dict:
    """The running config: first deployed with `current`, a canary step naming both bundles after."""
    user_config = {"bundle": str(artifacts / "current")}
    if canary:
        user_config = {"bundle": str(artifacts / "bundles" / "v1"), "canary_bundle": str(artifacts / canary)}
    if delta:
        user_config["item_delta"] = delta
    return {
        "args": {"bundle": str(artifacts / "current")},
        "deployments": [{"name": "Ingress", "user_config": user_config}],
    }


def test_a_step_is_settled_only_when_every_stage_took_it(artifacts):
    config = _deployed(artifacts, canary="bundles/v2")
    assert rollout.Serving.of(_version("v1", "v2"), config).settled("v1", "v2")
    assert not rollout.Serving.of(
        _version("v1", "v2", {"retriever": "v2", "ranker": "none"}), config
    ).settled("v1", "v2")
    assert not rollout.Serving.of(_version("v1", "v2"), config).settled("v1", None)
    two = _deployed(artifacts)
    two["deployments"][0]["user_config"] = {"bundle": str(artifacts / "bundles" / "v2")}
    assert not rollout.Serving.of(_version("v2", stages={"retriever": "v2", "ranker": "v1"}), two).settled(
        "v2", None
    )
    assert rollout.Serving.of(_version("v2", stages={"retriever": "v2", "ranker": "v2"}), two).settled(
        "v2", None
    )


def test_the_serving_bundles_directory_comes_from_the_deployed_config_not_from_the_answer(artifacts):
    # Deployed as `current` when that was v1; a build has moved `current` to v3 since: v1's own directory.
    serving = rollout.Serving.of(_version("v1"), _deployed(artifacts))
    assert serving.main_path == str((artifacts / "bundles" / "v1").resolve())
    canary = rollout.Serving.of(_version("v1", "v2"), _deployed(artifacts, canary="bundles/v2"))
    assert canary.canary_path == str((artifacts / "bundles" / "v2").resolve())
    extended = {**_version("v1+items-20261201T000000000Z"), "item_delta": {"stamp": "items-x", "n_items": 2}}
    delta = str(artifacts / "deltas" / "v1" / "items-x.npz")
    served = rollout.Serving.of(extended, _deployed(artifacts, delta=delta))
    assert served.main_path.endswith("bundles/v1") and served.item_delta == delta
    with pytest.raises(ConfigError, match="bundle v9 is not at"):
        rollout.Serving.of(_version("v9"), _deployed(artifacts))
    # Mid-rollout the replicas still serve what the config no longer names: a wait reads versions only.
    passing = rollout.Serving.of(_version("v9", "v2"), _deployed(artifacts), paths=False)
    assert (passing.main, passing.canary, passing.main_path) == ("v9", "v2", "")


def test_requests_are_counted_by_arm_from_rays_prometheus_text():
    text = "\n".join(
        [
            "# HELP ray_recsys_requests_total Requests",
            "# TYPE ray_recsys_requests_total counter",
            'ray_recsys_requests_total{arm="main",outcome="ok",reason="",ReplicaId="a"} 90.0',
            'ray_recsys_requests_total{arm="main",outcome="ok",reason="",ReplicaId="b"} 10.0',
            'ray_recsys_requests_total{arm="canary",outcome="degraded",reason="x",ReplicaId="a"} 3.0',
            'ray_recsys_requests_total{arm="canary",outcome="ok",reason="",ReplicaId="a"} 7.0',
        ]
    )
    assert rollout.arm_counts(text) == {"main": {"ok": 100.0}, "canary": {"degraded": 3.0, "ok": 7.0}}


def test_an_evaluation_table_lists_both_bundles():
    def manifest(version, ndcg):
        m = {"ndcg@10": ndcg, "ndcg@10_ci95": [ndcg - 0.01, ndcg + 0.01], "recall@10": 0.2}
        return {"version": version, "evaluation": {"methods": {"two_stage": m}}}

    table = rollout.evaluation_table(manifest("v1", 0.13), manifest("v2", 0.15))
    assert "serving v1" in table and "new v2" in table and "0.1300" in table and "0.1500" in table


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_canary_share_is_a_setting_in_range(share):
    from serve_app.core.settings import SERVING_DEFAULTS

    assert (
        SERVING_DEFAULTS.with_overrides({"canary_bundle": "b", "canary_share": share}).canary_share == share
    )
    with pytest.raises(ValueError):
        SERVING_DEFAULTS.with_overrides({"canary_share": 1.5})


def test_replayed_hit_rates_are_kept_per_arm_with_their_interval():
    answers = [
        ("main", [1, 2, 3], {3}),
        ("main", [1, 2, 3], {9}),
        ("canary", [4, 5], {5, 6}),
        ("main", [7], {7}),
    ]
    rates = rollout.hit_rates(answers)
    assert (rates["main"]["users"], rates["main"]["hits"]) == (3, 2)
    assert rates["canary"]["hit_rate"] == 1.0
    low, high = rates["main"]["ci95"]
    assert low < 2 / 3 < high and low >= 0 and high <= 1
    assert rollout.wilson(0, 0) == (0.0, 1.0) and rollout.wilson(50, 100)[0] == pytest.approx(
        0.404, abs=0.001
    )


def test_candidates_no_bundle_here_can_rank_are_answered_in_retrieval_order_and_degraded():
    from serve_app.request.stages import fallback
    from serve_app.request.stages.scored import Scored

    candidates = Scored(np.array([5, 3, 9]), np.array([0.9, 0.5, 0.1], np.float32), "v1")
    answer = fallback.unranked(candidates, "v2")
    assert answer.item_ids.tolist() == [5, 3, 9] and answer.degraded
    assert answer.fallback == fallback.BUNDLE_CHANGED and "v1" in answer.reason and "v2" in answer.reason
