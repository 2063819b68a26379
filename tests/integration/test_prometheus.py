"""Operating it: a real Prometheus over a cluster started like `make run`, the dashboard's queries, the
alert rules (promtool), the online recall monitor on a bad index, and the structured request logs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from harness import prometheus
from serve_app.core.bundle import load_bundle
from serve_app.offline.config import IndexConfig
from serve_app.offline.index import build_index
from serve_app.telemetry.recall_monitor import RecallMonitor

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "cluster" / "prometheus"
DASHBOARD = ROOT / "cluster" / "grafana" / "recsys_dashboard.json"
STAGES = ("user_features", "retrieve", "filter", "rank", "total")
SERIES = (
    "ray_recsys_stage_latency_ms_bucket",
    "ray_recsys_requests_total",
    "ray_recsys_batch_size_bucket",
    "ray_recsys_candidates_bucket",
    "ray_recsys_user_feature_age_s_bucket",
    "ray_recsys_bundle_info",
    "ray_recsys_ann_recall",
    "ray_recsys_exposure_coverage",
    "ray_recsys_exposure_gini",
    "ray_recsys_exposure_top1pct_share",
)

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (.ci/run installs Debian's prometheus)"
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=RULES, timeout=60)


@needs_promtool
def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_a_bad_index_drives_the_recall_gauge_under_the_threshold_and_the_alert_fires(tmp_path) -> None:
    """IVF with one probe on clustered items: the monitor's figure, fed to Prometheus's rule engine as
    the gauge's value for 15 minutes, fires RecsysAnnRecallLow; the same index probed fully does not."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    items = (centres[rng.integers(40, size=4_000)] + 0.3 * rng.normal(size=(4_000, 16))).astype(np.float32)
    queries = rng.normal(size=(64, 16)).astype(np.float32)
    figures = {}
    for name, nprobe in (("bad", 1), ("good", 64)):
        index, _ = build_index(items, IndexConfig(kind="ivf", ivf_nlist=64, ivf_nprobe=nprobe))
        published: list[float] = []
        monitor = RecallMonitor(
            lambda r, n, out=published: out.append(r), sample_rate=1.0, depth=100, window=64
        )
        monitor.offer(name, index, list(queries), lambda q: q)
        assert monitor.wait_idle(60)
        figures[name] = published[-1]
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    summary = next(r for g in rules["groups"] for r in g["rules"] if r["alert"] == "RecsysAnnRecallLow")
    series = {
        name: f'ray_recsys_ann_recall{{application="{name}",deployment="Retriever"}}' for name in figures
    }
    test = {
        "rule_files": [str(RULES / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series[name], "values": f"{value:.4f}x15"} for name, value in figures.items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "12m",
                        "alertname": "RecsysAnnRecallLow",
                        "exp_alerts": [
                            {
                                "exp_labels": {"application": "bad", "severity": "warning"},
                                "exp_annotations": {
                                    "summary": summary["annotations"]["summary"].replace(
                                        '{{ $value | printf "%.2f" }}', f"{figures['bad']:.2f}"
                                    ),
                                    "description": summary["annotations"]["description"],
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "recall_test.yml").write_text(yaml.safe_dump(test))
    assert figures["bad"] < 0.8 < figures["good"], figures
    result = promtool("test", "rules", str(tmp_path / "recall_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def test_the_dashboard_is_grafana_json_whose_queries_all_name_our_or_serves_series() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 12
    assert all("ray_recsys_" in q or "ray_serve_" in q for _, q in queries)


@pytest.fixture(scope="module")
def cluster(built, tmp_path_factory):
    """A head started and deployed as `make run` does it (cluster/serve_config.yaml; every query
    sampled for recall and every request logged), and its Prometheus."""
    if prometheus.binary() is None:
        pytest.skip("prometheus not installed (.ci/run installs Debian's prometheus)")
    from harness import cluster as local_cluster
    from harness import ray_head

    tmp = tmp_path_factory.mktemp("observed")
    home = tmp / "home"
    (home / "artifacts").mkdir(parents=True)
    os.symlink(built.bundle, home / "artifacts" / "current")
    os.symlink(built.repo, home / "feature_repo")
    config = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    config["applications"][0]["args"].update(recall_sample_rate=1.0, request_log_sample_rate=1.0)
    deployed = tmp / "serve_config.yaml"
    deployed.write_text(yaml.safe_dump(config))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state_file = tmp / "cluster.json"
    state = ray_head.start_head(state_file, env={"RECSYS_HOME": str(home)})
    try:
        local_cluster.deploy(state, deployed, http_port=port)
        local_cluster.wait_healthy(f"http://127.0.0.1:{port}", state, timeout_s=240)
        url = local_cluster.start_prometheus(state, state_file, scrape_interval_s=1)
        yield state, f"http://127.0.0.1:{port}", url
    finally:
        local_cluster.stop(state_file)


@pytest.mark.slow
@pytest.mark.ray
def test_prometheus_sees_every_stage_outcome_and_monitor_and_every_dashboard_query_has_data(
    cluster, built
) -> None:
    state, base, url = cluster
    users = [int(u) for u in load_bundle(built.bundle).history.user_ids[:40]]
    traced = uuid.uuid4().hex
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(3):
            for user_id in users:
                headers = {"x-request-id": traced} if (i, user_id) == (0, users[0]) else {}
                r = client.post("/recommend", json={"user_id": user_id, "k": 10}, headers=headers)
                assert r.status_code == 200, r.text
        assert client.post("/recommend", json={"user_id": 987_654_321, "k": 5}).json()["fallback"]
        assert client.post("/recommend", json={"user_id": 1, "k": 0}).status_code == 422

    # The endpoint `make run` prints (Ray's metrics agent) exposes every series.
    deadline, text = time.monotonic() + 120, ""
    while time.monotonic() < deadline:
        text = httpx.get(state["metrics"], timeout=10).text
        if all(name in text for name in SERIES):
            break
        time.sleep(2)
    assert [name for name in SERIES if name not in text] == []

    assert prometheus.targets_up(url, timeout_s=60), "Prometheus scrapes no Ray target"

    def labels(key: str, wanted: set[str]):
        return lambda result: {r["metric"].get(key) for r in result} >= wanted

    p99 = prometheus.wait_for(
        url,
        "histogram_quantile(0.99, sum by (le, stage) (rate(ray_recsys_stage_latency_ms_bucket[5m])))",
        done=labels("stage", set(STAGES)),
    )
    assert {r["metric"]["stage"] for r in p99} >= set(STAGES)
    expected = {"ok", "fallback", "invalid"}
    outcomes = prometheus.wait_for(
        url, "sum by (outcome) (rate(ray_recsys_requests_total[5m]))", done=labels("outcome", expected)
    )
    assert {r["metric"]["outcome"] for r in outcomes} >= expected
    [recall] = prometheus.wait_for(url, "min(ray_recsys_ann_recall)")
    assert float(recall["value"][1]) > 0.99  # the test bundle's index is exact
    empty = [(title, q) for title, q in dashboard_queries() if not prometheus.wait_for(url, q, 60)]
    assert empty == [], empty

    # One JSON line per request in the ingress's log, found by the id the client sent; Serve stamps
    # the same id on the stage replicas' lines of that request.
    logs = Path(state["session_dir"]) / "logs" / "serve"
    lines = [
        json.loads(line)
        for path in logs.glob("replica_*.log")
        for line in path.read_text().splitlines()
        if traced in line
    ]
    ours = [line["recsys"] for line in lines if "recsys" in line]
    assert len(ours) == 1 and ours[0]["outcome"] == "ok"
    assert set(ours[0]["timings_ms"]) >= {"user_features", "retrieve", "filter", "rank"}
    hops = {str(line.get("deployment")).removeprefix("recsys_") for line in lines}  # Serve: app_deployment
    assert hops >= {"Ingress", "Retriever", "Ranker"}, hops


def bad_index_bundle(src: Path, dest: Path) -> Path:
    """A copy of `src` whose index is IVF with a single probe over the same item vectors: valid (its
    checksums and parameters agree), but it misses most of the exact top-N."""
    import faiss

    from serve_app.core.bundle import sha256

    shutil.copytree(src, dest)
    bundle = load_bundle(src)
    vectors = bundle.index.vectors(np.arange(bundle.index.ntotal))
    index, params = build_index(vectors, IndexConfig(kind="ivf", ivf_nlist=64, ivf_nprobe=1))
    faiss.write_index(index.index, str(dest / "index.faiss"))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["index"], manifest["version"] = params, "bad-index"
    manifest["files"]["index.faiss"]["sha256"] = sha256(dest / "index.faiss")
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.mark.slow
@pytest.mark.ray
def test_serving_a_bad_index_drops_the_recall_gauge_and_the_live_alert_rule_matches(
    cluster, built, tmp_path
) -> None:
    """Roll the Retriever onto a one-probe IVF index: the live gauge falls under the alert threshold
    and the loaded rule goes pending (it fires after its 10 minutes: promtool shows that part above)."""
    from harness import cluster as local_cluster

    state, base, url = cluster
    bad = bad_index_bundle(built.bundle, tmp_path / "bad")
    config = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    config["applications"][0]["args"].update(recall_sample_rate=1.0, request_log_sample_rate=1.0)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Retriever":
            deployment["user_config"] = {"bundle": str(bad)}
    rolled = tmp_path / "serve_config.bad-index.yaml"
    rolled.write_text(yaml.safe_dump(config))
    local_cluster.deploy(state, rolled, http_port=int(base.rsplit(":", 1)[1]))
    users = [int(u) for u in load_bundle(built.bundle).history.user_ids[:40]]
    deadline, low = time.monotonic() + 180, []
    with httpx.Client(base_url=base, timeout=30) as client:
        while time.monotonic() < deadline and not low:
            for user_id in users:
                assert client.post("/recommend", json={"user_id": user_id, "k": 10}).status_code == 200
            low = prometheus.query(url, "min(ray_recsys_ann_recall) < 0.8")
    assert low, "the recall gauge never fell under 0.8 with a one-probe index"
    pending = prometheus.wait_for(url, 'ALERTS{alertname="RecsysAnnRecallLow"}', 60)
    assert pending and pending[0]["metric"]["alertstate"] in ("pending", "firing"), pending
