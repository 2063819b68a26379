"""The service's Prometheus metrics (names in design.md section 12), through Ray Serve's metrics API.

Replicas record them with `ray.serve.metrics`, which adds the `deployment`, `replica` and
`application` labels; Ray's metrics agent exports them on each node's metrics port, next to Serve's
own series. Outside Serve (the single-process baseline, the benchmark's floor, unit tests) nothing is
recorded: `NO_METRICS`. What a request counts as is decided by `outcome_of`, a pure function.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from serve_app.canary import MAIN
from serve_app.deadlines import live
from serve_app.exposure import ExposureWindow, top_popular_mask
from serve_app.stages.scored import Scored

if TYPE_CHECKING:
    from serve_app.stages.user_features import UserFeatureResult

# Milliseconds: fine enough to read a p99 near 1 ms and near 1 s.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100,
    150, 200, 300, 500, 750, 1000, 1500, 2000, 5000,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
OUTCOMES = ("ok", "degraded", "fallback", "rejected", "invalid")
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
    stage observed, 33-34 ms with none, 37-57 ms with a tenth; README "Topologies").
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


class RequestMetrics:
    """Does nothing: the interface, and what runs outside Serve."""

    def answered(
        self, result: Scored, elapsed_ms: float, shown: np.ndarray | None = None, arm: str = MAIN
    ) -> None:
        """A request answered 200: its outcome, the time of each stage and of the whole, the item ids
        it showed (for the exposure gauges) and the arm that served it (serve_app/canary.py)."""

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
            description="Requests by outcome (ok, degraded, fallback, rejected, invalid), reason and arm "
            "(main, or canary: the users a canary bundle serves; none for a refused request)",
            tag_keys=("outcome", "reason", "arm"),
        )
        self.arm_latency = Histogram(
            "recsys_arm_latency_ms",
            description="Whole-request time in the ingress by arm (main, canary), ms: a canary's cost",
            boundaries=list(LATENCY_BUCKETS_MS),
            tag_keys=("arm",),
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
        self.exposure: ExposureGauges | None = None
        self.canary_on = False
        # Which requests' stage times are observed (stage_metrics_sample_rate); the whole request's
        # time, the outcome and the candidates are counted for every one.
        self.stage_sample = Sample()

    def answered(
        self, result: Scored, elapsed_ms: float, shown: np.ndarray | None = None, arm: str = MAIN
    ) -> None:
        outcome, reason = outcome_of(result)
        self.requests.inc(tags={"outcome": outcome, "reason": reason, "arm": arm})
        if self.canary_on:  # only while a canary runs: with one arm it is the total's histogram again
            self.arm_latency.observe(elapsed_ms, tags={"arm": arm})
        if self.stage_sample():
            for stage, ms in result.timings_ms.items():
                if stage not in RECORDED_WHERE_RUN:
                    self.latency.observe(ms, tags={"stage": stage})
        self.latency.observe(elapsed_ms, tags={"stage": "total"})
        self.candidates.observe(len(result.item_ids))
        for name, removed in result.filtered.items():
            if removed:
                self.filtered.inc(removed, tags={"filter": name})
        if shown is not None and self.exposure is not None and arm == MAIN:  # the main catalogue's
            self.exposure.add(shown)

    def refused(self, status: int, code: str) -> None:
        outcome = "rejected" if status >= 500 else "invalid"
        self.requests.inc(tags={"outcome": outcome, "reason": code, "arm": "none"})

    def bundle(self, version: str) -> None:
        self.bundle_info.serving(version)

    def watch_exposure(self, item_ids: np.ndarray, popularity: np.ndarray, window: int) -> None:
        """(Re)start the exposure window for a catalogue (a new bundle, or a new window size)."""
        if self.exposure is not None:
            self.exposure.stop()
        self.exposure = ExposureGauges(ExposureWindow(item_ids, top_popular_mask(popularity), window))


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


class ExpiredCount:
    """`recsys_expired_total{stage}`: requests a stage dropped because their deadline had passed
    (serve_app/deadlines.py); `live` picks the others."""

    def __init__(self, stage: str) -> None:
        from ray.serve.metrics import Counter

        self.counter = Counter(
            "recsys_expired_total",
            description="Requests a stage dropped, not computed: their deadline had passed",
            tag_keys=("stage",),
        )
        self.counter.set_default_tags({"stage": stage})

    def live(self, n: int, deadlines: Sequence[float] | None) -> list[int]:
        idx = live(n, deadlines)
        if len(idx) < n:
            self.counter.inc(n - len(idx))
        return idx


class RecallGauge:
    """`recsys_ann_recall`: recall@N of the served index against exact search, over recent samples
    (`recall_monitor.RecallMonitor` publishes it), and how many samples the figure rests on."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge

        self.gauge = Gauge("recsys_ann_recall", description="Online ANN recall@N (exact top-N found)")
        self.samples = Counter("recsys_ann_recall_samples_total", description="Queries the monitor checked")

    def publish(self, recall: float, window: int) -> None:
        self.gauge.set(recall)
        self.samples.inc()


class ExposureGauges:
    """`recsys_exposure_{coverage,gini,top1pct_share}` of the ingress's last answers, recomputed every
    `period_s` on a thread of their own (O(items shown), so never on the request path)."""

    def __init__(self, window: ExposureWindow, period_s: float = 5.0) -> None:
        from ray.serve.metrics import Gauge

        self.window, self.period_s = window, period_s
        self.gauges = {
            name: Gauge(f"recsys_exposure_{name}", description=text)
            for name, text in (
                ("coverage", "Share of the catalogue shown in the window"),
                ("gini", "Gini of item exposure over the catalogue in the window"),
                ("top1pct_share", "Share of shown items among the 1% most popular"),
            )
        }
        self.stopped = threading.Event()
        threading.Thread(target=self._run, name="exposure-gauges", daemon=True).start()

    def add(self, item_ids: np.ndarray) -> None:
        self.window.add(item_ids)

    def publish(self) -> None:
        stats = self.window.stats()
        if stats.answers:
            self.gauges["coverage"].set(stats.coverage)
            self.gauges["gini"].set(stats.gini)
            self.gauges["top1pct_share"].set(stats.top1pct_share)

    def _run(self) -> None:
        while not self.stopped.wait(self.period_s):
            self.publish()

    def stop(self) -> None:
        self.stopped.set()


class FeatureMetrics:
    """What a user-features read cost and how old its features were (`recsys_user_feature_age_s`:
    now minus the event time the online store holds for the user's row), wherever the reader runs."""

    def __init__(self, topology: str, latency=None) -> None:  # latency: an existing stage_latency
        from ray.serve.metrics import Histogram

        self.latency = latency if latency is not None else stage_latency(topology)
        self.age = Histogram(
            "recsys_user_feature_age_s",
            description="Age of the user features a request used (now - their event time), seconds",
            boundaries=[1, 10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400],
        )
        self.sample = Sample()

    def observe(self, result: UserFeatureResult, elapsed_ms: float) -> None:
        if not self.sample():  # stage_metrics_sample_rate of the reads, as for the other stages
            return
        self.latency.observe(elapsed_ms, tags={"stage": "user_features"})
        if result.event_time_s is not None:
            self.age.observe(max(0.0, time.time() - result.event_time_s))
