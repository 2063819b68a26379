"""The fleet over time, as an operator sees it: each deployment's replicas from Serve's REST API (with
the cluster's token) and, with a front door, which replica ports HAProxy sends to and how many requests
each has taken. `FleetWatch` samples both in a thread; `transitions` reads the control loop out of the
samples: when Serve decided, when the replica ran, when the door first sent it a request, and the same
on the way down (loadtest/elastic.py reports them).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.balancer import runtime, stat_rows
from serve_app.control.frontdoor import RECOMMEND
from serve_app.control.haproxy_config import Paths
from serve_app.control.serve_api import ServeApi


@dataclass(frozen=True)
class Sample:
    t: float  # wall clock
    # deployment -> {"target": Serve's target, "RUNNING": n, "STARTING": n, "STOPPING": n, ...}
    replicas: dict[str, dict[str, int]]
    # the door's /recommend servers in rotation: port -> requests it has sent there (cumulative)
    door: dict[int, int] = field(default_factory=dict)


def serve_replicas(details: dict[str, Any], app: str = "recsys") -> dict[str, dict[str, int]]:
    """Per deployment: Serve's target replica count and its replicas by state."""
    out: dict[str, dict[str, int]] = {}
    for name, dep in details.get("applications", {}).get(app, {}).get("deployments", {}).items():
        counts: dict[str, int] = {"target": int(dep.get("target_num_replicas") or 0)}
        for replica in dep.get("replicas", []):
            counts[replica["state"]] = counts.get(replica["state"], 0) + 1
        out[name] = counts
    return out


def door_servers(stat_csv: str) -> dict[int, int]:
    """From HAProxy's `show stat`: the /recommend servers not in maintenance, port -> requests sent."""
    out = {}
    for row in stat_rows(stat_csv):
        if row["pxname"] != RECOMMEND or row["svname"] in ("FRONTEND", "BACKEND"):
            continue
        if row["status"].startswith("MAINT") or not row.get("addr"):
            continue
        out[int(row["addr"].rsplit(":", 1)[1])] = int(row["stot"] or 0)
    return out


class FleetWatch:
    """Samples Serve and the door every `every_s` in a thread, until `stop()`."""

    def __init__(self, api: ServeApi, door_run_dir: Path | None, every_s: float = 0.5) -> None:
        self.api, self.every_s = api, every_s
        self.door_run_dir = door_run_dir
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fleet-watch")

    def __enter__(self) -> FleetWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _door(self) -> dict[int, int]:
        if self.door_run_dir is None:
            return {}
        with contextlib.suppress(OSError):  # restarting: the next sample will have it
            return door_servers(runtime(Paths(self.door_run_dir), "show stat"))
        return {}

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            with contextlib.suppress(Exception):  # a slow dashboard costs a sample, not the run
                self.samples.append(Sample(t, serve_replicas(self.api.details()), self._door()))
            self._stop.wait(max(0.0, self.every_s - (time.time() - t)))


def transitions(samples: list[Sample], deployment: str) -> list[dict[str, Any]]:
    """Each change of Serve's target for `deployment`: when it was decided, when RUNNING replicas
    reached it, and (the Ingress behind a door: the door sends to no other deployment) when the door's
    rotation reached it and the newest port took its first request, or when the door stopped sending
    to the ports that left."""
    out: list[dict[str, Any]] = []
    for i in range(1, len(samples)):
        before = samples[i - 1].replicas.get(deployment, {}).get("target")
        target = samples[i].replicas.get(deployment, {}).get("target")
        if before is None or target is None or target == before:
            continue
        decided, later = samples[i].t, samples[i:]
        running = next((s.t for s in later if s.replicas[deployment].get("RUNNING", 0) == target), None)
        event: dict[str, Any] = {"from": before, "to": target, "decided_t": decided, "running_t": running}
        if deployment == "Ingress" and any(s.door for s in samples):
            ports_before = set(samples[i - 1].door)
            in_door = next((s for s in later if len(s.door) == target), None)
            event["door_t"] = in_door.t if in_door else None
            if target > before and in_door:  # the first request the door sent a new replica
                new = set(in_door.door) - ports_before
                event["first_request_t"] = next(
                    (s.t for s in later if any(s.door.get(p, 0) > 0 for p in new)), None
                )
        out.append(event)
    return out
