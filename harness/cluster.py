"""A local Ray cluster with the app deployed by `serve deploy`, as `make run` and the tests start it:
deploy, readiness, the ports Serve publishes, and `stop`, which ends everything its state file records.

The state file (`.run/cluster.json` for `make run`, a temporary one per test) names the head
(ray_head.py), a worker node (worker_node.py), the front door (door.py), Prometheus and a
redis-server (`make run STORE=redis`, under `.run/redis/`), each recorded as it starts, and a `make
run` still starting (`starter`). Every one of those processes also carries the cluster's mark
(processes.py), so `stop` ends what an interrupted start had not recorded yet.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import yaml
from pydantic import ValidationError

from harness import processes, redis_server, worker_node
from harness.ray_head import BIN, ROOT, STATE, cluster_env, serve_api, start_head
from serve_app.core.errors import ConfigError, DependencyError
from serve_app.core.settings import AppArgs

STARTER_GRACE_S = 30  # how long `stop` lets an interrupted `make run` exit before it is killed


def check_config(config: Path) -> None:
    """Refuse a Serve config whose app args this code would refuse at deploy, with the reason (a key
    that was removed says what to do), before any process starts."""
    for app in yaml.safe_load(config.read_text()).get("applications", []):
        try:
            AppArgs.model_validate(app.get("args") or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"{config}: application {app.get('name')!r}: {problems}") from None


def start_two_nodes(
    state_file: Path = STATE, env: dict[str, str] | None = None, throughput_optimized: bool = False
) -> dict:
    """The head (1 Ray CPU: the Ingress, the proxy and Serve's controller) and a worker node (2: up to
    3 replicas of each stage at 0.25), both labelled; what `make run NODES=2` and the tests start."""
    state = start_head(
        state_file,
        num_cpus=1,
        env=env,
        throughput_optimized=throughput_optimized,
        labels=worker_node.HEAD_LABELS,
    )
    try:
        worker_node.start_worker(state, state_file, env=env)
    except Exception:
        stop(state_file)
        raise
    return state


def start_redis(state: dict, repo: Path, state_file: Path = STATE) -> redis_server.RedisServer:
    """A fresh redis-server under the state file's folder, loaded from `repo`; recorded in the state
    before the load (so `stop` ends it even when the load fails)."""

    def record(server: redis_server.RedisServer) -> None:
        state["redis"] = server.to_dict()
        state_file.write_text(json.dumps(state))

    return redis_server.start_loaded(
        state_file.parent / "redis", repo, record, env=processes.mark(state_file)
    )


def deploy(
    state: dict,
    config: Path,
    http_port: int | None = None,
    redis_address: str | None = None,
    two_nodes: bool = False,
) -> Path:
    """`serve deploy` the config to the head in `state` (on another HTTP port, on Redis, or placed on
    the head and its worker node, when asked); returns the config deployed."""
    check_config(config)
    if two_nodes:
        config = worker_node.place(config, Path(state["temp_dir"] + "-two_nodes.yaml"))
    if http_port is not None or redis_address is not None:
        data = yaml.safe_load(config.read_text())
        if http_port is not None:
            data.setdefault("http_options", {})["port"] = http_port
        if redis_address is not None:
            redis_server.on_redis(data, redis_address)
        config = Path(state["temp_dir"] + "-serve_config.yaml")
        config.write_text(yaml.safe_dump(data))
    subprocess.run(
        [str(BIN / "serve"), "deploy", str(config), "--address", state["dashboard"]],
        check=True,
        env=cluster_env(token_path=state["token_path"]),
        cwd=ROOT,
    )
    return config


def wait_healthy(base_url: str, state: dict, timeout_s: float = 300) -> None:
    """Until Serve reports the app RUNNING (every deployment healthy) and its /healthz answers 200."""
    api = serve_api(state, timeout_s=5)
    deadline = time.monotonic() + timeout_s
    status = "unknown"
    while time.monotonic() < deadline:
        try:
            status, message = api.status()
            if status == "DEPLOY_FAILED":
                raise RuntimeError(f"the application failed to deploy: {message}")
            if status == "RUNNING" and httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                return
        except (httpx.HTTPError, DependencyError):
            pass
        time.sleep(1)
    raise RuntimeError(f"the app was not ready within {timeout_s:.0f} s (Serve status {status})")


def direct_ingress_ports(state: dict, proxy_port: int) -> list[int]:
    """The ingress replicas' own HTTP ports (RAY_SERVE_THROUGHPUT_OPTIMIZED=1), sorted; [] without."""
    return serve_api(state).direct_ingress_ports(proxy_port)


def start_prometheus(state: dict, state_file: Path = STATE, scrape_interval_s: float | None = None) -> str:
    """Prometheus scraping this head's session, recorded in the state so `stop` ends it too."""
    from harness import prometheus

    run_dir = state_file.parent / f"{state_file.stem}-prometheus"
    proc, url = prometheus.start_for_session(
        Path(state["session_dir"]), run_dir, scrape_interval_s, env=processes.mark(state_file)
    )
    state["prometheus"] = {"pid": proc.pid, "url": url}
    state_file.write_text(json.dumps(state))
    return url


def record_starter(state_file: Path = STATE) -> None:
    """This process is starting the cluster of `state_file`: a `stop` meanwhile ends it first."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"starter": psutil.Process().pid}))


def started(state: dict, state_file: Path = STATE) -> None:
    """The start is complete: a later `stop` has no starter to wait for."""
    state.pop("starter", None)
    state_file.write_text(json.dumps(state))


def stop(state_file: Path = STATE) -> bool:
    """End everything the cluster of `state_file` runs: a `make run` still starting it (first, so it
    starts nothing more), the head's process tree, its worker node's process group, its front door,
    Prometheus, its redis-server, and any process carrying its mark. True if there was any."""
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    starter = state.get("starter")
    stopped_starter = starter != psutil.Process().pid and _end_starter(starter)
    with contextlib.suppress(OSError, ValueError):  # what the starter recorded before it ended
        state = json.loads(state_file.read_text())
    procs = [
        *processes.tree(state.get("pid")),
        *worker_node.processes(state),
        # the front door and its HAProxy: one process group (door.py), even if orphaned
        *processes.process_group(state.get("balancer", {}).get("pid")),
        *processes.tree(state.get("prometheus", {}).get("pid")),
        *processes.marked(state_file),
    ]
    processes.stop_all(procs)
    # A process can be born while the others stop (a daemon, slow at nice 19, starting a child as it
    # goes down): what still carries the mark is stopped too, until nothing does.
    for _ in range(5):
        late = processes.marked(state_file)
        if not late:
            break
        processes.stop_all(late)
    stopped_redis = "redis" in state and redis_server.stop(redis_server.RedisServer(**state["redis"]))
    state_file.unlink(missing_ok=True)
    if state.get("token_path"):
        Path(state["token_path"]).unlink(missing_ok=True)
    return bool(procs) or stopped_redis or stopped_starter


def _end_starter(pid: int | None) -> bool:
    """SIGTERM a `make run` that is still starting, and wait until it has exited (SIGKILL past the
    grace): once it is gone, it cannot start anything after `stop` looked."""
    if not processes.alive(pid):
        return False
    for signum, wait_s in ((signal.SIGTERM, STARTER_GRACE_S), (signal.SIGKILL, 10)):
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).send_signal(signum)
        if processes.wait_gone(pid, wait_s):
            break
    return True
