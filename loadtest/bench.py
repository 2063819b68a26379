"""Benchmark runner: floor vs single-process baseline vs Ray Serve, same stages, same bundle, same mix.

    python -m loadtest.bench --quick          # make bench: default catalogue, 5 s per level
    python -m loadtest.bench --full           # make bench-full: all catalogues, 20 s per level
    python -m loadtest.bench --bundle B --repo R --out DIR --duration 2 --concurrency 1,4 --rates 20
    python -m loadtest.bench --targets floor,served --config C [--throughput-optimized]   # any config

Targets: `floor` and `baseline` (no Ray), and served setups side by side: `colocated` (what `make run`
starts: HAProxy in front of the Ingress replicas' own ports), `colocated-direct` (the client spreads
over those ports itself), `graph`, `graph-proxy`, `colocated-proxy` (SETUPS), or `served` (--config
as given, with --throughput-optimized and --balancer).

Closed loop at each concurrency, then open loop at each arrival rate, everything on 127.0.0.1 and
bounded in time. Writes <out>/<timestamp>/{report.json,latency.png,summary.md} and copies them to
<out>/latest/. Top-level imports stay light: client worker processes re-import this module.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "catalogues": ["default"],
        "duration": 5.0,
        "warmup": 3.0,
        "rates": [50, 100, 200],
        "ceiling": [16, 64],
    },
    "full": {
        "catalogues": ["default", "ml-latest-small", "synth-1m"],
        "duration": 20.0,
        "warmup": 5.0,
        "rates": [25, 50, 100, 200, 400, 800],
        "ceiling": [1, 16, 64],
    },
}


# Served setups: (serve config, direct ingress, the policy of the HAProxy in front or None). With direct
# ingress and no balancer the client spreads its load over every ingress replica's own port, as a load
# balancer on Serve's published target groups would.
BALANCER = ROOT / "cluster" / "balancer.yaml"
SETUPS: dict[str, tuple[Path, bool, Path | None]] = {
    "colocated": (ROOT / "cluster" / "serve_config.colocated.yaml", True, BALANCER),  # make run's default
    # the client spreads over the Ingress replicas' ports itself, as an ideal balancer would
    "colocated-direct": (ROOT / "cluster" / "serve_config.colocated.yaml", True, None),
    "graph": (ROOT / "cluster" / "serve_config.yaml", True, None),
    "graph-proxy": (ROOT / "cluster" / "serve_config.yaml", False, None),  # serve deploy, no env change
    "colocated-proxy": (ROOT / "cluster" / "serve_config.colocated.yaml", False, None),
}
NOT_SERVED = ("floor", "baseline")


@dataclass
class Options:
    profile: str = "quick"
    catalogues: list[str] = field(default_factory=lambda: ["default"])
    bundle: Path | None = None
    repo: Path | None = None
    out: Path = ROOT / "loadtest" / "reports"
    duration: float = 5.0
    warmup: float = 2.0
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    rates: list[float] = field(default_factory=lambda: [50, 100, 200])
    targets: list[str] = field(default_factory=lambda: ["floor", "baseline", "colocated", "graph"])
    ceiling: list[int] = field(default_factory=lambda: [16, 64])
    client_processes: int = max(2, os.cpu_count() or 2)
    config: Path = ROOT / "cluster" / "serve_config.yaml"  # the `served` target's
    throughput_optimized: bool = False  # RAY_SERVE_THROUGHPUT_OPTIMIZED=1, client on direct ingress
    balancer: Path | None = None  # the `served` target behind HAProxy with this policy
    fixed_replicas: bool = False  # autoscaled deployments held at their min_replicas
    # Open-loop levels at these multiples of the target's own capacity (its best closed-loop level):
    # the overload table, comparable across setups and machines of different speeds.
    overload: list[float] = field(default_factory=list)
    requests: int = 20_000  # distinct pre-encoded requests, replayed in order
    debug_fraction: float = 0.05  # share of requests asking for server-side timings_ms
    command: str = ""

    def setup(self, target: str) -> tuple[Path, bool, Path | None]:
        """(serve config, direct ingress, balancer policy) of a served target."""
        if target == "served":
            return self.config, self.throughput_optimized, self.balancer
        return SETUPS[target]

    @property
    def served(self) -> list[str]:
        return [t for t in self.targets if t not in NOT_SERVED]


def _label(mode: str, value: float) -> str:
    return f"c={int(value)}" if mode == "closed" else f"{value:g}/s"


class Runner:
    def __init__(self, opts: Options, client: Any, bar: Any) -> None:
        self.opts, self.client, self.bar = opts, client, bar

    def levels(
        self,
        name: str,
        port: int,
        procs: Any,
        payloads: list,
        modes: list[tuple[str, float]],
        idle: bool = True,
        spread: tuple[int, ...] = (),
        overload: bool = True,
    ) -> dict[str, Any]:
        """Warm up, then each load level in turn; with `idle`, also the server's cost with no traffic
        before (start-up may still be settling) and after the levels (what Serve burns doing nothing)."""
        import psutil

        from loadtest.client import Level
        from loadtest.stats import ProcMonitor, merge

        o = self.opts
        drain = max(1.0, min(5.0, o.duration))
        result: dict[str, Any] = {}

        def measure_idle(key: str) -> None:
            if idle:
                with ProcMonitor(procs) as mon:
                    time.sleep(min(2.0, o.duration))
                result[key] = mon.result()

        measure_idle("idle")
        if o.warmup > 0:  # caches, lazy imports, first connections: not part of any figure
            self.client.run(Level("closed", 4, o.warmup, port, drain_s=drain, spread=spread), payloads)
        out: list[dict[str, Any]] = []
        capacity = None
        if o.overload and overload:
            modes = [m for m in modes if m[0] == "closed"] + [("overload", x) for x in o.overload]
        for i, (mode, value) in enumerate(modes):
            x = None
            if mode == "overload":
                capacity = capacity or max((lv["throughput_rps"] for lv in out), default=0.0)
                mode, value, x = "open", round(value * capacity, 1), value
            psutil.cpu_percent(None)
            with ProcMonitor(procs) as mon:
                tallies = self.client.run(
                    Level(mode, value, o.duration, port, drain_s=drain, spread=spread), payloads, seed=i
                )
            lv = {"mode": mode, "value": value, **merge(tallies, o.duration), "server": mon.result()}
            if x is not None:
                lv.update(overload_x=x, capacity_rps=capacity)
            lv["machine_cpu_pct"] = psutil.cpu_percent(None)  # all cores = 100; shows competing load
            out.append(lv)
            self.bar.update(1)
            p50 = lv["latency_ms"]["p50"]
            self.bar.set_postfix_str(
                f"{name} {_label(mode, value)}: {lv['throughput_rps']:.0f} req/s, p50 {p50} ms"
            )
            time.sleep(min(1.0, o.duration / 5))  # let queues empty before the next level
        measure_idle("idle_after")
        return {**result, "levels": out}

    def ceiling(self, work: Path, payloads: list) -> dict:
        from loadtest.targets import uvicorn_target

        with uvicorn_target("loadtest.noop_app", [], "/noop", work / "noop.log") as (port, procs):
            modes = [("closed", float(c)) for c in self.opts.ceiling]
            result = self.levels("noop", port, procs, payloads, modes, idle=False, overload=False)
        return {**result, "note": "client and no-op server share this machine's cores"}

    def catalogue(self, cat: Any, work: Path) -> dict:
        from loadtest import mix
        from loadtest.baseline_app import stage_settings
        from loadtest.targets import pinned_replicas, run_floor, served_target, uvicorn_target

        o = self.opts
        bundle = cat.ensure(o.out / "build-logs")
        users, items = mix.bundle_ids(bundle)
        requests = mix.generate(users, items, o.requests, mix.MixSpec(debug_fraction=o.debug_fraction))
        payloads = mix.http_payloads(requests)
        settings = stage_settings(o.setup(o.served[0])[0] if o.served else o.config)
        modes = [("closed", float(c)) for c in o.concurrency] + [("open", float(r)) for r in o.rates]
        manifest = json.loads((bundle / "manifest.json").read_text())
        result: dict[str, Any] = {
            "bundle": str(bundle),
            "bundle_version": manifest.get("version"),
            "n_items": manifest.get("n_items"),
            "n_history_users": len(users),
            "feature_repo": str(cat.repo),
            "settings": settings.model_dump(mode="json"),
            "targets": {},
        }
        targets: dict[str, dict] = result["targets"]

        def floor() -> dict:
            lv = run_floor(bundle, cat.repo, settings, requests, o.duration, o.warmup)
            self.bar.update(1)
            return {"levels": [{"mode": "closed", "value": 1.0, **lv}]}

        def baseline() -> dict:
            args = ["--bundle", str(bundle), "--repo", str(cat.repo), "--config", str(o.config)]
            log = work / f"baseline-{cat.name}.log"
            with uvicorn_target("loadtest.baseline_app", args, "/healthz", log) as target:
                return self.levels("baseline", *target, payloads, modes)

        def served(name: str) -> dict:
            config, direct, front = o.setup(name)
            if o.fixed_replicas:
                config = pinned_replicas(config, work / f"{name}-fixed-replicas.yaml")
            with served_target(
                bundle, cat.repo, work / f"{name}-{cat.name}", config, direct, balancer=front
            ) as target:
                port, procs, info = target
                spread = tuple(info["ports"][1:])
                return {"info": info, **self.levels(name, port, procs, payloads, modes, spread=spread)}

        runs = {"floor": floor, "baseline": baseline}
        for name in o.targets:
            try:
                targets[name] = runs[name]() if name in runs else served(name)
            except Exception as exc:  # one target failing must not lose the others' figures
                targets[name] = {"error": f"{type(exc).__name__}: {exc}", "levels": []}
                print(f"{name} failed: {targets[name]['error']}", file=sys.stderr)
        from loadtest.report import ratios

        result["ratios"] = ratios(targets)
        return result


def bench(opts: Options) -> Path:
    from tqdm import tqdm

    from loadtest import catalogues, mix
    from loadtest.client import LoadClient
    from loadtest.report import write
    from loadtest.stats import machine

    for k, v in {
        "RAY_AUTH_MODE": "token",  # harness/ray_head.py gives each head its own token
        "RAY_USAGE_STATS_ENABLED": "0",
        "FEAST_DISABLE_USAGE": "1",
    }.items():
        os.environ.setdefault(k, v)
    cats = (
        [catalogues.custom(opts.bundle, opts.repo)]
        if opts.bundle and opts.repo
        else catalogues.resolve(opts.catalogues)
    )
    n_modes = len(opts.concurrency) + len(opts.rates)
    n_modes += len(opts.overload) - (len(opts.rates) if opts.overload else 0)
    per_cat = ("floor" in opts.targets) + n_modes * (("baseline" in opts.targets) + len(opts.served))
    report: dict[str, Any] = {
        "meta": {
            "timestamp": time.strftime("%Y%m%d-%H%M%S"),
            "command": opts.command,
            "cwd": os.getcwd(),
            "profile": opts.profile,
            "machine": machine(),
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "concurrency": opts.concurrency,
            "open_rates": opts.rates,
            "client_processes": opts.client_processes,
            "setups": {
                t: {"config": str(config), "direct_ingress": direct, "balancer": front and str(front)}
                for t in opts.served
                for config, direct, front in [opts.setup(t)]
            },
            "mix": vars(mix.MixSpec(debug_fraction=opts.debug_fraction)),
        },
        "catalogues": {},
    }
    work = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    try:
        with (
            LoadClient(opts.client_processes) as client,
            tqdm(total=len(opts.ceiling) + per_cat * len(cats), desc="load levels", unit="level") as bar,
        ):
            runner = Runner(opts, client, bar)
            if opts.ceiling:
                users, items = mix.bundle_ids(cats[0].ensure(opts.out / "build-logs"))
                noop = mix.http_payloads(mix.generate(users, items, 2_000), path="/noop")
                report["client_ceiling"] = runner.ceiling(work, noop)
            for cat in cats:
                report["catalogues"][cat.name] = runner.catalogue(cat, work)
    except BaseException as exc:  # Ctrl-C included: targets are already stopped; keep what was measured
        report["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        run_dir = write(report, opts.out)
        for log in work.rglob("*.log"):  # server logs, for reading a failed or surprising run
            (run_dir / "logs").mkdir(exist_ok=True)
            shutil.copy(log, run_dir / "logs" / f"{log.parent.name}-{log.name}")
        shutil.rmtree(work, ignore_errors=True)
        print(f"report: {run_dir} (also {opts.out / 'latest'})")
    return run_dir


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", const="quick", dest="profile", help="(default)")
    g.add_argument("--full", action="store_const", const="full", dest="profile")
    p.add_argument("--catalogue", action="append", help="default, ml-latest-small, synth-1m (repeatable)")
    p.add_argument("--bundle", type=Path, help="a bundle directory to test instead (needs --repo)")
    p.add_argument("--repo", type=Path, help="the Feast repo that bundle was built with")
    p.add_argument("--out", type=Path, default=ROOT / "loadtest" / "reports")
    p.add_argument("--duration", type=float, help="seconds per load level")
    p.add_argument("--warmup", type=float, help="seconds of unrecorded load before each target")
    p.add_argument("--concurrency", default="1,4,16,64", help="closed-loop levels")
    p.add_argument("--rates", help="open-loop arrival rates, req/s ('' for none)")
    p.add_argument(
        "--targets",
        help=f"floor, baseline, served (--config), {', '.join(SETUPS)} (default: floor,baseline,colocated,"
        "graph; with --config or --throughput-optimized: floor,baseline,served)",
    )
    p.add_argument("--ceiling", help="closed-loop levels against the no-op ('' to skip)")
    p.add_argument(
        "--overload",
        default="",
        help="open-loop levels at these multiples of each target's capacity (its best closed-loop "
        "level), instead of --rates: e.g. 0.5,1.5,3,10",
    )
    p.add_argument("--client-processes", type=int, default=Options.client_processes)
    p.add_argument("--debug-fraction", type=float, default=0.05, help="requests sent with debug: true")
    p.add_argument("--config", type=Path, help="serve config of `served` (default cluster/serve_config.yaml)")
    p.add_argument(
        "--throughput-optimized",
        action="store_true",
        help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1 on the head; load goes to the ingress's own port",
    )
    p.add_argument("--balancer", type=Path, help="with --throughput-optimized: HAProxy in front, this policy")
    p.add_argument(
        "--fixed-replicas",
        action="store_true",
        help="hold autoscaled deployments at their min_replicas (capacity and its multiples, one fleet)",
    )
    a = p.parse_args(argv)
    if bool(a.bundle) != bool(a.repo):
        p.error("--bundle and --repo go together")
    custom = a.config is not None or a.throughput_optimized
    default = "floor,baseline,served" if custom else "floor,baseline,colocated,graph"
    targets = [t for t in (a.targets if a.targets is not None else default).split(",") if t]
    if unknown := set(targets) - {*NOT_SERVED, "served", *SETUPS}:
        known = ", ".join(["floor", "baseline", "served", *SETUPS])
        p.error(f"unknown targets {sorted(unknown)}: choose from {known}")
    prof = PROFILES[a.profile or "quick"]
    return Options(
        profile=a.profile or "quick",
        catalogues=a.catalogue or prof["catalogues"],
        bundle=a.bundle,
        repo=a.repo,
        out=a.out.resolve(),
        duration=a.duration if a.duration is not None else prof["duration"],
        warmup=a.warmup if a.warmup is not None else prof["warmup"],
        # Ascending, so an overloading level comes last and its backlog cannot spill into a lighter one.
        concurrency=sorted(int(x) for x in _floats(a.concurrency)),
        rates=sorted(_floats(a.rates) if a.rates is not None else prof["rates"]),
        targets=targets,
        ceiling=[int(x) for x in _floats(a.ceiling)] if a.ceiling is not None else prof["ceiling"],
        client_processes=a.client_processes,
        config=(a.config or Options.config).resolve(),
        throughput_optimized=a.throughput_optimized,
        balancer=a.balancer.resolve() if a.balancer else None,
        fixed_replicas=a.fixed_replicas,
        overload=_floats(a.overload),
        debug_fraction=a.debug_fraction,
        command=shlex.join(["python", "-m", "loadtest.bench", *argv]),
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    try:
        bench(opts)
    except KeyboardInterrupt:
        print("interrupted; every target started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
