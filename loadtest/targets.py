"""The things under load: the in-process floor, uvicorn apps (baseline, no-op) and the Ray Serve app.

Every server target binds 127.0.0.1 on a free port and is stopped by whoever started it, also on
errors and Ctrl-C (they are context managers). The served app runs exactly as cluster/serve_config.yaml
deploys it, on a Ray head of its own, stopped through cluster.stop (its own process tree only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from harness.ports import free_port
from loadtest.client import Tally
from loadtest.mix import Request
from loadtest.stats import merge, tree
from serve_app.core.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "cluster" / "serve_config.yaml"
ENV = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "FEAST_DISABLE_USAGE": "1"}


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s; see {log}")


@contextlib.contextmanager
def uvicorn_target(module: str, args: list[str], probe: str, log: Path) -> Iterator[tuple[int, Callable]]:
    """`python -m <module> --port P ...` in one process; yields (port, its process list)."""
    port = free_port()
    # One OpenMP thread, as Ray gives a replica with num_cpus < 1: the same FAISS work per request.
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port), *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}{probe}", proc, 180, log)
        yield port, tree(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def recsys_home(bundle: Path, repo: Path, work: Path) -> Path:
    """A RECSYS_HOME whose artifacts/current and feature_repo are the bundle and repo under test,
    so serve_config.yaml's relative paths resolve to them unchanged."""
    home = work / "home"
    (home / "artifacts").mkdir(parents=True, exist_ok=True)
    for link, target in ((home / "artifacts" / "current", bundle), (home / "feature_repo", repo)):
        link.unlink(missing_ok=True)
        link.symlink_to(target.resolve())
    return home


@contextlib.contextmanager
def served_target(
    bundle: Path,
    repo: Path,
    work: Path,
    config: Path = SERVE_CONFIG,
    throughput_optimized: bool = False,
    nodes: int = 1,
    balancer: Path | None = None,
) -> Iterator[tuple[int, Callable, dict[str, Any]]]:
    """A Ray head of our own with the app deployed from `config`; yields (port, processes, info).

    With `throughput_optimized` the port is an ingress replica's own (direct ingress), found where
    Serve publishes it for clients (`target_groups`), instead of the proxy's; info["ports"] has every
    ingress replica's, for a client that spreads its load as a load balancer would. With `nodes=2`, a worker
    node beside the head runs the stages, as `make run NODES=2` starts it (harness/worker_node.py).
    With `balancer` (a policy file, and `throughput_optimized`), the port is HAProxy's in front of the
    ingress ports, as `make run` starts it (harness/door.py); info["ingress_ports"] has theirs.
    """
    from harness import cluster, ray_head

    home = recsys_home(bundle, repo, work)
    state_file = work / "ray" / "cluster.json"
    port = free_port()
    started = time.monotonic()
    env = {**ENV, "RECSYS_HOME": str(home)}
    if nodes == 2:
        state = cluster.start_two_nodes(state_file, env=env, throughput_optimized=throughput_optimized)
    else:
        state = ray_head.start_head(state_file, env=env, throughput_optimized=throughput_optimized)
    failed = True
    try:
        cluster.deploy(state, config, http_port=port, two_nodes=nodes == 2)
        cluster.wait_healthy(f"http://127.0.0.1:{port}", state, timeout_s=300)
        proxy_port, ports = port, [port]
        if throughput_optimized:
            ports = _direct_ingress_ports(state, proxy_port, ingress_replicas(config))
            port = ports[0]
        ingress_ports, front = ports, None
        if balancer is not None:
            from harness import door

            front = door.start_for_cluster(state, state_file, balancer, proxy_port, free_port())
            port = int(front.rsplit(":", 1)[1])
            ports = [port]
        healthy_s = time.monotonic() - started
        version = httpx.get(f"http://127.0.0.1:{port}/version", timeout=10).json()
        under_test = json.loads((bundle / "manifest.json").read_text())["version"]
        if version["bundle_version"] != under_test:
            raise RuntimeError(
                f"it serves bundle {version['bundle_version']}, not the one under test {bundle}"
            )
        _wait_ranked(port, bundle)
        info = {
            "healthy_s": round(healthy_s, 1),  # /healthz 200: the Ingress is up
            "startup_s": round(time.monotonic() - started, 1),  # a request went through every stage
            "version": version,
            "config": str(config),
            "throughput_optimized": throughput_optimized,
            "port": port,
            "ports": ports,
            "proxy_port": proxy_port,
            "balancer": front,
            "ingress_ports": ingress_ports,
            "nodes": nodes,
        }
        head = tree(state["pid"])
        balancer_procs = tree(state["balancer"]["pid"]) if front else list  # HAProxy's CPU counts too
        yield port, lambda: [*head(), *balancer_procs()], info
        failed = False
    finally:
        stopped_cleanly = cluster.stop(state_file)
        # Ray's session dir is unique to our state file, so it is ours to remove; keep its logs only
        # when something failed.
        if stopped_cleanly and not failed:
            for suffix in ("", "-w"):  # the head's, and a worker node's
                shutil.rmtree(state["temp_dir"] + suffix, ignore_errors=True)
            for suffix in ("-serve_config.yaml", "-two_nodes.yaml"):
                Path(state["temp_dir"] + suffix).unlink(missing_ok=True)


