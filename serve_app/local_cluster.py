"""Pieces of a local Ray cluster with the app deployed by `serve deploy` (`make run`: serve_app/make_run.py).

The head runs as `ray start --head --block` in its own session; everything Ray starts for it (GCS,
raylet, dashboard, workers) descends from that one process, so `stop` ends exactly that process tree
and nothing else Ray may be running on the machine.

Ray's token authentication is on (`RAY_AUTH_MODE=token`): each head gets a fresh 256-bit token in a
0600 file next to its state (`RAY_AUTH_TOKEN_PATH`), which `ray start`, `serve deploy` and every
process of the cluster read; calls to the dashboard's REST API carry it as a bearer token. Without
it, anyone who reaches one of the cluster's ports could submit a job and run code.

`--store redis` (`make run STORE=redis`): a loaded redis-server under `.run/redis/` as the online store
(serve_app/redis_store.py), recorded in the state file, so `stop` ends it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml

from serve_app import redis_server, redis_store
from serve_app.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".run" / "cluster.json"
BIN = Path(sys.executable).parent


def cluster_env(extra: dict[str, str] | None = None, token_path: str | None = None) -> dict[str, str]:
    """This process's environment for a Ray process or driver of ours: token auth on (with `token_path`,
    that cluster's token file), no usage stats."""
    env = {
        **os.environ,
        **(extra or {}),
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "FEAST_DISABLE_USAGE": "1",
    }
    if token_path is not None:
        env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the cluster's own file
        env["RAY_AUTH_TOKEN_PATH"] = token_path
    return env


def new_token_file(path: Path) -> Path:
    """A fresh random token (what `ray get-auth-token --generate` makes), readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def auth_headers(state: dict) -> dict[str, str]:
    """The bearer header the dashboard's REST API requires from clients of this head."""
    return {"Authorization": f"Bearer {Path(state['token_path']).read_text().strip()}"}


def _alive(state: dict) -> bool:
    return psutil.pid_exists(state["pid"]) and psutil.Process(state["pid"]).status() != psutil.STATUS_ZOMBIE


def start_head(
    state_file: Path = STATE,
    num_cpus: int = 2,
    env: dict[str, str] | None = None,
    throughput_optimized: bool = False,
    labels: dict[str, str] | None = None,
) -> dict:
    """Start a Ray head bound to 127.0.0.1 and wait until its dashboard (serve deploy's API) answers.

    `env` reaches every replica (e.g. RECSYS_HOME, which relative paths in the app args resolve against).
    `throughput_optimized` sets RAY_SERVE_THROUGHPUT_OPTIMIZED=1: the ingress replica also serves HTTP
    on a port of its own (direct ingress, bound to the config's host), and stages talk over gRPC.
    `labels`: the node's Ray labels (`recsys-node=head` with a worker node, serve_app/worker_node.py).
    """
    if throughput_optimized:
        env = {**(env or {}), "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    gcs, dashboard, metrics = free_port(), free_port(), free_port()
    # Short and unique per checkout: Ray's socket paths must stay under 107 characters.
    temp_dir = (
        Path(tempfile.gettempdir()) / f"recsys-ray-{hashlib.sha1(str(state_file).encode()).hexdigest()[:8]}"
    )
    state_file.parent.mkdir(parents=True, exist_ok=True)
    token = new_token_file(state_file.with_name(f"{state_file.stem}.token"))
    log = (state_file.parent / "ray-head.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--metrics-export-port={metrics}",  # known in advance: `make run` prints it
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            *(["--labels=" + ",".join(f"{k}={v}" for k, v in labels.items())] if labels else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cluster_env(env, str(token)),
        start_new_session=True,
        cwd=ROOT,
    )
    state = {
        "pid": proc.pid,
        "gcs": f"127.0.0.1:{gcs}",
        "dashboard": f"http://127.0.0.1:{dashboard}",
        "temp_dir": str(temp_dir),
        "session_dir": str(temp_dir / "session_latest"),
        "metrics": f"http://127.0.0.1:{metrics}/metrics",
        "throughput_optimized": throughput_optimized,
        "token_path": str(token),
    }
    state_file.write_text(json.dumps(state))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}; see {log.name}")
        try:
            answer = httpx.get(f"{state['dashboard']}/api/version", headers=auth_headers(state), timeout=2)
            if answer.status_code == 200:
                return state
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(state_file)
    raise RuntimeError(f"Ray head did not come up within 120 s; see {log.name}")


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
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    tree += _prometheus_processes(state)
    _, alive = psutil.wait_procs(tree, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    # SIGKILL is delivered asynchronously: return only once the survivors are gone, so a caller that
    # starts a new cluster or checks for leftovers right after does not race their exit.
    psutil.wait_procs(alive, timeout=10)
    stopped_redis = "redis" in state and redis_server.stop(redis_server.RedisServer(**state["redis"]))
    state_file.unlink(missing_ok=True)
    if state.get("token_path"):
        Path(state["token_path"]).unlink(missing_ok=True)
    return bool(tree) or stopped_redis


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
