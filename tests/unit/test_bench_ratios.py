"""The benchmark's yardsticks: a served setup's max throughput at the p99 SLO counts only levels that
answered in full (no more than 1% errors, no more than 1% degraded answers), per served setup."""

from __future__ import annotations

import json

from loadtest.report import max_throughput_at_slo, ratios


def level(rps: float, p99: float, degraded: int = 0, errors: float = 0.0, c: float = 16) -> dict:
    return {
        "mode": "closed",
        "value": c,
        "throughput_rps": rps,
        "ok": int(rps * 5),
        "degraded": degraded,
        "error_rate": errors,
        "latency_ms": {"p50": p99 / 4, "p99": p99},
    }


def test_brownout_answers_and_errors_do_not_count_as_served_throughput() -> None:
    levels = [
        level(300, 20),
        level(1_500, 40, degraded=7_000),  # mostly the brownout's cheaper answers
        level(900, 45, errors=0.05),
        level(1_200, 80),  # past the SLO
    ]
    assert max_throughput_at_slo(levels) == 300
    assert max_throughput_at_slo([level(500, 30, degraded=20)]) == 500  # under 1% degraded counts


def test_each_served_setup_gets_its_own_ratios() -> None:
    targets = {
        "floor": {"levels": [level(1_000, 2, c=1)]},
        "baseline": {"levels": [level(1_000, 30)]},
        "colocated": {"levels": [level(700, 3, c=1), level(1_100, 45)]},
        "graph": {"levels": [level(120, 12, c=1), level(1_500, 40, degraded=7_000)]},
    }
    out = ratios(targets)
    assert set(out) == {"colocated", "graph"}
    assert out["colocated"]["p50_over_floor_p50_c1"] == 1.5
    assert out["colocated"]["max_rps_at_p99_50ms_over_baseline"] == 1.1
    assert out["graph"]["max_rps_at_p99_50ms"] == 120  # its c=1 level: the brownout one does not count


def test_overload_rows_split_whole_answers_from_the_doors_coarser_ones() -> None:
    from loadtest.report import _overload_table

    def over(x: float, rps: float, p99: float, n_503: int) -> dict:
        lv = level(rps, p99)
        lv.update(mode="open", value=x * 500, overload_x=x, capacity_rps=500.0, n_503=n_503)
        lv["refused_latency_ms"] = {"p99": 3.0 if n_503 else None}
        lv["full_rps"] = rps - 100 * (x > 1)  # past capacity, some answers are the door's coarser ones
        lv["full_latency_ms"] = {"p50": p99 / 4, "p99": p99}
        lv["door"], lv["door_latency_ms"] = (500, {"p99": 2.5}) if x > 1 else (0, {"p99": None})
        lv["door_waited"] = 7 * (x > 1)  # of them, answered after a wait in the queue
        lv["degraded"] = lv["door"] + 3
        return {**lv, "errors": n_503 + 2, "client": {"cpu_pct": 10.0}}

    cat = {
        "targets": {
            "colocated": {"levels": [level(500, 40), over(0.5, 250, 40.0, 0), over(3, 460, 80.0, 9_000)]}
        }
    }
    rows = [r for r in _overload_table(cat) if r.startswith("| colocated")]
    assert rows == [
        "| colocated | 0.5x (250/s) | 250 (50%) | 250 (50%) | 10.0 / 40.0 ms (1.00x half load's) "
        "| 0 (p99 – ms; 0 after a wait) | 3 | 0 | 2 | 10.0 |",
        "| colocated | 3x (1,500/s) | 460 (92%) | 360 (72%) | 20.0 / 80.0 ms (2.00x half load's) "
        "| 500 (p99 2.5 ms; 7 after a wait) | 503 | 9,000 | 2 | 10.0 |",
    ]
    assert _overload_table({"targets": {"x": {"levels": [level(500, 40)]}}}) == []


def test_the_client_tells_the_doors_answers_after_a_wait_from_those_at_once() -> None:
    from loadtest.client import Tally
    from loadtest.stats import merge
    from serve_app.control.haproxy_config import COARSE

    tally = Tally(start=1.0)
    for case in ("full", "waited", "waited", "none_up"):
        fallback, reason = COARSE[case]
        answer = {"degraded": True, "fallback": fallback, "degraded_reason": reason}
        tally.record(1.0, 1.01, 200, json.dumps(answer, separators=(",", ":")).encode(), debug=False)
    tally.record(1.0, 1.02, 200, b'{"degraded":false,"fallback":null}', debug=False)
    out = merge([tally], 1.0)
    assert (out["door"], out["door_waited"], out["degraded"]) == (4, 2, 4)


def test_fixed_replicas_hold_each_autoscaled_deployment_at_its_minimum(tmp_path) -> None:
    import yaml

    from loadtest.targets import ROOT, pinned_replicas

    config = pinned_replicas(ROOT / "cluster" / "serve_config.yaml", tmp_path / "fixed.yaml")
    deployments = yaml.safe_load(config.read_text())["applications"][0]["deployments"]
    autoscaled = [d for d in deployments if "autoscaling_config" in d]
    assert not autoscaled and all(d.get("num_replicas", 1) >= 1 for d in deployments)
    assert {d["name"]: d.get("num_replicas") for d in deployments}["Ranker"] == 2  # its min_replicas
