"""A Ray head of our own, started as its own process, and this process as a driver of one.

The head runs as `ray start --head --block` in its own session; everything Ray starts for it (GCS,
raylet, dashboard, workers) descends from that one process and carries the cluster's mark
(processes.py), so `cluster.stop` ends exactly those and nothing else Ray may be running here.

Ray's token authentication is on (`RAY_AUTH_MODE=token`): each head gets a fresh 256-bit token in a
0600 file next to its state (`RAY_AUTH_TOKEN_PATH`), which `ray start`, `serve deploy` and every
process of the cluster read; calls to the dashboard's REST API carry it as a bearer token. Without
it, anyone who reaches one of the cluster's ports could submit a job and run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from harness import processes
from harness.ports import free_ports
from serve_app.control.serve_api import ServeApi
from serve_app.core.paths import LOCAL_CLUSTER_STATE, NODE_ENV, PROJECT_ROOT

ROOT = PROJECT_ROOT
STATE = LOCAL_CLUSTER_STATE
BIN = Path(sys.executable).parent
# Ray's background processes (dashboard, agents, monitors) at the lowest priority, and the replicas
# there too (the raylet's niceness, which they inherit): on a node shared with the front door and the
# GCS, both at 0, the door answers first; with the replicas at 0 or 5 beside it its answers' p99 was
# ~140 ms at 3x, at 19 11-30 ms (docs/decisions.md, "Niceness"). RECSYS_DAEMON_NICENESS and
# RECSYS_REPLICA_NICENESS override them (a node without a door: replicas at 0).
DAEMON_NICENESS = int(os.environ.get("RECSYS_DAEMON_NICENESS", "19"))
REPLICA_NICENESS = int(os.environ.get("RECSYS_REPLICA_NICENESS", "19"))


def cluster_env(
    extra: dict[str, str] | None = None, token_path: str | None = None, state_file: Path | None = None
) -> dict[str, str]:
    """This process's environment for a Ray process or driver of ours: token auth on (with `token_path`,
    that cluster's token file), no usage stats; with `state_file`, the mark of that cluster's processes."""
    env = {
        **os.environ,
        **NODE_ENV,
        **(extra or {}),
        **(processes.mark(state_file) if state_file is not None else {}),
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
    return {"Authorization": f"Bearer {token_of(state)}"}


def token_of(state: dict) -> str:
    return Path(state["token_path"]).read_text().strip()


def serve_api(state: dict, timeout_s: float = 10) -> ServeApi:
    """Serve's REST API on this head's dashboard, with its token."""
    return ServeApi(state["dashboard"], token_of(state), timeout_s=timeout_s)


def head_alive(state: dict) -> bool:
    """The head in `state` still runs (not exited, nor left as a zombie)."""
    return processes.alive(state.get("pid"))


def start_head(
    state_file: Path = STATE,
    num_cpus: int = 2,
    env: dict[str, str] | None = None,
    throughput_optimized: bool = False,
    labels: dict[str, str] | None = None,
    dashboard: bool = True,
) -> dict:
    """Start a Ray head bound to 127.0.0.1 and wait until its dashboard (serve deploy's API) answers,
    or, with `dashboard=False` (a head only drivers use, as the tests' are), until `ray start` reports
    its raylet registered.

    `env` reaches every replica (e.g. RECSYS_HOME, which relative paths in the app args resolve against).
    `throughput_optimized` sets RAY_SERVE_THROUGHPUT_OPTIMIZED=1: the ingress replica also serves HTTP
    on a port of its own (direct ingress, bound to the config's host), and stages talk over gRPC.
    `labels`: the node's Ray labels (`recsys-node=head` with a worker node, worker_node.py).
    """
    if throughput_optimized:
        env = {**(env or {}), "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    # Every port free, none of Ray's defaults (its agent's 52365, Ray Client's 10001): another head on
    # this machine (a second checkout, a test running beside this one) may hold those.
    gcs, dashboard_port, metrics, agent, client = free_ports(5)
    # Short and unique per checkout: Ray's socket paths must stay under 107 characters.
    temp_dir = (
        Path(tempfile.gettempdir()) / f"recsys-ray-{hashlib.sha1(str(state_file).encode()).hexdigest()[:8]}"
    )
    state_file.parent.mkdir(parents=True, exist_ok=True)
    token = new_token_file(state_file.with_name(f"{state_file.stem}.token"))
    log = state_file.parent / "ray-head.log"
    with log.open("w") as out:  # the child keeps its own copy of the file
        proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs}",
                f"--num-cpus={num_cpus}",
                *(
                    [
                        "--include-dashboard=true",
                        "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard_port}",
                    ]
                    if dashboard
                    else ["--include-dashboard=false"]
                ),
                f"--metrics-export-port={metrics}",  # known in advance: `make run` prints it
                f"--dashboard-agent-listen-port={agent}",
                f"--ray-client-server-port={client}",
                "--disable-usage-stats",
                f"--temp-dir={temp_dir}",
                *(["--labels=" + ",".join(f"{k}={v}" for k, v in labels.items())] if labels else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cluster_env(env, str(token), state_file),
            start_new_session=True,
            cwd=ROOT,
        )
    state = {
        **_starter(state_file),
        "pid": proc.pid,
        "gcs": f"127.0.0.1:{gcs}",
        "dashboard": f"http://127.0.0.1:{dashboard_port}" if dashboard else None,
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
            _give_up(state_file, proc.pid, token)
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{_tail(log)}")
        if _head_ready(state, log):
            renice_node(proc.pid)
            return state
        time.sleep(0.5)
    _give_up(state_file, proc.pid, token)
    raise RuntimeError(f"Ray head did not come up within 120 s:\n{_tail(log)}")


def renice_node(pid: int) -> None:
    """The niceness a node started with `ray start --block` (pid) should have: REPLICA_NICENESS for its
    raylet, DAEMON_NICENESS for Ray's daemons (processes.renice_node)."""
    processes.renice_node(pid, REPLICA_NICENESS, DAEMON_NICENESS)


def _starter(state_file: Path) -> dict:
    """The `make run` in progress that a state file names (see cluster.stop), kept when the head's
    record replaces the file."""
    with contextlib.suppress(OSError, ValueError):
        return {k: v for k, v in json.loads(state_file.read_text()).items() if k == "starter"}
    return {}


def _give_up(state_file: Path, pid: int, token: Path) -> None:
    """A head that failed to start leaves nothing behind: its processes, state and token go."""
    processes.stop_all(processes.tree(pid) + processes.marked(state_file))
    state_file.unlink(missing_ok=True)
    token.unlink(missing_ok=True)


def _head_ready(state: dict, log: Path) -> bool:
    if state["dashboard"] is None:
        # printed once the head's node (GCS, raylet) is registered (ray.scripts.scripts.start)
        return "Ray runtime started." in log.read_text(errors="replace")
    try:
        answer = httpx.get(f"{state['dashboard']}/api/version", headers=auth_headers(state), timeout=2)
        return answer.status_code == 200
    except httpx.HTTPError:
        return False


def _tail(log: Path, lines: int = 30) -> str:
    """The end of `ray start`'s output, so an error says why (CI shows only what a test raised)."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def driver_of(state: dict, namespace: str | None = None, log_to_driver: bool = False) -> Iterator[None]:
    """This process as a driver of the head in `state`, with its token; as it was again after.

    A process that has driven a cluster keeps gRPC threads, so it connects to heads started as their
    own processes (`start_head`) rather than starting one in-process: `ray.init()` forks the GCS and
    raylet with Python code to run before exec, which can hang in a child forked while those threads
    hold locks (CI saw the GCS never write its port).
    """
    import ray
    from ray._raylet import AuthenticationTokenLoader

    saved = dict(os.environ)
    os.environ.update(cluster_env(None, state["token_path"]))
    # Ray keeps the token a process first read: a process that drove another cluster (a test
    # session's) would present that one.
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        ray.init(address=state["gcs"], namespace=namespace, log_to_driver=log_to_driver)
        yield
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        AuthenticationTokenLoader.instance().reset_cache()
