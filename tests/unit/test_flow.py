"""The ingress flow's degradation rules, with stages that succeed, fail or stall (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.flow import Overloaded, RecommendFlow
from serve_app.stages import pipeline
from tests.unit.conftest import user


class BackPressureError(Exception):
    """Same name as Serve's: the flow recognises it by name so it needs no ray import."""


def stages(bundle, features, *, retrieve_fails=None, rank_fails=None, rank_stalls=False):
    """Stage callables shaped like handle.method.remote: they take unawaited upstream results."""

    def user_features(user_id):
        return asyncio.ensure_future(_value(features))

    def retrieve(features_response, n, exclude):
        async def run():
            f = await features_response
            if retrieve_fails:
                raise retrieve_fails
            return pipeline.retrieve_batch(bundle, pipeline.filters_for(bundle, []), [(f, n, exclude)])[0]

        return asyncio.ensure_future(run())

    def rank(features_response, candidates_response):
        async def run():
            f, c = await features_response, await candidates_response
            if rank_stalls:
                await asyncio.sleep(10)
            if rank_fails:
                raise rank_fails
            return pipeline.rank_batch(bundle, [(f, c)])[0] if c.fallback is None else c

        return asyncio.ensure_future(run())

    return RecommendFlow(user_features, retrieve, rank)


async def _value(v):
    return v


def run(flow, bundle, user_id=1, k=5, deadline_s=1.0):
    return asyncio.run(flow.run(bundle, pipeline.filters_for(bundle, []), user_id, k, (), 50, deadline_s))


def test_healthy_path_is_ranked_and_not_degraded(tiny_bundle):
    result = run(stages(tiny_bundle, user()), tiny_bundle)
    assert result.fallback is None and not result.degraded and "rank" in result.timings_ms


def test_ranker_failure_answers_in_retrieval_order_degraded(tiny_bundle):
    result = run(stages(tiny_bundle, user(), rank_fails=RuntimeError("ranker replica died")), tiny_bundle)
    assert result.fallback == "ranker_unavailable" and result.degraded
    assert "ranker replica died" in result.reason
    assert list(result.scores) == sorted(result.scores, reverse=True) and len(result.item_ids) == 50


def test_ranker_stall_past_deadline_answers_in_retrieval_order(tiny_bundle):
    result = run(stages(tiny_bundle, user(), rank_stalls=True), tiny_bundle, deadline_s=0.2)
    assert result.fallback == "ranker_unavailable" and result.degraded and "deadline" in result.reason


def test_retriever_failure_answers_by_popularity_degraded(tiny_bundle):
    result = run(stages(tiny_bundle, user(), retrieve_fails=RuntimeError("index gone")), tiny_bundle)
    assert result.fallback == "retriever_unavailable" and result.degraded and len(result.item_ids) == 5


def test_unknown_user_gets_popularity_not_degraded(tiny_bundle):
    result = run(stages(tiny_bundle, user(found=False, values={}, embedding=None)), tiny_bundle, user_id=555)
    assert result.fallback == "unknown_user" and not result.degraded
    top = tiny_bundle.items.item_ids[tiny_bundle.popular_rows[:5]]
    assert result.item_ids.tolist() == top.tolist()


def test_backpressure_is_overload_not_degradation(tiny_bundle):
    flow = stages(tiny_bundle, user(), rank_fails=BackPressureError("queue full"))
    with pytest.raises(Overloaded):
        run(flow, tiny_bundle)


def test_in_process_stages_give_what_the_in_process_recommender_gives(tiny_bundle):
    from serve_app.flow import in_process_stages
    from serve_app.stages.pipeline import Recommender
    from serve_app.stages.user_features import UserFeatureReader

    features = user(user_id=1)
    row = {"user_embedding": features.embedding.tolist(), **features.values}
    reader = UserFeatureReader(lambda user_id: dict(row) if user_id == 1 else None, timeout_s=1.0)
    filters = pipeline.filters_for(tiny_bundle, [])
    flow = RecommendFlow(*in_process_stages(lambda: tiny_bundle, lambda: filters, reader))
    for user_id in (1, 404):
        got = asyncio.run(flow.run(tiny_bundle, filters, user_id, 10, (), 50, 1.0))
        want = Recommender(tiny_bundle, reader, n_candidates=50).recommend(user_id, 10)
        assert got.item_ids[:10].tolist() == want.item_ids.tolist()
        assert got.fallback == want.fallback
