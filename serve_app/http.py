"""FastAPI plumbing: request ids, a body-size limit, and errors that say what to fix."""

from __future__ import annotations

import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.schemas import MAX_BODY_BYTES

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
    """Pure ASGI: gives every request an id (the caller's X-Request-ID when sane) and refuses bodies
    over MAX_BODY_BYTES with a JSON 413, counting the bytes actually received (so a chunked body
    without Content-Length cannot get around it; a declared oversize body is refused unread).

    Under Serve the proxy already echoes X-Request-ID (and passes one in when the client sent none),
    so the ingress sets echo=False rather than send the header twice. (Starlette's own body limiter
    answers in plain text, which would break the one error format clients parse.)
    """

    def __init__(self, app: ASGIApp, echo: bool = True, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.echo, self.max_body_bytes = app, echo, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send, rid)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.echo:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                    message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._too_large(send, rid)

    async def _too_large(self, send: Send, rid: str) -> None:
        response = JSONResponse(
            {
                "error": "body_too_large",
                "request_id": rid,
                "message": f"request body exceeds {self.max_body_bytes} bytes; send a smaller JSON object",
            },
            status_code=413,
            headers={"x-request-id": rid} if self.echo else None,
        )
        await response({"type": "http"}, _empty_receive, send)


class BodyTooLarge(BaseException):
    """Raised from receive(); a BaseException so FastAPI's body parser (which turns any Exception into
    a 400 "error parsing the body") lets it through to the middleware, which answers 413."""


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    got = error.get("input")
    shown = repr(got) if not isinstance(got, dict | list) and got is not None else ""
    return f"{where}: {error.get('msg', 'invalid')}" + (f" (got {shown[:80]})" if shown else "")


ERRORS = {
    404: ("not_found", "no such route; see /openapi.json"),
    405: ("method_not_allowed", ""),
    503: ("overloaded", ""),
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {503: "overloaded", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return JSONResponse(
            {
                "error": code,
                "message": str(exc.detail),
                "request_id": getattr(request.state, "request_id", None),
            },
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                "problem": e.get("msg"),
                "type": e.get("type"),
            }
            for e in errors
        ]
        return JSONResponse(
            {
                "error": "invalid_request",
                "message": "; ".join(_describe(e) for e in errors),
                "request_id": getattr(request.state, "request_id", None),
                "details": details,
            },
            status_code=422,
        )
