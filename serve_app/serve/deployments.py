"""Thin Serve wrappers around the pure stages: Retriever (which reads the user's features) and Ranker.

Each deployment is constructed with the app's settings (its args) and gets its `user_config` through
`reconfigure()`, laid over those settings (`ServingSettings.with_overrides`). Each loads only the parts
of the bundle it serves; a bad bundle is refused and the replica keeps serving the one it has.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from ray import serve
from ray.serve.exceptions import BackPressureError

from serve_app.core.bundle import Part
from serve_app.core.errors import BundleError, Overloaded, RecsysError
from serve_app.core.settings import SERVING_DEFAULTS, ServingSettings
from serve_app.events.ingest import EventIngest, feast_push
from serve_app.events.log import EventLog, event_log_path
from serve_app.events.models import Event
from serve_app.events.push_feed import Cursor, Pushed, PushFeed
from serve_app.events.user_rows import EventModel
from serve_app.request.deadlines import gather, scatter
from serve_app.request.serving_state import ServingState, per_arm
from serve_app.request.stages.fallback import unranked
from serve_app.request.stages.rank import rank_candidates
from serve_app.request.stages.retrieve import Retrieved, query_vector, retrieve_read
from serve_app.request.stages.scored import Scored
from serve_app.request.stages.served import Served
from serve_app.request.stages.user_features import Observe, UserFeatureReader, feast_fetcher
from serve_app.serve.autoscaling import ROWS_IN_FLIGHT
from serve_app.serve.metrics import BatchSizes, BundleInfo, ExpiredCount, FeatureMetrics, RecallGauge
from serve_app.telemetry.load_signal import RowsInFlight
from serve_app.telemetry.recall_monitor import RecallMonitor
from serve_app.telemetry.request_log import log_coalesced

log = logging.getLogger("ray.serve")
UNKNOWN: Any = object()  # no bundle of that version held: the candidates are not ranked here


def open_reader(
    feature_repo: str,
    feature_store_yaml: str | None,
    settings: ServingSettings,
    observe: Observe | None = None,
) -> UserFeatureReader:
    fetch = feast_fetcher(feature_repo, feature_store_yaml)
    # The first read loads the registry and opens the store (~100s of ms): pay it before traffic.
    try:
        fetch(-1)
    except Exception as exc:  # a store down at start-up degrades requests; it must not block start-up
        log.warning("online store not reachable at start-up: %s", exc)
    return UserFeatureReader(fetch, settings, observe=observe)


def version_info(state: ServingState) -> dict[str, Any]:
    """What a replica serves, for GET /version: its main bundle's version, its canary's, its refusal."""
    canary = state.canary
    return {
        "version": state.current.bundle.version,
        "canary": canary.bundle.version if canary is not None else None,
        "refused": state.refused,
    }


def is_backpressure(exc: BaseException) -> bool:
    """A stage's queue was full: Serve raises BackPressureError from the handle, possibly wrapped
    (a RayTaskError's `cause`, or the chain of a DeploymentResponse passed on as an argument)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, BackPressureError | Overloaded):
            return True
        cause = getattr(seen, "cause", None)
        seen = seen.__cause__ or seen.__context__ or (cause if isinstance(cause, BaseException) else None)
    return False


class _BundleStage:
    """A batched stage over the parts of the bundle it serves."""

    parts: ClassVar[frozenset[Part]]
    batched: ClassVar[str]  # the @serve.batch method whose batching the settings tune
    keeps_retired: ClassVar[bool] = False

    def __init__(self, settings: dict[str, Any]) -> None:
        settings_ = ServingSettings.model_validate(settings)
        self.state = ServingState(settings_, self.parts, keep_retired=self.keeps_retired)
        self.batch_sizes = BatchSizes(self.batched)
        self.expired = ExpiredCount(self.batched)
        self.bundle_info = BundleInfo()
        self.rows = RowsInFlight()  # requests held, however coalesced into calls: for the autoscaler

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaler samples it (autoscaling.py)."""
        return {ROWS_IN_FLIGHT: self.rows.read()}

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        settings = self.state.reconfigure(config)
        method = getattr(self, self.batched)
        method.set_max_batch_size(settings.max_batch_size)
        method.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.bundle_info.serving(self.state.current.bundle.version)

    def check_health(self) -> None:
        self.state.current  # noqa: B018 -- raises until reconfigure has loaded a bundle

    def version(self) -> dict[str, Any]:
        return version_info(self.state)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class Retriever(_BundleStage):
    """The user's features from the online store (50 ms deadline, TTL cache, degraded past it), then
    FAISS top-N over the bundle's index, minus seen, excluded and blocked items. Reading the features
    here, not in a deployment of their own, keeps the critical path at two hops and puts the read's
    deadline in the process that waits on it: a store that hangs costs a request at most the deadline."""

    parts = frozenset(("index", "history"))
    batched = "retrieve"

    def __init__(self, settings: dict[str, Any], feature_repo: str, feature_store_yaml: str | None) -> None:
        super().__init__(settings)
        # Each read's latency and feature age are recorded here, where it runs (the ingress records
        # the other stages' times from the answer).
        self.feature_metrics = FeatureMetrics("graph")
        self.reader = open_reader(
            feature_repo, feature_store_yaml, self.state.base, self.feature_metrics.observe
        )
        self.recall = RecallMonitor(RecallGauge().publish, sample_rate=0.0, depth=1)  # see reconfigure

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        super().reconfigure(config)
        settings = self.state.current.settings  # what was applied, or kept when config was refused
        self.reader.configure(settings)
        self.recall.configure(settings.recall_sample_rate, settings.n_candidates)
        self.feature_metrics.sample.rate = settings.stage_metrics_sample_rate

    # Two batches at once: while one waits on the store (up to the features deadline when it hangs),
    # the next is gathered and read instead of queueing behind it. FAISS itself runs on the loop, so
    # the searches still take turns. max_ongoing_requests (32) covers both batches.
    @serve.batch(
        max_batch_size=SERVING_DEFAULTS.max_batch_size,
        batch_wait_timeout_s=SERVING_DEFAULTS.batch_wait_timeout_s,
        max_concurrent_batches=2,
    )
    async def retrieve(
        self, user_id: list[int], n: list[int], exclude: list[tuple[int, ...]], refresh: list[bool]
    ) -> list[Retrieved]:
        return await self._retrieve(user_id, n, exclude, refresh)

    async def retrieve_many(
        self,
        user_id: list[int],
        n: list[int],
        exclude: list[tuple[int, ...]],
        refresh: list[bool],
        deadline: list[float] | None = None,
        traced: list[str] | None = None,
    ) -> list[Retrieved | None]:
        """A batch an ingress gathered (serve_app/serve/coalesce.py) as one call; requests past their
        `deadline` are dropped (None), not computed (serve_app/request/deadlines.py). `traced`: the ids of
        the requests the request log samples, logged here so their trace includes this stage."""
        log_coalesced(log, "retrieve", traced or [], len(user_id))
        idx = self.expired.live(len(user_id), deadline)
        if not idx:
            return [None] * len(user_id)
        args = [gather(idx, xs) for xs in (user_id, n, exclude, refresh)]
        with self.rows.holding(len(idx)):
            out = await self._retrieve(*args)
        return scatter(len(user_id), idx, out)

    async def _retrieve(
        self, user_id: list[int], n: list[int], exclude: list[tuple[int, ...]], refresh: list[bool]
    ) -> list[Retrieved]:
        self.batch_sizes.observe(user_id)
        reads = await self.reader.aget_many(user_id, refresh)
        main = self.state.current

        def retrieve(served: Served, idx: list[int]) -> list[Retrieved]:
            out = retrieve_read(
                served, [reads[i] for i in idx], [n[i] for i in idx], [exclude[i] for i in idx]
            )
            if served is main:  # the recall gauge watches the main bundle's index
                bundle, features = served.bundle, [r.features for r in out]
                self.recall.offer(
                    bundle.version, bundle.index, features, lambda f: query_vector(f, bundle)[0]
                )
            return out

        return per_arm([self.state.for_user(u) for u in user_id], retrieve)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class Ranker(_BundleStage):
    """XGBoost over candidates joined with the bundle's in-memory item snapshot."""

    parts = frozenset(("ranker",))
    batched = "rank"
    keeps_retired = True  # a model and item features: small, and it ranks candidates of the last step

    @serve.batch(
        max_batch_size=SERVING_DEFAULTS.max_batch_size,
        batch_wait_timeout_s=SERVING_DEFAULTS.batch_wait_timeout_s,
    )
    async def rank(self, retrieved: list[Retrieved]) -> list[Scored]:
        return self._rank(retrieved)

    def rank_many(
        self,
        retrieved: list[Retrieved],
        deadline: list[float] | None = None,
        traced: list[str] | None = None,
    ) -> list[Scored | None]:
        """A batch an ingress gathered, as one call; past their `deadline`: dropped (see Retriever)."""
        log_coalesced(log, "rank", traced or [], len(retrieved))
        idx = self.expired.live(len(retrieved), deadline)
        if not idx:
            return [None] * len(retrieved)
        with self.rows.holding(len(idx)):
            ranked = self._rank(gather(idx, retrieved))
        return scatter(len(retrieved), idx, ranked)

    def _rank(self, retrieved: list[Retrieved]) -> list[Scored]:
        self.batch_sizes.observe(retrieved)
        # Candidates are ranked by the bundle that retrieved them (a canary's by the canary's model);
        # none held here: retrieval order, degraded (never one model's candidates by another's ranker).
        arms = self.state.arms
        served_of = [self.state.for_version(r.candidates.bundle_version) or UNKNOWN for r in retrieved]

        def rank(served: Served, idx: list[int]) -> list[Scored]:
            if served is UNKNOWN:
                return [unranked(retrieved[i].candidates, arms.main.bundle.version) for i in idx]
            return rank_candidates(served.bundle, [retrieved[i] for i in idx])

        return per_arm(served_of, rank)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, num_replicas=1, max_ongoing_requests=4)
