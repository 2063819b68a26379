"""`make run` and `make stop`: start a local cluster with the app, its online store and its Prometheus,
and print how to reach them (the pieces are serve_app/local_cluster.py's)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from serve_app import balancer_process, worker_node
from serve_app.config import resolve_path
from serve_app.local_cluster import (
    deploy,
    direct_ingress_ports,
    start_prometheus,
    start_redis,
    stop,
    wait_healthy,
)
from serve_app.ray_head import ROOT, STATE, head_alive, start_head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.make_run")
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
        help="2: a worker node beside the head runs the Retriever and Ranker (serve_app/worker_node.py)",
    )
    parser.add_argument(
        "--balancer",
        default=str(ROOT / "cluster" / "balancer.yaml"),
        help="with --throughput-optimized: the front door's policy (serve_app/balancer.py), or 'off'",
    )
    args = parser.parse_args(argv)
    if args.action == "stop":
        print(
            "stopped the local Ray cluster"
            if stop()
            else "no local Ray cluster from this checkout is running"
        )
        return 0
    if STATE.exists() and head_alive(json.loads(STATE.read_text())):
        print("a local Ray cluster from this checkout is already running; `make stop` first to restart it")
        return 1
    stop()  # what a run whose head died left behind (its redis-server, say)
    config = Path(args.config)
    data = yaml.safe_load(config.read_text())
    port = data.get("http_options", {}).get("port", 8000)
    if args.nodes == 2:
        state = worker_node.start_cluster(throughput_optimized=args.throughput_optimized)
    else:
        state = start_head(throughput_optimized=args.throughput_optimized)
    redis = None
    try:
        if args.store == "redis":
            repo = resolve_path(data["applications"][0].get("args", {}).get("feature_repo", "feature_repo"))
            redis = start_redis(state, repo)
        (worker_node.deploy if args.nodes == 2 else deploy)(
            state, config, redis_address=redis.address if redis else None
        )
        wait_healthy(f"http://127.0.0.1:{port}", state)
        base, where = f"http://127.0.0.1:{port}", f"proxy: http://127.0.0.1:{port}"
        direct = direct_ingress_ports(state, port) if args.throughput_optimized else []
        if direct and args.balancer != "off":  # HAProxy in front of the ingresses' own ports: no proxy
            # hop, and overload refused before any replica pays for it
            base = balancer_process.start_for_cluster(state, STATE, Path(args.balancer), port)
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
        prometheus_line = _maybe_prometheus(state, args.prometheus)
    except Exception:
        stop()
        raise
    store = f"Redis on {redis.address}" if redis else "SQLite"
    nodes = ""
    if args.nodes == 2:
        worker = state["worker"]["node_id"]
        where = {  # replicas per node, from Serve's state: what the label selectors did
            d: f"{n.count(worker)} on the worker, {len(n) - n.count(worker)} on the head"
            for d, n in worker_node.replica_nodes(state).items()
        }
        nodes = (
            f"\nTwo Ray nodes: the head (pid {state['pid']}) and a worker (process group "
            f"{state['worker']['pid']}, node {worker[:12]}). Replicas: "
            + "; ".join(f"{d} {w}" for d, w in where.items())
            + "."
        )
    print(f"""
The recommender is up on {base} ({where});
Ray dashboard: {state["dashboard"]}; online store: {store}.{nodes}
Try:
  curl -s -X POST {base}/recommend -H 'Content-Type: application/json' \\
       -d '{{"user_id": 1, "k": 5}}'
API docs: {base}/docs     Stop it with: make stop
Metrics (Prometheus text, names ray_recsys_*): {state["metrics"]}
{prometheus_line}
""")
    return 0


def _maybe_prometheus(state: dict, mode: str) -> str:
    from serve_app import prometheus

    if mode == "off" or (mode == "auto" and prometheus.binary() is None):
        why = "not asked for" if mode == "off" else "not installed: apt-get install prometheus"
        return f"Prometheus: {why} (README, Operating it)"
    url = start_prometheus(state)
    return (
        f"Prometheus: {url} (alerts: {url}/alerts; dashboard to import into Grafana: "
        "cluster/grafana/recsys_dashboard.json)"
    )


if __name__ == "__main__":
    sys.exit(main())
