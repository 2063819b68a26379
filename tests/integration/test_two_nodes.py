"""Two Ray nodes on this machine, started by the code `make run NODES=2` runs: the stage replicas run on
the worker node, and losing that node under open-loop load fails no request.

The worker node (every process of it) is SIGKILLed under load and started again a few seconds later.
While it is gone the Ingress, on the head, answers by its deadline with the popularity list or the
retrieval order (`degraded`); once the GCS has declared the lost node dead, Serve replaces the stage
replicas, on the new worker node (the label selectors leave it no other choice), and answers are
ranked again. The full measurement (docs/measurements/2026-11-30-two-nodes.md) is
`python -m loadtest.two_nodes`.
"""

from __future__ import annotations

import argparse

import pytest

from harness import worker_node
from loadtest import two_nodes
from tests.conftest import running

pytestmark = [pytest.mark.ray, pytest.mark.slow]
DEADLINE_S = 1.0  # request_timeout_s in cluster/serve_config.yaml
# Above test_chaos's 0.1 s: two nodes' worth of Ray processes share the 2 cores here, and a request
# whose stage is gone waits out the whole deadline before the ingress settles its fallback answer
# (1.26 s seen once on a slow day). It tells a held deadline from a missed one, not a fast answer.
SLACK_S = 0.5


def test_the_worker_node_lost_under_load_fails_no_request_and_its_replicas_come_back(built, tmp_path):
    opts = argparse.Namespace(
        bundle=built.bundle,
        repo=built.repo,
        config=two_nodes.ROOT / "cluster" / "serve_config.yaml",
        rate=15.0,
        # Long enough for the replacements to load on a slow day: on 2026-12-06 this 2-core VM ran
        # ~3x slower than on 2026-11-30, and the stages served again 28 s after the GCS declared the
        # lost node dead (4 s on 2026-11-30); on 2026-12-07 ranked answers came back 42-52 s after
        # the kill, past the 49 s a 55 s window allowed (three failures at the landed code too).
        window=75.0,
        kill_at=3.0,
        restart_after=4.0,
        out=tmp_path,
    )
    report = two_nodes.run(opts)
    head, lost, new = report["head_node"], report["lost_node"], report["new_node"]
    assert len({head, lost, new}) == 3, report

    # Placement, from Serve's state: the stages (their minimum, two replicas each) on the worker node,
    # the Ingress replicas (two at least: they autoscale, and the outage holds requests) on the head.
    before = {
        "Retriever": [lost, lost],
        "Ranker": [lost, lost],
        "EventWriter": [head],
    }
    assert {k: v for k, v in report["before"].items() if k != "Ingress"} == before, report
    for when in ("before", "after"):
        ingress = report[when]["Ingress"]
        assert len(ingress) >= 2 and set(ingress) == {head}, report
    assert report["after"]["EventWriter"] == [head], report
    for stage in worker_node.STAGES:
        assert report["after"][stage] and set(report["after"][stage]) == {new}, report
    assert report["lost_node_state"] == "DEAD", report
    # The worker joined with the head's token: none of its sockets answers a caller without it.
    kinds = {kind for _, _, kind in report["worker_sockets"]}
    assert "open" not in kinds and "refused" in kinds, report["worker_sockets"]
    assert "raylet" in {name for name, _, kind in report["worker_sockets"] if kind == "refused"}

    o = report["outcome"]
    print(two_nodes.markdown(report))
    assert o["requests"] >= 0.8 * opts.rate * opts.window, o
    assert o["failed"] == 0, o
    assert o["max_ms"] <= (DEADLINE_S + SLACK_S) * 1000, o
    assert o["degraded"] > 0, o  # the kill reached the stages: without them nothing is ranked
    # Recovered within the window: the last degraded answer came well before it closed, and a
    # known user is ranked again at once after it.
    assert o["recovered_s"] is not None and o["recovered_s"] < opts.window - opts.kill_at - 3, o
    assert report["ready_again_after_window_s"] < 5, report

    # Stopped as `make stop` stops it: no process of the head, the lost worker or the new one is left.
    assert not running(report["head_pid"])
    for pgid in report["worker_pgids"]:
        assert [p for p in worker_node.processes({"worker": {"pid": pgid}}) if running(p.pid)] == [], pgid
