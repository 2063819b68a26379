"""The Serve application: Ingress (FastAPI) -> UserFeatures -> Retriever -> Ranker, and `build_app`.

`serve deploy cluster/serve_config.yaml` and `serve.run(build_app(AppArgs(...)))` both come here.
(No `from __future__ import annotations`: Serve reads build_app's annotation to validate the args.)
"""

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.bundle import load_bundle
from serve_app.deployments import (
    BundleHolder,
    Ranker,
    Retriever,
    UserFeatures,
    configure_reader,
    open_reader,
)
from serve_app.flow import Overloaded, RecommendFlow, in_process_stages, to_response
from serve_app.http import RequestContextMiddleware, install_error_handlers
from serve_app.schemas import (
    ErrorResponse,
    HealthResponse,
    RecommendRequest,
    RecommendResponse,
    VersionResponse,
)
from serve_app.stages import pipeline

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RETRY_AFTER_S = 1


class AppArgs(BaseModel):
    """Arguments of the application (the `args:` block of serve_config.yaml). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    bundle: str = Field("artifacts/current", description="bundle directory; `current` is resolved at deploy")
    topology: Literal["graph", "colocated"] = Field(
        "graph",
        description="graph: Retriever and Ranker are their own autoscaled, batching deployments; colocated: "
        "the ingress runs every stage in-process (fewer hops; scale it with Ingress replicas)",
    )
    feature_repo: str = Field(
        "feature_repo", description="Feast repository (feature_store.yaml and registry)"
    )
    feature_store_yaml: str | None = Field(None, description="another feature_store.yaml, e.g. the Redis one")
    n_candidates: int = Field(200, ge=1, le=5_000)
    request_timeout_s: float = Field(1.0, gt=0, le=60, description="deadline for the whole stage chain")
    user_features_timeout_ms: float = Field(50, gt=0, le=10_000)
    user_features_cache_ttl_s: float = Field(30, ge=0)
    blocked_item_ids: list[int] = Field(default_factory=list, description="business rule: never recommend")
    max_batch_size: int = Field(16, ge=1, le=1_024)
    batch_wait_timeout_s: float = Field(0.001, ge=0, le=1)


def resolve_path(path: str) -> Path:
    """Relative paths are relative to RECSYS_HOME, or to this checkout when that is unset."""
    p = Path(path)
    return (p if p.is_absolute() else Path(os.environ.get("RECSYS_HOME", PROJECT_ROOT)) / p).resolve()


api = FastAPI(
    title="recsys",
    description="Two-stage recommendations: FAISS retrieval, XGBoost ranking, Feast features.",
    version="0.1.0",
)
install_error_handlers(api)
api.add_middleware(RequestContextMiddleware, echo=False)


def _retry_later(message: str) -> HTTPException:
    return HTTPException(503, message, headers={"Retry-After": str(RETRY_AFTER_S)})


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    max_queued_requests=64,
    backpressure_config={"status_code": 503, "retry_after_s": RETRY_AFTER_S},
)
@serve.ingress(api)
class Ingress:
    """Graph topology: handles to the three stage deployments. Colocated: no handles, a feature repo,
    and the same flow over in-process stages (one hop fewer per stage, no cross-request batching)."""

    def __init__(
        self,
        user_features: DeploymentHandle | None = None,
        retriever: DeploymentHandle | None = None,
        ranker: DeploymentHandle | None = None,
        feature_repo: str | None = None,
        feature_store_yaml: str | None = None,
    ) -> None:
        self.holder = BundleHolder()
        self.filters: list = []
        self.n_candidates, self.deadline_s = 200, 1.0
        self.stages = {"retriever": retriever, "ranker": ranker} if retriever and ranker else {}
        self.readiness = {name: h.version.remote for name, h in self.stages.items()}
        if user_features is not None:
            self.readiness["user_features"] = user_features.ready.remote
        self.reader = None
        if user_features and retriever and ranker:
            self.flow = RecommendFlow(user_features.get.remote, retriever.retrieve.remote, ranker.rank.remote)
        else:
            self.reader = open_reader(str(feature_repo), feature_store_yaml)
            self.flow = RecommendFlow(
                *in_process_stages(self.holder.require, lambda: self.filters, self.reader)
            )

    def reconfigure(self, config: dict[str, Any]) -> None:
        blocked = config.get("blocked_item_ids", [])
        self.holder.load(config["bundle"])
        self.filters = pipeline.filters_for(self.holder.require(), blocked)
        self.n_candidates = int(config.get("n_candidates", 200))
        self.deadline_s = float(config.get("request_timeout_s", 1.0))
        if self.reader is not None:
            configure_reader(self.reader, config)

    def check_health(self) -> None:
        self.holder.require()

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
        try:
            result = await self.flow.run(
                self.holder.require(),
                self.filters,
                body.user_id,
                body.k,
                tuple(body.exclude_item_ids),
                self.n_candidates,
                self.deadline_s,
            )
        except Overloaded as exc:
            raise _retry_later(f"overloaded ({exc}); retry after {RETRY_AFTER_S}s") from exc
        return to_response(result, body, request.state.request_id, (time.perf_counter() - start) * 1000)

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz(self) -> HealthResponse:
        """Ready when this replica holds a bundle and every stage it calls answers (a load balancer's
        readiness check: before that, answers would be fallbacks)."""
        version = self.holder.require().version
        for name, call in self.readiness.items():
            try:
                await asyncio.wait_for(call(), 2.0)
            except Exception as exc:
                raise _retry_later(f"{name} is not ready ({type(exc).__name__})") from exc
        return HealthResponse(status="ok", bundle_version=version)

    @api.get("/version", response_model=VersionResponse)
    async def version(self) -> VersionResponse:
        bundle = self.holder.require()
        stages: dict[str, str] = {}
        refused = {"ingress": self.holder.refused["error"]} if self.holder.refused else {}
        if not self.stages:
            stages["colocated"] = bundle.version
        for name, handle in self.stages.items():
            try:
                info = await asyncio.wait_for(handle.version.remote(), 2.0)
            except Exception as exc:
                stages[name] = f"unavailable ({type(exc).__name__})"
                continue
            stages[name] = info["version"]
            if info["refused"]:
                refused[name] = info["refused"]["error"]
        return VersionResponse(
            bundle_version=bundle.version,
            bundle_path=str(bundle.path),
            stages=stages,
            refused=refused or None,
        )


def build_app(args: AppArgs) -> serve.Application:
    """Check the bundle now (a bad one fails the deploy, not the first request), then wire the graph."""
    bundle = load_bundle(resolve_path(args.bundle))
    stage = {
        "bundle": str(bundle.path),
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_timeout_s,
    }
    repo = resolve_path(args.feature_repo)
    yaml = str(resolve_path(args.feature_store_yaml)) if args.feature_store_yaml else None
    reader_config = {
        "timeout_ms": args.user_features_timeout_ms,
        "cache_ttl_s": args.user_features_cache_ttl_s,
    }
    ingress = Ingress.options(
        user_config={
            "bundle": str(bundle.path),
            "n_candidates": args.n_candidates,
            "request_timeout_s": args.request_timeout_s,
            "blocked_item_ids": args.blocked_item_ids,
            **reader_config,
        }
    )
    if args.topology == "colocated":
        return ingress.bind(feature_repo=str(repo), feature_store_yaml=yaml)
    user_features = UserFeatures.options(user_config=reader_config).bind(str(repo), yaml)
    retriever = Retriever.options(user_config={**stage, "blocked_item_ids": args.blocked_item_ids}).bind()
    ranker = Ranker.options(user_config=stage).bind()
    return ingress.bind(user_features, retriever, ranker)
