"""Pieces of a local Ray cluster with the app deployed by `serve deploy` (`make run`: serve_app/make_run.py):
its head (serve_app/ray_head.py), deploy, readiness, the ports Serve publishes, and `stop`, which ends
the head's process tree and what was started beside it.

`--store redis` (`make run STORE=redis`): a loaded redis-server under `.run/redis/` as the online store
(serve_app/redis_store.py), recorded in the state file, so `stop` ends it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import yaml

from serve_app import redis_server, redis_store
from serve_app.ray_head import BIN, ROOT, STATE, auth_headers, cluster_env


def start_redis(state: dict, repo: Path, state_file: Path = STATE) -> redis_server.RedisServer:
    """A fresh redis-server under the state file's folder, loaded from `repo`; recorded in the state
    before the load (so `stop` ends it even when the load fails)."""

    def record(server: redis_server.RedisServer) -> None:
        state["redis"] = server.to_dict()
        state_file.write_text(json.dumps(state))

    return redis_store.start_loaded(state_file.parent / "redis", repo, record)


def deploy(state: dict, config: Path, http_port: int | None = None, redis_address: str | None = None) -> Path:
    """`serve deploy` the config to the head in `state` (on another HTTP port, or on Redis, when asked)."""
    if http_port is not None or redis_address is not None:
        data = yaml.safe_load(config.read_text())
        if http_port is not None:
            data.setdefault("http_options", {})["port"] = http_port
        if redis_address is not None:
            redis_store.on_redis(data, redis_address)
        config = Path(state["temp_dir"] + "-serve_config.yaml")
        config.write_text(yaml.safe_dump(data))
    subprocess.run(
        [str(BIN / "serve"), "deploy", str(config), "--address", state["dashboard"]],
        check=True,
        env=cluster_env(token_path=state["token_path"]),
        cwd=ROOT,
    )
    return config


def wait_healthy(base_url: str, state: dict, timeout_s: float = 300, app: str = "recsys") -> None:
    """Until Serve reports the app RUNNING (every deployment healthy) and its /healthz answers 200."""
    deadline = time.monotonic() + timeout_s
    status = "unknown"
    while time.monotonic() < deadline:
        try:
            details = httpx.get(
                f"{state['dashboard']}/api/serve/applications/", headers=auth_headers(state), timeout=5
            ).json()
            info = details.get("applications", {}).get(app, {})
            status = info.get("status", "NOT_STARTED")
            if status == "DEPLOY_FAILED":
                raise RuntimeError(f"the application failed to deploy: {info.get('message', '')}")
            if status == "RUNNING" and httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{app} was not ready within {timeout_s:.0f} s (Serve status {status})")


def http_ports(state: dict, app: str = "recsys") -> list[int]:
    """Ports that serve `app` over HTTP, as Serve publishes them (`target_groups` of its REST API).

    With direct ingress these are the ingress replicas' own ports, the supported way for a client or a
    load balancer to find them; otherwise the proxies'. Only the port is used: Serve publishes the
    node's primary IP, while the replica binds to http_options.host (127.0.0.1 in our configs).
    """
    details = httpx.get(
        f"{state['dashboard']}/api/serve/applications/", headers=auth_headers(state), timeout=10
    ).json()
    return [
        int(t["port"])
        for group in details.get("target_groups", [])
        if group.get("protocol") == "HTTP" and group.get("app_name", app) in (app, "")
        for t in group.get("targets", [])
    ]


def direct_ingress_ports(state: dict, proxy_port: int, app: str = "recsys") -> list[int]:
    """The ingress replicas' own HTTP ports (RAY_SERVE_THROUGHPUT_OPTIMIZED=1), sorted; [] without."""
    return sorted(p for p in http_ports(state, app) if p != proxy_port)


def stop(state_file: Path = STATE) -> bool:
    """Terminate the process tree of the head this checkout started, its worker node's process group
    (serve_app/worker_node.py), its balancer and its redis-server if it has them; True if there was any."""
    from serve_app import worker_node

    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    try:
        root = psutil.Process(state["pid"])
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        tree = []
    tree += [p for p in worker_node.processes(state) if p not in tree]
    # the balancer and its HAProxy: one process group (serve_app/balancer_process.py), even if orphaned
    tree += [p for p in process_group(state.get("balancer", {}).get("pid")) if p not in tree]
    tree += _prometheus_processes(state)
    # The roots first: `ray start --block` shuts its GCS, raylet and agents down in order (about 2 s);
    # sent to all at once, those wait on each other and need the SIGKILL 15 s later. Then whatever is
    # left (an orphan whose parent died, a process that ignored it), then SIGKILL.
    pids = {p.pid for p in tree}
    roots = [p for p in tree if _parent_pid(p) not in pids]
    alive = tree
    for victims, signum, wait_s in (
        (roots, signal.SIGTERM, 10),
        (tree, signal.SIGTERM, 5),
        (tree, signal.SIGKILL, 10),
    ):
        for p in victims:
            if p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signum)
        # SIGKILL too is delivered asynchronously: return only once the processes are gone, so a caller
        # that starts a new cluster or checks for leftovers right after does not race their exit.
        _, alive = psutil.wait_procs(alive, timeout=wait_s)
        if not alive:
            break
    stopped_redis = "redis" in state and redis_server.stop(redis_server.RedisServer(**state["redis"]))
    state_file.unlink(missing_ok=True)
    if state.get("token_path"):
        Path(state["token_path"]).unlink(missing_ok=True)
    return bool(tree) or stopped_redis


def _parent_pid(p: psutil.Process) -> int | None:
    try:
        return p.ppid()
    except psutil.Error:
        return None


def process_group(pgid: int | None) -> list[psutil.Process]:
    """Every process of the process group `pgid` (one we started with start_new_session) and what those
    started, even in groups of their own (Ray puts each worker process in one); [] for None."""
    if not pgid:
        return []
    group = []
    for p in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(p.pid) == pgid:
                group.append(p)
    found = {p.pid: p for p in group}
    for p in group:
        with contextlib.suppress(psutil.Error):
            found.update((c.pid, c) for c in p.children(recursive=True))
    return list(found.values())


def start_prometheus(state: dict, state_file: Path = STATE, scrape_interval_s: float | None = None) -> str:
    """Prometheus scraping this head's session, recorded in the state so `stop` ends it too."""
    from serve_app import prometheus

    run_dir = state_file.parent / f"{state_file.stem}-prometheus"
    proc, url = prometheus.start_for_session(Path(state["session_dir"]), run_dir, scrape_interval_s)
    state["prometheus"] = {"pid": proc.pid, "url": url}
    state_file.write_text(json.dumps(state))
    return url


def _prometheus_processes(state: dict) -> list[psutil.Process]:
    pid = state.get("prometheus", {}).get("pid")
    try:
        return [psutil.Process(pid)] if pid else []
    except psutil.NoSuchProcess:
        return []
