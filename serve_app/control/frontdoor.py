"""The front door's policy: what it lets through, what it answers when it cannot, and how it follows the
replicas (pure: no process, no Ray; haproxy_config.py renders it for HAProxy).

Why a door in front of the Ingress replicas' own ports (direct ingress): past capacity a replica
cannot refuse cheaply, so the refusal must happen before any Python runs (docs/decisions.md, "The
front door"). And a recommender should answer, not refuse: when no replica can take a `POST
/recommend` in time, the door itself answers 200 with the serving bundle's popularity list in the
normal response schema, flagged `degraded` (`past_capacity: coarse`), from HAProxy maps the
supervisor keeps in step with what serves. `POST /events` is never acknowledged unless applied: past
capacity it is refused with 503 + Retry-After, as is /recommend under `past_capacity: refuse`.

The queue is sized by time, not by a count: the supervisor sets its length to what the replicas start
within `queue_budget_ms` at the throughput they show (`ServedRate`, from HAProxy's own counters), so
a short stall is absorbed; once the door is answering a share of /recommend itself (`DoorShare`: a
sustained overload, not a stall) the queue holds only what they start within the shorter
`overloaded_budget_ms`, so what is past capacity is answered at once, and what is admitted waits little.

The server list is a fixed set of slots that the supervisor points at the ports Serve publishes
(`target_groups`) through HAProxy's runtime API (`plan`), so a replica on a new port joins without a
reload that would drop connections.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from serve_app.core.settings import Strict

RECOMMEND, OTHER = "recommend", "ingress"  # the two backends: /recommend, and every other route
MAX_K = 100  # the longest answer /recommend gives (api/schemas.py), so the longest coarse one
# Keys older policies may carry, and what to do about each.
REMOVED = {
    "queue": "the queue is sized by time now: set queue_budget_ms (and min_queue, max_queue)",
}


class BalancerPolicy(Strict):
    """cluster/balancer.yaml: where the front door listens and how much it lets through."""

    host: str = Field("127.0.0.1", description="address to bind; loopback unless you mean otherwise")
    port: int = Field(8080, ge=1, le=65_535, description="the port clients use")
    per_replica_in_flight: int = Field(
        4, ge=1, le=1_024, description="/recommend requests one ingress replica is given at a time"
    )
    other_in_flight: int = Field(
        2, ge=1, le=1_024, description="requests of the other routes (events, health, version) per replica"
    )
    balance: Literal["first", "leastconn", "roundrobin"] = Field(
        "leastconn", description="HAProxy's algorithm; `first` fills one replica to its limit before the next"
    )
    past_capacity: Literal["coarse", "refuse"] = Field(
        "coarse",
        description="what /recommend gets when no replica can take it in time: the popularity list "
        "(200, degraded) or 503 + Retry-After",
    )
    queue_budget_ms: int = Field(
        50, ge=1, le=60_000, description="how long a request should wait for a replica; sizes the queue"
    )
    min_queue: int = Field(
        8, ge=1, le=100_000, description="the queue's length at least, and before the first answers"
    )
    max_queue: int = Field(1_000, ge=1, le=100_000, description="the queue's length at most")
    overloaded_budget_ms: int = Field(
        20,
        ge=1,
        le=60_000,
        description="the queue's time budget while the door answers /recommend itself (min_queue aside)",
    )
    overloaded_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="the share of the last sync's requests the door answered itself that means overloaded",
    )
    queue_timeout_ms: int = Field(
        200, ge=1, le=60_000, description="a request still waiting this long is answered as past capacity"
    )
    retry_after_s: int = Field(1, ge=0, le=3_600, description="Retry-After of the door's 503s")
    server_timeout_s: float = Field(10, gt=0, le=600, description="longest wait for a replica's answer")
    health_check_interval_ms: int = Field(1_000, ge=100, le=60_000, description="/healthz of each replica")
    max_replicas: int = Field(16, ge=1, le=1_024, description="server slots: ingress replicas it can follow")
    sync_interval_s: float = Field(1.0, gt=0, le=60, description="how often it reads Serve's target_groups")

    @model_validator(mode="before")
    @classmethod
    def _refuse_removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in REMOVED.items():
                if key in data:
                    raise ValueError(f"`{key}` is no longer a setting: {why}")
        return data

    @model_validator(mode="after")
    def _check(self) -> BalancerPolicy:
        if self.min_queue > self.max_queue:
            raise ValueError("min_queue must not exceed max_queue")
        return self


def load_policy(path: Path) -> BalancerPolicy:
    return BalancerPolicy.model_validate(yaml.safe_load(path.read_text()) or {})


def queue_limit(policy: BalancerPolicy, served_per_s: float, overloaded: bool = False) -> int:
    """How many requests may wait at the door: what the replicas start within `queue_budget_ms` at
    `served_per_s` (Little's law); at least `min_queue`, which is all until there is a throughput to go
    by. `overloaded` (the door is answering past capacity already): within `overloaded_budget_ms`, at
    least one, since a request that joins a queue that cannot empty in time waits for nothing."""
    if served_per_s <= 0:
        return policy.min_queue
    if overloaded:
        wanted = math.ceil(served_per_s * policy.overloaded_budget_ms / 1000)
        return max(1, min(policy.max_queue, wanted))
    wanted = math.ceil(served_per_s * policy.queue_budget_ms / 1000)
    return max(policy.min_queue, min(policy.max_queue, wanted))


@dataclass
class ServedRate:
    """The replicas' throughput, from HAProxy's cumulative count of requests sent to them, read every
    sync: while requests queue (`saturated`), what they served since the last reading is what they can
    serve now; otherwise the highest such figure of the last `window` readings, since at half load
    the current rate is half of what they can do and the queue must absorb a stall at what they can."""

    window: int = 10
    _last: tuple[float, int] | None = None
    _rates: deque[float] = field(default_factory=deque)
    estimate: float = 0.0

    def observe(self, now_s: float, sent_total: int, saturated: bool) -> float:
        if self._last is not None and now_s > self._last[0] and sent_total >= self._last[1]:
            rate = (sent_total - self._last[1]) / (now_s - self._last[0])
            self._rates.append(rate)
            while len(self._rates) > self.window:
                self._rates.popleft()
            self.estimate = rate if saturated else max(self._rates)
        self._last = (now_s, sent_total)
        return self.estimate


@dataclass
class DoorShare:
    """The share of the requests the door answered itself (HAProxy's frontend counters `req_tot` and
    `intercepted`, read every sync) since the last reading: past `overloaded_share` the overload is
    sustained, not a stall that a queue absorbs. The door's answers after a wait in the queue do not
    count: a stall makes those, and the full queue's answers follow them when it lasts."""

    _last: tuple[int, int] | None = None
    share: float = 0.0

    def observe(self, requests_total: int, answered_total: int) -> float:
        if self._last is not None and requests_total > self._last[0] and answered_total >= self._last[1]:
            self.share = (answered_total - self._last[1]) / (requests_total - self._last[0])
        elif self._last is not None and requests_total == self._last[0]:
            self.share = 0.0  # no requests: nothing past capacity
        self._last = (requests_total, answered_total)
        return self.share


@dataclass(frozen=True)
class Popular:
    """The popularity list the door answers with (GET /popular of an Ingress replica)."""

    bundle_version: str
    items: tuple[tuple[int, float], ...]  # (item id, score), best first

    @classmethod
    def of(cls, answer: dict[str, Any]) -> Popular:
        return cls(
            answer["bundle_version"], tuple((int(i["item_id"]), float(i["score"])) for i in answer["items"])
        )

    def items_by_k(self) -> dict[int, str]:
        """k -> the JSON list of the top k items, for every k /recommend takes (HAProxy's items map:
        the door cannot slice a list, so it looks the answer for k up)."""
        top = [json.dumps({"item_id": i, "score": round(s, 6)}, separators=(",", ":")) for i, s in self.items]
        return {k: "[" + ",".join(top[:k]) + "]" for k in range(1, MAX_K + 1)}


NO_POPULAR = Popular("unknown", ())


def map_file(entries: dict[Any, Any]) -> str:
    """A HAProxy map file: one `key value` per line (a value runs to the end of its line)."""
    return "".join(f"{k} {v}\n" for k, v in entries.items())


def slot_name(slot: int) -> str:
    return f"replica{slot}"


@dataclass(frozen=True)
class Change:
    """One slot re-pointed (port) or taken out of rotation (port None), in both backends."""

    slot: int
    port: int | None

    def commands(self) -> list[str]:
        out = []
        for backend in (RECOMMEND, OTHER):
            server = f"{backend}/{slot_name(self.slot)}"
            if self.port is None:
                out.append(f"set server {server} state maint")
            else:
                out += [
                    f"set server {server} addr 127.0.0.1 port {self.port}",
                    f"set server {server} state ready",
                ]
        return out


def plan(slots: Sequence[int | None], ports: Sequence[int]) -> list[Change]:
    """The changes that make `slots` (each slot's port, None when unused) serve exactly `ports`:
    slots whose port is gone are emptied, new ports take the lowest free slots. A port that stays keeps
    its slot, so its connections and counters are untouched."""
    wanted = set(ports)
    target: dict[int, int | None] = {
        i: None for i, p in enumerate(slots) if p is not None and p not in wanted
    }
    free = [i for i, p in enumerate(slots) if p is None or p not in wanted]
    new = sorted(wanted - {p for p in slots if p is not None})
    if len(new) > len(free):
        raise ValueError(f"{len(wanted)} ingress ports but only {len(slots)} balancer slots")
    target.update(zip(free, new, strict=False))  # a slot re-pointed is not taken out first
    return [Change(slot, port) for slot, port in sorted(target.items())]


def apply(slots: Sequence[int | None], changes: Sequence[Change]) -> list[int | None]:
    out = list(slots)
    for change in changes:
        out[change.slot] = change.port
    return out
