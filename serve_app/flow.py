"""The ingress's request flow without Ray: chain the stages, enforce the deadline, degrade on failure.

The stage callables return awaitables (Serve `DeploymentResponse`s in production; plain coroutines or
tasks in tests). The features response is handed on unawaited, so Serve resolves it where it is
consumed and the graph never bounces through the ingress between stages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from serve_app.bundle import Bundle
from serve_app.errors import DependencyError
from serve_app.schemas import ItemScore, RecommendRequest, RecommendResponse
from serve_app.stages import pipeline
from serve_app.stages.filters import Filter
from serve_app.stages.pipeline import Scored
from serve_app.stages.user_features import UserFeatureReader

Stage = Callable[..., Any]  # returns an awaitable that can also be passed on unawaited


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


class Overloaded(DependencyError):
    """A downstream stage refused the request because its queue is full: tell the client to retry."""


def is_backpressure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if "BackPressure" in type(seen).__name__ or "BackPressureError" in str(seen)[:200]:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


class RecommendFlow:
    def __init__(self, user_features: Stage, retrieve: Stage, rank: Stage) -> None:
        self.user_features, self.retrieve, self.rank = user_features, retrieve, rank

    async def run(
        self,
        bundle: Bundle,
        filters: Sequence[Filter],
        user_id: int,
        k: int,
        exclude: tuple[int, ...],
        n_candidates: int,
        deadline_s: float,
    ) -> Scored:
        features = self.user_features(user_id)
        candidates = self.retrieve(features, n_candidates, exclude)
        ranked = self.rank(features, candidates)
        try:
            result: Scored = await asyncio.wait_for(_awaited(ranked), deadline_s)
        except Exception as exc:
            if is_backpressure(exc):
                raise Overloaded(_reason(exc)) from exc
            result = await self._after_failure(bundle, candidates, exc, deadline_s)
        if not len(result.item_ids) and result.fallback is not None:
            pop = pipeline.popular(bundle, filters, user_id, k, exclude, result.fallback)
            result = replace(
                pop,
                degraded=result.degraded,
                reason=result.reason,
                timings_ms={**result.timings_ms, **pop.timings_ms},
            )
        return result

    async def _after_failure(
        self, bundle: Bundle, candidates: Awaitable, exc: BaseException, deadline_s: float
    ) -> Scored:
        """Ranking failed or timed out: retrieval order if retrieval succeeded, else the popularity list."""
        reason = (
            _reason(exc) if not isinstance(exc, TimeoutError) else f"stages missed the {deadline_s}s deadline"
        )
        try:
            retrieved: Scored = await asyncio.wait_for(_awaited(candidates), max(0.05, deadline_s / 4))
        except Exception as retrieval_exc:
            if is_backpressure(retrieval_exc):
                raise Overloaded(_reason(retrieval_exc)) from retrieval_exc
            return Scored(
                pipeline.EMPTY_IDS,
                pipeline.EMPTY_SCORES,
                bundle.version,
                fallback="retriever_unavailable",
                degraded=True,
                reason=reason,
            )
        if retrieved.fallback is not None:
            return retrieved
        return replace(retrieved, fallback="ranker_unavailable", degraded=True, reason=reason)


async def _awaited(awaitable: Awaitable) -> Any:
    return await awaitable


def in_process_stages(
    bundle: Callable[[], Bundle], filters: Callable[[], Sequence[Filter]], reader: UserFeatureReader
) -> tuple[Stage, Stage, Stage]:
    """The three stages as local tasks, for the colocated topology (no handle hops, no batching)."""

    def user_features(user_id: int) -> asyncio.Future:
        return asyncio.ensure_future(reader.aget(user_id))

    def retrieve(features: Awaitable, n: int, exclude: tuple[int, ...]) -> asyncio.Future:
        async def run() -> Scored:
            return pipeline.retrieve_batch(bundle(), filters(), [(await features, n, exclude)])[0]

        return asyncio.ensure_future(run())

    def rank(features: Awaitable, candidates: Awaitable) -> asyncio.Future:
        async def run() -> Scored:
            return pipeline.rank_candidates(bundle(), [(await features, await candidates)])[0]

        return asyncio.ensure_future(run())

    return user_features, retrieve, rank
