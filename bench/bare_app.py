"""The reference for bench/ingest: a bare Starlette endpoint that reads the same body and answers a small JSON 200.

It is served exactly as ``tracker serve`` serves the tracker (same ``uvicorn.run`` settings, so the same event
loop and HTTP implementation: uvloop and httptools when installed), and it does nothing else: no signature
check, no parsing, no database. The ratio tracker / bare is therefore the cost of the tracker's own work.

    python bench/bare_app.py --port 8001
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = b'{"status":"accepted","event":1}'


async def webhook(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(routes=[Route("/webhooks/blaaiz", webhook, methods=["POST"]),
                        Route("/healthz", healthz, methods=["GET"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # The same settings as tracker.cli.cmd_serve (log level as the bench starts the tracker: warning).
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, proxy_headers=True,
                server_header=False, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
