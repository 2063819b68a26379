"""A free TCP port on a loopback address: the one way every local service here picks its port
(Ray's head, the worker node, Prometheus, redis-server, the tests' Serve apps)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's pick; another process may still take it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
