"""Coalesced stage calls: concurrent requests share handle calls, each gets its own answer back, and a
failed call fails the requests of its batch (each then falls back as it would alone). No Ray cluster:
`@serve.batch` runs on this asyncio loop, the handles are stand-ins that count their calls, and the
replica context `@serve.batch` reads its max_ongoing_requests from is the ingress's as configured."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from serve_app.coalesce import CoalescedStages


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
    retriever = Handle(retrieve_many=Method(lambda users, n, excl, refresh: [f"cands-{u}" for u in users]))
    ranker = Handle(rank_many=Method(lambda cands: [f"ranked-{c}" for c in cands]))
    return retriever, ranker


def test_concurrent_requests_share_calls_and_each_gets_its_own_answer() -> None:
    retriever, ranker = handles()

    async def main() -> list[str]:
        stages = CoalescedStages(retriever, ranker, max_batch=8).stages()
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
        stages = CoalescedStages(retriever, ranker, max_batch=16).stages()
        return await asyncio.wait_for(stages.rank(stages.retrieve(7, 200, (3,), True)), 0.5)

    assert asyncio.run(main()) == "ranked-cands-7"
    assert retriever.retrieve_many.calls == [([7], [200], [(3,)], [True])]


def test_a_failed_call_fails_every_request_of_its_batch() -> None:
    retriever, ranker = handles()
    ranker.rank_many.fail = True

    async def main() -> list[Any]:
        stages = CoalescedStages(retriever, ranker, max_batch=8).stages()
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
        stages = CoalescedStages(retriever, ranker, max_batch=8).stages()
        retrieved = stages.retrieve(1, 200, (), False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stages.rank(retrieved), 0.001)
        return await retrieved

    assert asyncio.run(main()) == "cands-1"
