"""Faults under load: what each one costs the requests in flight, and how long until answers recover.

    python -m loadtest.chaos                          # default bundle, cluster/serve_config.yaml
    python -m loadtest.chaos --rate 20 --window 25 --kill-at 8 --faults Ranker,Retriever,store
    python -m loadtest.chaos --config cluster/serve_config.colocated.yaml --throughput-optimized \
        --balancer cluster/balancer.yaml        # make run's setup, through its HAProxy

A Ray head of its own with the app deployed from the config (as `make bench` starts it), then, for each
fault in turn, open-loop load at `--rate` for `--window` seconds with the fault injected `--kill-at`
seconds in: SIGKILL of one replica of a deployment (any name in the config), of the Serve controller
(`controller`) or of the HTTP proxy (`proxy`), or of the balancer's HAProxy (`haproxy`, with
`--balancer`); the online store made unreadable for `--outage` seconds
and given back (`store`, an exclusive lock on the SQLite store); a corrupt bundle rolled out to every
bundle stage (`corrupt_bundle`, which must be refused while the old one keeps serving). Per fault:
requests failed (no 2xx), degraded, p99 and max latency (from the scheduled send time), and the time
from the fault to the last failed or degraded request. Writes <out>/<timestamp>/{chaos.json,chaos.md}
and copies them to <out>/latest/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from loadtest.client import Level, LoadClient, Tally
from loadtest.stats import _name

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = {"controller": "ServeController", "proxy": "ProxyActor"}
BUNDLE_STAGES = ("Ingress", "Retriever", "Ranker")


@dataclass(frozen=True)
class Outcome:
    fault: str
    requests: int
    failed: int
    degraded: int
    p99_ms: float | None
    max_ms: float | None
    recovered_s: float | None  # fault -> last failed/degraded request (None: none was)
    statuses: dict[int, int]
    note: str = ""
    # The first failures: (sent, s after the fault; ms until it failed; status, 0 for no answer), to
    # tell a connection the fault cut (ms) from a request nobody answered (the client's 10 s timeout).
    failures: tuple[tuple[float, float, int], ...] = ()
    fallbacks: dict[str, int] = field(default_factory=dict)  # why answers fell back, by reason

    def row(self) -> str:
        def fmt(x: float | None, unit: str = "") -> str:
            return "–" if x is None else f"{x:,.1f}{unit}"

        rate = f"{100 * self.failed / max(self.requests, 1):.2f}%"
        return (
            f"| {self.fault} | {self.requests:,} | {self.failed} ({rate}) | {self.degraded} | "
            f"{fmt(self.p99_ms)} | {fmt(self.max_ms)} | {fmt(self.recovered_s, ' s')} | {self.note} |"
        )


def summarise(fault: str, tallies: list[Tally], fault_at: float, note: str = "") -> Outcome:
    """One fault's figures from the client's per-request timeline (wall-clock send times)."""
    events = [e for t in tallies for e in (t.events or [])]
    unanswered = sum(t.timeouts for t in tallies) - sum(1 for e in events if e[2] == 0)
    failed = sum(1 for e in events if not 200 <= e[2] < 300) + max(0, unanswered)
    latencies = np.array([e[1] for e in events]) if events else np.empty(0)
    bad = [e[0] for e in events if not 200 <= e[2] < 300 or e[3]]
    statuses: dict[int, int] = {}
    fallbacks: dict[str, int] = {}
    for t in tallies:
        for code, n in t.statuses.items():
            statuses[code] = statuses.get(code, 0) + n
        for reason, n in t.fallback.items():
            fallbacks[reason] = fallbacks.get(reason, 0) + n
    return Outcome(
        fault=fault,
        requests=len(events) + max(0, unanswered),
        failed=failed,
        degraded=sum(1 for e in events if e[3]),
        p99_ms=float(np.percentile(latencies, 99)) if len(latencies) else None,
        max_ms=float(latencies.max()) if len(latencies) else None,
        recovered_s=round(max(bad) - fault_at, 2) if bad and max(bad) >= fault_at else None,
        statuses=statuses,
        note=note,
        failures=tuple(
            (round(e[0] - fault_at, 2), round(e[1], 1), e[2]) for e in sorted(events) if not 200 <= e[2] < 300
        )[:20],
        fallbacks=fallbacks,
    )


def find(processes: list[psutil.Process], role: str) -> psutil.Process:
    """The process of a deployment's replica ("Ranker") or of Serve's controller or proxy."""
    want = SPECIAL.get(role, role)
    for p in processes:
        if _name(p) == want:
            return p
    raise LookupError(
        f"no process for {role!r} among the cluster's ({sorted({_name(p) for p in processes})})"
    )


def lock_store(repo: Path, hold_s: float) -> threading.Thread:
    """Hold an exclusive lock on the SQLite online store for hold_s: every read misses its deadline."""
    ready = threading.Event()

    def hold() -> None:
        db = sqlite3.connect(repo / "data" / "online_store.db", timeout=5)
        db.execute("BEGIN EXCLUSIVE")
        ready.set()
        time.sleep(hold_s)
        db.rollback()
        db.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


def corrupt_copy(bundle: Path, dest: Path) -> Path:
    """A copy of the bundle whose ranker no longer matches its checksum: loading must refuse it."""
    shutil.copytree(bundle, dest, dirs_exist_ok=True)
    ranker = dest / "ranker.ubj"
    data = bytearray(ranker.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ranker.write_bytes(bytes(data))
    return dest


def rollout_config(config: Path, bundle: Path, out: Path) -> Path:
    data = yaml.safe_load(config.read_text())
    for d in data["applications"][0]["deployments"]:
        if d["name"] in BUNDLE_STAGES:
            d["user_config"] = {"bundle": str(bundle)}
    out.write_text(yaml.safe_dump(data))
    return out


def deployments_of(config: Path) -> list[str]:
    return [d["name"] for d in yaml.safe_load(config.read_text())["applications"][0]["deployments"]]


class Chaos:
    """The load and the faults against one running cluster."""

    def __init__(self, client: LoadClient, port: int, procs: Any, payloads: list, opts: argparse.Namespace):
        self.client, self.port, self.procs, self.payloads, self.opts = client, port, procs, payloads, opts
        self.proxy_port = port  # where `serve deploy` puts HTTP; differs from port with direct ingress
        self.sent = 0

    def run(self, fault: str, inject: Any) -> Outcome:
        o = self.opts
        level = Level("open", o.rate, o.window, self.port, drain_s=3.0, timeout_s=10.0, timeline=True)
        out: list[list[Tally]] = []
        # Each fault gets requests the last did not send: replaying the same ones would find every
        # user's features in the replicas' caches, and a store outage would go unnoticed.
        n = int(o.rate * (o.window + 3)) + 1
        payloads = self.payloads[self.sent : self.sent + n] or self.payloads
        self.sent = (self.sent + n) % max(1, len(self.payloads) - n)
        load = threading.Thread(target=lambda: out.append(self.client.run(level, payloads)))
        load.start()
        time.sleep(0.3 + o.kill_at)
        fault_at = time.time()
        note = inject() or ""
        load.join()
        return summarise(fault, out[0], fault_at, note)

    def inject_for(self, fault: str, state: dict, config: Path, bundle: Path, repo: Path, work: Path):
        from harness import cluster

        if fault == "store":
            return lambda: (lock_store(repo, self.opts.outage), f"store locked {self.opts.outage:g} s")[1]
        if fault == "corrupt_bundle":

            def corrupt() -> str:
                bad = corrupt_copy(bundle, work / "corrupt-bundle")
                rolled = rollout_config(config, bad, work / "corrupt.yaml")
                cluster.deploy(state, rolled, http_port=self.proxy_port)
                return "refused at load; the old bundle kept serving"

            return corrupt

        def kill() -> str:
            procs = self.procs()
            if fault == "haproxy":  # the balancer's, not a Ray process (serve_app/door.py)
                procs = psutil.Process(state["balancer"]["pid"]).children()
            victim = find(procs, fault)
            victim.send_signal(signal.SIGKILL)
            return f"SIGKILL pid {victim.pid}"

        return kill


def wait_recovered(port: int, bundle: Path, timeout_s: float = 120) -> float:
    """Seconds until a known user is answered ranked and undegraded again (between faults)."""
    from loadtest.targets import _wait_ranked

    start = time.monotonic()
    _wait_ranked(port, bundle, timeout_s)
    return time.monotonic() - start


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from harness import cluster
    from loadtest.stats import machine
    from loadtest.targets import half_capacity, run_inputs, served_target

    bundle, repo, config, work, payloads = run_inputs(opts, 50_000)
    faults = opts.faults.split(",") if opts.faults else [*deployments_of(config), "controller", "proxy"]
    if not opts.faults:
        faults += ["store", "corrupt_bundle", *(["haproxy"] if opts.balancer else [])]
    report: dict[str, Any] = {"machine": machine(), "config": str(config), "faults": []}
    with (
        served_target(bundle, repo, work, config, opts.throughput_optimized, balancer=opts.balancer) as (
            port,
            procs,
            info,
        ),
        LoadClient(2) as client,
    ):
        state = json.loads((work / "ray" / "cluster.json").read_text())
        chaos = Chaos(client, port, procs, payloads, opts)
        chaos.proxy_port = int(info.get("proxy_port", port))
        if opts.rate is None:  # half of what a closed loop of 16 connections gets through
            report["capacity_rps"], opts.rate = half_capacity(client, port, payloads)
        report.update(rate_rps=opts.rate, window_s=opts.window, kill_at_s=opts.kill_at)
        for fault in faults:
            outcome = chaos.run(fault, chaos.inject_for(fault, state, config, bundle, repo, work))
            if fault == "corrupt_bundle":  # back to the config as shipped before the next fault
                cluster.deploy(state, config, http_port=chaos.proxy_port)
            back_s = wait_recovered(port, bundle)
            report["faults"].append({**outcome.__dict__, "ready_again_after_window_s": round(back_s, 1)})
            print(outcome.row(), flush=True)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Chaos run ({report['config']})",
        "",
        f"Open-loop load at {report['rate_rps']:g} req/s for {report['window_s']:g} s per fault, the fault "
        f"injected {report['kill_at_s']:g} s in"
        + (
            f" (capacity, closed loop c=16: {report['capacity_rps']:.0f} req/s)."
            if "capacity_rps" in report
            else "."
        ),
        "",
        "| fault | requests | failed | degraded | p99 ms | max ms | last bad request after | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        Outcome(**{k: v for k, v in f.items() if k in Outcome.__dataclass_fields__}).row()
        for f in report["faults"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from loadtest.targets import add_target_args

    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.split("\n")[0])
    add_target_args(parser)
    parser.add_argument(
        "--rate", type=float, default=None, help="req/s (default: half the measured capacity)"
    )
    parser.add_argument("--window", type=float, default=25.0, help="seconds of load per fault")
    parser.add_argument("--kill-at", type=float, default=8.0, help="seconds into the window")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the store stays unreadable")
    parser.add_argument(
        "--faults",
        default="",
        help="comma-separated (default: every deployment, controller, proxy, store, corrupt_bundle)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "reports" / "chaos")
    opts = parser.parse_args(argv)
    report = run(opts)
    write_report(opts.out, "chaos", report, markdown(report))
    return 0


def write_report(out: Path, stem: str, report: dict[str, Any], text: str) -> Path:
    """<out>/<timestamp>/<stem>.{json,md}, copied to <out>/latest/, and the markdown printed; the
    timestamped folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (out / stamp, out / "latest"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(json.dumps(report, indent=2))
        (folder / f"{stem}.md").write_text(text)
    print(text)
    return out / stamp


if __name__ == "__main__":
    raise SystemExit(main())
