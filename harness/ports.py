"""Loopback ports for the local services the harness starts (Ray's head and worker node, Prometheus,
redis-server, HAProxy, the tests' Serve apps).

The OS hands out a free port when a socket binds port 0, but once that socket closes it may hand the
same port out again: two components of one cluster, each given "a free port" a moment apart, could be
given the same one (Ray then refused to start: "metrics_export is trying to use a port number 48975
that is used by other components"). So this process never hands out a port twice. Another process
may still take a port before the component binds it; the callers that can, retry.
"""

from __future__ import annotations

import socket
import threading

_given: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and one this process has not handed out before."""
    for _ in range(1_000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        with _lock:
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError("no loopback port left that this process has not handed out already")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports (for the components of one process, e.g. a Ray head's)."""
    return [free_port(host) for _ in range(n)]
