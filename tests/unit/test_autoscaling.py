"""The autoscaling signal: what a replica reports besides Serve's own count (the door's queue, the
requests inside coalesced calls), the policy over it, and the step-load harness's reading of the fleet."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from loadtest.elastic import control_loop, parse_steps, windows
from loadtest.fleet import Sample, door_servers, serve_replicas, transitions
from serve_app.control.haproxy_config import DOOR_QUEUE_HEADER as SENT
from serve_app.serve.autoscaling import DOOR_QUEUE, ROWS_IN_FLIGHT, queue_depth
from serve_app.telemetry.load_signal import (
    DOOR_QUEUE_HEADER,
    DoorQueue,
    RowsInFlight,
    desired_replicas,
    door_queue_of,
)


def test_the_header_the_door_sets_is_the_one_the_ingress_reads() -> None:
    assert SENT.lower() == DOOR_QUEUE_HEADER


def test_door_queue_reports_the_mean_since_the_last_read_and_ignores_what_is_not_the_doors() -> None:
    queue = DoorQueue()
    for header in ("4", "8", None, "-1", "1e3", "x", "9999999", "0"):
        queue.heard(header)
    assert queue.read() == 4.0  # (4 + 8 + 0) / 3: the rest is not a queue length the door sends
    assert queue.read() == 0.0  # nothing forwarded since: nothing waits
    assert door_queue_of("100000") == 100_000 and door_queue_of("100001") is None


def test_rows_in_flight_is_the_time_average_of_the_requests_held() -> None:
    now = [0.0]
    rows = RowsInFlight(clock=lambda: now[0])
    with rows.holding(16):  # one coalesced call of 16 requests for 1 s ...
        now[0] = 1.0
    now[0] = 4.0  # ... then nothing for 3 s
    assert rows.read() == pytest.approx(4.0)
    rows.add(2)
    now[0] = 5.0
    assert rows.read() == pytest.approx(2.0)  # the window restarts at each read


def test_rows_in_flight_counts_right_from_many_threads() -> None:
    rows = RowsInFlight()

    def work() -> None:
        for _ in range(2_000):
            with rows.holding(3):
                pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows.read()
    assert rows._n == 0  # every arrival left again: no lost update


def _ctx(total: float, metrics: dict, target: float = 2.0, current: int = 2) -> SimpleNamespace:
    config = SimpleNamespace(get_target_ongoing_requests=lambda: target)
    return SimpleNamespace(
        total_num_requests=total, aggregated_metrics=metrics, config=config, current_num_replicas=current
    )


def test_the_policy_adds_the_doors_queue_once_and_counts_a_stages_requests_not_its_calls() -> None:
    # Behind the door, two replicas at its limit of 4 each, 16 waiting: (8 + 16) / 2 = 12.
    ingress = {DOOR_QUEUE: {"r1": 16.0, "r2": 15.0}}
    assert queue_depth(_ctx(8, ingress))[0] == 12.0
    assert queue_depth(_ctx(3, {}))[0] == 1.5  # nothing waits: Serve's own rule
    # A graph stage: 2 coalesced calls in flight, 24 requests in them.
    stage = {ROWS_IN_FLIGHT: {"r1": 14.0, "r2": 10.0}}
    assert queue_depth(_ctx(2, stage, target=8))[0] == 3.0
    assert queue_depth(_ctx(6, {ROWS_IN_FLIGHT: {"r1": 1.0}}, target=2))[0] == 3.0  # uncoalesced: calls
    with pytest.raises(ValueError):
        desired_replicas(1, 0, 0)


def test_fleet_reads_serves_replicas_and_the_doors_rotation() -> None:
    details = {
        "applications": {
            "recsys": {
                "deployments": {
                    "Ingress": {
                        "target_num_replicas": 3,
                        "replicas": [{"state": "RUNNING"}, {"state": "RUNNING"}, {"state": "STARTING"}],
                    }
                }
            }
        }
    }
    assert serve_replicas(details) == {"Ingress": {"target": 3, "RUNNING": 2, "STARTING": 1}}
    stat = (
        "# pxname,svname,status,stot,addr\n"
        "recommend,FRONTEND,OPEN,0,\n"
        "recommend,s0,UP,120,127.0.0.1:5001\n"
        "recommend,s1,MAINT,40,127.0.0.1:5002\n"
        "recommend,s2,DOWN,0,127.0.0.1:5003\n"
        "ingress,s0,UP,7,127.0.0.1:5001\n"
        "recommend,BACKEND,UP,160,\n"
    )
    assert door_servers(stat) == {5001: 120, 5003: 0}  # in rotation: not in maintenance


def _fleet(t: float, target: int, running: int, door: dict[int, int]) -> Sample:
    return Sample(t, {"Ingress": {"target": target, "RUNNING": running}}, door)


def test_the_control_loop_is_timed_from_the_step_to_the_doors_first_request() -> None:
    samples = [
        _fleet(0, 2, 2, {1: 5, 2: 5}),
        _fleet(4, 4, 2, {1: 9, 2: 9}),  # decided 4 s after the step at 0
        _fleet(12, 4, 4, {1: 20, 2: 20}),  # running
        _fleet(13, 4, 4, {1: 25, 2: 25, 3: 0, 4: 0}),  # in the door's rotation
        _fleet(14, 4, 4, {1: 30, 2: 30, 3: 2, 4: 0}),  # the first request to a new one
        _fleet(60, 2, 4, {1: 90, 2: 90, 3: 50, 4: 40}),  # the load fell at 50
        _fleet(61, 2, 2, {1: 95, 2: 95}),
    ]
    assert [t["to"] for t in transitions(samples, "Ingress")] == [4, 2]
    events = [(1.0, 5.0, 200, False), (13.5, 9.0, 200, True), (55.0, 3.0, 502, False)]
    rows = control_loop(samples, [(0.0, 2.0), (50.0, 0.2)], events, ["Ingress"])
    assert rows[0] == {
        "deployment": "Ingress",
        "from": 2,
        "to": 4,
        "decided_s": 4.0,
        "running_s": 12.0,
        "door_s": 13.0,
        "first_request_s": 14.0,
        "failed": 0,
    }
    assert rows[1]["door_s"] == 11.0 and rows[1]["failed"] == 1  # the 502 fell in the way down
    # The door sends to Ingress replicas only: a stage's transition has no door times.
    staged = [Sample(s.t, {"Ranker": s.replicas["Ingress"]}, s.door) for s in samples]
    assert all("door_t" not in t for t in transitions(staged, "Ranker"))
    table = windows(events, samples, 0.0, 60.0, 30.0)
    assert [(w["offered"], w["answered"], w["degraded"]) for w in table] == [(2, 2, 1), (1, 0, 0)]
    assert table[0]["replicas"] == {"Ingress": 4} and table[0]["door_ports"] == 4


def test_steps_parse_and_refuse_nonsense() -> None:
    assert parse_steps("0.2:30,2:90") == [(0.2, 30.0), (2.0, 90.0)]
    with pytest.raises(Exception, match="mult:seconds"):
        parse_steps("2:0")
