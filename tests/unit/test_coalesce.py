"""Coalesced stage calls: concurrent requests share handle calls, each gets its own answer back, and a
failed call fails the requests of its batch (each then falls back as it would alone). No Ray cluster:
`@serve.batch` runs on this asyncio loop, the handles are stand-ins that count their calls, and the
replica context `@serve.batch` reads its max_ongoing_requests from is the ingress's as configured."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from serve_app.request.deadlines import Expired, live, scatter
from serve_app.serve.coalesce import CoalescedStages


@pytest.fixture(autouse=True)
def in_an_ingress_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from ray import serve

    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)


@dataclass
class Method:
    reply: Any
    calls: list[tuple] = field(default_factory=list)
    fail: bool = False

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)

        async def answer() -> Any:
            await asyncio.sleep(0.005)  # a hop: what queues meanwhile forms the next batch
            if self.fail:
                raise ConnectionError("replica died")
            return self.reply(*args)

        return answer()


class Handle:
    def __init__(self, **methods: Method) -> None:
        self.__dict__.update(methods)


def handles() -> tuple[Handle, Handle]:
    """Stages that, like Retriever.retrieve_many and Ranker.rank_many, drop what is past its deadline."""

    def retrieve_many(users, n, excl, refresh, deadline, traced):
        return scatter(len(users), idx := live(len(users), deadline), [f"cands-{users[i]}" for i in idx])

    def rank_many(cands, deadline, traced):
        return scatter(len(cands), idx := live(len(cands), deadline), [f"ranked-{cands[i]}" for i in idx])

    return Handle(retrieve_many=Method(retrieve_many)), Handle(rank_many=Method(rank_many))


def test_concurrent_requests_share_calls_and_each_gets_its_own_answer() -> None:
    retriever, ranker = handles()

    async def main() -> list[str]:
        stages = CoalescedStages(retriever, ranker, max_batch=8, timeout_s=1.0).stages()
        flows = [stages.rank(stages.retrieve(u, 200, (), False)) for u in range(20)]
        return await asyncio.gather(*flows)

    assert asyncio.run(main()) == [f"ranked-cands-{u}" for u in range(20)]
    calls = retriever.retrieve_many.calls
    assert len(calls) < 20 and max(len(c[0]) for c in calls) <= 8  # batched, and never past max_batch
    assert sorted(u for c in calls for u in c[0]) == list(range(20))
    assert len(ranker.rank_many.calls) < 20


def test_a_request_alone_goes_at_once() -> None:
    retriever, ranker = handles()

    async def main() -> str:
        stages = CoalescedStages(retriever, ranker, max_batch=16, timeout_s=1.0).stages()
        return await asyncio.wait_for(stages.rank(stages.retrieve(7, 200, (3,), True)), 0.5)

    started = time.time()
    assert asyncio.run(main()) == "ranked-cands-7"
    [(users, n, exclude, refresh, [deadline], traced)] = retriever.retrieve_many.calls
    assert (users, n, exclude, refresh, traced) == ([7], [200], [(3,)], [True], [])
    assert started + 1.0 <= deadline <= time.time() + 1.0  # the request's start + its timeout
    assert ranker.rank_many.calls[0][1] == [deadline]  # the same deadline travels to the ranker


def test_a_failed_call_fails_every_request_of_its_batch() -> None:
    retriever, ranker = handles()
    ranker.rank_many.fail = True

    async def main() -> list[Any]:
        stages = CoalescedStages(retriever, ranker, max_batch=8, timeout_s=1.0).stages()
        flows = [stages.rank(stages.retrieve(u, 200, (), False)) for u in range(4)]
        return await asyncio.gather(*flows, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, ConnectionError) for r in results)
    with pytest.raises(ConnectionError):
        raise results[0]


def test_a_deadline_on_the_ranking_leaves_the_retrieval_to_the_fallback() -> None:
    """The flow awaits the retrieval again when the ranking misses its deadline (retrieval order):
    cancelling the ranking must not cancel the retrieval under it."""
    retriever, ranker = handles()

    async def main() -> str:
        stages = CoalescedStages(retriever, ranker, max_batch=8, timeout_s=1.0).stages()
        retrieved = stages.retrieve(1, 200, (), False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stages.rank(retrieved), 0.001)
        return await retrieved

    assert asyncio.run(main()) == "cands-1"


def test_a_request_past_its_deadline_is_dropped_by_the_stage_not_computed() -> None:
    retriever, ranker = handles()

    async def main() -> list[object]:
        stages = CoalescedStages(retriever, ranker, max_batch=8, timeout_s=0.0).stages()
        flows = [stages.rank(stages.retrieve(u, 200, (), False)) for u in range(3)]
        return await asyncio.gather(*flows, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, Expired) and "Retriever dropped" in str(r) for r in results)
    assert ranker.rank_many.calls == []


def test_live_and_scatter_keep_each_result_in_its_request_s_place() -> None:
    assert live(3, None) == [0, 1, 2]
    assert live(4, [5.0, 1.0, 9.0, 2.0], now=3.0) == [0, 2]
    assert scatter(4, [0, 2], ["a", "c"]) == ["a", None, "c", None]


def test_the_ids_of_sampled_requests_travel_with_the_call_that_carries_them() -> None:
    """The stage logs them (request_log.log_coalesced): Serve stamps the call's own id on its lines."""
    from serve_app.telemetry.request_log import CURRENT_REQUEST

    retriever, ranker = handles()

    async def main() -> None:
        stages = CoalescedStages(
            retriever, ranker, max_batch=8, timeout_s=1.0, traced=lambda rid: rid.startswith("keep")
        ).stages()

        async def request(rid: str, user: int) -> str:
            CURRENT_REQUEST.set(rid)  # as the ingress's handler does, in the request's own task
            return await stages.rank(stages.retrieve(user, 200, (), False))

        await asyncio.gather(request("keep-1", 1), request("drop-2", 2), request("keep-3", 3))

    asyncio.run(main())
    traced = [i for call in retriever.retrieve_many.calls for i in call[5]]
    assert sorted(traced) == ["keep-1", "keep-3"]
    assert sorted(i for call in ranker.rank_many.calls for i in call[2]) == ["keep-1", "keep-3"]
