"""The benchmark runner end to end, a second or two per target: it must write a well-formed report.

No timing assertions: figures from a shared CI machine are not a test oracle, only the shape is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
LEVEL_KEYS = {"mode", "value", "throughput_rps", "latency_ms", "errors", "n_429", "n_503", "client", "server"}
PERCENTILES = {"p50", "p95", "p99", "p99_9"}


@pytest.mark.timeout(300)
def test_bench_writes_json_png_and_summary_for_all_three_targets(built, tmp_path: Path) -> None:
    """floor, baseline, and what `make run` starts: the colocated config's two Ingress replicas with
    direct ingress, HAProxy in front of both replicas' own ports (cluster/balancer.yaml)."""
    out = tmp_path / "reports"
    cmd = [
        sys.executable,
        "-m",
        "loadtest.bench",
        "--bundle",
        str(built.bundle),
        "--repo",
        str(built.repo),
        "--out",
        str(out),
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--concurrency",
        "1,4",
        "--rates",
        "20",
        "--ceiling",
        "4",
        "--debug-fraction",
        "0.5",  # enough debug-sampled answers in 1.5 s to aggregate stage timings
        "--targets",
        "floor,baseline,colocated",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env["FEAST_DISABLE_USAGE"] = "1"
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    latest = out / "latest"
    runs = [p for p in out.iterdir() if p.is_dir() and p.name not in ("latest", "build-logs")]
    assert len(runs) == 1
    for d in (latest, runs[0]):
        assert {"report.json", "latency.png", "summary.md"} <= {p.name for p in d.iterdir()}
    assert (latest / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((latest / "report.json").read_text())
    assert "error" not in report
    meta = report["meta"]
    assert "loadtest.bench" in meta["command"] and "--bundle" in meta["command"]
    assert {"cpu_model", "cores_logical", "memory_gib"} <= set(meta["machine"])
    [ceiling] = report["client_ceiling"]["levels"]
    assert ceiling["ok"] > 0 and ceiling["client"]["cpu_pct"] >= 0

    cat = report["catalogues"]["custom"]
    assert Path(cat["bundle"]) == built.bundle.resolve()
    for target in ("floor", "baseline", "colocated"):
        data = cat["targets"][target]
        assert "error" not in data, data.get("error")
        assert data["levels"], target
        for level in data["levels"]:
            assert set(level) >= LEVEL_KEYS, (target, set(level))
            assert set(level["latency_ms"]) >= PERCENTILES
            assert {"cpu_pct", "rss_mib"} <= set(level["server"])
            assert "cpu_pct" in level["client"]
        c1 = next(lv for lv in data["levels"] if lv["mode"] == "closed" and lv["value"] == 1)
        assert c1["ok"] > 0 and c1["latency_ms"]["p50"] > 0
    served = cat["targets"]["colocated"]
    assert served["info"]["version"]["bundle_version"] == built.bundle.name  # bundles/<version>
    assert served["info"]["throughput_optimized"] and served["info"]["config"].endswith("colocated.yaml")
    assert len(set(served["info"]["ingress_ports"])) == 2  # both Ingress replicas' own ports
    assert served["info"]["balancer"].endswith(f":{served['info']['port']}")  # the load went through HAProxy
    assert served["idle"]["processes"] > 1  # the whole Ray head's process tree, not one process
    assert 0 < served["idle"]["pss_mib"] < served["idle"]["rss_mib"]  # shared pages counted once
    ingress = served["idle"]["process_groups"]["Ingress"]
    assert ingress["n"] == 2 and ingress["pss_mib"] > 0
    assert served["idle"]["process_groups"]["haproxy"]["n"] == 1  # the front door's cost is counted
    assert [lv["mode"] for lv in served["levels"]] == ["closed", "closed", "open"]
    assert any(lv["stage_timings_ms"] for lv in served["levels"])

    ratios = cat["ratios"]["colocated"]
    assert {"p50_over_floor_p50_c1", "max_rps_at_p99_50ms_over_baseline"} <= set(ratios)
    assert ratios["p50_over_floor_p50_c1"] > 0

    summary = (latest / "summary.md").read_text()
    expected = (
        "**colocated** (`serve_config.colocated.yaml`, direct ingress, through HAProxy, 2 ingress port(s))"
    )
    assert expected in summary
    assert "p50 / floor p50 at c=1" in summary
    assert "max throughput at p99 <= 50 ms" in summary
    assert "| colocated | c=1 |" in summary
