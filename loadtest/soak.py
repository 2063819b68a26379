"""Soak: steady open-loop load at half capacity for a long while; does memory or latency drift?

    python -m loadtest.soak                       # 20 minutes, default bundle, cluster/serve_config.yaml
    python -m loadtest.soak --minutes 5 --rate 40 --config cluster/serve_config.colocated.yaml

A Ray head of its own with the app deployed from the config (as `make bench` starts it); capacity
measured with a closed loop of 16 (unless --rate), then open-loop Poisson arrivals at half of it, one
window per minute: each window's throughput, failed, degraded, p50/p99 (from the scheduled send time),
and at its end the resident memory of every process of the cluster, summed by process kind. The drift
is the least-squares slope per minute over the windows after the first (warm-up), with the first and
last values. Writes <out>/<timestamp>/{soak.json,soak.md} and copies them to <out>/latest/.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.chaos import write_report
from loadtest.client import Level, LoadClient

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024**2


def rss_by_kind(procs: Any) -> dict[str, float]:
    """MiB of resident memory per process kind (Serve replicas by deployment), and the total."""
    from loadtest.stats import _name

    out: dict[str, float] = {}
    for p in procs():
        try:
            kind, rss = _name(p), p.memory_info().rss
        except Exception:  # a process that ended meanwhile
            continue
        out[kind] = out.get(kind, 0.0) + rss / MIB
    out["total"] = sum(out.values())
    return out


def slope(values: list[float]) -> float | None:
    """Least-squares change per window (per minute), None with fewer than two values."""
    if len(values) < 2:
        return None
    return float(np.polyfit(np.arange(len(values)), np.asarray(values, float), 1)[0])


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from loadtest.stats import machine, merge
    from loadtest.targets import half_capacity, run_inputs, served_target

    inputs = run_inputs(opts, 50_000)
    report: dict[str, Any] = {"machine": machine(), "config": str(inputs.config), "windows": []}
    with (
        served_target(
            inputs.bundle,
            inputs.repo,
            inputs.work,
            inputs.config,
            opts.throughput_optimized,
            balancer=opts.balancer,
        ) as (
            port,
            procs,
            info,
        ),
        LoadClient(2) as client,
    ):
        payloads = inputs.payloads
        spread = tuple(info["ports"][1:])  # direct ingress: every Ingress replica's own port
        if opts.rate is None:
            report["capacity_rps"], opts.rate = half_capacity(client, port, payloads, spread)
        report["rate_rps"] = opts.rate
        for minute in range(opts.minutes):
            tallies = client.run(
                Level("open", opts.rate, opts.window, port, drain_s=3.0, spread=spread), payloads, seed=minute
            )
            level = merge(tallies, opts.window)
            window = {
                "minute": minute + 1,
                "throughput_rps": level["throughput_rps"],
                "requests": level["requests"],
                "failed": level["errors"],
                "degraded": level["degraded"],
                "fallback": level["fallback"],  # why answers were not the full path, by reason
                "p50_ms": level["latency_ms"]["p50"],
                "p99_ms": level["latency_ms"]["p99"],
                "rss_mib": rss_by_kind(procs),
            }
            report["windows"].append(window)
            print(
                f"minute {minute + 1}: {window['throughput_rps']:.1f} req/s, failed {window['failed']}, "
                f"p99 {window['p99_ms']} ms, RSS {window['rss_mib']['total']:.0f} MiB",
                flush=True,
            )
    steady = report["windows"][1:] or report["windows"]
    report["drift_per_minute"] = {
        "rss_total_mib": slope([w["rss_mib"]["total"] for w in steady]),
        "p99_ms": slope([w["p99_ms"] for w in steady if w["p99_ms"] is not None]),
    }
    kinds = sorted({k for w in steady for k in w["rss_mib"]} - {"total"})
    report["rss_drift_by_kind_mib_per_minute"] = {
        k: slope([w["rss_mib"].get(k, 0.0) for w in steady]) for k in kinds
    }
    return report


def markdown(report: dict[str, Any]) -> str:
    first, last = report["windows"][0], report["windows"][-1]
    drift = report["drift_per_minute"]
    lines = [
        f"# Soak ({report['config']})",
        "",
        f"Open-loop {report['rate_rps']:g} req/s for {len(report['windows'])} windows"
        + (
            f" (capacity, closed loop c=16: {report['capacity_rps']:.0f} req/s)."
            if "capacity_rps" in report
            else "."
        ),
        "",
        "| minute | req/s | failed | degraded | p50 ms | p99 ms | RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {w['minute']} | {w['throughput_rps']:.1f} | {w['failed']} | {w['degraded']} | {w['p50_ms']} | "
        f"{w['p99_ms']} | {w['rss_mib']['total']:.0f} |"
        for w in report["windows"]
    ]
    reasons: dict[str, int] = {}
    for w in report["windows"]:
        for reason, n in w.get("fallback", {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
    rss_slope, p99_slope = drift["rss_total_mib"], drift["p99_ms"]
    lines += [
        "",
        f"Drift after the first minute (least-squares slope): RSS {rss_slope or 0:+.2f} MiB/min "
        f"({first['rss_mib']['total']:.0f} -> {last['rss_mib']['total']:.0f} MiB), "
        f"p99 {p99_slope or 0:+.2f} ms/min ({first['p99_ms']} -> {last['p99_ms']} ms).",
        "",
        "Answers off the full path, by reason: "
        + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"),
        "",
        "RSS drift by process kind (MiB/min): "
        + ", ".join(
            f"{k} {v:+.2f}" for k, v in report["rss_drift_by_kind_mib_per_minute"].items() if v is not None
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from loadtest.targets import add_target_args

    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n")[0])
    add_target_args(p)
    p.add_argument("--rate", type=float, default=None, help="req/s (default: half the measured capacity)")
    p.add_argument("--minutes", type=int, default=20)
    p.add_argument("--window", type=float, default=60.0, help="seconds per window")
    p.add_argument("--out", type=Path, default=ROOT / "loadtest" / "reports" / "soak")
    opts = p.parse_args(argv)
    report = run(opts)
    write_report(opts.out, "soak", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
