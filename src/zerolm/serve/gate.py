"""The outer ASGI layer of every request (the API key, the body size limit, the request
counters and latency of /metrics) and the JSON error shape every answer but 200 has."""

from __future__ import annotations

import hmac
import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response

from zerolm.serve.server import Server

# routes anyone may read with an API key set: liveness, and the page's own static files
# (they hold no data; the page sends the key the user types with every API call)
PUBLIC = ("/healthz", "/", "/favicon.ico")
ROUTES = ("/v1/classify", "/v1/tag", "/v1/intent_slots", "/v1/assist", "/v1/generate", "/v1/embeddings", "/v1/models",
          "/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json")  # metric labels; others are "other"


def error_response(status: int, message: str, kind: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status, **({"field": field} if field else {})}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyTooLarge(HTTPException):
    """Raised while the body is read; an HTTPException so that FastAPI's body parsing passes
    it on as it is (it turns other errors into 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the body is over this server's limit of {limit:,} bytes (--max-body)")


class Gate:
    """Outer ASGI layer of every request: the API key, the body size limit, and the
    request counters and latency of /metrics (streams are timed to their end)."""

    def __init__(self, app, server: Server):
        self.app, self.srv = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "/static" if path.startswith("/static/") else "other"
        status = [500]
        started = [False]
        t0 = time.perf_counter()
        settings = self.srv.settings

        async def send_watched(message):
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        async def reply(response: Response) -> None:
            await response(scope, receive, send_watched)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if settings.api_key and not (path in PUBLIC or path.startswith("/static/")) \
                    and scope.get("method") != "OPTIONS" and not _authorized(headers, settings.api_key):
                return await reply(error_response(401, "missing or wrong API key: send the header "
                                                       "'Authorization: Bearer KEY'", "authentication_error",
                                                  headers={"WWW-Authenticate": "Bearer"}))
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > settings.max_body:
                return await reply(_too_large(int(declared), settings.max_body))
            seen = [0]

            async def receive_limited():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > settings.max_body:
                        raise BodyTooLarge(settings.max_body)
                return message

            await self.app(scope, receive_limited, send_watched)
        except BodyTooLarge:
            if not started[0]:
                await reply(_too_large(None, settings.max_body))
        finally:
            m = self.srv.metrics
            m.requests.labels(route, str(status[0])).inc()
            m.latency.labels(route).observe(time.perf_counter() - t0)


def _too_large(size: int | None, limit: int) -> JSONResponse:
    got = f"{size:,} bytes" if size is not None else "the body"
    return error_response(413, f"{got} is over this server's limit of {limit:,} bytes (--max-body)",
                          "invalid_request_error")


def _authorized(headers: dict[str, str], key: str) -> bool:
    given = headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


