"""A server that does nothing, to measure the load client's own ceiling (GET/POST /noop).

Raw ASGI under uvicorn (httptools, uvloop): the cheapest server Python offers, so whichever side
saturates first in the client-ceiling run says where our measurement stops being trustworthy.
Run: python -m loadtest.noop_app --port 8001
"""

from __future__ import annotations

import argparse

from starlette.types import Receive, Scope, Send

BODY = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:  # drain the request body so the keep-alive connection stays in step
        message = await receive()
        more = message.get("more_body", False)
    found = scope["path"] == "/noop" and scope["method"] in ("GET", "POST")
    await send({"type": "http.response.start", "status": 200 if found else 404, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m loadtest.noop_app")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
