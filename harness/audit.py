"""What a local Ray cluster exposes: every socket its processes listen on, and which answer strangers.

`python -m harness.audit` audits the head `make run` started (or `--state` another's):
each listening TCP socket of the head's process tree, its owner, and what a caller without the token
gets from beyond this host. Ray 2.60 binds most of its ports to all interfaces or the node's address
whatever `--node-ip-address` says (it resolves 127.0.0.1 to a reachable address), so the token is
what guards them: HTTP endpoints must answer 401/403, gRPC services UNAUTHENTICATED. Ray's Prometheus
exporters (dashboard, autoscaler monitor, each node's metrics agent) answer anyone, read-only, and
cannot be bound to loopback: keep their ports behind the firewall. Exit status 1 if a socket is open.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str
    ip: str
    port: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.ip).is_loopback

    @property
    def all_interfaces(self) -> bool:
        return ipaddress.ip_address(self.ip).is_unspecified


def _name(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        cmd = p.cmdline()
        # Ray names its workers in the process title ("ray::ServeReplica:..."), agents by their script.
        if cmd and cmd[0].startswith("ray::"):
            return cmd[0].split(" ")[0]
        scripts = [Path(c).name for c in cmd[1:3] if c.endswith(".py")]
        return scripts[0] if scripts else p.name()
    return "?"


def listeners(*root_pids: int) -> list[Listener]:
    """Listening TCP sockets of the processes `root_pids` and all their descendants."""
    roots = [psutil.Process(pid) for pid in root_pids]
    out = []
    for p in [q for root in roots for q in (root, *root.children(recursive=True))]:
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.Error:  # exited meanwhile
            continue
        name = _name(p)
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                out.append(Listener(p.pid, name, c.laddr.ip, c.laddr.port))
    return sorted(out, key=lambda s: (s.process, s.port))


# One harmless call per Ray gRPC service we know (empty request): under token auth each is refused
# with UNAUTHENTICATED before it runs; a service that is not on a port answers UNIMPLEMENTED.
GRPC_PROBES = (
    "/ray.rpc.NodeInfoGcsService/GetClusterId",  # GCS
    "/ray.rpc.NodeManagerService/GetNodeStats",  # raylet
    "/ray.rpc.ObjectManagerService/Pull",  # raylet's object manager
    "/ray.rpc.CoreWorkerService/NumPendingTasks",  # every worker, Serve replicas included
    "/ray.rpc.ReporterService/GetTraceback",  # dashboard agent
    "/ray.rpc.RayletDriver/ClusterInfo",  # Ray Client server (ray://)
    "/ray.serve.ASGIService/HandleRequest",  # Serve replicas' inter-deployment server (pickles!)
)


def _http(host: str, port: int) -> tuple[int, str] | None:
    """(status, start of body) of an unauthenticated GET of the job API; None if not HTTP/1.1."""
    try:
        r = httpx.get(f"http://{host}:{port}/api/jobs/", timeout=3)
    except httpx.HTTPError:
        return None
    return r.status_code, r.text[:200]


def _grpc(host: str, port: int) -> str:
    """UNAUTHENTICATED when a Ray service on the port refuses a call without the token."""
    import grpc

    codes = []
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in GRPC_PROBES:
            try:
                channel.unary_unary(method)(b"", timeout=3)
                return f"answered {method} without a token"
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    return "UNAUTHENTICATED"
                if code not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
                    return f"answered {method} with {code.name} without a token"
                codes.append(code.name)
    return f"no known Ray service answered ({', '.join(sorted(set(codes)))})"


def verdict(listener: Listener, host_ip: str) -> tuple[str, str]:
    """(kind, detail) for a socket: kind is loopback, refused, metrics (read-only Prometheus
    exporter, unauthenticated) or open. A socket on all interfaces is probed through `host_ip`,
    as a stranger would reach it."""
    if listener.loopback:
        return "loopback", ""
    host = host_ip if listener.all_interfaces else listener.ip.removeprefix("::ffff:")
    answer = _http(host, listener.port)
    if answer is not None:
        status, body = answer
        if status in (401, 403):
            return "refused", f"HTTP {status}"
        if status == 200 and body.startswith("# HELP"):
            return "metrics", "Prometheus metrics, read-only, no token"
        return "open", f"HTTP {status} without a token"
    grpc_answer = _grpc(host, listener.port)
    return ("refused" if grpc_answer == "UNAUTHENTICATED" else "open"), f"gRPC {grpc_answer}"


def audit(*root_pids: int) -> list[tuple[Listener, str, str]]:
    """Every listening socket of the cluster under `root_pids` (its head, its balancer) with its verdict."""
    ip = host_ip()
    return [(s, *verdict(s, ip)) for s in listeners(*root_pids)]


def host_ip() -> str:
    """This host's address on its network (what another machine would connect to)."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return "127.0.0.1"


def main(argv: list[str] | None = None) -> int:
    from harness.ray_head import STATE

    parser = argparse.ArgumentParser(prog="python -m harness.audit")
    parser.add_argument("--state", default=str(STATE), help="the state file of a local cluster (cluster.py)")
    args = parser.parse_args(argv)
    state = json.loads(Path(args.state).read_text())
    kinds = []
    roots = [state["pid"], *([state["balancer"]["pid"]] if "balancer" in state else [])]
    for s, kind, detail in audit(*roots):
        kinds.append(kind)
        where = "loopback" if s.loopback else ("all interfaces" if s.all_interfaces else s.ip)
        print(f"{s.port:>6}  {where:<16} {kind:<9} {s.process} (pid {s.pid})  {detail}")
    print(
        f"{len(kinds)} listening sockets: {kinds.count('loopback')} loopback only, {kinds.count('refused')} "
        f"refuse callers without the token, {kinds.count('metrics')} read-only metrics exporters, "
        f"{kinds.count('open')} open"
    )
    return 1 if "open" in kinds else 0


if __name__ == "__main__":
    sys.exit(main())
