"""The front door's policy and its HAProxy configuration (pure: no process, no Ray).

Why a balancer in front of the ingress replicas' own ports (direct ingress): under overload the
replicas cannot refuse cheaply. Serve answers 503 only after a replica's uvicorn has read and routed
the request, about a third of an answer's CPU, so past ~1.5x capacity the refusals eat the cores the
answers need and admitted requests wait seconds (docs/decisions.md, "The front door"). HAProxy, in C,
holds each replica to a few requests in flight, keeps a short queue in front of them and answers the
rest 503 + Retry-After before any Python runs: the concurrency limit of the SRE book's overload
chapter, sized by measurement (cluster/balancer.yaml), with CoDel's "drop what waited too long" as the
queue timeout.

The server list is a fixed set of slots: harness/door.py points them at the ports Serve
publishes (`target_groups`) through HAProxy's runtime API, so a replica replaced on a new port joins
without a reload that would drop connections.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from serve_app.core.settings import Strict

BACKEND = "ingress"


class BalancerPolicy(Strict):
    """cluster/balancer.yaml: where the front door listens and how much it lets through."""

    host: str = Field("127.0.0.1", description="address to bind; loopback unless you mean otherwise")
    port: int = Field(8080, ge=1, le=65_535, description="the port clients use")
    per_replica_in_flight: int = Field(
        4, ge=1, le=1_024, description="requests one ingress replica is given at a time"
    )
    balance: Literal["first", "leastconn", "roundrobin"] = Field(
        "leastconn", description="HAProxy's algorithm; `first` fills one replica to its limit before the next"
    )
    queue: int = Field(8, ge=0, le=100_000, description="requests waiting for a replica; past it, 503")
    queue_timeout_ms: int = Field(200, ge=1, le=60_000, description="a request queued this long gets 503")
    retry_after_s: int = Field(1, ge=0, le=3_600, description="Retry-After of the balancer's 503s")
    server_timeout_s: float = Field(10, gt=0, le=600, description="longest wait for a replica's answer")
    health_check_interval_ms: int = Field(1_000, ge=100, le=60_000, description="/healthz of each replica")
    max_replicas: int = Field(16, ge=1, le=1_024, description="server slots: ingress replicas it can follow")
    sync_interval_s: float = Field(1.0, gt=0, le=60, description="how often it reads Serve's target_groups")


def load_policy(path: Path) -> BalancerPolicy:
    return BalancerPolicy.model_validate(yaml.safe_load(path.read_text()) or {})


@dataclass(frozen=True)
class Paths:
    """Files of one running balancer: under its run directory, but for the admin socket (below)."""

    run_dir: Path

    @property
    def config(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def socket(self) -> Path:
        # Unix socket paths must stay short (HAProxy: 97 characters): in the temp dir, named by a hash of
        # the run directory, so two checkouts never share one.
        digest = hashlib.sha1(str(self.run_dir.resolve()).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"recsys-haproxy-{digest}.sock"

    def error_page(self, status: int) -> Path:
        return self.run_dir / f"{status}.http"


_REASONS = {
    502: ("Bad Gateway", "unavailable", "an ingress replica failed while answering; retry"),
    503: ("Service Unavailable", "overloaded", "every ingress replica is busy and the queue is full"),
    504: ("Gateway Timeout", "unavailable", "an ingress replica did not answer in time; retry"),
}


def error_page(status: int, policy: BalancerPolicy) -> bytes:
    """A whole HTTP response in the app's error shape, for HAProxy's `errorfile`."""
    reason, code, message = _REASONS[status]
    body = json.dumps({"error": code, "message": f"{message} (retry after {policy.retry_after_s} s)"})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Retry-After: {policy.retry_after_s}\r\nCache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return (head + body).encode()


def slot_name(slot: int) -> str:
    return f"replica{slot}"


def render(policy: BalancerPolicy, paths: Paths, ports: list[int]) -> str:
    """The HAProxy configuration with `ports` in the first slots and the other slots in maintenance."""
    if len(ports) > policy.max_replicas:
        raise ValueError(f"{len(ports)} ingress ports but max_replicas is {policy.max_replicas}")
    refusal = json.dumps(
        {
            "error": "overloaded",
            "message": f"every ingress replica is busy and the queue is full "
            f"(retry after {policy.retry_after_s} s)",
        }
    ).replace('"', '\\"')
    inter = policy.health_check_interval_ms
    servers = [
        f"    server {slot_name(i)} 127.0.0.1:{ports[i]}"
        if i < len(ports)
        else f"    server {slot_name(i)} 127.0.0.1:1 disabled"
        for i in range(policy.max_replicas)
    ]
    errorfiles = [f"    errorfile {s} {paths.error_page(s)}" for s in sorted(_REASONS)]
    return "\n".join(
        [
            "global",
            "    maxconn 4000",
            # One thread: on a node of a few cores the answers need the CPU; HAProxy needs little.
            "    nbthread 1",
            f"    stats socket {paths.socket} mode 600 level admin",
            "defaults",
            "    mode http",
            "    timeout connect 1s",
            "    timeout client 30s",
            f"    timeout server {policy.server_timeout_s:g}s",
            f"    timeout queue {policy.queue_timeout_ms}ms",
            "    timeout http-request 5s",
            "    timeout http-keep-alive 30s",
            "    option http-no-delay",
            # The whole (small) body before a replica is picked, so a request a dying replica dropped
            # can be sent again to another one: every route is a read or deduplicates (events' ids).
            "    option http-buffer-request",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response",
            "    retries 2",
            *errorfiles,
            "frontend recsys",
            f"    bind {policy.host}:{policy.port}",
            # Refused before any replica sees it: the cheap answer that keeps goodput at capacity.
            f"    http-request return status 503 content-type application/json "
            f'hdr Retry-After {policy.retry_after_s} string "{refusal}" '
            f"if {{ queue({BACKEND}) ge {policy.queue} }}",
            f"    default_backend {BACKEND}",
            f"backend {BACKEND}",
            f"    balance {policy.balance}",
            "    http-reuse always",
            "    option httpchk GET /healthz",
            "    http-check expect status 200",
            f"    default-server check inter {inter}ms fastinter {max(100, inter // 4)}ms "
            f"downinter {max(100, inter // 2)}ms fall 2 rise 1 maxconn {policy.per_replica_in_flight} "
            "observe layer4 error-limit 1 on-error mark-down",
            *servers,
            "",
        ]
    )


@dataclass(frozen=True)
class Change:
    """One slot re-pointed (port) or taken out of rotation (port None)."""

    slot: int
    port: int | None

    def commands(self) -> list[str]:
        server = f"{BACKEND}/{slot_name(self.slot)}"
        if self.port is None:
            return [f"set server {server} state maint"]
        return [f"set server {server} addr 127.0.0.1 port {self.port}", f"set server {server} state ready"]


def plan(slots: list[int | None], ports: list[int]) -> list[Change]:
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


def apply(slots: list[int | None], changes: list[Change]) -> list[int | None]:
    out = list(slots)
    for change in changes:
        out[change.slot] = change.port
    return out
