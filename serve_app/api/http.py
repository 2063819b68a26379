"""FastAPI plumbing: request ids, the body-size limit, and errors that say what to fix.

`create_api` is the one way an HTTP front is made (the Serve ingress, the single-process baseline),
so every front answers errors in the same JSON shape: `{"error", "message", "request_id"}`.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.schemas import MAX_BODY_BYTES
from serve_app.core.errors import RecsysError

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TOO_LARGE = f"request body exceeds {MAX_BODY_BYTES} bytes; send a smaller JSON object"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 503: "unavailable"}


def create_api(*, echo_request_id: bool = True, **fastapi_kwargs: Any) -> FastAPI:
    """A FastAPI app with Starlette's request-body limit, our error handlers and request ids.

    Starlette counts the bytes actually received (a chunked body cannot get around it) and raises a
    413 HTTPException that our handler answers in JSON. For a body whose declared Content-Length is
    already too large it replaces any response with its own plain-text 413, so RequestIdMiddleware,
    outside it, refuses those first, unread, in the one JSON error format clients parse.
    Under Serve the proxy already echoes X-Request-ID (and passes one in when the client sent none),
    so the ingress sets echo_request_id=False rather than send the header twice."""
    api = FastAPI(**fastapi_kwargs)
    install_error_handlers(api)
    api.add_middleware(RequestBodyLimitMiddleware, max_body_size=MAX_BODY_BYTES)
    api.add_middleware(RequestIdMiddleware, echo=echo_request_id)  # added last: the outer one
    return api


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-ID when it is sane, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Pure ASGI (no per-request task, unlike BaseHTTPMiddleware): every request gets an id in
    `request.state.request_id`, echoed in the X-Request-ID response header when `echo`; a body
    declared larger than MAX_BODY_BYTES is refused here with a JSON 413, unread."""

    def __init__(self, app: ASGIApp, echo: bool = True) -> None:
        self.app, self.echo = app, echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            report_error(scope.get("app"), 413, "body_too_large", rid)
            response = JSONResponse(
                {"error": "body_too_large", "message": TOO_LARGE, "request_id": rid},
                status_code=413,
                headers={"x-request-id": rid} if self.echo else None,
            )
            await response(scope, receive, send)
            return
        if not self.echo:
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def _error(
    request: Request, code: str, message: str, status: int, details: list[dict] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {
        "error": code,
        "message": message,
        "request_id": getattr(request.state, "request_id", None),
    }
    if details is not None:
        body["details"] = details
    report_error(request.app, status, code, getattr(request.state, "request_id", None))
    return JSONResponse(body, status_code=status)


def report_error(app: Any, status: int, code: str, request_id: str | None) -> None:
    """Tell the app's `state.on_error(status, code, request_id)`, when it has one (the ingress counts
    and logs refusals)."""
    hook = getattr(getattr(app, "state", None), "on_error", None)
    if hook is not None:
        hook(status, code, request_id)


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    got = error.get("input")
    shown = repr(got) if not isinstance(got, dict | list) and got is not None else ""
    return f"{where}: {error.get('msg', 'invalid')}" + (f" (got {shown[:80]})" if shown else "")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 413:
            message = TOO_LARGE
        code = _HTTP_CODES.get(exc.status_code, "error")
        response = _error(request, code, message, exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RecsysError)
    async def recsys_error(request: Request, exc: RecsysError) -> JSONResponse:
        response = _error(request, exc.code, str(exc), exc.http_status)
        if exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

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
        message = "; ".join(_describe(e) for e in errors)
        return _error(request, "invalid_request", message, 422, details=details)
