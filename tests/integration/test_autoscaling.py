"""Replicas follow the load through the front door, both ways, and no request fails on the way.

The shipped configs with short metric intervals and delays (the policy, `queue_depth`, is the shipped
one): sustained concurrent load through the door takes the scaled deployment from its minimum to its
maximum, and light load after it takes it back to the minimum. The colocated Ingress (the door's
rotation follows it both ways) and the graph's Ranker (scaled on the rows it holds). Every request
sent meanwhile must come back 2xx: the door's coarser answers count as answered, a 503, a connection
error or a timeout as failed. The full measurement, with the control loop timed, is
`python -m loadtest.elastic` (docs/measurements/2026-12-07-elastic.md).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.balancer import runtime
from harness.ray_head import serve_api
from loadtest import mix
from loadtest.client import Level, LoadClient, Tally
from loadtest.fleet import door_servers, serve_replicas
from loadtest.targets import served_target
from serve_app.control.haproxy_config import Paths
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]
# Short intervals and delays, so a test sees both transitions in a minute or two.
FAST = {
    "min_replicas": 1,
    "max_replicas": 2,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
}


def scaled_config(shipped: str, scaled: str, target: float, dest: Path) -> Path:
    """The shipped config with `scaled` autoscaling fast between 1 and 2 replicas (target `target`),
    every other deployment fixed at one replica, so the fleet fits a 2-core runner."""
    config = yaml.safe_load((ROOT / "cluster" / shipped).read_text())
    for dep in config["applications"][0]["deployments"]:
        auto = dep.pop("autoscaling_config", None)
        if dep["name"] == scaled:
            dep["autoscaling_config"] = {**auto, **FAST, "target_ongoing_requests": target}
        else:
            dep["num_replicas"] = 1
    dest.write_text(yaml.safe_dump(config))
    return dest


class Fleet:
    """What Serve and the door say now: `scaled`'s replicas by state, and the door's /recommend ports."""

    def __init__(self, state: dict[str, Any], scaled: str) -> None:
        self.api, self.scaled = serve_api(state, timeout_s=5), scaled
        self.door = Paths(Path(state["balancer"]["run_dir"]))

    def replicas(self) -> dict[str, int]:
        return serve_replicas(self.api.details())[self.scaled]

    def door_ports(self) -> dict[int, int]:
        return door_servers(runtime(self.door, "show stat"))

    def settled_at(self, n: int) -> bool:
        r = self.replicas()
        settled = r["target"] == n and r.get("RUNNING", 0) == n and len(r) == 2  # nothing else starting
        return settled and (self.scaled != "Ingress" or len(self.door_ports()) == n)


def load_until(client: LoadClient, level: Level, payloads: list, done, timeout_s: float) -> list[Tally]:
    """`level` again and again (the load never pauses for long) until `done()`, checked in a thread
    while it runs; then one more level, so the fleet just reached serves load too."""
    tallies: list[Tally] = []
    reached = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not reached.is_set():
            if done():
                reached.set()
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline = time.monotonic() + timeout_s
    while not reached.is_set() and time.monotonic() < deadline:
        tallies += client.run(level, payloads)
    watcher.join(1)
    assert reached.is_set(), f"the fleet did not settle within {timeout_s:.0f} s"
    return tallies + client.run(level, payloads)


def failed(tallies: list[Tally]) -> int:
    """Requests that got no 2xx: another status, a connection error or no answer in time."""
    other = sum(n for t in tallies for status, n in t.statuses.items() if not 200 <= status < 300)
    return other + sum(t.errors + t.timeouts for t in tallies)


def up_and_down(built, tmp_path: Path, shipped: str, balancer: str, scaled: str, target: float) -> None:
    config = scaled_config(shipped, scaled, target, tmp_path / "serve_config.yaml")
    users, items = mix.bundle_ids(built.bundle)
    payloads = mix.http_payloads(mix.generate(users, items, 4_000, mix.MixSpec(debug_fraction=0.0)))
    with (
        served_target(
            built.bundle, built.repo, tmp_path, config, True, balancer=ROOT / "cluster" / balancer
        ) as (port, _, info),
        LoadClient(1) as client,
    ):
        fleet = Fleet(json.loads((tmp_path / "ray" / "cluster.json").read_text()), scaled)
        assert fleet.settled_at(1), fleet.replicas()
        busy = Level("closed", 16, 4.0, port, drain_s=2.0)
        up = load_until(client, busy, payloads, lambda: fleet.settled_at(2), timeout_s=150)
        if scaled == "Ingress":  # the new replica took requests from the door
            assert all(sent > 0 for sent in fleet.door_ports().values()), fleet.door_ports()
        light = Level("open", 4.0, 4.0, port, drain_s=2.0)
        down = load_until(client, light, payloads, lambda: fleet.settled_at(1), timeout_s=150)
        assert failed(up) == 0, [t.statuses for t in up]
        assert failed(down) == 0, [t.statuses for t in down]
        assert sum(len(t.latencies_ms) for t in up + down) > 100, info


def test_the_colocated_ingress_scales_up_and_down_through_the_door(built, tmp_path) -> None:
    up_and_down(built, tmp_path, "serve_config.colocated.yaml", "balancer.yaml", "Ingress", 2)


def test_the_graph_ranker_scales_up_and_down_on_the_rows_it_holds(built, tmp_path) -> None:
    up_and_down(built, tmp_path, "serve_config.yaml", "balancer.graph.yaml", "Ranker", 2)
