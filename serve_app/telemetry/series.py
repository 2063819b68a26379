"""The service's Prometheus series as a contract (docs/ops.md, "Metrics"): buckets, how a request is
counted (`outcome_of`) and which requests' stage times are observed (`Sample`).

Pure: serve/metrics.py records them through Ray Serve's metrics API, the request log labels its lines
with the same outcomes.
"""

from __future__ import annotations

import math

from serve_app.request.stages.scored import Scored

# Milliseconds: fine enough to read a p99 near 1 ms and near 1 s.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100,
    150, 200, 300, 500, 750, 1000, 1500, 2000, 5000,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# Stage times recorded where the stage runs, not by the ingress from the answer's timings:
# `FeatureMetrics` records every user-features read (with the features' age) in the process reading.
RECORDED_WHERE_RUN = frozenset({"user_features"})


def outcome_of(result: Scored) -> tuple[str, str]:
    """(outcome, reason) of an answered request; labels of bounded cardinality.

    degraded: built from partial information (a stage or the store failed), reason = the fallback
    or `user_features`; fallback: the popularity list for a reason that is not a failure (an
    unknown user); ok: retrieved and ranked with fresh features.
    """
    if result.degraded:
        return "degraded", result.fallback or "user_features"
    if result.fallback is not None:
        return "fallback", result.fallback
    return "ok", ""


class Sample:
    """Which of a stream of events to observe: a share `rate` of them, evenly spread, starting with
    the first (so a series appears with the first request). Deterministic: tests can count on it.

    Why sample at all: Ray 2.60's metrics agent replays every histogram observation into
    OpenTelemetry one Python call at a time (ray-project/ray#64891), in a burst every 10 s, and at
    ~8 observations a request those bursts stalled the replicas (half-load p99 47-243 ms with every
    stage observed, 33-34 ms with none, 37-57 ms with a tenth; docs/decisions.md, "Sampled stage metrics").
    Quantiles and means of a sampled histogram estimate the whole's; its `_count` is the sample's.
    """

    def __init__(self, rate: float = 1.0) -> None:
        self.rate = rate
        self._seen = 0

    def __call__(self) -> bool:
        n, self._seen = self._seen, self._seen + 1
        if self.rate <= 0:
            return False
        # The n-th event is taken when n * rate crosses an integer (1e-9: 0.1 * 10 is 0.999...).
        return math.floor(n * self.rate + 1e-9) != math.floor((n - 1) * self.rate + 1e-9)
