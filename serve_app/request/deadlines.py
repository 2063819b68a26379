"""A request's deadline travels with its stage calls, and a stage drops work whose deadline has passed.

The ingress answers every request by `request_timeout_s` (RecommendFlow: a fallback when a stage is
late). Work a stage would do after that is wasted: nobody waits for it, and under overload it delays
the requests that can still make it. So the coalesced calls (coalesce.py) carry each request's
deadline as wall-clock time (`time.time()`: the stages may run in other processes, on other nodes
whose clocks NTP keeps within milliseconds), and the Retriever and the Ranker compute only the
requests still inside it; a dropped one comes back as `None`, and its caller raises `Expired`.
The per-request path (`ingress_batch_size: 1`, the stages' own `@serve.batch`) carries no deadline.

The deadline is the client's, so it starts at the front door: HAProxy stamps when a request arrived
(`DOOR_ARRIVED_HEADER`, wall-clock milliseconds), and what it spent in the door's queue and the
replica's own before the flow began comes off `request_timeout_s` (`spent_since`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Expired(TimeoutError):
    """The stage dropped this request: its deadline had passed before the stage reached it."""


DOOR_ARRIVED_HEADER = "x-recsys-door-arrived"  # set by the door (control/haproxy_config.py)


def spent_since(arrived_ms: str | None, limit_s: float, now: float | None = None) -> float:
    """Seconds since the door's stamp, within 0..`limit_s`: 0 without a readable one (no door, the
    Serve proxy's path), and a stamp ahead of this clock (the door's host a little ahead) is 0 too."""
    try:
        arrived_s = int(arrived_ms or "") / 1000
    except ValueError:
        return 0.0
    at = time.time() if now is None else now
    return min(limit_s, max(0.0, at - arrived_s))


def deadline_in(seconds: float) -> float:
    return time.time() + seconds


def live(n: int, deadlines: Sequence[float] | None, now: float | None = None) -> list[int]:
    """Indices of the `n` requests whose deadline has not passed (all of them when none were sent)."""
    if deadlines is None:
        return list(range(n))
    at = time.time() if now is None else now
    return [i for i, d in enumerate(deadlines) if d > at]


def gather(indices: Sequence[int], xs: Sequence[T]) -> list[T]:
    """The live requests' entries of one argument list of a batch (`scatter` puts results back)."""
    return [xs[i] for i in indices]


def scatter(n: int, indices: Sequence[int], results: Sequence[T]) -> list[T | None]:
    """The results of the live requests in their places, `None` in the dropped ones'."""
    out: list[T | None] = [None] * n
    for i, result in zip(indices, results, strict=True):
        out[i] = result
    return out


def unless_expired(result: T | None, stage: str) -> T:
    if result is None:
        raise Expired(f"the {stage} dropped the request: its deadline had passed")
    return result
