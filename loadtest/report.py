"""Write a run's report: report.json, latency.png and summary.md, in <out>/<timestamp>/ and <out>/latest/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

P99_SLO_MS = 50.0
MAX_ERROR_RATE = 0.01  # a level that sheds more than 1% of requests does not count as "served"
NOT_SERVED = ("floor", "baseline", "noop")
COLORS = {
    "floor": "tab:green",
    "baseline": "tab:blue",
    "served": "tab:red",
    "colocated": "tab:red",
    "graph": "tab:purple",
    "graph-proxy": "tab:brown",
    "colocated-proxy": "tab:orange",
    "noop": "tab:gray",
}


def _level(levels: list[dict], mode: str, value: float) -> dict | None:
    return next((lv for lv in levels if lv["mode"] == mode and lv["value"] == value), None)


def max_throughput_at_slo(levels: list[dict], slo_ms: float = P99_SLO_MS) -> float | None:
    """Highest 2xx throughput of any level (closed or open) whose p99 <= slo_ms, errors <= 1% and
    degraded answers <= 1% (a brownout's retrieval order or popularity list is not the same work)."""
    ok = [
        lv["throughput_rps"]
        for lv in levels
        if lv["latency_ms"]["p99"] is not None
        and lv["latency_ms"]["p99"] <= slo_ms
        and lv["error_rate"] <= MAX_ERROR_RATE
        and lv.get("degraded", 0) <= MAX_ERROR_RATE * max(1, lv.get("ok", 0))
    ]
    return max(ok) if ok else None


def ratios(targets: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Per served target: its p50 at c=1 over the floor's, and its max throughput at the p99 SLO over
    the single-process baseline's (the issue's yardsticks)."""
    levels = {name: t.get("levels", []) for name, t in targets.items()}
    floor_c1 = _level(levels.get("floor", []), "closed", 1)
    floor_p50 = (floor_c1 or {}).get("latency_ms", {}).get("p50")
    base_max = max_throughput_at_slo(levels.get("baseline", []))
    out: dict[str, dict[str, Any]] = {}
    for name in (n for n in targets if n not in NOT_SERVED):
        c1 = _level(levels[name], "closed", 1)
        p50 = (c1 or {}).get("latency_ms", {}).get("p50")
        top = max_throughput_at_slo(levels[name])
        out[name] = {
            "p50_over_floor_p50_c1": round(p50 / floor_p50, 2) if p50 and floor_p50 else None,
            "p50_c1_ms": p50,
            "floor_p50_c1_ms": floor_p50,
            "max_rps_at_p99_50ms_over_baseline": round(top / base_max, 3) if top and base_max else None,
            "max_rps_at_p99_50ms": top,
            "baseline_max_rps_at_p99_50ms": base_max,
        }
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: the benchmark runs headless
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cats = report["catalogues"]
    fig, axes = plt.subplots(1, max(1, len(cats)), figsize=(7 * max(1, len(cats)), 5.5), squeeze=False)
    for ax, (name, cat) in zip(axes[0], cats.items(), strict=False):
        plotted = False
        for target, data in cat["targets"].items():
            for mode, marker, fill in (("closed", "o", "full"), ("open", "s", "none")):
                lvs = [lv for lv in data.get("levels", []) if lv["mode"] == mode and lv["latency_ms"]["p50"]]
                lvs.sort(key=lambda lv: lv["value"])
                plotted = plotted or bool(lvs)
                x = [lv["throughput_rps"] for lv in lvs]
                for pct, style in (("p50", "-"), ("p99", "--")):
                    y = [lv["latency_ms"][pct] for lv in lvs]
                    ax.plot(x, y, linestyle=style, marker=marker, fillstyle=fill, color=COLORS.get(target))
                for lv in lvs:  # which load level each point is: offered rate or concurrency
                    ax.annotate(_label(lv), (lv["throughput_rps"], lv["latency_ms"]["p99"]), fontsize=6)
        ax.axhline(P99_SLO_MS, color="black", linewidth=0.8, alpha=0.5)
        ax.set(xlabel="throughput (2xx req/s)", ylabel="latency (ms)")
        if plotted:  # a log axis needs a positive value; every target may have failed
            ax.set(xscale="log", yscale="log")
        else:
            ax.text(0.5, 0.5, "no target answered (see summary.md)", ha="center", transform=ax.transAxes)
        ax.set_title(f"{name} ({cat.get('n_items') or 0:,} items)")
        ax.grid(True, which="both", alpha=0.3)
        handles = [Line2D([], [], color=COLORS.get(t), label=t) for t in cat["targets"]]
        handles += [
            Line2D([], [], color="gray", linestyle="-", label="p50"),
            Line2D([], [], color="gray", linestyle="--", label="p99"),
            Line2D([], [], color="gray", marker="o", linestyle="", label="closed loop (c=)"),
            Line2D([], [], color="gray", marker="s", fillstyle="none", linestyle="", label="open loop (/s)"),
            Line2D([], [], color="black", alpha=0.5, label=f"p99 SLO {P99_SLO_MS:g} ms"),
        ]
        ax.legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: Any, nd: int = 1) -> str:
    return "–" if x is None else f"{x:,.{nd}f}" if isinstance(x, float) else str(x)


def _label(lv: dict) -> str:
    return f"c={int(lv['value'])}" if lv["mode"] == "closed" else f"{lv['value']:g}/s"


def _row(target: str, lv: dict) -> str:
    lat, srv = lv["latency_ms"], lv.get("server", {})
    label = f"c={int(lv['value'])}" if lv["mode"] == "closed" else f"{lv['value']:g}/s"
    cells = [
        target,
        label,
        _fmt(lv["throughput_rps"]),
        *(_fmt(lat[k], 2) for k in ("p50", "p95", "p99", "p99_9")),
    ]
    cells += [str(lv["errors"]), str(lv["n_503"]), _fmt(lv["client"]["cpu_pct"])]
    cells += [_fmt(srv.get("cpu_pct")), _fmt(srv.get("rss_mib"), 0), _fmt(lv.get("machine_cpu_pct"), 0)]
    return "| " + " | ".join(cells) + " |"


def _overload_table(cat: dict) -> list[str]:
    """At multiples of each target's capacity (--overload): every answer (2xx per second), the whole
    answers among them (not degraded) and their latency against the half-load level's, the front door's
    coarser answers and how fast they came, and what was refused."""
    rows = []
    for target, data in cat["targets"].items():
        levels = [lv for lv in data.get("levels", []) if "overload_x" in lv]
        half = next((lv for lv in levels if lv["overload_x"] == 0.5), None)
        for lv in levels:
            cap, full = lv["capacity_rps"], lv.get("full_latency_ms") or lv["latency_ms"]
            half_p99 = (half.get("full_latency_ms") or half["latency_ms"])["p99"] if half else None
            vs_half = full["p99"] / half_p99 if half_p99 and full["p99"] else None
            door = lv.get("door_latency_ms") or {}
            answered, whole = lv["throughput_rps"], lv.get("full_rps", 0.0)
            rows.append(
                f"| {target} | {lv['overload_x']:g}x ({lv['value']:,.0f}/s) | {answered:,.0f} "
                f"({100 * answered / cap:.0f}%) | {whole:,.0f} ({100 * whole / cap:.0f}%) | "
                f"{_fmt(full['p50'], 1)} / {_fmt(full['p99'], 1)} ms ({_fmt(vs_half, 2)}x half load's) | "
                f"{lv.get('door', 0):,} (p99 {_fmt(door.get('p99'), 1)} ms; "
                f"{lv.get('door_waited', 0):,} after a wait) | {lv['degraded']:,} | "
                f"{lv['n_503']:,} | {lv['errors'] - lv['n_503']:,} | {_fmt(lv['client']['cpu_pct'])} |"
            )
    if not rows:
        return []
    return [
        "",
        "Overload: open loop at multiples of each target's capacity (its best closed-loop level); the whole "
        "answers are those not degraded:",
        "",
        "| target | offered | answered 2xx (of capacity) | whole answers (of capacity) | their p50 / p99 "
        "| the door's coarser answers | degraded in all | 503s | other errors | client CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _busiest(server: dict, n: int = 6) -> list[tuple[str, dict]]:
    groups = server.get("process_groups", {}).items()
    return sorted(groups, key=lambda kv: -kv[1].get("cpu_pct", 0.0))[:n]


def summary(report: dict) -> str:
    m = report["meta"]
    mach = m["machine"]
    out = [
        f"# Load test {m['timestamp']}",
        "",
        f"Machine: {mach['cpu_model']}, {mach['cores_logical']} logical cores, {mach['memory_gib']} GiB; "
        f"load average at start {mach['load_avg_at_start']}.  ",
        f"Command: `{m['command']}`  ",
        f"Profile: {m['profile']}; {m['duration_s']} s per level; client: {m['client_processes']} processes "
        "(raw HTTP/1.1 keep-alive, asyncio). CPU % is of one core (100 = one core busy), except "
        "machine CPU % (all cores = 100, includes everything else running on the machine).",
        "",
    ]
    ceiling = report.get("client_ceiling")
    if ceiling:
        out += ["## Client ceiling (no-op uvicorn endpoint)", ""]
        for lv in ceiling["levels"]:
            p50 = _fmt(lv["latency_ms"]["p50"], 2)
            out.append(
                f"- c={int(lv['value'])}: {lv['throughput_rps']:,.0f} req/s, p50 {p50} ms, client CPU "
                f"{lv['client']['cpu_pct']}%, no-op server CPU {lv['server']['cpu_pct']}%"
            )
        out.append("")
    for name, cat in report["catalogues"].items():
        out += [
            f"## Catalogue `{name}` ({cat.get('n_items', '?'):,} items, bundle {cat.get('bundle_version')})",
            "",
        ]
        for target, r in cat.get("ratios", {}).items():
            info = cat["targets"].get(target, {}).get("info") or {}
            how = "direct ingress" if info.get("throughput_optimized") else "via the proxy"
            ports = len(info.get("ingress_ports") or info.get("ports", [])) or "?"
            front = ", through HAProxy" if info.get("balancer") else ""
            out += [
                f"- **{target}** (`{Path(info.get('config', '?')).name}`, {how}{front}, "
                f"{ports} ingress port(s)): "
                f"**p50 / floor p50 at c=1: {_fmt(r['p50_over_floor_p50_c1'], 2)}** "
                f"({_fmt(r['p50_c1_ms'], 2)} ms / {_fmt(r['floor_p50_c1_ms'], 2)} ms); "
                f"**max throughput at p99 <= {P99_SLO_MS:g} ms / single-process baseline's: "
                f"{_fmt(r['max_rps_at_p99_50ms_over_baseline'], 3)}** "
                f"({_fmt(r['max_rps_at_p99_50ms'])} / {_fmt(r['baseline_max_rps_at_p99_50ms'])} req/s; "
                "levels with > 1% errors or > 1% degraded answers do not count)",
            ]
            if info:
                out.append(
                    f"  - start-up: /healthz 200 after {info.get('healthy_s')} s, first ranked answer after "
                    f"{info['startup_s']} s (head start + deploy + every stage ready)"
                )
        for target, data in cat["targets"].items():
            if idle := data.get("idle"):
                roles = ", ".join(
                    f"{k} {v['n']}x {v['rss_mib']:.0f}/{v.get('pss_mib', 0):.0f}"
                    for k, v in idle.get("process_groups", {}).items()
                )
                after = data.get("idle_after", {}).get("cpu_pct")
                out.append(
                    f"- {target} with no traffic: CPU {idle['cpu_pct']}% before the levels, {_fmt(after)}% "
                    f"after; RSS {idle['rss_mib']:.0f} MiB, PSS {_fmt(idle.get('pss_mib'), 0)} MiB in "
                    f"{idle['processes']} processes"
                    + (f" (RSS/PSS MiB: {roles})" if idle["processes"] > 1 else "")
                )
        out += [
            "",
            "| target | level | req/s | p50 ms | p95 ms | p99 ms | p99.9 ms | errors | 503 | client CPU % "
            "| server CPU % | server RSS MiB | machine CPU % |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for target, data in cat["targets"].items():
            out += [_row(target, lv) for lv in data.get("levels", [])]
            if data.get("error"):
                out.append(f"| {target} | failed: {data['error'][:200]} |")
        stages = [
            f"{t} c={int(lv['value'])}: "
            + ", ".join(f"{s} {v['p50']:.2f}" for s, v in lv["stage_timings_ms"].items())
            for t, data in cat["targets"].items()
            for lv in data.get("levels", [])
            if lv["mode"] == "closed" and lv["value"] in (1, 16) and lv["stage_timings_ms"]
        ]
        reasons = {
            f"{t} {_label(lv)}": lv["fallback"]
            for t, data in cat["targets"].items()
            for lv in data.get("levels", [])
            if set(lv["fallback"]) - {"unknown_user"} or lv["degraded"]
        }
        if reasons:
            out += ["", "Levels with fallbacks other than unknown_user, or degraded answers:", ""]
            out += [f"- {k}: {v}" for k, v in reasons.items()]
        out += _overload_table(cat)
        if stages:
            out += ["", "Server-reported stage timings, p50 ms (debug-sampled requests):", ""]
            out += [f"- {s}" for s in stages]
        roles = [
            f"{target} {_label(lv)}: "
            + ", ".join(f"{k} {v['cpu_pct']:.0f}" for k, v in _busiest(lv["server"]))
            for target, data in cat["targets"].items()
            if target not in NOT_SERVED
            for lv in data.get("levels", [])
            if lv["mode"] == "closed" and lv["server"].get("process_groups")
        ]
        if roles:
            out += ["", "Served CPU % by process role (the six busiest):", ""]
            out += [f"- {r}" for r in roles]
        out.append("")
    if report.get("error"):
        out += ["## Run failed", "", f"```\n{report['error']}\n```", ""]
    out.append("Figures from one run on a shared 2-core machine; compare targets within a run only.")
    return "\n".join(out) + "\n"


def write(report: dict, out_root: Path) -> Path:
    run_dir = out_root / report["meta"]["timestamp"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, run_dir / "latency.png")
    (run_dir / "summary.md").write_text(summary(report))
    latest = out_root / "latest"
    latest.mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "latency.png", "summary.md"):
        shutil.copy(run_dir / name, latest / name)
    return run_dir
