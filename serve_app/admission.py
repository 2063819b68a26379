"""Admission control: an adaptive limit on requests in flight, so overload is refused, not queued.

Past capacity, every request admitted beyond what the replicas can finish in time only waits: it
raises everyone's latency and finishes after its client gave up, and goodput collapses (issue 9's
measurements: 3x capacity, admitted p99 9.3 s against a 1 s deadline). Little's law says how many may
be in flight for a latency target: throughput x latency. Neither is known in advance (they move with
the catalogue, the topology, the replicas the autoscaler added), so the limit learns them, as Netflix's
concurrency-limits "gradient" limiter and Envoy's adaptive concurrency filter do: it tracks the
latency the service shows unloaded (the lowest 10th percentile of any window), and each window scales
the limit by how far the window's latency stayed from that, plus a little headroom to probe for more.
What is refused gets 503 + Retry-After at once (the caller retries elsewhere or later); a request never
waits in our queue for a slot. No ray import: the ingress owns one `AdaptiveLimit`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from serve_app.config import ServingSettings
from serve_app.errors import Overloaded


@dataclass(frozen=True)
class LimitSettings:
    initial: int = 32
    minimum: int = 2
    maximum: int = 256
    tolerance: float = 2.0  # a window may run this many times the unloaded latency before shrinking
    window: int = 50  # completed requests per adjustment


class AdaptiveLimit:
    def __init__(self, settings: LimitSettings = LimitSettings()) -> None:
        self.s = settings
        self.limit = float(settings.initial)
        self.in_flight = 0
        self.baseline_s: float | None = None
        self.samples: list[float] = []
        self.rejected = 0
        self.lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self.lock:
            if self.in_flight >= int(self.limit):
                self.rejected += 1
                return False
            self.in_flight += 1
            return True

    def release(self, latency_s: float, dropped: bool = False, sample: bool = True) -> None:
        """A request finished after `latency_s`. dropped: it failed (a stage refused it, or it
        raised), which counts as overload whatever its latency. sample=False: it says nothing about
        queueing (a degraded answer that waited out a dead replica's deadline: shedding load would
        not have helped it, and would fail requests a live replica could answer)."""
        with self.lock:
            self.in_flight -= 1
            if sample or dropped:
                self.samples.append(latency_s if not dropped else math.inf)
            if len(self.samples) >= self.s.window:
                self._adjust()

    def reset_baseline(self) -> None:
        """Forget the unloaded latency (a new bundle, catalogue or topology has its own)."""
        with self.lock:
            self.baseline_s = None

    def _adjust(self) -> None:
        finite = sorted(x for x in self.samples if math.isfinite(x))
        self.samples.clear()
        if not finite:  # everything failed: back off hard
            self.limit = max(self.s.minimum, self.limit / 2)
            return
        short = finite[len(finite) // 2]  # the window's median
        low = finite[max(0, len(finite) // 10)]  # its 10th percentile: what an unqueued request took
        # The lowest p10 any window showed: a drifting estimate ran away under sustained overload (each
        # window's queueing raised it); a new bundle or settings reset it instead (`reset_baseline`).
        if self.baseline_s is None or low < self.baseline_s:
            self.baseline_s = low
        gradient = max(0.5, min(1.0, self.s.tolerance * self.baseline_s / short))
        headroom = math.sqrt(self.limit)
        self.limit = max(self.s.minimum, min(self.s.maximum, self.limit * gradient + headroom))

    @contextmanager
    def admit(self, clock: Callable[[], float]) -> Iterator[Ticket]:
        """Run the body as an admitted request, or raise Overloaded (503 + Retry-After) at once.
        `clock` in seconds, e.g. time.perf_counter; the body may set `ticket.sample = False`."""
        if not self.try_acquire():
            raise Overloaded(
                f"overloaded: {self.in_flight} requests in flight, the limit is {int(self.limit)}; "
                "retry after a second"
            )
        ticket, start, dropped = Ticket(), clock(), True
        try:
            yield ticket
            dropped = False
        finally:
            self.release(clock() - start, dropped, ticket.sample)


@dataclass
class Ticket:
    sample: bool = True  # whether this request's latency tells the limit about load


class NoLimit(AdaptiveLimit):
    """admission: unlimited: every request is admitted (Serve's own queue bounds still apply)."""

    def try_acquire(self) -> bool:
        with self.lock:
            self.in_flight += 1
            return True


def admission_for(settings: ServingSettings) -> AdaptiveLimit:
    if settings.admission == "unlimited":
        return NoLimit()
    return AdaptiveLimit(LimitSettings(tolerance=settings.admission_tolerance))
