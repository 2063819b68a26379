"""`make run` and `make stop`: start a local cluster with the app, its online store, its front door and
its Prometheus, and print how to reach them; stop all of it (the pieces are cluster.py's).

    python -m harness start --config cluster/serve_config.colocated.yaml --throughput-optimized ...
    python -m harness stop

A `stop` while a `start` is still under way ends that start first, then everything it had started.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from harness import cluster, door, processes, prometheus
from harness.ray_head import ROOT, STATE, head_alive, start_head
from serve_app.core.errors import ConfigError
from serve_app.core.paths import resolve_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--config", default=str(ROOT / "cluster" / "serve_config.yaml"))
    parser.add_argument(
        "--throughput-optimized",
        action="store_true",
        help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1: the ingress also serves on its own port (direct ingress)",
    )
    parser.add_argument(
        "--prometheus",
        choices=["auto", "on", "off"],
        default="auto",
        help="start a Prometheus scraping the cluster (auto: when the prometheus binary is installed)",
    )
    parser.add_argument(
        "--store",
        choices=["sqlite", "redis"],
        default="sqlite",
        help="the online store: the repo's SQLite file, or a redis-server started and loaded here",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: a worker node beside the head runs the Retriever and Ranker (harness/worker_node.py)",
    )
    parser.add_argument(
        "--balancer",
        default=str(ROOT / "cluster" / "balancer.yaml"),
        help="with --throughput-optimized: the front door's policy (cluster/balancer.yaml), or 'off'",
    )
    args = parser.parse_args(argv)
    if args.action == "stop":
        stopped = cluster.stop()
        print(
            "stopped the local Ray cluster"
            if stopped
            else "no local Ray cluster from this checkout is running"
        )
        return 0
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    if "pid" in state and head_alive(state):
        print("a local Ray cluster from this checkout is already running; `make stop` first to restart it")
        return 1
    if processes.alive(state.get("starter")):
        print(f"a `make run` of this checkout is starting (pid {state['starter']}); `make stop` ends it")
        return 1
    config = Path(args.config)
    try:
        cluster.check_config(config)  # an old key is named with what to do, before anything starts
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cluster.stop()  # what a run whose head died left behind (its redis-server, say)
    cluster.record_starter()  # from here on, `make stop` ends this start and what it started
    try:
        base, where, state, redis = _start(args, config)
        prometheus_line = _maybe_prometheus(state, args.prometheus)
        cluster.started(state)
    except BaseException:
        cluster.stop()
        raise
    _print_banner(args, state, base, where, redis)
    print(prometheus_line + "\n")
    return 0


def _start(args: argparse.Namespace, config: Path) -> tuple[str, str, dict, object]:
    data = yaml.safe_load(config.read_text())
    port = data.get("http_options", {}).get("port", 8000)
    two = args.nodes == 2
    start = cluster.start_two_nodes if two else start_head
    state = start(throughput_optimized=args.throughput_optimized)
    redis = None
    if args.store == "redis":
        repo = resolve_path(data["applications"][0].get("args", {}).get("feature_repo", "feature_repo"))
        redis = cluster.start_redis(state, repo)
    cluster.deploy(state, config, redis_address=redis.address if redis else None, two_nodes=two)
    cluster.wait_healthy(f"http://127.0.0.1:{port}", state)
    base, where = f"http://127.0.0.1:{port}", f"proxy: http://127.0.0.1:{port}"
    direct = cluster.direct_ingress_ports(state, port) if args.throughput_optimized else []
    if direct and args.balancer != "off":  # HAProxy in front of the ingresses' own ports: no proxy
        # hop, and overload refused before any replica pays for it
        base = door.start_for_cluster(state, STATE, Path(args.balancer), port)
        where = (
            f"HAProxy in front of the Ingress replicas' own ports {', '.join(map(str, direct))}; "
            f"the Serve proxy, http://127.0.0.1:{port}, also answers"
        )
    elif direct:
        base = f"http://127.0.0.1:{direct[0]}"
        where = (
            f"each Ingress replica's own port: {', '.join(map(str, direct))}; spread load over them "
            f"or use the proxy, http://127.0.0.1:{port}, which does"
        )
    return base, where, state, redis


def _print_banner(args: argparse.Namespace, state: dict, base: str, where: str, redis: object) -> None:
    store = f"Redis on {redis.address}" if redis else "SQLite"  # type: ignore[attr-defined]
    nodes = ""
    if args.nodes == 2:
        from harness.ray_head import serve_api

        worker = state["worker"]["node_id"]
        placed = {  # replicas per node, from Serve's state: what the label selectors did
            d: f"{n.count(worker)} on the worker, {len(n) - n.count(worker)} on the head"
            for d, n in serve_api(state).replica_nodes().items()
        }
        nodes = (
            f"\nTwo Ray nodes: the head (pid {state['pid']}) and a worker (process group "
            f"{state['worker']['pid']}, node {worker[:12]}). Replicas: "
            + "; ".join(f"{d} {w}" for d, w in placed.items())
            + "."
        )
    print(f"""
The recommender is up on {base} ({where});
Ray dashboard: {state["dashboard"]}; online store: {store}.{nodes}
Try:
  curl -s -X POST {base}/recommend -H 'Content-Type: application/json' \\
       -d '{{"user_id": 1, "k": 5}}'
API docs: {base}/docs     Stop it with: make stop
Metrics (Prometheus text, names ray_recsys_*): {state["metrics"]}""")


def _maybe_prometheus(state: dict, mode: str) -> str:
    if mode == "off" or (mode == "auto" and prometheus.binary() is None):
        why = "not asked for" if mode == "off" else "not installed: apt-get install prometheus"
        return f"Prometheus: {why} (docs/ops.md, Metrics)"
    url = cluster.start_prometheus(state)
    return (
        f"Prometheus: {url} (alerts: {url}/alerts; dashboard to import into Grafana: "
        "cluster/grafana/recsys_dashboard.json)"
    )


if __name__ == "__main__":
    sys.exit(main())
