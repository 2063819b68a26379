"""Brownout: the cheaper answers an ingress gives past its in-flight thresholds (no Ray)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.request.brownout import BrownoutFlow, BrownoutPolicy
from serve_app.request.flow import local_stages
from serve_app.request.stages.served import Served
from serve_app.request.stages.user_features import UserFeatureResult
from tests.unit.conftest import Held, served, user


class OneUser:
    """A reader that answers one user's features at once (what `local_stages` awaits)."""

    def __init__(self, features: UserFeatureResult) -> None:
        self.features = features

    async def atimed(self, user_id: int, refresh: bool = False) -> tuple[UserFeatureResult, float]:
        return self.features, 0.01


def flow(bundle, in_flight: int, **thresholds) -> BrownoutFlow:
    base = served(bundle)
    settings = SERVING_DEFAULTS.with_overrides({"n_candidates": 50, **thresholds})
    state = Held(Served(base.bundle, base.filters, settings))
    return BrownoutFlow(local_stages(state, OneUser(user())), state, lambda: in_flight)


def answer(f: BrownoutFlow, k: int = 10):
    return asyncio.run(f.run(1, k, ()))


def test_policy_levels_follow_the_thresholds():
    policy = BrownoutPolicy(rank_above=8, popular_above=32)
    levels = [policy.level(n) for n in (1, 8, 9, 32, 33)]
    assert levels == ["full", "full", "retrieval", "retrieval", "popular"]
    assert BrownoutPolicy().level(10_000) == "full"  # off unless configured
    assert BrownoutPolicy(popular_above=4).level(5) == "popular"


def test_below_the_threshold_the_answer_is_ranked(tiny_bundle):
    result = answer(flow(tiny_bundle, 3, brownout_rank_above=8))
    assert result.fallback is None and not result.degraded and "rank" in result.timings_ms


def test_past_the_rank_threshold_the_candidates_keep_retrieval_order(tiny_bundle):
    full = answer(flow(tiny_bundle, 3, brownout_rank_above=8), k=50)
    f = flow(tiny_bundle, 9, brownout_rank_above=8)
    cheap = answer(f, k=50)
    assert cheap.fallback == "brownout" and cheap.degraded and "ranking skipped above 8" in cheap.reason
    assert "rank" not in cheap.timings_ms and "retrieve" in cheap.timings_ms
    assert list(cheap.scores) == sorted(cheap.scores, reverse=True)  # retrieval scores, best first
    assert set(cheap.item_ids.tolist()) == set(full.item_ids.tolist())  # same candidates, other order
    assert cheap.item_ids.tolist() != full.item_ids.tolist()
    assert f.shed == {"retrieval": 1, "popular": 0}


def test_past_the_popular_threshold_the_popularity_list_answers(tiny_bundle):
    f = flow(tiny_bundle, 40, brownout_rank_above=8, brownout_popular_above=32)
    result = answer(f, k=5)
    assert result.fallback == "brownout" and result.degraded and "popularity list above 32" in result.reason
    items = tiny_bundle.items.item_ids
    seen = set(items[tiny_bundle.history.seen(1)].tolist())
    popular = [i for i in items[tiny_bundle.popular_rows].tolist() if i not in seen][:5]
    assert result.item_ids.tolist() == popular  # the popularity list, already-seen items filtered
    assert "retrieve" not in result.timings_ms and f.shed["popular"] == 1


def test_thresholds_are_validated():
    with pytest.raises(ValidationError):
        SERVING_DEFAULTS.with_overrides({"brownout_rank_above": 0})


class Stalled:
    """A reader whose store never answers within the request (a dead Retriever, seen from the flow)."""

    async def atimed(self, user_id: int, refresh: bool = False) -> tuple[UserFeatureResult, float]:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")


def test_a_retrieval_that_misses_the_deadline_under_brownout_answers_by_popularity(tiny_bundle):
    base = served(tiny_bundle)
    settings = SERVING_DEFAULTS.with_overrides({"request_timeout_s": 0.3, "brownout_rank_above": 1})
    state = Held(Served(base.bundle, base.filters, settings))
    f = BrownoutFlow(local_stages(state, Stalled()), state, lambda: 5)
    result = asyncio.run(f.run(1, 5, ()))  # the deadline cancels the stand-in ranker, not the fallback
    assert result.fallback == "retriever_unavailable" and result.degraded and len(result.item_ids) == 5
