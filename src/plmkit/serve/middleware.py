"""The server's ASGI middleware: the body limit, the API key and the request counts, before any route runs."""

from __future__ import annotations

import json
import secrets

from plmkit.serve.errors import ApiError, too_large, unauthorized
from plmkit.serve.metrics import Metrics
from plmkit.serve.settings import ServeSettings

KEYED = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")  # paths that need the API key
ROUTES = {  # counted by path in /metrics; any other path counts as "other"
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/tokenize",
    "/detokenize",
    "/tokenizer_info",
}
DRAIN_LIMIT = 256 * 2**20  # an oversized body is read (and dropped) up to this size before the 413


class Guard:
    """A pure ASGI middleware: reads the body (up to --max-body-bytes: 413 beyond, after draining it so the
    client reads the answer), checks the API key of the keyed routes (401), counts requests by status."""

    def __init__(self, app, settings: ServeSettings, metrics: Metrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics
        self.key = None if settings.api_key is None else f"Bearer {settings.api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        status = {"code": 500}

        async def counted_send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, counted_send, path)
        finally:
            self.metrics.count(route, status["code"])

    async def _guarded(self, scope, receive, send, path: str) -> None:
        limit = self.settings.max_body_bytes
        body, size, more = bytearray(), 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                body += chunk
            elif size > DRAIN_LIMIT:
                break
            more = message.get("more_body", False)
        if self.key is not None and path.startswith(KEYED):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.key):
                await _respond(send, unauthorized())
                return
        if size > limit:
            await _respond(send, too_large(size, limit))
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _respond(send, error: ApiError) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
