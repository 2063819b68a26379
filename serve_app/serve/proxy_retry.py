"""A request whose Ingress replica died before answering is sent again, in Serve's own HTTP proxy.

Serve 2.60's proxy retries a request on another replica only until a replica has accepted it; when
the replica dies after that (SIGKILLed mid-request), the proxy's app returns without starting a
response and uvicorn answers 500 "Internal Server Error" on its own. Every route of this app is a read
or deduplicates (`POST /events` by event id), so such a request can safely be sent again: this pure
ASGI middleware, installed in the proxy with

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.serve.proxy_retry:middlewares

(on every node's `ray start`; the harness sets it), buffers the request body, and when the app returns
without a response it replays the request, once per `ATTEMPTS`; after the last, it answers 503 +
Retry-After in the app's error shape instead of uvicorn's bare 500. A response that has started is
never touched. The front door does the same for direct ingress (HAProxy's `retry-on`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.schemas import MAX_BODY_BYTES
from serve_app.core.errors import RETRY_AFTER_S

ATTEMPTS = 3  # the first try and two more: each lands on a replica the router still believes alive


def middlewares() -> list[Middleware]:
    """The callback Serve's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    return [Middleware(RetryUnanswered)]


class RetryUnanswered:
    def __init__(self, app: ASGIApp, attempts: int = ATTEMPTS) -> None:
        self.app, self.attempts = app, attempts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        if more:  # larger than any request the app takes: let the app refuse it as it does (413)
            await self.app(scope, _replay(body, receive, more=True), send)
            return
        disconnected = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, disconnected))
        try:
            for _ in range(self.attempts):
                started = False

                async def tracked(message: Message) -> None:
                    nonlocal started
                    started = started or message["type"] == "http.response.start"
                    await send(message)

                await self.app(scope, _replay(body, None, disconnected=disconnected), tracked)
                if started or disconnected.is_set():
                    return
            await _unavailable(send)
        finally:
            watcher.cancel()


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, up to just past the app's limit; True when there is more than that."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False
        if size > MAX_BODY_BYTES:
            return b"".join(chunks), True


def _replay(
    body: bytes, receive: Receive | None, more: bool = False, disconnected: asyncio.Event | None = None
) -> Receive:
    """A `receive` that hands out the buffered body, then what the client sends next (`receive`), or
    waits for the client to leave (`disconnected`)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        if receive is not None:
            return await receive()
        assert disconnected is not None
        await disconnected.wait()
        return {"type": "http.disconnect"}

    return replay


async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()


async def _unavailable(send: Send) -> None:
    body: dict[str, Any] = {
        "error": "unavailable",
        "message": "the Ingress replicas that took this request stopped before answering; retry",
    }
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
