"""Brownout: under pressure, a cheaper answer before a refusal (docs/architecture.md, "Brownout").

When more requests are in flight at this ingress than `brownout_rank_above`, the ranker is skipped and
the candidates go out in retrieval order; beyond `brownout_popular_above` retrieval is skipped too and
the popularity list answers. Both are flagged `degraded` with `fallback: "brownout"` and say why.
Skipping the ranker removes its share of each request's work (in the colocated ingress about 40% of a
request's compute, in the graph a whole hop), so the service answers more before it has to refuse;
what that costs in quality is the offline evaluation's retrieval-only (or most-popular) NDCG against
the two-stage one, printed in the bundle's manifest. Off unless configured. No ray import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from serve_app.core.settings import ServingSettings
from serve_app.request.flow import OverloadCheck, RecommendFlow, Stages
from serve_app.request.serving_state import ServingState
from serve_app.request.stages import fallback
from serve_app.request.stages.retrieve import Retrieved
from serve_app.request.stages.scored import Scored

Level = Literal["full", "retrieval", "popular"]


@dataclass(frozen=True)
class BrownoutPolicy:
    rank_above: int | None = None  # requests in flight beyond which ranking is skipped
    popular_above: int | None = None  # ... beyond which retrieval is skipped too

    @classmethod
    def of(cls, settings: ServingSettings) -> BrownoutPolicy:
        return cls(settings.brownout_rank_above, settings.brownout_popular_above)

    def level(self, in_flight: int) -> Level:
        if self.popular_above is not None and in_flight > self.popular_above:
            return "popular"
        if self.rank_above is not None and in_flight > self.rank_above:
            return "retrieval"
        return "full"

    def reason(self, level: Level, in_flight: int) -> str:
        if level == "popular":
            return f"brownout: {in_flight} requests in flight (popularity list above {self.popular_above})"
        return f"brownout: {in_flight} requests in flight (ranking skipped above {self.rank_above})"


def in_retrieval_order(reason: str) -> Callable[[Awaitable[Retrieved]], asyncio.Future]:
    """A rank stage that does no ranking: the retrieval's candidates as they came, flagged."""

    def rank(retrieved: asyncio.Future) -> asyncio.Future:
        async def run() -> Scored:
            # Shielded: when the deadline cancels this stand-in, the retrieval must live on for the
            # flow's own fallback, which awaits it next (a cancelled one would raise CancelledError).
            got: Retrieved = await asyncio.shield(retrieved)
            return fallback.after_ranker_failure(got.candidates, reason, fallback.BROWNOUT)

        return asyncio.ensure_future(run())

    return rank


class BrownoutFlow:
    """`RecommendFlow.run`'s interface over the same stages, choosing per request by the requests in
    flight (`in_flight()`, the ingress's count including this one): the full flow, the flow with
    ranking skipped, or the popularity list. The choice is made once, at the start of a request."""

    def __init__(
        self,
        stages: Stages,
        state: ServingState,
        in_flight: Callable[[], int],
        is_overload: OverloadCheck | None = None,
    ) -> None:
        self.stages, self.state, self.in_flight = stages, state, in_flight
        self.full = RecommendFlow(stages, state, is_overload)
        self.is_overload = is_overload
        self.shed = {"retrieval": 0, "popular": 0}  # requests answered cheaper, by level

    async def run(
        self, user_id: int, k: int, exclude: tuple[int, ...], refresh: bool = False, spent_s: float = 0.0
    ) -> Scored:
        served = self.state.for_user(user_id)
        policy = BrownoutPolicy.of(served.settings)
        in_flight = self.in_flight()
        level = policy.level(in_flight)
        if level == "full":
            return await self.full.run(user_id, k, exclude, refresh, spent_s)
        self.shed[level] += 1
        reason = policy.reason(level, in_flight)
        if level == "retrieval":
            unranked = Stages(self._retrieval_task, in_retrieval_order(reason))
            flow = RecommendFlow(unranked, self.state, self.is_overload)
            return await flow.run(user_id, k, exclude, refresh, spent_s)
        empty = Scored.empty(served.bundle.version, fallback=fallback.BROWNOUT, degraded=True, reason=reason)
        return fallback.settle(empty, served, user_id, k, exclude)

    def _retrieval_task(self, *args: object) -> asyncio.Future:
        """The retrieval as one task that both the stand-in ranker and the flow's fallback await (a
        Serve response or a local task, awaited once underneath)."""
        return asyncio.ensure_future(_awaited(self.stages.retrieve(*args)))


async def _awaited(awaitable: Awaitable[Retrieved]) -> Retrieved:
    return await awaitable
