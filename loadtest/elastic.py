"""Step load against an autoscaled app: do the replicas follow the load, both ways, with nothing lost?

    python -m loadtest.elastic                          # make run as shipped: colocated, the door
    python -m loadtest.elastic --steps 0.2:20,1:30,2:90,0.2:120 --unit-rps 120
    python -m loadtest.elastic --config cluster/serve_config.yaml --balancer cluster/balancer.graph.yaml

A Ray head of its own with the app deployed from `--config` behind the front door (`--balancer`), as
`make run` starts it. Open-loop load in steps, each a multiple of one replica's capacity for some
seconds (`--steps mult:seconds,...`; the unit is measured: a closed loop of 16 connections through
the door at the minimum fleet, divided by the Ingress replicas, unless `--unit-rps` gives it). Per
`--window` seconds: offered and answered requests, p50/p99, failed (no 2xx), degraded, the door's
coarser answers, and each deployment's replicas (Serve's REST API); per change of Serve's target: the
seconds from the step to the decision, to the replicas running, to the door sending them requests (or
no longer sending to those that left), and the requests failed meanwhile. Writes
<out>/<timestamp>/{elastic.json,elastic.md,elastic.png}, also copied to <out>/latest/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.chaos import write_report
from loadtest.client import Level, LoadClient, Tally
from loadtest.fleet import FleetWatch, Sample, transitions

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STEPS = "0.2:30,1:40,2:90,0.2:120"


def parse_steps(text: str) -> list[tuple[float, float]]:
    """'0.2:30,1:40' -> [(0.2, 30.0), (1.0, 40.0)]: (multiple of one replica's capacity, seconds)."""
    steps = []
    for part in text.split(","):
        mult, _, seconds = part.partition(":")
        steps.append((float(mult), float(seconds)))
    if not steps or any(m < 0 or s <= 0 for m, s in steps):
        raise argparse.ArgumentTypeError(f"steps are mult:seconds,... with seconds > 0, not {text!r}")
    return steps


def windows(
    events: list[tuple[float, float, int, bool]], samples: list[Sample], t0: float, end: float, width: float
) -> list[dict[str, Any]]:
    """Per `width` seconds from t0: what was sent (by scheduled time) and what came of it, and each
    deployment's RUNNING replicas at the window's end."""
    ev = np.array([(t, ms, status, deg) for t, ms, status, deg in events]) if events else np.empty((0, 4))
    out = []
    for start in np.arange(t0, end, width):
        sel = ev[(ev[:, 0] >= start) & (ev[:, 0] < start + width)] if len(ev) else ev
        ok = sel[(sel[:, 2] >= 200) & (sel[:, 2] < 300)] if len(sel) else sel
        last = [s for s in samples if s.t <= start + width]
        fleet = last[-1].replicas if last else {}
        out.append(
            {
                "t_s": round(float(start - t0), 1),
                "offered": len(sel),
                "answered": len(ok),
                "failed": int(len(sel) - len(ok)),
                "degraded": int(ok[:, 3].sum()) if len(ok) else 0,
                "p50_ms": round(float(np.percentile(ok[:, 1], 50)), 1) if len(ok) else None,
                "p99_ms": round(float(np.percentile(ok[:, 1], 99)), 1) if len(ok) else None,
                "replicas": {name: c.get("RUNNING", 0) for name, c in fleet.items()},
                "door_ports": len(last[-1].door) if last else 0,
            }
        )
    return out


def control_loop(
    samples: list[Sample], steps_at: list[tuple[float, float]], events: list, deployments: list[str]
) -> list[dict[str, Any]]:
    """Each change of a deployment's target, timed from the step before it, and the requests sent from
    the step until the change had reached the door (or the replicas, without one) that failed."""
    ev = np.array([(t, s) for t, _, s, _ in events]) if events else np.empty((0, 2))
    out = []
    for name in deployments:
        for tr in transitions(samples, name):
            step_t = max((t for t, _ in steps_at if t <= tr["decided_t"]), default=steps_at[0][0])
            done = tr.get("door_t") or tr["running_t"] or tr["decided_t"]
            sel = ev[(ev[:, 0] >= step_t) & (ev[:, 0] <= done)] if len(ev) else ev
            row = {"deployment": name, "from": tr["from"], "to": tr["to"]}
            for key in ("decided_t", "running_t", "door_t", "first_request_t"):
                if tr.get(key) is not None:
                    row[key.replace("_t", "_s")] = round(tr[key] - step_t, 1)
            row["failed"] = int(((sel[:, 1] < 200) | (sel[:, 1] >= 300)).sum()) if len(sel) else 0
            out.append(row)
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    rows = report["windows"]
    t = [r["t_s"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name in report["deployments"]:
        ax1.step(t, [r["replicas"].get(name, 0) for r in rows], where="post", label=f"{name} replicas")
    if any(r["door_ports"] for r in rows):
        ax1.step(t, [r["door_ports"] for r in rows], where="post", linestyle=":", label="door's rotation")
    ax1.set_ylabel("replicas")
    ax1.legend(loc="upper left", fontsize=8)
    offered = ax1.twinx()
    offered.plot(t, [r["offered"] / report["window_s"] for r in rows], color="grey", alpha=0.5)
    offered.set_ylabel("offered req/s", color="grey")
    ax2.plot(t, [r["p99_ms"] for r in rows], label="p99")
    ax2.plot(t, [r["p50_ms"] for r in rows], label="p50")
    ax2.set_ylabel("ms (answered)")
    ax2.set_xlabel("seconds")
    ax2.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"step load, {Path(report['config']).name}: replicas follow the load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    steps = ", ".join(f"{m:g}x for {s:g} s" for m, s in report["steps"])
    lines = [
        f"# Step load ({Path(report['config']).name})",
        "",
        f"One replica's capacity: {report['unit_rps']:.0f} req/s; steps: {steps}; client CPU "
        f"{report['client_cpu_pct']:.0f}% of a core.",
        "",
        "| deployment | replicas | step -> decided | -> running | -> in the door | -> first request | "
        "failed meanwhile |",
        "|---|---|---|---|---|---|---|",
    ]

    def s(x: Any) -> str:
        return "–" if x is None else f"{x:g} s"

    for r in report["control_loop"]:
        lines.append(
            f"| {r['deployment']} | {r['from']} -> {r['to']} | {s(r.get('decided_s'))} | "
            f"{s(r.get('running_s'))} | {s(r.get('door_s'))} | {s(r.get('first_request_s'))} | "
            f"{r['failed']} |"
        )
    names = report["deployments"]
    lines += [
        "",
        f"| t s | offered | answered | failed | degraded | p50 ms | p99 ms | {' | '.join(names)} |",
        "|" + "---|" * (7 + len(names)),
    ]
    for w in report["windows"]:
        fleet = " | ".join(str(w["replicas"].get(n, 0)) for n in names)
        lines.append(
            f"| {w['t_s']:g} | {w['offered']} | {w['answered']} | {w['failed']} | {w['degraded']} | "
            f"{w['p50_ms'] if w['p50_ms'] is not None else '–'} | "
            f"{w['p99_ms'] if w['p99_ms'] is not None else '–'} | {fleet} |"
        )
    totals = report["totals"]
    lines += [
        "",
        f"In all: {totals['sent']:,} sent, {totals['failed']} failed, {totals['degraded']:,} degraded "
        f"(the door's coarser answers: {totals['door']:,}).",
    ]
    return "\n".join(lines) + "\n"


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from harness.ray_head import serve_api
    from loadtest.stats import machine
    from loadtest.targets import half_capacity, ingress_replicas, run_inputs, served_target

    bundle, repo, config, work, payloads = run_inputs(opts, 400_000)
    with (
        served_target(bundle, repo, work, config, True, balancer=opts.balancer) as (port, _, info),
        LoadClient(2) as client,
    ):
        state = json.loads((work / "ray" / "cluster.json").read_text())
        api = serve_api(state, timeout_s=5)
        unit = opts.unit_rps or half_capacity(client, port, payloads)[0] / ingress_replicas(config)
        door = Path(state["balancer"]["run_dir"]) if opts.balancer else None
        tallies: list[Tally] = []
        steps_at: list[tuple[float, float]] = []
        with FleetWatch(api, door) as watch:
            time.sleep(2)  # a few samples of the fleet at rest
            t0 = time.time()
            for i, (mult, seconds) in enumerate(opts.steps):
                steps_at.append((time.time(), mult))
                level = Level("open", mult * unit, seconds, port, drain_s=3.0, timeline=True)
                tallies += client.run(level, payloads[i * 100_000 :] or payloads)
            end = time.time()
        events = [e for t in tallies for e in (t.events or [])]
        deployments = sorted({n for s in watch.samples for n in s.replicas} - {"EventWriter"})
        cpu_s = sum(t.cpu_s for t in tallies)
        report: dict[str, Any] = {
            "machine": machine(),
            "config": str(config),
            "balancer": str(opts.balancer) if opts.balancer else None,
            "unit_rps": unit,
            "steps": opts.steps,
            "window_s": opts.window,
            "deployments": deployments,
            "client_cpu_pct": round(100 * cpu_s / max(1e-9, end - t0), 1),
            "windows": windows(events, watch.samples, t0, end, opts.window),
            "control_loop": control_loop(watch.samples, steps_at, events, deployments),
            "totals": {
                "sent": len(events),
                "failed": sum(1 for e in events if not 200 <= e[2] < 300) + sum(t.timeouts for t in tallies),
                "degraded": sum(1 for e in events if e[3]),
                "door": sum(len(t.door_ms) for t in tallies),
            },
            "samples": [s.__dict__ for s in watch.samples],
            "startup_s": info.get("startup_s"),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    from loadtest.targets import add_target_args

    parser = argparse.ArgumentParser(prog="python -m loadtest.elastic", description=__doc__.split("\n")[0])
    add_target_args(parser, direct=False)
    parser.set_defaults(config=ROOT / "cluster" / "serve_config.colocated.yaml")
    parser.add_argument("--balancer", type=Path, default=ROOT / "cluster" / "balancer.yaml")
    parser.add_argument("--steps", type=parse_steps, default=parse_steps(DEFAULT_STEPS), help="mult:s,...")
    parser.add_argument("--unit-rps", type=float, help="one replica's capacity (default: measured)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds per row of the report")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "reports" / "elastic")
    opts = parser.parse_args(argv)
    report = run(opts)
    folder = write_report(opts.out, "elastic", report, markdown(report))
    plot(report, folder / "elastic.png")
    shutil.copy(folder / "elastic.png", opts.out / "latest" / "elastic.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
