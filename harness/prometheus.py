"""A real Prometheus next to a local Ray cluster: its config, its process, and queries to it.

Prometheus finds Ray's metrics endpoints through the service-discovery file Ray keeps up to date in
its session directory (`prom_metrics_service_discovery.json`: every node's metrics agent, the
autoscaler's and the dashboard's), so replicas started or moved later are scraped without a restart.
`cluster/prometheus/prometheus.yml` is the config to ship; `render_config` points it at one session's
file and at the alert rules beside it. The server binds 127.0.0.1 only: it has no authentication.
`cluster.start_prometheus` (make run) and the tests use this.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness.ports import free_port
from serve_app.core.paths import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "cluster" / "prometheus"
TEMPLATE = CONFIG_DIR / "prometheus.yml"
DEFAULT_PORT = 9090
DISCOVERY_FILE = "prom_metrics_service_discovery.json"  # ray._private.ray_constants


def binary() -> str | None:
    """The `prometheus` executable (Debian's package installs /usr/bin/prometheus), if installed."""
    return shutil.which("prometheus")


def render_config(session_dir: Path, out_dir: Path, scrape_interval_s: float | None = None) -> Path:
    """The shipped config, scraping the Ray session at `session_dir`, with absolute rule paths."""
    config = yaml.safe_load(TEMPLATE.read_text())
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(Path(session_dir) / DISCOVERY_FILE)]
    config["rule_files"] = [str((CONFIG_DIR / f).resolve()) for f in config.get("rule_files", [])]
    if scrape_interval_s is not None:
        interval = f"{max(1, round(scrape_interval_s))}s"
        config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(
    config: Path,
    data_dir: Path,
    port: int,
    log_path: Path,
    timeout_s: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start Prometheus on 127.0.0.1:`port` and wait until it is ready; raise with its log if not.
    `env` is added to its environment (a cluster's mark, harness/processes.py)."""
    exe = binary()
    if exe is None:
        raise RuntimeError("prometheus is not installed (Debian/Ubuntu: apt-get install prometheus)")
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=2d",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `stop` ends it and nothing else
            env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"prometheus was not ready within {timeout_s:.0f} s; see {log_path}")


def start_for_session(
    session_dir: Path,
    run_dir: Path,
    scrape_interval_s: float | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Render the config for a Ray session and start Prometheus on 127.0.0.1:9090, or on a free port
    when 9090 is taken (by another Prometheus, say). Returns the process and its URL."""
    config = render_config(session_dir, run_dir, scrape_interval_s)
    port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else free_port()
    proc = start(config, run_dir / "data", port, run_dir / "prometheus.log", env=env)
    return proc, f"http://127.0.0.1:{port}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def query(url: str, promql: str, timeout_s: float = 10) -> list[dict[str, Any]]:
    """The result vector of an instant query (raises on a query Prometheus refuses)."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=timeout_s)
    body = answer.json()
    if answer.status_code != 200 or body.get("status") != "success":
        raise ValueError(f"prometheus refused {promql!r}: {body.get('error', answer.text[:200])}")
    return body["data"]["result"]


def wait_for(
    url: str,
    promql: str,
    timeout_s: float = 120,
    done: Callable[[list[dict[str, Any]]], bool] = bool,
) -> list[dict[str, Any]]:
    """Poll an instant query until `done(result)` (default: it returns data). Ray exports each
    series every few seconds and Prometheus scrapes on its own clock, so the series of one burst of
    traffic appear one scrape apart: wait for all of those you need, not the first."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = query(url, promql)
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(2)


def targets_up(url: str, timeout_s: float = 0) -> list[str]:
    """The scrape targets Prometheus reports healthy (polling up to timeout_s for the first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        active = httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        up = [t["scrapeUrl"] for t in active if t.get("health") == "up"]
        if up or time.monotonic() > deadline:
            return up
        time.sleep(1)
