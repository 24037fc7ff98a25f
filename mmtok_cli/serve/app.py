"""The HTTP routes (FastAPI): OpenAI's `POST /v1/chat/completions` and `GET /v1/models`, plus `GET /health` and
`GET /metrics`; every error in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.

A chat request: its body is read (413 over --max-body-mb), validated (`protocol.parse_chat`, 400), admitted to
the queue (503 when full), its image loaded off the event loop (`Server.open_image`, 400 / 422), then handed to the
batcher; the reply is one `chat.completion`, or a server-sent-event stream of `chat.completion.chunk`s ending in
`data: [DONE]` (an error after the stream started is one `{"error": ...}` event, then `[DONE]`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import ApiError, chunk, completion
from .safety import authorized
from .server import Server, error_of

CHAT = "/v1/chat/completions"
DISCONNECT_POLL_S = 0.1
"""How often a waiting request checks that its client is still there."""


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class _ApiKey:
    """Every route but /health demands `Authorization: Bearer <key>` (pure ASGI: the routes keep their own view of
    the connection, which disconnect checks need)."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        key = self.server.options.api_key
        if scope["type"] == "http" and key is not None and scope["path"] != "/health":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not authorized(header, key):
                if scope["path"] == CHAT:
                    self.server.metrics.requests.labels("401").inc()
                error = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                 code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(server: Server) -> FastAPI:
    app = FastAPI(title="mmtok serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_ApiKey, server=server)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:  # still one OpenAI-shaped error
        return error_response(error_of(exc))

    @app.get("/health")
    async def health() -> JSONResponse:
        if server.error is not None:
            return JSONResponse({"status": "failed"}, status_code=503)
        return JSONResponse({"status": "ok"} if server.ready else {"status": "loading"},
                            status_code=200 if server.ready else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.created,
                                            "owned_by": "mmtok"}]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.CONTENT_TYPE)

    @app.post(CHAT)
    async def chat(request: Request) -> Response:
        try:
            body = await _read_body(request, server.options.max_body_bytes)
            chat_request = server.parse(body)
            job = server.admit(chat_request)
        except ApiError as exc:
            server.metrics.requests.labels(str(exc.status)).inc()
            return error_response(exc)
        try:
            loading = asyncio.get_running_loop().run_in_executor(server.loader, server.open_image, job)
            if not await _unless_gone(loading, request):
                job.cancelled.set()
                server.finished(job, "disconnected")
                return Response(status_code=499)  # nobody reads it
            server.batcher.submit(job)
        except ApiError as exc:
            server.finished(job, str(exc.status))
            return error_response(exc)
        except asyncio.CancelledError:  # Ray Serve cancels a request whose client left
            job.cancelled.set()
            server.finished(job, "disconnected")
            raise
        except Exception:  # a bug: the exception handler answers 500
            job.cancelled.set()
            server.finished(job, "500")
            raise
        if chat_request.stream:
            return StreamingResponse(_stream(server, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            kind, payload = "delta", None
            while kind == "delta":
                event = asyncio.ensure_future(job.events.get())
                if not await _unless_gone(event, request):
                    job.cancelled.set()
                    server.finished(job, "disconnected")
                    return Response(status_code=499)
                kind, payload = event.result()
        except asyncio.CancelledError:
            job.cancelled.set()
            server.finished(job, "disconnected")
            raise
        if kind == "error":
            error = error_of(payload)
            server.finished(job, str(error.status))
            return error_response(error)
        server.finished(job, "200", payload)
        return JSONResponse(completion(chat_request, payload, server.model_name))

    return app


async def _read_body(request: Request, limit: int) -> Any:
    """The JSON body, refused with 413 as soon as it is known to be over `limit` bytes."""
    too_big = ApiError(413, f"the request body is over this server's limit of {limit / 1e6:g} MB (--max-body-mb)",
                       code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise too_big
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None


async def _unless_gone(future: Any, request: Request) -> bool:
    """Wait for `future`; False (and the future cancelled) as soon as the client has disconnected."""
    while True:
        done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
        if done:
            future.result()  # its exception, if any
            return True
        if await request.is_disconnected():
            future.cancel()
            return False


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _stream(server: Server, job: Any) -> AsyncIterator[str]:
    """The reply's server-sent events. A client that leaves cancels this generator: its row stops at the next step."""
    request, model = job.request, server.model_name
    streamed, ended = "", False
    try:
        yield _sse(chunk(request, model, delta={"role": "assistant", "content": ""}))
        while True:
            kind, payload = await job.events.get()
            if kind == "delta":
                streamed += payload
                yield _sse(chunk(request, model, delta={"content": payload}))
                continue
            if kind == "error":
                error = error_of(payload)
                server.finished(job, str(error.status))
                ended = True
                yield _sse(error.body())
            else:
                rest = payload.text[len(streamed):] if payload.text.startswith(streamed) else ""
                if rest:  # what was held back for a stop string that did not come
                    yield _sse(chunk(request, model, delta={"content": rest}))
                server.finished(job, "200", payload)
                ended = True
                yield _sse(chunk(request, model, finish_reason=payload.finish_reason, outcome=payload))
                if request.include_usage:
                    yield _sse(chunk(request, model, outcome=payload, usage_only=True))
            yield "data: [DONE]\n\n"
            return
    finally:
        if not ended:
            job.cancelled.set()
            server.finished(job, "disconnected")
