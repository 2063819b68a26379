"""The Serve application: the Ingress (FastAPI) over the request flow, and `build_app`.

`serve deploy cluster/serve_config.yaml` and `serve.run(build_app(AppArgs(...)))` both come here.
(No `from __future__ import annotations`: Serve reads build_app's annotation to validate the args.)
"""

import asyncio
import time
from typing import Any, Literal

from fastapi import Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.http import create_api
from serve_app.api.schemas import (
    MAX_K,
    CanaryInfo,
    ErrorResponse,
    HealthResponse,
    ItemScore,
    PopularResponse,
    RecommendRequest,
    RecommendResponse,
    VersionResponse,
    to_response,
    without_paths,
)
from serve_app.core.bundle import load_bundle
from serve_app.core.errors import RETRY_AFTER_S, DependencyError, NotReady, RecsysError
from serve_app.core.paths import resolve_path
from serve_app.core.settings import AppArgs, ServingSettings
from serve_app.events.models import EventsRequest, EventsResponse
from serve_app.events.push_feed import Pushed, RecentlyPushed, follow
from serve_app.request.brownout import BrownoutFlow
from serve_app.request.deadlines import DOOR_ARRIVED_HEADER, spent_since
from serve_app.request.flow import Stages, local_stages
from serve_app.request.serving_state import ServingState
from serve_app.request.stages import fallback
from serve_app.request.stages.retrieve import query_vector
from serve_app.request.stages.served import Served
from serve_app.request.stages.user_features import UserFeatureResult
from serve_app.serve.autoscaling import DOOR_QUEUE
from serve_app.serve.coalesce import CoalescedStages
from serve_app.serve.deployments import EventWriter, Ranker, Retriever, is_backpressure, open_reader
from serve_app.serve.metrics import FeatureMetrics, RecallGauge, ServeRequestMetrics
from serve_app.telemetry.load_signal import DOOR_QUEUE_HEADER, DoorQueue
from serve_app.telemetry.recall_monitor import RecallMonitor
from serve_app.telemetry.request_log import RequestLog, serving

__all__ = ["AppArgs", "Ingress", "build_app"]

# A push rewrites Feast's file offline source: seconds on a large one, never the request deadline.
EVENTS_TIMEOUT_S = 30.0
NO_USER = -1  # the popularity list for nobody in particular: no history, only the business rules

