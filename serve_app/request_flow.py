"""The request path, once: user features -> retrieve -> rank under one deadline, then settle fallbacks.

The same `RecommendFlow` runs everywhere a request is answered: over Serve handles in the graph
topology, over in-process stages (`local_stages`) in the colocated topology, the single-process
baseline and the benchmark's floor. Stage callables return awaitables (Serve `DeploymentResponse`s, or
tasks); the features response is handed on unawaited, so Serve resolves it where it is consumed and
the graph never bounces through the ingress between stages. No ray import here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.config import ServingSettings
from serve_app.errors import Overloaded
from serve_app.schemas import ItemScore, RecommendRequest, RecommendResponse
from serve_app.serving_state import Served, ServingState
from serve_app.stages import fallback
from serve_app.stages.rank import rank_candidates
from serve_app.stages.retrieve import retrieve_batch
from serve_app.stages.scored import Scored
from serve_app.stages.user_features import UserFeatureReader, UserFeatureResult, feast_fetcher


@dataclass(frozen=True)
class Stages:
    """`user_features(user_id)`, `retrieve(features, n, exclude)`, `rank(features, candidates)`: each
    returns an awaitable that may also be passed on unawaited as an argument of the next stage."""

    user_features: Callable[..., Any]
    retrieve: Callable[..., Any]
    rank: Callable[..., Any]


def is_overloaded(exc: BaseException) -> bool:
    return isinstance(exc, Overloaded)


class RecommendFlow:
    def __init__(
        self,
        stages: Stages,
        state: ServingState,
        is_overload: Callable[[BaseException], bool] = is_overloaded,
    ) -> None:
        """`state` is the caller's: its settings and bundle settle fallbacks (the popularity list).
        `is_overload` recognises a stage's "queue full" refusal, which is answered 503, not degraded."""
        self.stages, self.state, self.is_overload = stages, state, is_overload

    async def run(self, user_id: int, k: int, exclude: tuple[int, ...]) -> Scored:
        served = self.state.current
        deadline_s = served.settings.request_timeout_s
        features = self.stages.user_features(user_id)
        candidates = self.stages.retrieve(features, served.settings.n_candidates, exclude)
        ranked = self.stages.rank(features, candidates)
        try:
            result: Scored = await asyncio.wait_for(_awaited(ranked), deadline_s)
        except Exception as exc:
            self._raise_if_overload(exc, deadline_s)
            result = await self._after_ranker_failure(served, candidates, exc, deadline_s)
        return fallback.settle(result, served, user_id, k, exclude)

    async def _after_ranker_failure(
        self, served: Served, candidates: Awaitable, exc: BaseException, deadline_s: float
    ) -> Scored:
        """Ranking failed or timed out: retrieval order if retrieval succeeded, else no candidates."""
        reason = fallback.stage_failure(exc, deadline_s)
        try:
            retrieved: Scored = await asyncio.wait_for(_awaited(candidates), max(0.05, deadline_s / 4))
        except Exception as retrieval_exc:
            self._raise_if_overload(retrieval_exc, deadline_s)
            return fallback.after_retriever_failure(served.bundle.version, reason)
        return fallback.after_ranker_failure(retrieved, reason)

    def _raise_if_overload(self, exc: BaseException, deadline_s: float) -> None:
        if self.is_overload(exc):
            raise Overloaded(
                f"overloaded ({fallback.stage_failure(exc, deadline_s)}); retry after a second"
            ) from exc


async def _awaited(awaitable: Awaitable) -> Any:
    return await awaitable


def local_stages(
    state: ServingState,
    reader: UserFeatureReader,
    on_retrieved: Callable[[Served, UserFeatureResult], None] | None = None,
) -> Stages:
    """The three stages as local tasks over one process's state (no handle hops, no batching).
    `on_retrieved(served, features)` sees every retrieval (the colocated ingress samples recall)."""

    def user_features(user_id: int) -> asyncio.Future:
        return asyncio.ensure_future(reader.aget(user_id))

    def retrieve(features: Awaitable, n: int, exclude: tuple[int, ...]) -> asyncio.Future:
        async def run() -> Scored:
            served, feats = state.current, await features
            result = retrieve_batch(served, [(feats, n, exclude)])[0]
            if on_retrieved is not None:
                on_retrieved(served, feats)
            return result

        return asyncio.ensure_future(run())

    def rank(features: Awaitable, candidates: Awaitable) -> asyncio.Future:
        async def run() -> Scored:
            return rank_candidates(state.current.bundle, [(await features, await candidates)])[0]

        return asyncio.ensure_future(run())

    return Stages(user_features, retrieve, rank)


def in_process_flow(
    bundle_path: str | Path,
    repo: str | Path,
    settings: ServingSettings,
    fs_yaml: str | Path | None = None,
) -> tuple[RecommendFlow, UserFeatureReader]:
    """The flow over local stages on `bundle_path` and the Feast repo `repo` (its online store, or the
    one of `fs_yaml`), outside Serve: what the colocated ingress runs, for the single-process
    baseline, the benchmark's floor and tests."""
    state = ServingState(settings)
    state.apply(settings.with_overrides({"bundle": str(bundle_path)}))
    fetch = feast_fetcher(repo, fs_yaml)
    fetch(-1)  # the first read loads the registry (~100s of ms): pay it before the first request
    reader = UserFeatureReader(fetch, settings)
    return RecommendFlow(local_stages(state, reader), state), reader


def to_response(
    result: Scored, body: RecommendRequest, request_id: str, elapsed_ms: float
) -> RecommendResponse:
    """The HTTP answer for a flow result: top k, and timings and filter counts when debug is asked."""
    k = body.k
    return RecommendResponse(
        user_id=body.user_id,
        items=[
            ItemScore(item_id=int(i), score=float(s))
            for i, s in zip(result.item_ids[:k], result.scores[:k], strict=True)
        ],
        bundle_version=result.bundle_version,
        degraded=result.degraded,
        fallback=result.fallback,
        degraded_reason=result.reason,
        request_id=request_id,
        timings_ms={**result.timings_ms, "total": round(elapsed_ms, 3)} if body.debug else None,
        filtered=result.filtered if body.debug else None,
    )
