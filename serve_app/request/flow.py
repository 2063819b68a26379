"""The request path, once: user features + retrieve -> rank under one deadline, then settle fallbacks.

The same `RecommendFlow` runs everywhere a request is answered: over Serve handles in the graph
topology, over in-process stages (`local_stages`) in the colocated topology, the single-process
baseline and the benchmark's floor. Two stages: retrieval reads the user's features itself (the bundle
holds its model's user vectors, so the features only freshen the vector and feed the ranker) and hands
them on with the candidates. Stage callables return awaitables (Serve `DeploymentResponse`s, or tasks);
the retrieval response is handed to the ranker unawaited: Serve's router waits for it to be ready and
passes the ranker a reference, so the candidates never travel through the ingress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.core.errors import Overloaded
from serve_app.core.settings import ServingSettings
from serve_app.request.serving_state import ServingState
from serve_app.request.stages import fallback
from serve_app.request.stages.rank import rank_candidates
from serve_app.request.stages.retrieve import Retrieved, retrieve_read
from serve_app.request.stages.scored import Scored
from serve_app.request.stages.served import Served
from serve_app.request.stages.user_features import UserFeatureReader, UserFeatureResult, feast_fetcher


@dataclass(frozen=True)
class Stages:
    """`retrieve(user_id, n, exclude, refresh)` -> awaitable `Retrieved` (the user's features, read
    under their own deadline, past the cache when `refresh`, and the candidates); `rank(retrieved)`
    -> awaitable `Scored`, taking the retrieval awaitable as it came, unawaited."""

    retrieve: Callable[..., Any]
    rank: Callable[..., Any]


FALLBACK_RESERVE_S = 0.05  # of the request deadline, kept for the retrieval-order fallback
MIN_DEADLINE_S = 0.02  # a request that waited its whole deadline: time for a cached read, no more
OverloadCheck = Callable[[BaseException], bool]


class RecommendFlow:
    def __init__(
        self,
        stages: Stages,
        state: ServingState,
        is_overload: OverloadCheck | None = None,
    ) -> None:
        """`state` is the caller's: its settings and bundle settle fallbacks (the popularity list).
        `is_overload` recognises a stage's "queue full" refusal (the Serve layer's backpressure),
        which is answered 503, not degraded; in-process stages have no queue to refuse from."""
        self.stages, self.state, self.is_overload = stages, state, is_overload

    async def run(
        self, user_id: int, k: int, exclude: tuple[int, ...], refresh: bool = False, spent_s: float = 0.0
    ) -> Scored:
        """`refresh`: the user's features are read past the cache (they just sent events). `spent_s`:
        what the request waited before it got here (deadlines.spent_since), off its deadline; past
        it, the stages still get `MIN_DEADLINE_S` and the answer is likely the popularity list."""
        served = self.state.for_user(user_id)
        deadline_s = max(MIN_DEADLINE_S, served.settings.request_timeout_s - spent_s)
        end = asyncio.get_running_loop().time() + deadline_s
        retrieved = self.stages.retrieve(user_id, served.settings.n_candidates, exclude, refresh)
        ranked = self.stages.rank(retrieved)
        try:
            # The ranker gets the deadline less a reserve for falling back to the retrieval order,
            # so a request whose stage died still answers by its deadline, not after it.
            reserve_s = min(FALLBACK_RESERVE_S, deadline_s / 10)
            result: Scored = await asyncio.wait_for(_awaited(ranked), deadline_s - reserve_s)
        except Exception as exc:
            self._raise_if_overload(exc, deadline_s)
            result = await self._after_ranker_failure(served, retrieved, exc, deadline_s, end)
        return fallback.settle(result, served, user_id, k, exclude)

    async def _after_ranker_failure(
        self, served: Served, retrieved: Awaitable, exc: BaseException, deadline_s: float, end: float
    ) -> Scored:
        """Ranking failed or timed out: retrieval order if retrieval succeeded by the deadline, else
        no candidates (the popularity list)."""
        reason = fallback.stage_failure(exc, deadline_s)
        left_s = max(0.0, end - asyncio.get_running_loop().time())
        try:
            got: Retrieved = await asyncio.wait_for(_awaited(retrieved), left_s)
        except Exception as retrieval_exc:
            self._raise_if_overload(retrieval_exc, deadline_s)
            return fallback.after_retriever_failure(served.bundle.version, reason)
        return fallback.after_ranker_failure(got.candidates, reason)

    def _raise_if_overload(self, exc: BaseException, deadline_s: float) -> None:
        if self.is_overload is not None and self.is_overload(exc):
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
    """The two stages as local tasks over one process's state (no handle hops, no batching).
    `on_retrieved(served, features)` sees every retrieval (the colocated ingress samples recall)."""

    def retrieve(user_id: int, n: int, exclude: tuple[int, ...], refresh: bool = False) -> asyncio.Future:
        async def run() -> Retrieved:
            read = await reader.atimed(user_id, refresh)  # one user: no gather, no extra task
            served = state.for_user(user_id)
            [result] = retrieve_read(served, [read], [n], [exclude])
            if on_retrieved is not None:
                on_retrieved(served, result.features)
            return result

        return asyncio.ensure_future(run())

    def rank(retrieved: Awaitable[Retrieved]) -> asyncio.Future:
        async def run() -> Scored:
            # Shielded, as the flow's fallback awaits the retrieval again if the deadline cancels this.
            got = await asyncio.shield(retrieved)  # ranked by the bundle that retrieved it (one arm)
            served = state.for_version(got.candidates.bundle_version)
            if served is None:  # a reconfigure swapped it out in between: not another model's ranker
                return fallback.unranked(got.candidates, state.current.bundle.version)
            return rank_candidates(served.bundle, [got])[0]

        return asyncio.ensure_future(run())

    return Stages(retrieve, rank)


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
