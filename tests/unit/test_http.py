"""The HTTP edge without Serve: validation messages, body limit, request ids."""

from __future__ import annotations

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from serve_app.api.http import create_api
from serve_app.api.schemas import MAX_BODY_BYTES, RecommendRequest
from serve_app.core.errors import NotReady, Overloaded


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = create_api()

    @app.post("/recommend")
    async def recommend(body: RecommendRequest, request: Request) -> dict:
        if body.user_id == 503:
            raise Overloaded("the retriever's queue is full")
        if body.user_id == 504:
            raise NotReady("ranker is not ready")
        return {"user_id": body.user_id, "request_id": request.state.request_id}

    return TestClient(app)


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ({"k": 5}, "user_id", "Field required"),
        ({"user_id": 1, "k": 0}, "k", "greater than or equal to 1"),
        ({"user_id": 1, "k": 1_000_000}, "k", "less than or equal to 100"),
        ({"user_id": "5"}, "user_id", "valid integer"),
        ({"user_id": 1, "k": 2.5}, "k", "valid integer"),
        ({"user_id": 1, "colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"user_id": 1, "exclude_item_ids": ["a"]}, "exclude_item_ids.0", "valid integer"),
        ({"user_id": -1}, "user_id", "greater than or equal to 0"),
    ],
)
def test_invalid_requests_get_422_naming_the_field(client, body, field, hint):
    response = client.post("/recommend", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["error"] == "invalid_request"
    assert payload["message"].startswith(f"{field}: ") and hint in payload["message"]
    assert payload["details"][0]["field"] == field


def test_malformed_json_is_422(client):
    response = client.post(
        "/recommend", content=b'{"user_id": 1,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["error"] == "invalid_request"


def test_declared_oversize_body_is_413(client):
    response = client.post(
        "/recommend", content=b"x" * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and f"{MAX_BODY_BYTES} bytes" in response.json()["message"]


def test_chunked_oversize_body_is_413(client):
    def chunks():
        for _ in range(10):
            yield b" " * (MAX_BODY_BYTES // 5)

    response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_request_id_is_honoured_or_generated(client):
    given = client.post("/recommend", json={"user_id": 3}, headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42" and given.json()["request_id"] == "trace-42"
    fresh = client.post("/recommend", json={"user_id": 3}, headers={"X-Request-ID": "bad id with spaces"})
    assert fresh.headers["x-request-id"] != "bad id with spaces" and len(fresh.json()["request_id"]) == 32


def test_unknown_route_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


@pytest.mark.parametrize(("user_id", "code"), [(503, "overloaded"), (504, "not_ready")])
def test_dependency_errors_are_503_with_retry_after_and_their_code(client, user_id, code):
    response = client.post("/recommend", json={"user_id": user_id}, headers={"X-Request-ID": "r-1"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"] == code and response.json()["request_id"] == "r-1"
