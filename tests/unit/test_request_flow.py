"""The request flow's degradation rules, with stages that succeed, fail or stall (no Ray)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serve_app.control.haproxy_config import DOOR_ARRIVED_HEADER as SENT
from serve_app.core.errors import Overloaded
from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.request.deadlines import DOOR_ARRIVED_HEADER, spent_since
from serve_app.request.flow import RecommendFlow, Stages, local_stages
from serve_app.request.stages.rank import rank_batch, rank_candidates
from serve_app.request.stages.retrieve import retrieve_batch, retrieve_read
from serve_app.request.stages.served import Served
from serve_app.request.stages.user_features import UserFeatureReader
from tests.unit.conftest import Held, served, user


def stages(bundle, features, *, retrieve_fails=None, rank_fails=None, rank_stalls=False) -> RecommendFlow:
    """Stage callables shaped like handle.method.remote: rank takes the unawaited retrieval."""
    state = Held(served(bundle))

    def retrieve(user_id, n, exclude, refresh=False):
        async def run():
            if retrieve_fails:
                raise retrieve_fails
            return retrieve_read(state.current, [(features, 0.1)], [n], [exclude])[0]

        return asyncio.ensure_future(run())

    def rank(retrieved_response):
        async def run():
            retrieved = await retrieved_response
            if rank_stalls:
                await asyncio.sleep(10)
            if rank_fails:
                raise rank_fails
            return rank_candidates(bundle, [retrieved])[0]

        return asyncio.ensure_future(run())

    return RecommendFlow(Stages(retrieve, rank), state)


def run(flow, user_id=1, k=5, deadline_s=1.0, spent_s=0.0):
    current = flow.state.current
    settings = current.settings.with_overrides({"request_timeout_s": deadline_s, "n_candidates": 50})
    flow.state.current = Served(current.bundle, current.filters, settings)
    return asyncio.run(flow.run(user_id, k, (), spent_s=spent_s))


def test_healthy_path_is_ranked_and_not_degraded(tiny_bundle):
    result = run(stages(tiny_bundle, user()))
    assert result.fallback is None and not result.degraded
    assert set(result.timings_ms) == {"user_features", "retrieve", "filter", "rank"}


def test_ranker_failure_answers_in_retrieval_order_degraded(tiny_bundle):
    result = run(stages(tiny_bundle, user(), rank_fails=RuntimeError("ranker replica died")))
    assert result.fallback == "ranker_unavailable" and result.degraded
    assert "ranker replica died" in result.reason
    assert list(result.scores) == sorted(result.scores, reverse=True) and len(result.item_ids) == 50


def test_ranker_stall_past_deadline_answers_in_retrieval_order(tiny_bundle):
    result = run(stages(tiny_bundle, user(), rank_stalls=True), deadline_s=0.2)
    assert result.fallback == "ranker_unavailable" and result.degraded and "deadline" in result.reason


def test_the_time_a_request_waited_before_the_flow_comes_off_its_deadline(tiny_bundle):
    started = time.perf_counter()
    result = run(stages(tiny_bundle, user(), rank_stalls=True), deadline_s=1.0, spent_s=0.8)
    took_s = time.perf_counter() - started
    assert result.fallback == "ranker_unavailable" and "missed the 0.2s deadline" in result.reason
    assert took_s < 0.6, took_s  # the 0.2 s left, not the whole second (a stall would be 10 s)
    # a request that waited past its deadline still gets an answer, at once: its stages get 20 ms
    late = run(stages(tiny_bundle, user(), rank_stalls=True), deadline_s=1.0, spent_s=5.0)
    assert late.degraded and "missed the 0.02s deadline" in late.reason  # retrieval order, or popularity


def test_the_doors_arrival_stamp_reads_as_time_spent_within_bounds():
    now = 1_000_000.0
    assert spent_since(str(int((now - 0.25) * 1000)), limit_s=60, now=now) == pytest.approx(0.25)
    assert spent_since(str(int((now + 0.01) * 1000)), limit_s=60, now=now) == 0.0  # a clock ahead
    assert spent_since(str(int((now - 600) * 1000)), limit_s=60, now=now) == 60  # at most the limit
    for unreadable in (None, "", "soon", "1.5e12", "0x10"):
        assert spent_since(unreadable, limit_s=60, now=now) == 0.0  # no door in front: nothing spent
    assert SENT.lower() == DOOR_ARRIVED_HEADER  # the header the door sets is the one read


def test_retriever_failure_answers_by_popularity_degraded(tiny_bundle):
    result = run(stages(tiny_bundle, user(), retrieve_fails=RuntimeError("index gone")))
    assert result.fallback == "retriever_unavailable" and result.degraded and len(result.item_ids) == 5


def test_unknown_user_gets_popularity_not_degraded(tiny_bundle):
    result = run(stages(tiny_bundle, user(555, found=False, values={}, embedding=None)), user_id=555)
    assert result.fallback == "unknown_user" and not result.degraded
    top = tiny_bundle.items.item_ids[tiny_bundle.popular_rows[:5]]
    assert result.item_ids.tolist() == top.tolist()


def test_an_injected_overload_test_recognises_the_hosts_backpressure(tiny_bundle):
    class QueueFull(Exception):
        """Stands for Serve's BackPressureError, which the Serve wrapper recognises (serve/app.py)."""

    flow = stages(tiny_bundle, user(), rank_fails=QueueFull("queue full"))
    flow.is_overload = lambda exc: isinstance(exc, QueueFull)
    with pytest.raises(Overloaded, match="queue full"):
        run(flow)


def test_local_stages_compute_what_the_stage_functions_compute(tiny_bundle):
    features = user(user_id=1)
    row = {"user_embedding": features.embedding.tolist(), **features.values}
    reader = UserFeatureReader(lambda user_id: dict(row) if user_id == 1 else None)
    state = Held(served(tiny_bundle))
    flow = RecommendFlow(local_stages(state, reader), state)
    for user_id in (1, 404):
        got = run(flow, user_id=user_id, k=10)
        f = asyncio.run(reader.aget(user_id))
        [cands] = retrieve_batch(state.current, [(f, 50, ())])
        assert "user_features" in got.timings_ms  # the read is timed in every outcome
        if cands.fallback is None:
            [want] = rank_batch(tiny_bundle, [(f, cands)])
            assert got.item_ids.tolist() == want.item_ids.tolist() and got.fallback is None
        else:
            assert got.fallback == cands.fallback == "unknown_user"
            assert got.item_ids.tolist() == tiny_bundle.items.item_ids[tiny_bundle.popular_rows[:10]].tolist()


def test_a_hanging_store_costs_a_request_the_features_deadline_not_the_request_deadline(tiny_bundle):
    """The read's deadline holds inside retrieval: past it the request goes on with the bundle's own
    vector for the user, degraded, long before the 1 s request deadline."""
    release = threading.Event()

    def hanging_store(user_id):
        release.wait(5)
        return None

    settings = SERVING_DEFAULTS.with_overrides({"user_features_timeout_ms": 50})
    reader = UserFeatureReader(hanging_store, settings)
    state = Held(served(tiny_bundle))
    flow = RecommendFlow(local_stages(state, reader), state)
    try:
        start = time.perf_counter()
        result = run(flow, user_id=1, k=10)
        elapsed = time.perf_counter() - start
    finally:
        release.set()
        reader.close()
    assert elapsed < 0.5, elapsed
    assert result.degraded and result.fallback is None and "rank" in result.timings_ms  # ranked, own vector
    assert "did not answer within 50 ms" in result.reason
    assert 45 <= result.timings_ms["user_features"] < 500
