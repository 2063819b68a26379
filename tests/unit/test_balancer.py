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

from harness.balancer import Balancer, backend_stats, haproxy_binary
from harness.ports import free_port
from serve_app.api.schemas import RecommendResponse
from serve_app.control.frontdoor import (
    BalancerPolicy,
    Change,
    DoorShare,
    Popular,
    ServedRate,
    load_policy,
    plan,
    queue_limit,
)
from serve_app.control.haproxy_config import COARSE, Paths, error_page, render

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
    for past_capacity in ("coarse", "refuse"):
        policy = BalancerPolicy(
            port=free_port(),
            per_replica_in_flight=3,
            min_queue=5,
            max_replicas=4,
            balance="first",
            past_capacity=past_capacity,
        )
        paths = Paths(tmp_path)
        balancer = Balancer(policy, tmp_path, lambda: [])
        text = render(policy, paths, [30001, 30002])
        balancer.start([30001, 30002])  # writes every file the configuration names, and runs it
        balancer.stop()
        paths.config.write_text(text)  # as rendered to bind its own address (it ran on a lent socket)
        check = subprocess.run(
            [haproxy_binary(), "-c", "-f", str(paths.config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "maxconn 3" in text and "balance first" in text and "maxconn 2" in text  # /recommend, others
        assert text.count("\n    server ") == 8 and text.count(" disabled") == 4  # 4 slots, 2 backends
        assert ("lf-file" in text) == (past_capacity == "coarse")
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
    assert Change(1, None).commands() == [
        "set server recommend/replica1 state maint",
        "set server ingress/replica1 state maint",
    ]


def test_the_queue_holds_what_the_replicas_start_within_its_time_budget() -> None:
    policy = BalancerPolicy(queue_budget_ms=50, min_queue=8, max_queue=500)
    assert queue_limit(policy, served_per_s=800) == 40  # 800 a second: 40 start within 50 ms
    assert queue_limit(policy, served_per_s=20) == 8  # never under min_queue
    assert queue_limit(policy, served_per_s=100_000) == 500  # nor over max_queue
    assert queue_limit(policy, served_per_s=0) == 8  # nothing to go by yet
    served = ServedRate(window=3)
    assert served.observe(0.0, 0, saturated=False) == 0.0  # one reading: no rate yet
    assert served.observe(1.0, 300, saturated=False) == 300  # idle at 300 a second
    assert served.observe(2.0, 450, saturated=False) == 300  # half load: the highest of the window
    assert served.observe(3.0, 600, saturated=False) == 300
    assert served.observe(4.0, 700, saturated=False) == 150  # 300 has left the window
    assert served.observe(5.0, 900, saturated=True) == 200  # requests queue: what they serve now
    assert served.observe(6.0, 10, saturated=False) == 200  # the count started again: no new rate
    with pytest.raises(pydantic.ValidationError, match="`queue` is no longer a setting"):
        BalancerPolicy.model_validate({"queue": 8})


def test_a_sustained_overload_shortens_the_queue_and_a_stall_does_not() -> None:
    policy = BalancerPolicy(queue_budget_ms=60, min_queue=16, overloaded_budget_ms=20)
    assert queue_limit(policy, served_per_s=210) == 16  # a stall at half load: min_queue absorbs it
    assert queue_limit(policy, served_per_s=210, overloaded=True) == 5  # 210 a second for 20 ms
    assert queue_limit(policy, served_per_s=10, overloaded=True) == 1  # min_queue aside, one at least
    assert queue_limit(policy, served_per_s=0, overloaded=True) == 16  # nothing to go by yet
    share = DoorShare()
    assert share.observe(1_000, 0) == 0.0  # one reading: nothing to compare
    assert share.observe(1_100, 2) == pytest.approx(0.02)  # a stall: two answered by the door
    assert share.observe(1_700, 402) == pytest.approx(400 / 600)  # 3x: two thirds answered by it
    assert share.observe(1_700, 402) == 0.0  # no requests since
    assert share.observe(5, 0) == 0.0  # HAProxy started again: its counters too
    assert share.observe(105, 50) == pytest.approx(0.5)


class _Replica:
    """An HTTP server that answers slowly and records how many requests it held at once."""

    def __init__(self, work_s: float) -> None:
        self.in_flight = self.most = self.served = 0
        self.arrived: str | None = None
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
                replica.arrived = self.headers.get("X-Recsys-Door-Arrived")  # the door's stamp, ms
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


POPULAR = Popular("v1", tuple((100 + i, 1.0 / (i + 1)) for i in range(120)))


@contextlib.contextmanager
def _front(
    tmp_path: Path, policy: BalancerPolicy, ports: list[list[int]], popular: list[Popular] | None = None
) -> Iterator[Balancer]:
    """A Balancer whose view of Serve's ports is whatever ports[0] holds when it syncs, and of the
    served popularity list whatever popular[0] holds."""
    lists = popular or [POPULAR]
    balancer = Balancer(policy, tmp_path / "run", lambda: ports[0], lambda _: lists[0], popular_every_s=0)
    balancer.start(ports[0])
    try:
        yield balancer
    finally:
        balancer.stop()


def _post(url: str, body: dict | None = None, path: str = "/recommend", **headers: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body or {"user_id": 1}, headers=headers, timeout=10)


def test_past_capacity_the_door_refuses_under_the_refuse_policy(tmp_path: Path) -> None:
    replicas = [_Replica(work_s=0.2), _Replica(work_s=0.2)]
    policy = BalancerPolicy(
        port=free_port(), per_replica_in_flight=2, min_queue=4, queue_timeout_ms=5_000, past_capacity="refuse"
    )
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
    # 2 x 2 in flight and 4 queued when the burst lands (more if the burst outlasts a 0.2 s answer);
    # the rest refused, not queued
    assert 4 <= codes.count(200) <= 24, codes
    assert max(r.most for r in replicas) <= 2
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["Retry-After"] == "1" and refused.json()["error"] == "overloaded"
    assert sum(r.served for r in replicas) == codes.count(200)


def test_past_capacity_the_door_answers_the_popularity_list_coarser(tmp_path: Path) -> None:
    replicas = [_Replica(work_s=0.3), _Replica(work_s=0.3)]
    # No health checks during the burst: a stand-in busy answering may miss one, and the door would
    # then (rightly) answer "no replica up"; what this test counts is the two overload paths.
    policy = BalancerPolicy(
        port=free_port(),
        per_replica_in_flight=2,
        min_queue=4,
        queue_timeout_ms=100,
        health_check_interval_ms=60_000,
    )
    url = f"http://127.0.0.1:{policy.port}"
    # ids past 10^6 too: HAProxy's untyped json_query would write 1000003 as 1.00000e+06
    bodies = [{"user_id": i * 333_333, "k": 1 + i % 7} if i % 2 else {"user_id": i} for i in range(40)]
    # bodies only a replica can judge (strict JSON integers: not "7", 7.0 or true) still reach one
    unreadable = [{"user_id": "7"}, {"user_id": 7.0}, {"user_id": True}, {"user_id": 7, "k": "2"}]
    with (
        _front(tmp_path, policy, [[r.port for r in replicas]]),
        concurrent.futures.ThreadPoolExecutor(44) as pool,
    ):
        sent = [*bodies, *unreadable]
        answers = list(pool.map(lambda b: _post(url, b, **{"X-Request-ID": f"req-{b['user_id']}"}), sent))
    for r in replicas:
        r.close()
    assert [a.status_code for a in answers] == [200] * 44  # nobody refused
    assert all("port" in a.json() for a in answers[40:])  # a replica's answer, not the door's
    answers = answers[:40]
    coarse = [(b, a) for b, a in zip(bodies, answers, strict=True) if "items" in a.json()]
    served = sum(r.served for r in replicas) - len(unreadable)
    assert len(coarse) == 40 - served and 4 <= served <= 24, served
    assert max(r.most for r in replicas) <= 2 + 2  # /recommend's slots, and the other routes' (2 default)
    for body, answer in coarse:
        got = RecommendResponse.model_validate(answer.json())  # the normal schema, every field
        k = body.get("k", 10)
        assert got.user_id == body["user_id"] and got.bundle_version == "v1"
        assert [i.item_id for i in got.items] == [100 + i for i in range(k)]
        assert got.degraded and got.fallback == "overloaded" and "front door" in got.degraded_reason
        assert got.request_id == answer.headers["X-Request-ID"] == f"req-{body['user_id']}"
        assert answer.headers["Content-Type"] == "application/json" and "x-recsys-door" not in answer.headers
    # both ways a request is answered coarser: at once, the queue full, and after waiting its time out
    reasons = {a.json()["degraded_reason"] for _, a in coarse}
    assert reasons == {COARSE["full"][1], COARSE["waited"][1]}, reasons


def test_past_capacity_the_queue_shortens_and_under_it_the_queue_absorbs_stalls_again(tmp_path: Path) -> None:
    replicas = [_Replica(work_s=0.05), _Replica(work_s=0.05)]  # 4 slots of 20 a second: ~80 a second
    policy = BalancerPolicy(
        port=free_port(),
        per_replica_in_flight=2,
        min_queue=16,
        overloaded_budget_ms=20,
        queue_timeout_ms=2_000,
        health_check_interval_ms=60_000,
    )
    url = f"http://127.0.0.1:{policy.port}"
    with (
        _front(tmp_path, policy, [[r.port for r in replicas]]) as balancer,
        concurrent.futures.ThreadPoolExecutor(64) as pool,
    ):
        balancer.step()  # the counters' first reading
        answers = list(pool.map(_post, [url] * 320))  # 64 at a time against 4 slots and 16 queued
        balancer.step()
        overloaded_queue = balancer.queue
        for _ in range(4):
            sent_at = time.time()
            assert "port" in _post(url).json()  # one at a time: every one a replica's answer
            stamps = [int(r.arrived) / 1000 for r in replicas if r.arrived]
            assert any(sent_at - 0.01 <= t <= time.time() + 0.01 for t in stamps), (sent_at, stamps)
        balancer.step()
    for r in replicas:
        r.close()
    assert sum("items" in a.json() for a in answers) >= 32  # the door answered past capacity
    # what 4 slots start within 20 ms (2 at 80 a second), not min_queue's 16
    assert 1 <= overloaded_queue <= 4, overloaded_queue
    assert balancer.queue == 16  # nothing answered by the door in the last round: min_queue again


def test_the_coarse_answer_follows_what_serves_and_events_are_never_answered_coarser(tmp_path: Path) -> None:
    lists = [POPULAR]
    policy = BalancerPolicy(port=free_port(), min_queue=1, health_check_interval_ms=100)
    url = f"http://127.0.0.1:{policy.port}"
    with _front(tmp_path, policy, [[free_port()]], lists) as balancer:  # a port nothing answers on
        deadline = time.monotonic() + 10
        while backend_stats(balancer.paths).get("act") != "0" and time.monotonic() < deadline:
            time.sleep(0.05)  # until its health checks have taken the replica out
        first = _post(url, {"user_id": 5, "k": 2})
        assert first.status_code == 200 and first.json()["bundle_version"] == "v1"
        assert first.json()["fallback"] == "ingress_unavailable"  # no replica up: HAProxy knows it
        assert first.json()["request_id"] == first.headers["X-Request-ID"]  # one the door made
        lists[0] = Popular("v2", ((7, 0.9), (8, 0.8), (9, 0.7)))  # a rollout: another bundle serves
        balancer.step()
        second = _post(url, {"user_id": 5, "k": 2}).json()
        assert second["bundle_version"] == "v2" and [i["item_id"] for i in second["items"]] == [7, 8]
        events = _post(url, {"events": []}, path="/events")
        assert events.status_code == 503 and events.headers["Retry-After"] == "1"  # never acknowledged
        bad_bodies = ({"user_id": "five"}, {"user_id": -1}, {"user_id": 2.5}, {"user_id": 1, "k": 500})
        bad_bodies += ({"user_id": "5"}, {"user_id": 5.0}, {"user_id": 2**63}, {"user_id": 1, "k": "2"})
        for bad in (*bad_bodies, {"user_id": 1, "k": 2.5}):
            assert _post(url, bad).status_code == 503, bad  # not for the door to answer: a replica's (422)


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
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(_post, url)  # sent while no HAProxy runs: it waits, not refused
            time.sleep(0.3)
            balancer.step()  # the next round finds it dead and starts it with the ports it had
            assert waiting.result(timeout=10).json() == {"port": new.port}
        assert balancer.restarts == 1
        assert _post(url).json() == {"port": new.port}
    old.close()
    new.close()
