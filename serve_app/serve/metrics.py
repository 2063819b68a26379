"""The service's Prometheus metrics (docs/ops.md, "Metrics"), recorded through Ray Serve's metrics API.

Replicas record them with `ray.serve.metrics`, which adds the `deployment`, `replica` and
`application` labels; Ray's metrics agent exports them on each node's metrics port, next to Serve's
own series. What a request counts as, and which are sampled, is telemetry/series.py (pure); outside
Serve (the single-process baseline, the benchmark's floor) nothing is recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from serve_app.request.canary import MAIN
from serve_app.request.deadlines import live
from serve_app.request.stages.scored import Scored
from serve_app.telemetry.exposure import ExposureWindow, top_popular_mask
from serve_app.telemetry.series import (
    BATCH_BUCKETS,
    LATENCY_BUCKETS_MS,
    RECORDED_WHERE_RUN,
    Sample,
    outcome_of,
)

if TYPE_CHECKING:
    from serve_app.request.stages.user_features import UserFeatureResult


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


class ServeRequestMetrics:
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
    (serve_app/request/deadlines.py); `live` picks the others."""

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
