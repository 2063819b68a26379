"""What a request counts as (outcome_of), every error answer reaching the ingress's counter, and which
requests the stage histograms observe (Sample)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from serve_app.api.http import create_api
from serve_app.api.schemas import MAX_BODY_BYTES, RecommendRequest
from serve_app.core.errors import Overloaded
from serve_app.request.stages import fallback
from serve_app.request.stages.scored import Scored
from serve_app.telemetry.series import Sample, outcome_of

ITEMS = np.array([3, 1, 2], np.int64)
SCORES = np.array([0.9, 0.5, 0.1], np.float32)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (Scored(ITEMS, SCORES, "v1"), ("ok", "")),
        (Scored(ITEMS, SCORES, "v1", fallback=fallback.UNKNOWN_USER), ("fallback", "unknown_user")),
        (
            Scored(ITEMS, SCORES, "v1", fallback=fallback.RANKER_UNAVAILABLE, degraded=True, reason="x"),
            ("degraded", "ranker_unavailable"),
        ),
        # A stale or missing feature read degrades an answer that has no fallback.
        (
            Scored(ITEMS, SCORES, "v1", degraded=True, reason="online store failed"),
            ("degraded", "user_features"),
        ),
    ],
)
def test_outcome_and_reason_of_an_answer(result: Scored, expected: tuple[str, str]) -> None:
    assert outcome_of(result) == expected


def test_every_error_answer_reaches_the_apps_error_hook() -> None:
    app = create_api()
    seen: list[tuple[int, str]] = []
    app.state.on_error = lambda status, code, request_id: seen.append((status, code))

    @app.post("/recommend")
    async def recommend(body: RecommendRequest, request: Request) -> dict:
        if body.user_id == 503:
            raise Overloaded("the retriever's queue is full")
        return {"user_id": body.user_id}

    client = TestClient(app)
    assert client.post("/recommend", json={"user_id": 1, "k": 5}).status_code == 200
    assert client.post("/recommend", json={"user_id": 1, "k": 0}).status_code == 422
    assert client.post("/recommend", json={"user_id": 503, "k": 5}).status_code == 503
    big = b"x" * (MAX_BODY_BYTES + 1)
    assert (
        client.post("/recommend", content=big, headers={"content-type": "application/json"}).status_code
        == 413
    )
    assert client.get("/nowhere").status_code == 404
    assert [s for s, _ in seen] == [422, 503, 413, 404]
    assert seen[0][1] == "invalid_request" and seen[2][1] == "body_too_large"


@pytest.mark.parametrize(("rate", "taken_of_100"), [(1.0, 100), (0.1, 10), (0.3, 30), (0.01, 1), (0.0, 0)])
def test_a_sample_takes_its_share_evenly_and_the_first_event(rate: float, taken_of_100: int) -> None:
    sample = Sample(rate)
    taken = [i for i in range(100) if sample()]
    assert len(taken) == taken_of_100
    if rate > 0:
        assert taken[0] == 0  # a series appears with the first request
        gaps = np.diff(taken)
        assert gaps.size == 0 or gaps.max() - gaps.min() <= 1  # evenly spread, no bursts


def test_a_sample_follows_a_new_rate() -> None:
    sample = Sample(1.0)
    assert all(sample() for _ in range(5))
    sample.rate = 0.5
    assert sum(sample() for _ in range(100)) == 50
