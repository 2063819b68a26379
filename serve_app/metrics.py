"""The service's Prometheus metrics (names in design.md section 12), through Ray Serve's metrics API.

Replicas record them with `ray.serve.metrics`, which adds the `deployment`, `replica` and
`application` labels; Ray's metrics agent exports them on each node's metrics port, next to Serve's
own series. Outside Serve (the single-process baseline, the benchmark's floor, unit tests) nothing is
recorded: `NO_METRICS`. What a request counts as is decided by `outcome_of`, a pure function.
"""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.stages.scored import Scored

# Milliseconds: fine enough to read a p99 near 1 ms and near 1 s.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100,
    150, 200, 300, 500, 750, 1000, 1500, 2000, 5000,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
OUTCOMES = ("ok", "degraded", "fallback", "rejected", "invalid")


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


class RequestMetrics:
    """Does nothing: the interface, and what runs outside Serve."""

    def answered(self, result: Scored, elapsed_ms: float) -> None:
        """A request answered 200: its outcome, and the time of each stage and of the whole."""

    def refused(self, status: int, code: str) -> None:
        """A request answered with an error (`code` as in ErrorResponse)."""

    def bundle(self, version: str) -> None:
        """This replica now serves `version`."""


NO_METRICS = RequestMetrics()


def stage_latency(topology: str):  # -> ray.serve.metrics.Histogram
    from ray.serve.metrics import Histogram

    histogram = Histogram(
        "recsys_stage_latency_ms",
        description="Time in each stage of a request (total: the whole request in the ingress), ms",
        boundaries=list(LATENCY_BUCKETS_MS),
        tag_keys=("stage", "topology"),
    )
    histogram.set_default_tags({"topology": topology})
    return histogram


class ServeRequestMetrics(RequestMetrics):
    """The ingress's view of every request, as Ray Serve metrics."""

    def __init__(self, topology: str) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.latency = stage_latency(topology)
        self.requests = Counter(
            "recsys_requests_total",
            description="Requests by outcome (ok, degraded, fallback, rejected, invalid) and reason",
            tag_keys=("outcome", "reason"),
        )
        self.candidates = Histogram(
            "recsys_candidates",
            description="Items in the answer before the top k was cut",
            boundaries=[1, 10, 50, 100, 150, 200, 300, 500, 1000],
        )
        self.filtered = Counter(
            "recsys_filtered_total",
            description="Candidates removed by each filter",
            tag_keys=("filter",),
        )
        self.bundle_info = BundleInfo()

    def answered(self, result: Scored, elapsed_ms: float) -> None:
        outcome, reason = outcome_of(result)
        self.requests.inc(tags={"outcome": outcome, "reason": reason})
        for stage, ms in result.timings_ms.items():
            self.latency.observe(ms, tags={"stage": stage})
        self.latency.observe(elapsed_ms, tags={"stage": "total"})
        self.candidates.observe(len(result.item_ids))
        for name, removed in result.filtered.items():
            if removed:
                self.filtered.inc(removed, tags={"filter": name})

    def refused(self, status: int, code: str) -> None:
        outcome = "rejected" if status >= 500 else "invalid"
        self.requests.inc(tags={"outcome": outcome, "reason": code})

    def bundle(self, version: str) -> None:
        self.bundle_info.serving(version)


class BundleInfo:
    """`recsys_bundle_info{version}`: 1 for the version a replica serves, 0 for the one it left."""

    def __init__(self) -> None:
        from ray.serve.metrics import Gauge

        self.gauge = Gauge(
            "recsys_bundle_info",
            description="1 for the bundle version this replica serves",
            tag_keys=("version",),
        )
        self.current: str | None = None

    def serving(self, version: str) -> None:
        if version == self.current:
            return
        if self.current is not None:
            self.gauge.set(0, tags={"version": self.current})
        self.gauge.set(1, tags={"version": version})
        self.current = version


class BatchSizes:
    """`recsys_batch_size{stage}`: how many requests each call of a batched stage carried."""

    def __init__(self, stage: str) -> None:
        from ray.serve.metrics import Histogram

        self.histogram = Histogram(
            "recsys_batch_size",
            description="Requests per call of a batched stage",
            boundaries=list(BATCH_BUCKETS),
            tag_keys=("stage",),
        )
        self.histogram.set_default_tags({"stage": stage})

    def observe(self, batch: Sequence[object]) -> None:
        self.histogram.observe(len(batch))
