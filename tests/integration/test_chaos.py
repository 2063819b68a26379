"""The chaos harness, shortened: real faults under real open-loop load, with the failure bounds asserted.

Correctness, not speed: how many requests fail and whether any waits past its deadline, not how fast
they are (that is the benchmark's job). The full run and its report are `python -m loadtest.chaos`.
"""

from __future__ import annotations

import argparse

import pytest

from loadtest import chaos
from loadtest.client import Tally

DEADLINE_S = 1.0  # request_timeout_s in cluster/serve_config.yaml
# Tells a held deadline from a missed one (a missed one waits for the proxy's 10 s); on a loaded 2-core
# runner the hops after the deadline took up to ~0.1 s (1,104 ms seen), so not a speed bound.
SLACK_S = 0.5


def test_summary_counts_failures_degraded_answers_and_the_last_bad_request() -> None:
    t0 = 1_000.0
    tally = Tally(events=[(t0 + 0.1, 5.0, 200, False), (t0 + 1.0, 50.0, 503, False)])
    tally.events += [
        (t0 + 2.0, 900.0, 200, True),
        (t0 + 3.0, 4.0, 200, False),
        (t0 + 3.5, 10_000.0, 0, False),
    ]
    tally.timeouts = 2  # one of them recorded as an event (status 0), one left unanswered at the drain
    outcome = chaos.summarise("Ranker", [tally], fault_at=t0 + 0.5)
    assert (outcome.requests, outcome.failed, outcome.degraded) == (6, 3, 1)
    assert outcome.max_ms == 10_000.0 and outcome.recovered_s == 3.0
    assert outcome.failures == ((0.5, 50.0, 503), (3.0, 10_000.0, 0))  # when, how long, what
    other = Tally(fallback={"overloaded": 2, "unknown_user": 1})
    both = chaos.summarise("Ranker", [tally, other], fault_at=t0)
    assert both.fallbacks == {"overloaded": 2, "unknown_user": 1}  # why answers fell back, summed


def _short_run(
    built, tmp_path, config: str, faults: str, balancer: str | None = None
) -> tuple[argparse.Namespace, dict[str, dict]]:
    """The harness at 15 req/s, 8 s per fault, the fault 2.5 s in: (its options, outcome per fault).
    With `balancer` (a policy under cluster/), through HAProxy in front of direct ingress, as `make run`."""
    opts = argparse.Namespace(
        bundle=built.bundle,
        repo=built.repo,
        config=chaos.ROOT / "cluster" / config,
        throughput_optimized=balancer is not None,
        balancer=chaos.ROOT / "cluster" / balancer if balancer else None,
        rate=15.0,
        window=8.0,
        kill_at=2.5,
        outage=3.0,
        faults=faults,
        out=tmp_path,
    )
    report = chaos.run(opts)
    return opts, {f["fault"]: f for f in report["faults"]}


@pytest.mark.ray
@pytest.mark.slow
def test_faults_cost_no_failed_request_and_no_wait_past_the_deadline(built, tmp_path) -> None:
    """At a modest rate: one of the two Ingress replicas SIGKILLed (the other answers), a stage replica
    SIGKILLed (its in-flight requests degrade to the retrieval order or the popularity list). (A locked
    store and a corrupt bundle under load are the full harness's; test_serve_app covers both.)"""
    opts, by_fault = _short_run(built, tmp_path, "serve_config.yaml", "Ingress,Ranker,Retriever")
    assert set(by_fault) == {"Ingress", "Ranker", "Retriever"}
    for name, f in by_fault.items():
        assert f["requests"] >= 0.8 * opts.rate * opts.window, (name, f)
        assert f["failed"] == 0, (name, f)
        assert f["max_ms"] <= (DEADLINE_S + SLACK_S) * 1000, (name, f)
        # Two replicas each: at most what the killed one held degrades (the other answers in full),
        # not everything until its successor has loaded the bundle (~10 s, the rest of the window).
        assert f["degraded"] <= 0.1 * f["requests"], (name, f)


@pytest.mark.ray
@pytest.mark.slow
def test_make_runs_front_door_loses_nothing_to_a_dead_ingress_or_proxy(built, tmp_path) -> None:
    """`make run`'s setup: HAProxy (cluster/balancer.yaml) in front of the colocated config's two
    Ingress replicas' own ports. A killed Ingress replica costs nothing (HAProxy sends what it held to
    the other one, and follows its successor's port), the Serve proxy is off the path, and a killed
    HAProxy is started again at once by its supervisor."""
    opts, by_fault = _short_run(
        built, tmp_path, "serve_config.colocated.yaml", "Ingress,proxy,haproxy", balancer="balancer.yaml"
    )
    for name in ("Ingress", "proxy"):
        f = by_fault[name]
        assert f["requests"] >= 0.8 * opts.rate * opts.window, (name, f)
        assert f["failed"] == 0 and f["degraded"] == 0, (name, f)
        assert f["max_ms"] <= (DEADLINE_S + SLACK_S) * 1000, (name, f)
    # The door itself: what it held when killed is lost, then it answers again within a sync round.
    door = by_fault["haproxy"]
    assert door["failed"] <= 5, door
    assert door["recovered_s"] is None or door["recovered_s"] <= 2.0, door
