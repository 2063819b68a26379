"""The graph's stage calls coalesced at the ingress: one handle call per batch of requests, not per request.

A handle call costs the ingress, the router and the stage's replica about as much CPU as the stage's
work itself (docs/architecture.md, "Coalescing"). Under concurrency, the requests an ingress has in
flight at once ask the Retriever and then the Ranker the same kind of question; Serve's `@serve.batch`,
here on the caller's side, gathers them and sends each batch as one call (`retrieve_many`, `rank_many`),
so a hop is paid once per batch. Alone, a request goes at once (no wait for a fuller batch: whatever
queued while the previous call was out forms the next). A failing or overloaded call fails each request
of its batch, which falls back or is refused as it would have alone.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.request.deadlines import deadline_in, unless_expired
from serve_app.request.flow import Stages
from serve_app.request.stages.retrieve import Retrieved
from serve_app.request.stages.scored import Scored
from serve_app.telemetry.request_log import CURRENT_REQUEST

CONCURRENT_CALLS = 4  # batches out at once per stage: a slow one does not hold up the next


class CoalescedStages:
    """`Stages` over the Retriever and Ranker handles, calls gathered into batches of `max_batch`; each
    request's deadline (`timeout_s` from its start) travels with it, and a stage drops it once past."""

    def __init__(
        self,
        retriever: DeploymentHandle,
        ranker: DeploymentHandle,
        max_batch: int,
        timeout_s: float,
        traced: Callable[[str | None], bool] = lambda _: False,
    ) -> None:
        """`traced(request_id)`: whether the request log samples that request; the stages then log
        its id for the call that carried it (serve_app/telemetry/request_log.py)."""
        self.retriever, self.ranker, self.max_batch = retriever, ranker, max_batch
        self.timeout_s, self.traced = timeout_s, traced
        batch = serve.batch(
            max_batch_size=max_batch, batch_wait_timeout_s=0.0, max_concurrent_batches=CONCURRENT_CALLS
        )
        # Decorated per instance: each ingress gathers its own requests.
        self._retrieve = batch(self._retrieve_many)
        self._rank = batch(self._rank_many)
        # The deadline of each retrieval in flight, for its ranking (a task holds no attributes).
        self._deadline_of: weakref.WeakKeyDictionary[asyncio.Future, float] = weakref.WeakKeyDictionary()

    def configure(self, max_batch: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        if max_batch != self.max_batch:
            for method in (self._retrieve, self._rank):
                method.set_max_batch_size(max_batch)
            self.max_batch = max_batch

    async def _retrieve_many(
        self,
        user_id: list[int],
        n: list[int],
        exclude: list[tuple[int, ...]],
        refresh: list[bool],
        deadline: list[float],
        trace: list[str | None],
    ) -> list[Retrieved | None]:
        traced = [t for t in trace if t]
        return await self.retriever.retrieve_many.remote(user_id, n, exclude, refresh, deadline, traced)

    async def _rank_many(
        self, retrieved: list[Retrieved], deadline: list[float], trace: list[str | None]
    ) -> list[Scored | None]:
        return await self.ranker.rank_many.remote(retrieved, deadline, [t for t in trace if t])

    def _trace(self) -> str | None:
        """The current request's id when the request log samples it, else None."""
        request_id = CURRENT_REQUEST.get()
        return request_id if request_id is not None and self.traced(request_id) else None

    def stages(self) -> Stages:
        def retrieve(user_id: int, n: int, exclude: tuple[int, ...], refresh: bool = False) -> asyncio.Future:
            deadline, trace = deadline_in(self.timeout_s), self._trace()

            async def run() -> Retrieved:
                got = await self._retrieve(user_id, n, exclude, refresh, deadline, trace)
                return unless_expired(got, "Retriever")

            task = asyncio.ensure_future(run())
            self._deadline_of[task] = deadline
            return task

        def rank(retrieved: asyncio.Future) -> asyncio.Future:
            deadline = self._deadline_of.get(retrieved) or deadline_in(self.timeout_s)
            trace = self._trace()

            async def run() -> Scored:
                # Shielded: when the deadline cancels the ranking, the retrieval must live on for the
                # flow's fallback, which awaits it next (a cancelled one would raise CancelledError).
                got = await asyncio.shield(retrieved)
                return unless_expired(await self._rank(got, deadline, trace), "Ranker")

            return asyncio.ensure_future(run())

        return Stages(retrieve, rank)