def ingress_replicas(config: Path) -> int:
    """How many Ingress replicas `config` starts with (num_replicas, or autoscaling's minimum)."""
    import yaml

    for dep in yaml.safe_load(config.read_text())["applications"][0].get("deployments", []):
        if dep.get("name") == "Ingress":
            auto = dep.get("autoscaling_config")
            return int(auto.get("min_replicas", 1) if auto else dep.get("num_replicas", 1))
    return 1


def pinned_replicas(config: Path, dest: Path) -> Path:
    """`config` with every autoscaled deployment fixed at its min_replicas, written to `dest`: a
    benchmark's capacity and its multiples mean one fleet, not one the autoscaler resizes mid-level."""
    import yaml

    data = yaml.safe_load(config.read_text())
    for app in data["applications"]:
        for dep in app.get("deployments", []):
            if auto := dep.pop("autoscaling_config", None):
                dep["num_replicas"] = int(auto.get("min_replicas", 1))
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def _direct_ingress_ports(state: dict, proxy_port: int, want: int, timeout_s: float = 60) -> list[int]:
    """The ingress replicas' own ports, once Serve publishes `want` of them."""
    from harness import cluster

    deadline = time.monotonic() + timeout_s
    direct: list[int] = []
    while time.monotonic() < deadline:
        direct = cluster.direct_ingress_ports(state, proxy_port)
        if len(direct) >= want:
            return direct
        time.sleep(1)
    if direct:
        return direct
    raise RuntimeError("Serve published no direct-ingress HTTP target (RAY_SERVE_THROUGHPUT_OPTIMIZED=1)")


def _wait_ranked(port: int, bundle: Path, timeout_s: float = 180) -> None:
    """/healthz answers once every stage's replica is up, but the first answers may still be degraded
    (a cold store read past its deadline): wait until a known user's answer is ranked, undegraded."""
    from loadtest.mix import bundle_ids

    users = bundle_ids(bundle)[0][:5].tolist()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for user in users:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.post(
                    f"http://127.0.0.1:{port}/recommend", json={"user_id": user, "debug": True}, timeout=10
                )
                body = r.json() if r.status_code == 200 else {}
                if not body.get("degraded", True) and "rank" in (body.get("timings_ms") or {}):
                    return
        time.sleep(0.5)
    raise RuntimeError(f"no request was ranked within {timeout_s:.0f} s of /healthz answering")


