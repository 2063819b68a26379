"""The front door as a process: HAProxy in front of the ingress replicas, kept in step with Serve.

    python -m harness.door --state .run/cluster.json --policy cluster/balancer.yaml ...

`make run` starts it (`start_for_cluster`) and `make stop` ends it. Its policy and HAProxy configuration
are the product's (serve_app/control/frontdoor.py, haproxy_config.py): this is only the supervisor,
and harness/balancer.py one round of it. It runs HAProxy (the binary ray[serve] installs), and every
`sync_interval_s` reads the ports Serve publishes for the app
(`target_groups`, the supported way to find direct-ingress replicas) and re-points HAProxy's server
slots through its runtime API, so a replica Serve replaced on a new port takes traffic within about a
second and no reload drops a connection. A dead replica is out sooner: HAProxy marks a server down on
its first refused connection and sends the request to another one. If HAProxy itself dies, it is started
again at once with the current ports, on the listening socket this process holds and lends it: the
connections made meanwhile wait in the kernel's backlog, and only what the dead one held is lost.

An empty or unreadable `target_groups` (the controller restarting, the dashboard busy) keeps the last
ports: HAProxy's own health checks take out the ones that are really gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from harness.balancer import Balancer
from harness.ray_head import ROOT, cluster_env, serve_api
from serve_app.control.frontdoor import Popular, load_policy
from serve_app.core.errors import DependencyError


def popular_of() -> Callable[[list[int]], Popular | None]:
    """GET /popular of the first replica that answers: the list the door answers with."""
    client = httpx.Client(timeout=1.0)

    def read(ports: list[int]) -> Popular | None:
        for port in ports:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                answer = client.get(f"http://127.0.0.1:{port}/popular")
                if answer.status_code == 200:
                    return Popular.of(answer.json())
        return None

    return read


def serve_ports(state: dict, proxy_port: int) -> Callable[[], list[int] | None]:
    """The app's direct-ingress ports as Serve publishes them now; None when Serve cannot say."""
    api = serve_api(state)

    def read() -> list[int] | None:
        try:
            return api.direct_ingress_ports(proxy_port)
        except (DependencyError, ValueError, KeyError):
            return None

    return read


def run(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    if args.port is not None:
        policy = policy.model_copy(update={"port": args.port})
    state = json.loads(args.state.read_text())
    ports = serve_ports(state, args.proxy_port)
    balancer = Balancer(policy, args.run_dir, ports, popular_of())
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        balancer.start(ports() or [])
        print(f"balancer on http://{policy.host}:{policy.port}", flush=True)
        while not stopping and args.state.exists():
            try:
                balancer.step()
            except (OSError, RuntimeError, ValueError) as exc:  # logged, retried next round: keep the door
                print(f"balancer sync failed: {exc}", file=sys.stderr, flush=True)
            balancer.wait(policy.sync_interval_s)
    finally:
        balancer.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.door")
    parser.add_argument("--state", type=Path, required=True, help="the cluster's state file (cluster.py)")
    parser.add_argument("--policy", type=Path, required=True, help="cluster/balancer.yaml")
    parser.add_argument("--proxy-port", type=int, required=True, help="the Serve proxy's port, not a target")
    parser.add_argument("--run-dir", type=Path, required=True, help="its config, socket and log")
    parser.add_argument("--port", type=int, help="listen here instead of the policy's port")
    return run(parser.parse_args(argv))


def start_for_cluster(
    state: dict, state_file: Path, policy_path: Path, proxy_port: int, port: int | None = None
) -> str:
    """Start the balancer for the cluster in `state`, recorded in its state file (so cluster.stop ends
    it), and wait until a request through it reaches an ingress replica; its URL."""
    policy = load_policy(policy_path)
    port = port or policy.port
    run_dir = state_file.parent / f"{state_file.stem}-balancer"
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "balancer.log"
    with log.open("w") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.door",
                "--state",
                str(state_file),
                "--policy",
                str(policy_path),
                "--proxy-port",
                str(proxy_port),
                "--run-dir",
                str(run_dir),
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cluster_env(token_path=state["token_path"], state_file=state_file),
            start_new_session=True,  # its own process group: cluster.stop ends it and its HAProxy
            cwd=ROOT,
        )
    url = f"http://{policy.host}:{port}"
    state["balancer"] = {"pid": proc.pid, "url": url, "run_dir": str(run_dir)}
    state_file.write_text(json.dumps(state))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the balancer exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return url
        time.sleep(0.3)
    raise RuntimeError(f"nothing answered through the balancer on {url} within 60 s; see {log}")


if __name__ == "__main__":
    sys.exit(main())