class EventWriter:
    """POST /events behind the ingress: recomputes the users' rows against the served bundle and
    pushes them to the store (serve_app/events/ingest.py). Its own replica, off the request path:
    Feast's file offline store rewrites the user source on every push, and the fold-in needs the item
    factors, which the graph's ingress does not load. One replica; the event log's lock keeps more
    (or a second writer) from applying an event twice all the same."""

    def __init__(self, settings: dict[str, Any], feature_repo: str, feature_store_yaml: str | None) -> None:
        # Events fold in against the main bundle only: a canary's users get their vectors from it.
        self.state = ServingState(ServingSettings.model_validate(settings), ("index", "log"), canary=False)
        self.bundle_info = BundleInfo()
        self.ingest = EventIngest(
            EventLog(event_log_path(feature_repo)), feast_push(feature_repo, feature_store_yaml)
        )
        self.model: EventModel | None = None
        self.unavailable: str | None = None
        self.feed = PushFeed()

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        try:
            self.state.reconfigure(config)
        except BundleError as exc:
            # A bundle built before events has no interaction log: serve recommendations all the
            # same, and answer events 503 with what to do (the app must not fail to deploy).
            self.unavailable = str(exc)
            return
        self.unavailable = None
        bundle = self.state.current.bundle
        if self.model is None or self.model.version != bundle.version:
            self.model = EventModel.from_bundle(bundle)
        self.bundle_info.serving(bundle.version)

    def version(self) -> dict[str, Any]:
        if self.unavailable is not None and self.model is None:
            return {"version": f"unavailable ({self.unavailable})", "refused": None}
        return {"version": self.state.current.bundle.version, "refused": self.state.refused}

    def pushed_since(self, cursor: Cursor | None) -> Pushed:
        """Users pushed after `cursor`, for every ingress replica's cache (serve_app/events/push_feed.py)."""
        return self.feed.since(cursor)

    def apply(self, events: list[Event]) -> dict[str, Any]:
        """{accepted, duplicates, users, push_ms}, or {error, message, status} for the ingress to
        answer (an exception's class does not survive the trip between processes intact)."""
        if self.model is None:
            message = f"events are not taken: {self.unavailable}; then redeploy"
            return {"error": "events_unavailable", "message": message, "status": 503}
        try:
            done = self.ingest.apply(self.model, events)
        except RecsysError as exc:
            return {"error": exc.code, "message": str(exc), "status": exc.http_status}
        self.feed.record(done.users)
        return {
            "accepted": done.accepted,
            "duplicates": done.duplicates,
            "users": list(done.users),
            "push_ms": done.push_ms,
        }