def run_floor(
    bundle_path: Path,
    repo: Path,
    settings: ServingSettings,
    requests: list[Request],
    duration_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    """The request flow in this process, one request after another: the same flow and stages the
    colocated ingress and the baseline run, with no HTTP and no hops."""
    import asyncio

    import faiss

    from serve_app.request.flow import in_process_flow

    faiss.omp_set_num_threads(1)  # as in a Ray replica (OMP_NUM_THREADS=1), so the work is the same
    flow, reader = in_process_flow(bundle_path, repo, settings)
    loop = asyncio.new_event_loop()
    tally, me, i = Tally(), psutil.Process(), 0
    try:
        end = time.perf_counter() + warmup_s
        while time.perf_counter() < end:
            r = requests[i % len(requests)]
            loop.run_until_complete(flow.run(r.user_id, r.k, tuple(r.exclude_item_ids)))
            i += 1
        cpu0, tally.start = time.process_time(), time.time()
        end = time.perf_counter() + duration_s
        while (t0 := time.perf_counter()) < end:
            r = requests[i % len(requests)]
            out = loop.run_until_complete(flow.run(r.user_id, r.k, tuple(r.exclude_item_ids)))
            elapsed_ms = (time.perf_counter() - t0) * 1000
            tally.latencies_ms.append(elapsed_ms)
            tally.degraded += out.degraded
            if out.fallback is not None:
                tally.fallback[out.fallback] = tally.fallback.get(out.fallback, 0) + 1
            if r.debug:
                tally.timings.append({**out.timings_ms, "total": elapsed_ms})
            i += 1
        tally.cpu_s, tally.last = time.process_time() - cpu0, time.time()
        tally.statuses = {200: len(tally.latencies_ms)}
    finally:
        reader.close()
        loop.close()
    level = merge([tally], duration_s)
    cpu = level.pop("client")["cpu_pct"]
    rss = me.memory_info().rss / 2**20
    level["client"] = {"processes": 0, "connections": 0, "cpu_pct": 0.0, "note": "in-process, no client"}
    level["server"] = {
        "cpu_pct": cpu,
        "rss_mib": round(rss, 1),
        "rss_peak_mib": round(rss, 1),
        "processes": 1,
    }
    return level


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """What a harness run against its own cluster starts from (chaos, soak, two nodes)."""

    bundle: Path
    repo: Path
    config: Path
    work: Path  # emptied: the run's Ray head and home live here
    payloads: list

    def __iter__(self) -> Iterator[Any]:  # bundle, repo, config, work, payloads = run_inputs(...)
        return iter((self.bundle, self.repo, self.config, self.work, self.payloads))


def add_target_args(parser: Any, direct: bool = True) -> None:
    """The options `run_inputs` reads: --bundle, --repo, --config (and --throughput-optimized, --balancer)."""
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts" / "current")
    parser.add_argument("--repo", type=Path, default=ROOT / "feature_repo")
    parser.add_argument("--config", type=Path, default=SERVE_CONFIG)
    if direct:
        parser.add_argument("--throughput-optimized", action="store_true")
        parser.add_argument(
            "--balancer",
            type=Path,
            help="with --throughput-optimized: HAProxy in front (cluster/balancer.yaml)",
        )


def run_inputs(opts: Any, n_requests: int) -> RunInputs:
    """opts.bundle/repo/config resolved, <opts.out>/work emptied, and `n_requests` of the request mix
    (no debug timings) over the bundle's users and items."""
    from loadtest import mix

    bundle = opts.bundle.resolve()
    work = Path(opts.out) / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    users, items = mix.bundle_ids(bundle)
    payloads = mix.http_payloads(mix.generate(users, items, n_requests, mix.MixSpec(debug_fraction=0.0)))
    return RunInputs(bundle, opts.repo.resolve(), opts.config.resolve(), work, payloads)


def half_capacity(
    client: Any, port: int, payloads: list, spread: tuple[int, ...] = ()
) -> tuple[float, float]:
    """(capacity, half of it): the whole answers (not degraded) a closed loop of 16 connections (over
    `port` and `spread`) gets through in 10 s, after 3 s that warm it up. Whole answers only: a
    degraded answer (the door's, or one past the deadline's budget) is quicker, and counting it made
    the graph's "half load" past what it sustains (docs/measurements/2026-12-07-chaos.md)."""
    from loadtest.client import Level

    client.run(Level("closed", 16, 3.0, port, drain_s=3.0, spread=spread), payloads)
    level = Level("closed", 16, 10.0, port, drain_s=3.0, spread=spread)
    capacity = merge(client.run(level, payloads), 10.0)["full_rps"]
    return capacity, max(1.0, round(capacity / 2, 1))
