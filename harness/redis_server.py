"""A local `redis-server` for the Redis online store: started on a loopback port, stopped by process id,
and loaded with the Feast CLI for a local cluster (`make run STORE=redis`, and the tests that do the same).

Used by the tests (a real server per fixture) and by `make run STORE=redis`. The server binds
127.0.0.1 only, keeps its files in its own directory, and persists with an append-only file fsynced on
every write (`appendfsync always`): a server killed and restarted on the same directory comes back
with every row that was materialized or pushed, so the serving path recovers without a new
`materialize`. The online store is still derived data (the offline sources can rebuild it), which is
why no RDB snapshots are taken (`--save ''`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from harness.ports import free_port

HOST = "127.0.0.1"


def executable() -> str | None:
    """The `redis-server` on PATH (None when it is not installed)."""
    return shutil.which("redis-server")


@dataclass(frozen=True)
class RedisServer:
    pid: int
    port: int
    dir: str

    @property
    def address(self) -> str:
        """host:port, the first part of Feast's Redis `connection_string` (REDIS_CONNECTION_STRING)."""
        return f"{HOST}:{self.port}"

    def to_dict(self) -> dict:
        return asdict(self)


def ping(port: int, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING on 127.0.0.1:port (raw RESP: no client library needed)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start(
    directory: Path, port: int | None = None, timeout_s: float = 10.0, env: dict[str, str] | None = None
) -> RedisServer:
    """Start redis-server with its data and log in `directory`; return once it answers PING.

    A given `port` restarts a server where clients expect it (after a crash, say); with none, a free
    loopback port is chosen, and chosen again if another process takes it before the server binds.
    The server runs in its own session, so it outlives the process that started it (`make run`);
    `env` is added to its environment (a cluster's mark, harness/processes.py).
    """
    exe = executable()
    if exe is None:
        raise FileNotFoundError("redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else 3
    for _ in range(attempts):
        chosen = port or free_port(HOST)
        args = [
            exe,
            "--bind", HOST,
            "--port", str(chosen),
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        # Its output goes to the log too (a bad option is reported before the log opens), never to the
        # caller's pipes: a server holding `make run | tee`'s pipe open would keep the pipe from closing.
        with (directory / "redis.log").open("ab") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if ping(chosen):
                return RedisServer(proc.pid, chosen, str(directory))
            time.sleep(0.02)
        if proc.poll() is None:  # alive but silent: not ours to leave behind
            stop(RedisServer(proc.pid, chosen, str(directory)))
            why = f"did not answer PING within {timeout_s:.0f} s"
        else:
            why = f"exited with status {proc.returncode}"
    raise RuntimeError(f"redis-server on port {chosen} {why}; see {directory / 'redis.log'}")


def _ours(server: RedisServer) -> psutil.Process | None:
    """The process, if it is still the redis-server on server.port (a recycled pid is left alone)."""
    try:
        proc = psutil.Process(server.pid)
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None
    # redis-server retitles itself "redis-server 127.0.0.1:PORT"
    words = " ".join(cmdline).split()
    is_redis = bool(words) and Path(words[0]).name == "redis-server"
    return proc if is_redis and f"{HOST}:{server.port}" in words else None


def stop(server: RedisServer, timeout_s: float = 10.0) -> bool:
    """SIGTERM (then SIGKILL) exactly this server; True if it was running."""
    proc = _ours(server)
    if proc is None:
        return False
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(signal.SIGCONT)  # a paused server (SIGSTOP in a test) cannot act on SIGTERM
        proc.terminate()
    try:
        proc.wait(timeout_s)
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            proc.wait(timeout_s)
    return True


def kill(server: RedisServer) -> None:
    """SIGKILL: a crash, nothing flushed beyond what the append-only file already holds."""
    proc = _ours(server)
    if proc is not None:
        proc.kill()
        proc.wait(10)


def pause(server: RedisServer, paused: bool) -> None:
    """SIGSTOP / SIGCONT: a server that accepts connections but never answers (a hung host)."""
    proc = _ours(server)
    if proc is None:
        raise ProcessLookupError(f"redis-server {server.pid} on port {server.port} is not running")
    proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)


REDIS_YAML = "feature_store.redis.yaml"  # in the Feast repository the app serves from
REDIS_ENV = "REDIS_CONNECTION_STRING"  # what feature_store.redis.yaml reads the address from


def start_loaded(
    directory: Path,
    repo: Path,
    started: Callable[[RedisServer], None] = lambda _: None,
    env: dict[str, str] | None = None,
) -> RedisServer:
    """A redis-server on a free loopback port with `directory` as its own (emptied first), loaded from
    `repo` with `feast apply` + `feast materialize-incremental`. `started` is called before the load,
    so a caller can record the server (to stop it) even if the load fails."""
    from serve_app.offline import feast_ops

    shutil.rmtree(directory, ignore_errors=True)
    server = start(directory, env=env)
    started(server)
    feast_ops.load_online_store(repo, repo / REDIS_YAML, {REDIS_ENV: server.address}, fresh=True)
    return server


def on_redis(config: dict, address: str) -> dict:
    """The serve config (a parsed serve_config.yaml) with every app reading the Redis store at
    `address`: the Redis yaml of its own Feast repo, and the address in its runtime_env."""
    for app in config["applications"]:
        args = app.setdefault("args", {})
        args["feature_store_yaml"] = str(Path(args.get("feature_repo", "feature_repo")) / REDIS_YAML)
        app.setdefault("runtime_env", {}).setdefault("env_vars", {})[REDIS_ENV] = address
    return config