api = create_api(
    echo_request_id=False,
    title="recsys",
    description="Two-stage recommendations: FAISS retrieval, XGBoost ranking, Feast features.",
    version="0.1.0",
)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    max_queued_requests=64,
    backpressure_config={"status_code": 503, "retry_after_s": RETRY_AFTER_S},
)
@serve.ingress(api)
class Ingress:
    """graph: the stages are handles to their deployments (Retriever, which reads the user features,
    and Ranker), and this replica holds only what settling a fallback needs (popularity list,
    histories). colocated: every stage runs here, over the whole bundle (no handle hops, no
    cross-request batching; scale it with Ingress replicas)."""

    def __init__(
        self,
        settings: dict[str, Any],
        topology: Literal["graph", "colocated"],
        feature_repo: str | None = None,
        feature_store_yaml: str | None = None,
        retriever: DeploymentHandle | None = None,
        ranker: DeploymentHandle | None = None,
        event_writer: DeploymentHandle | None = None,
    ) -> None:
        base = ServingSettings.model_validate(settings)
        self.metrics = ServeRequestMetrics(topology)
        self.request_log = RequestLog(base.request_log_sample_rate, topology)
        self.in_flight = 0  # /recommend requests this replica is answering (the brownout's signal)
        self.door_queue = DoorQueue()  # what waits at the front door, for the autoscaler
        self.recall: RecallMonitor | None = None
        self.exposure_of: tuple[str, int] | None = None  # (bundle version, window) the gauges watch
        api.state.on_error = self.refused  # every error answer, 4xx and 503, is counted
        self.reader = None
        self.feature_metrics: FeatureMetrics | None = None  # colocated: the reads run here
        self.coalesced: CoalescedStages | None = None
        self.event_writer = event_writer
        self.recently_pushed = RecentlyPushed(base.user_features_cache_ttl_s)
        self.stage_handles: dict[str, DeploymentHandle] = {}
        if topology == "graph":
            if retriever is None or ranker is None:
                raise ValueError("the graph topology needs the Retriever and Ranker handles")
            self.state = ServingState(base, parts=("history",))
            self.stage_handles = {"retriever": retriever, "ranker": ranker}
            if base.ingress_batch_size > 1:  # one handle call per batch of requests (coalesce.py)
                self.coalesced = CoalescedStages(
                    retriever,
                    ranker,
                    base.ingress_batch_size,
                    base.request_timeout_s,
                    traced=lambda request_id: self.request_log.sampled(request_id),
                )
                stages = self.coalesced.stages()
            else:
                stages = Stages(retriever.retrieve.remote, ranker.rank.remote)
        else:
            if feature_repo is None:
                raise ValueError("the colocated topology needs a feature_repo")
            self.state = ServingState(base)
            self.feature_metrics = FeatureMetrics(topology, self.metrics.latency)  # one histogram per process
            self.reader = open_reader(feature_repo, feature_store_yaml, base, self.feature_metrics.observe)
            self.recall = RecallMonitor(RecallGauge().publish, base.recall_sample_rate, base.n_candidates)
            stages = local_stages(self.state, self.reader, self._sample_recall)
        # Under load, a cheaper answer before a refusal: by the requests in flight here (brownout.py).
        self.flow = BrownoutFlow(stages, self.state, lambda: self.in_flight, is_backpressure)
        self.push_follower: asyncio.Task | None = None
        if event_writer is not None:  # other replicas' events, heard within a poll (push_feed.py)
            poll = event_writer.pushed_since.remote
            self.push_follower = asyncio.get_running_loop().create_task(follow(poll, self.heard))

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        settings = self.state.reconfigure(config)
        if self.reader is not None:
            self.reader.configure(settings)
        self.recently_pushed.ttl_s = settings.user_features_cache_ttl_s
        if self.coalesced is not None:
            self.coalesced.configure(settings.ingress_batch_size, settings.request_timeout_s)
        bundle = self.state.current.bundle
        self.metrics.bundle(bundle.version)
        self.metrics.canary_on = self.state.canary is not None
        self.request_log.configure(settings.request_log_sample_rate)
        self.metrics.stage_sample.rate = settings.stage_metrics_sample_rate
        if self.feature_metrics is not None:
            self.feature_metrics.sample.rate = settings.stage_metrics_sample_rate
        if self.recall is not None:
            self.recall.configure(settings.recall_sample_rate, settings.n_candidates)
        if self.exposure_of != (bundle.version, settings.exposure_window):
            # Sorted by id, as the window looks ids up (items added since the build are appended).
            order = bundle.items.order if bundle.items.order is not None else slice(None)
            popularity = bundle.items.columns["item_popularity"][order]
            self.metrics.watch_exposure(bundle.items.item_ids[order], popularity, settings.exposure_window)
            self.exposure_of = (bundle.version, settings.exposure_window)

    def heard(self, pushed: Pushed) -> None:
        """Users whose features were pushed (through any ingress): read past the caches from now on."""
        if pushed.users is None:
            if self.reader is not None:
                self.reader.forget_all()
            return
        self.recently_pushed.add(pushed.users)
        if self.reader is not None:
            self.reader.forget(pushed.users)

    def refused(self, status: int, code: str, request_id: str | None) -> None:
        self.metrics.refused(status, code)
        self.request_log.refused(request_id, status, code)

    def _sample_recall(self, served: Served, features: UserFeatureResult) -> None:
        bundle = served.bundle
        assert self.recall is not None
        self.recall.offer(bundle.version, bundle.index, [features], lambda f: query_vector(f, bundle)[0])

    def check_health(self) -> None:
        self.state.current  # noqa: B018 -- raises until reconfigure has loaded a bundle

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaler samples it (autoscaling.py): the front door's queue, which it cannot see."""
        return {DOOR_QUEUE: self.door_queue.read()}

    @api.post(
        "/recommend",
        response_model=RecommendResponse,
        responses={
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    async def recommend(self, body: RecommendRequest, request: Request) -> RecommendResponse:
        start = time.perf_counter()
        serving(request.state.request_id)  # for the stage calls made on its behalf
        self.door_queue.heard(request.headers.get(DOOR_QUEUE_HEADER))
        self.in_flight += 1
        try:
            refresh = body.user_id in self.recently_pushed
            spent_s = spent_since(request.headers.get(DOOR_ARRIVED_HEADER), limit_s=60.0)
            exclude = tuple(body.exclude_item_ids)
            result = await self.flow.run(body.user_id, body.k, exclude, refresh, spent_s)
        finally:
            self.in_flight -= 1
        elapsed_ms = (time.perf_counter() - start) * 1000
        arm = self.state.arm_of(result.bundle_version)
        self.metrics.answered(result, elapsed_ms, result.item_ids[: body.k], arm)
        self.request_log.answered(request.state.request_id, body.user_id, body.k, result, elapsed_ms)
        return to_response(result, body, request.state.request_id, elapsed_ms)

    @api.post(
        "/events",
        status_code=202,
        response_model=EventsResponse,
        responses={
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    async def events(self, body: EventsRequest) -> EventsResponse:
        """Apply user events (idempotent by event_id). 202 once they are in the event log and the
        store's push returned; 503 when the store refused them (nothing applied: send them again)."""
        if self.event_writer is None:
            raise DependencyError("this deployment takes no events (no EventWriter)")
        try:
            done = await asyncio.wait_for(self.event_writer.apply.remote(body.events), EVENTS_TIMEOUT_S)
        except Exception as exc:
            raise DependencyError(
                f"the event writer failed or did not answer ({type(exc).__name__}); send the events again: "
                "ids already applied are counted as duplicates"
            ) from exc
        if "error" in done:
            error = RecsysError(done["message"])
            error.code, error.http_status = done["error"], done["status"]
            error.retry_after_s = RETRY_AFTER_S if done["status"] == 503 else None
            raise error
        # Their next reads go to the store, past the cache of whichever replica reads them.
        self.recently_pushed.add(done["users"])
        if self.reader is not None:  # colocated: this replica's own cached rows are stale now
            self.reader.forget(done["users"])
        return EventsResponse(accepted=done["accepted"], duplicates=done["duplicates"])

    @api.get("/healthz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
    async def healthz(self) -> HealthResponse:
        """Ready when this replica holds a bundle and every stage it calls answers (a load balancer's
        readiness check: before that, answers would be fallbacks)."""
        version = self.state.current.bundle.version
        for name, handle in self.stage_handles.items():
            try:
                await asyncio.wait_for(handle.version.remote(), 2.0)
            except Exception as exc:
                raise NotReady(f"{name} is not ready ({type(exc).__name__})") from exc
        return HealthResponse(status="ok", bundle_version=version)

    @api.get("/version", response_model=VersionResponse)
    async def version(self) -> VersionResponse:
        bundle, canary = self.state.current.bundle, self.state.canary
        stages: dict[str, str] = {}
        canary_stages: dict[str, str] = {}
        refused = {"ingress": without_paths(self.state.refused["error"])} if self.state.refused else {}
        if not self.stage_handles:
            stages["colocated"] = bundle.version
            canary_stages["colocated"] = canary.bundle.version if canary else "none"
        for name, handle in self.stage_handles.items():
            try:
                info = await asyncio.wait_for(handle.version.remote(), 2.0)
            except Exception as exc:
                stages[name] = canary_stages[name] = f"unavailable ({type(exc).__name__})"
                continue
            stages[name] = info["version"]
            canary_stages[name] = info.get("canary") or "none"
            if info["refused"]:
                refused[name] = without_paths(info["refused"]["error"])
        if self.event_writer is not None:
            try:
                info = await asyncio.wait_for(self.event_writer.version.remote(), 2.0)
                stages["event_writer"] = info["version"]
                if info["refused"]:
                    refused["event_writer"] = without_paths(info["refused"]["error"])
            except Exception as exc:
                stages["event_writer"] = f"unavailable ({type(exc).__name__})"
        return VersionResponse(
            bundle_version=bundle.version,
            stages=stages,
            refused=refused or None,
            canary=CanaryInfo(
                bundle_version=canary.bundle.version,
                share=canary.settings.canary_share,
                stages=canary_stages,
            )
            if canary is not None
            else None,
            item_delta=bundle.manifest.get("item_delta"),
        )

    @api.get("/popular", response_model=PopularResponse)
    async def popular(self) -> PopularResponse:
        """The main bundle's popularity list, business rules applied (not per user): what the front
        door answers with past capacity (harness/balancer.py follows it)."""
        top = fallback.popular(self.state.current, NO_USER, MAX_K, (), "popular")
        items = [
            ItemScore(item_id=int(i), score=float(s)) for i, s in zip(top.item_ids, top.scores, strict=True)
        ]
        return PopularResponse(bundle_version=top.bundle_version, items=items)


def build_app(args: AppArgs) -> serve.Application:
    """Check the bundle now (a bad one fails the deploy, not the first request), then wire the graph.

    Every deployment gets the settings as its constructor argument and `user_config={}`, so Serve calls
    `reconfigure` once at start (it loads the bundle there); a `user_config` in serve_config.yaml
    replaces that `{}` and overrides only the keys it names.
    """
    serving = args.serving()
    bundle = load_bundle(serving.bundle_path())
    settings = serving.model_copy(update={"bundle": str(bundle.path)}).model_dump(mode="json")
    ingress = Ingress.options(user_config={})
    repo = str(resolve_path(args.feature_repo))
    yaml = str(resolve_path(args.feature_store_yaml)) if args.feature_store_yaml else None
    events = EventWriter.options(user_config={}).bind(settings, repo, yaml)
    if args.topology == "colocated":
        return ingress.bind(
            settings, "colocated", feature_repo=repo, feature_store_yaml=yaml, event_writer=events
        )
    return ingress.bind(
        settings,
        "graph",
        retriever=Retriever.options(user_config={}).bind(settings, repo, yaml),
        ranker=Ranker.options(user_config={}).bind(settings),
        event_writer=events,
    )
