"""Serve's proxy sends a request again when the replica that took it died before answering (no 500
from uvicorn); a response that started is never repeated (serve_app/serve/proxy_retry.py)."""

from __future__ import annotations

import asyncio
import json

from serve_app.serve.proxy_retry import RetryUnanswered, middlewares


class _App:
    """Stands for the proxy's app: dies `dies` times without answering, then echoes the body."""

    def __init__(self, dies: int, start_then_die: bool = False) -> None:
        self.dies, self.start_then_die, self.calls, self.bodies = dies, start_then_die, 0, []

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        message = await receive()
        self.bodies.append(message["body"])
        if self.start_then_die:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            return
        if self.calls <= self.dies:
            return  # the replica died after accepting: no response started
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})


def _run(app: _App, body: bytes = b'{"user_id": 1}') -> list[dict]:
    sent: list[dict] = []
    chunks = [
        {"type": "http.request", "body": body[:5], "more_body": True},
        {"type": "http.request", "body": body[5:], "more_body": False},
    ]

    async def receive() -> dict:
        if chunks:
            return chunks.pop(0)
        await asyncio.sleep(3600)  # the client stays until it has its answer
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(RetryUnanswered(app)({"type": "http", "path": "/recommend"}, receive, send))
    return sent


def test_a_request_whose_replica_died_is_sent_again_with_its_whole_body() -> None:
    app = _App(dies=2)
    sent = _run(app)
    assert app.calls == 3 and app.bodies == [b'{"user_id": 1}'] * 3
    assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"user_id": 1}'


def test_after_the_last_attempt_it_answers_503_with_retry_after_not_a_bare_500() -> None:
    sent = _run(_App(dies=10))
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"] == "unavailable"


def test_a_response_that_started_is_never_sent_twice() -> None:
    app = _App(dies=0, start_then_die=True)
    sent = _run(app)
    assert app.calls == 1 and [m["type"] for m in sent] == ["http.response.start"]


def test_it_is_what_serves_proxy_callback_returns() -> None:
    [middleware] = middlewares()
    assert middleware.cls is RetryUnanswered
