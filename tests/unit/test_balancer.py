"""The front door: its policy, its HAProxy configuration, and a real HAProxy in front of real HTTP
servers standing in for ingress replicas (no Ray: what is tested is the balancer, not the app)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pydantic
import pytest

from harness.door import Balancer, haproxy_binary
from harness.ports import free_port
from serve_app.control.frontdoor import BalancerPolicy, Change, Paths, error_page, load_policy, plan, render

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_policy_loads_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    for name in ("balancer.yaml", "balancer.graph.yaml"):
        policy = load_policy(ROOT / "cluster" / name)
        assert policy.host == "127.0.0.1" and policy.per_replica_in_flight >= 1
    bad = tmp_path / "b.yaml"
    bad.write_text("per_replica_inflight: 4\n")  # a typo must not silently fall back to the default
    with pytest.raises(pydantic.ValidationError, match="per_replica_inflight"):
        load_policy(bad)


def test_rendered_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    policy = BalancerPolicy(
        port=free_port(), per_replica_in_flight=3, queue=5, max_replicas=4, balance="first"
    )
    paths = Paths(tmp_path)
    for status in (502, 503, 504):
        paths.error_page(status).write_bytes(error_page(status, policy))
    text = render(policy, paths, [30001, 30002])
    paths.config.write_text(text)
    check = subprocess.run([haproxy_binary(), "-c", "-f", str(paths.config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "maxconn 3" in text and "queue(ingress) ge 5" in text and "balance first" in text
    assert text.count("\n    server ") == 4 and text.count(" disabled") == 2
    with pytest.raises(ValueError, match="max_replicas"):
        render(policy, paths, list(range(30001, 30006)))


def test_error_pages_are_whole_http_answers_with_retry_after() -> None:
    raw = error_page(503, BalancerPolicy(retry_after_s=2)).decode()
    head, body = raw.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 503 ")
    assert "Retry-After: 2" in head and f"Content-Length: {len(body)}" in head
    assert json.loads(body)["error"] == "overloaded"


def test_plan_keeps_live_ports_in_their_slots() -> None:
    assert plan([30001, 30002, None], [30001, 30002]) == []
    # a replica replaced on a new port: its slot is re-pointed, the other one untouched
    assert plan([30001, 30002, None], [30002, 30007]) == [Change(0, 30007)]
    # a replica gone for good: its slot out of rotation; new ones take the lowest free slots
    assert plan([30001, 30002, None], [30002]) == [Change(0, None)]
    assert plan([None, 30002, None], [30002, 30009, 30008]) == [Change(0, 30008), Change(2, 30009)]
    with pytest.raises(ValueError, match="slots"):
        plan([30001], [30001, 30002])
    assert Change(1, None).commands() == ["set server ingress/replica1 state maint"]


class _Replica:
    """An HTTP server that answers slowly and records how many requests it held at once."""

    def __init__(self, work_s: float) -> None:
        self.in_flight = self.most = self.served = 0
        lock = threading.Lock()
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # /healthz, HAProxy's check
                self._answer(b"{}")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    replica.in_flight += 1
                    replica.most = max(replica.most, replica.in_flight)
                time.sleep(work_s)
                with lock:
                    replica.in_flight -= 1
                    replica.served += 1
                self._answer(json.dumps({"port": replica.port}).encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def _front(tmp_path: Path, policy: BalancerPolicy, ports: list[list[int]]) -> Iterator[Balancer]:
    """A Balancer whose view of Serve's ports is whatever ports[0] holds when it syncs."""
    balancer = Balancer(policy, tmp_path / "run", lambda: ports[0])
    balancer.start(ports[0])
    try:
        yield balancer
    finally:
        balancer.stop()


def _post(url: str) -> httpx.Response:
    return httpx.post(f"{url}/recommend", json={"user_id": 1}, timeout=10)


def test_overload_is_refused_at_the_door_and_replicas_keep_their_limit(tmp_path: Path) -> None:
    replicas = [_Replica(work_s=0.2), _Replica(work_s=0.2)]
    policy = BalancerPolicy(port=free_port(), per_replica_in_flight=2, queue=4, queue_timeout_ms=5_000)
    url = f"http://127.0.0.1:{policy.port}"
    with (
        _front(tmp_path, policy, [[r.port for r in replicas]]),
        concurrent.futures.ThreadPoolExecutor(40) as pool,
    ):
        answers = list(pool.map(_post, [url] * 40))
    for r in replicas:
        r.close()
    codes = [a.status_code for a in answers]
    assert set(codes) == {200, 503}, codes
    # at most 2 x 2 in flight and 4 queued when the burst lands; the rest refused, not queued
    assert 4 <= codes.count(200) <= 16, codes
    assert max(r.most for r in replicas) <= 2
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["Retry-After"] == "1" and refused.json()["error"] == "overloaded"
    assert sum(r.served for r in replicas) == codes.count(200)


def test_follows_serve_ports_and_restarts_a_dead_haproxy(tmp_path: Path) -> None:
    old, new = _Replica(work_s=0.0), _Replica(work_s=0.0)
    ports = [[old.port]]
    policy = BalancerPolicy(port=free_port())
    url = f"http://127.0.0.1:{policy.port}"
    with _front(tmp_path, policy, ports) as balancer:
        assert _post(url).json() == {"port": old.port}
        ports[0] = [new.port]  # Serve replaced the replica on another port
        balancer.step()
        assert {_post(url).json()["port"] for _ in range(10)} == {new.port}
        assert balancer.slots[:2] == [new.port, None]

        assert balancer.proc is not None
        balancer.proc.kill()
        balancer.proc.wait(5)
        balancer.step()  # the next round finds it dead and starts it with the ports it had
        assert balancer.restarts == 1
        assert _post(url).json() == {"port": new.port}
    old.close()
    new.close()
