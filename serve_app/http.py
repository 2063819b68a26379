"""FastAPI plumbing: request ids, a body-size limit, and errors that say what to fix."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-ID when it is sane, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Pure ASGI: assigns the request id, echoes it, and refuses bodies over `max_body_bytes` with 413.

    The limit is enforced on the bytes actually received, so a chunked body without Content-Length
    cannot get around it, and a declared oversize body is refused before it is read.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: Callable[[], int], echo_request_id: bool = True) -> None:
        # Under Serve the proxy already echoes X-Request-ID (and passes its id in when the client sent
        # none), so the ingress sets echo_request_id=False to avoid a doubled header.
        self.app, self._limit, self.echo = app, max_body_bytes, echo_request_id

    @property
    def max_body_bytes(self) -> int:
        return self._limit()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send, rid)
            return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise BodyTooLarge
            return message

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and self.echo:
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            if not started:
                await self._too_large(send, rid)
        if too_large and not started:  # pragma: no cover - the app swallowed the exception
            await self._too_large(send, rid)

    async def _too_large(self, send: Send, rid: str) -> None:
        body = JSONResponse(
            {"error": "body_too_large", "message": f"request body exceeds {self.max_body_bytes} bytes; "
             "send a smaller JSON object", "request_id": rid},
            status_code=413, headers={"x-request-id": rid},
        )
        await body({"type": "http"}, _empty_receive, send)


class BodyTooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    got = error.get("input")
    shown = repr(got) if not isinstance(got, dict | list) and got is not None else ""
    return f"{where}: {error.get('msg', 'invalid')}" + (f" (got {shown[:80]})" if shown else "")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {503: "overloaded", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return JSONResponse(
            {"error": code, "message": str(exc.detail), "request_id": getattr(request.state, "request_id", None)},
            status_code=exc.status_code, headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e.get("msg"),
                    "type": e.get("type")} for e in errors]
        return JSONResponse(
            {"error": "invalid_request", "message": "; ".join(_describe(e) for e in errors),
             "request_id": getattr(request.state, "request_id", None), "details": details},
            status_code=422,
        )
