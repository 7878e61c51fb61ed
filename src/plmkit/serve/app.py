"""The HTTP server: FastAPI routes over one Batcher, OpenAI-shaped errors, the API key and the body limit.

    app = build_app(served, batcher, settings)      # any ASGI server runs it; plm serve uses uvicorn

Routes: POST /v1/completions and /v1/chat/completions (JSON, or SSE with `stream: true`), GET /v1/models,
GET /health, GET /metrics (Prometheus text), POST /tokenize and /detokenize and GET /tokenizer_info
(vLLM's shapes, which lm-evaluation-harness's `tokenizer_backend=remote` reads), GET / (the chat page,
static/index.html, when installed).

Every error is `{"error": {message, type, param, code}}`: 400 for bad input (an unknown field is named),
401 for a missing or wrong key (`--api-key`: the /v1 routes and the tokenizer routes; the page, /health
and /metrics stay open), 404 for an unknown model or route, 413 for a body over --max-body-bytes, 429 when
the queue is full. A 500 means a bug of the server (the openai client retries 5xx, so bad input never
gets one). A client that disconnects cancels its request: its slots are free at the next decoding step.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from plmkit.errors import PlmkitError
from plmkit.serve.batcher import Batcher, Failure, QueueFull, SamplingParams, Update
from plmkit.serve.errors import ApiError, bad_request, error_body, queue_full
from plmkit.serve.metrics import Metrics
from plmkit.serve.middleware import Guard
from plmkit.serve.openai_api import (
    ChoiceState,
    chat_chunk,
    chat_job,
    chat_response,
    check_ids,
    check_model,
    completion_chunk,
    completion_job,
    completion_response,
    request_id,
    usage_chunk,
)
from plmkit.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from plmkit.serve.served import ServedModel
from plmkit.serve.settings import ServeSettings

PAGE = Path(__file__).parent / "static" / "index.html"  # the chat page (plm chat's helper writes it)
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there


class ClientGone(Exception):
    pass


def build_app(
    served: ServedModel, batcher: Batcher, settings: ServeSettings, metrics: Metrics | None = None
) -> FastAPI:
    metrics = metrics or Metrics()
    app = FastAPI(title="plmkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served, app.state.batcher, app.state.metrics = served, batcher, metrics
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    _add_error_handlers(app)

    # ---- generation ---------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        job = completion_job(body, served, settings)
        rid = request_id("cmpl")
        run = Run(batcher, metrics, job.prompts, body.n, job.params)
        if body.stream:
            return _sse(_completion_events(run, body, job, rid))
        states = await run.collect(request)
        return completion_response(served, body, job, states, rid)

    async def _completion_events(run: Run, body: CompletionRequest, job, rid: str) -> AsyncIterator[str]:
        firsts: set[int] = set()
        offsets: dict[int, int] = {}
        async for update in run.updates():
            first = update.index not in firsts
            firsts.add(update.index)
            chunk, offsets[update.index] = completion_chunk(
                served, body, job, update, first, offsets.get(update.index, 0), rid
            )
            if chunk is not None:
                yield _event(chunk)
        if body.stream_options is not None and body.stream_options.include_usage:
            prompt_tokens = sum(len(p) for p in job.prompts)
            yield _event(usage_chunk("text_completion", served, rid, prompt_tokens, run.generated))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        job = chat_job(body, served, settings)
        rid = request_id("chatcmpl")
        run = Run(batcher, metrics, [job.prompt], body.n, job.params)
        if body.stream:
            return _sse(_chat_events(run, body, job, rid))
        states = await run.collect(request)
        return chat_response(served, body, job, states, rid)

    async def _chat_events(run: Run, body: ChatCompletionRequest, job, rid: str) -> AsyncIterator[str]:
        for index in range(body.n):  # the role comes first, in a chunk of its own
            yield _event(
                chat_chunk(served, body, job, index, {"role": "assistant", "content": ""}, None, rid)
            )
        async for update in run.updates():
            if update.text or (job.params.logprobs is not None and update.token_ids):
                yield _event(
                    chat_chunk(
                        served, body, job, update.index, {"content": update.text}, _running(update), rid
                    )
                )
            if update.finish_reason is not None:
                yield _event(chat_chunk(served, body, job, update.index, {}, _finished(update), rid))
        if body.stream_options is not None and body.stream_options.include_usage:
            yield _event(usage_chunk("chat.completion.chunk", served, rid, len(job.prompt), run.generated))

    # ---- models, health, metrics --------------------------------------------------------------------
    def model_card() -> dict[str, Any]:
        return {
            "id": served.name,
            "object": "model",
            "created": STARTED,
            "owned_by": "plmkit",
            "max_model_len": served.max_len,
        }

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> Any:
        check_model(name, served)
        return model_card()

    @app.get("/health")
    async def health() -> Any:
        return {
            "status": "ok",
            "model": served.name,
            "running": batcher.running_count,
            "waiting": batcher.queue_length,
        }

    @app.get("/metrics")
    async def prometheus() -> Any:
        return PlainTextResponse(metrics.render(batcher), media_type="text/plain; version=0.0.4")

    # ---- the tokenizer (vLLM's routes) --------------------------------------------------------------
    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> Any:
        check_model(body.model, served)
        if body.prompt is not None:
            tok = served.tokenizer
            ids = served.prompt_ids(body.prompt) if body.add_special_tokens else tok.encode(body.prompt)
        else:
            if served.template is None:
                raise bad_request(served.template_error, "messages", code="no_chat_template")
            try:
                ids = served.chat_ids([m.plain() for m in body.messages])
            except PlmkitError as e:
                raise bad_request(str(e), "messages") from None
        strs = [served.token_text(t) for t in ids] if body.return_token_strs else None
        return {"count": len(ids), "max_model_len": served.max_len, "tokens": ids, "token_strs": strs}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> Any:
        check_model(body.model, served)
        check_ids(body.tokens, served, "tokens")
        return {"prompt": served.tokenizer.decode(body.tokens, skip_special_tokens=False)}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> Any:
        special = served.tokenizer.special_tokens
        return {
            "tokenizer_class": "plmkit.tokenizer.Tokenizer",
            "eos_token": special.eos,
            "bos_token": special.bos,
            "pad_token": special.pad,
            "unk_token": special.unk,
            "chat_template": plain_template(served.template.source) if served.template is not None else None,
            "model_max_length": served.max_len,
            "vocab_size": served.vocab_size,
        }

    # ---- the chat page ------------------------------------------------------------------------------
    @app.get("/")
    async def page() -> Any:
        if not PAGE.is_file():
            raise ApiError(
                404, "the chat page (plmkit/serve/static/index.html) is not installed", code="not_found"
            )
        return FileResponse(PAGE, media_type="text/html")

    return app


STARTED = int(time.time())
_GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def plain_template(source: str) -> str:
    """The template without its {% generation %} tags: they only mark SFT's loss (rendering ignores them),
    and a plain Jinja environment, such as lm-evaluation-harness's remote tokenizer's, does not know them."""
    return _GENERATION_TAGS.sub("", source)


# ---- one generation request -------------------------------------------------------------------------
class Run:
    """A request in the batcher: its updates arrive from the decoding thread on an asyncio queue."""

    def __init__(
        self,
        batcher: Batcher,
        metrics: Metrics,
        prompts: list[list[int]],
        n: int,
        params: SamplingParams,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Update | Failure] = asyncio.Queue()
        self.metrics = metrics
        self.remaining = len(prompts) * n
        self.generated = 0
        self.started = time.perf_counter()
        self.first_token: float | None = None
        try:
            self.ticket = batcher.submit(prompts, n, params, self._sink)
        except QueueFull:
            raise queue_full(batcher.max_queue) from None

    def _sink(self, item: Update | Failure) -> None:  # the decoding thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed (shutdown)
            self.ticket.cancel()

    async def updates(self) -> AsyncIterator[Update]:
        """Every update until each choice has finished; the request is cancelled if the reader stops early."""
        try:
            while self.remaining:
                item = await self.queue.get()
                if isinstance(item, Failure):
                    raise ApiError(
                        500, f"the server failed while decoding: {item.message}", type="server_error"
                    )
                if item.token_ids:
                    self.generated += len(item.token_ids)
                    if self.first_token is None:
                        self.first_token = time.perf_counter() - self.started
                if item.finish_reason is not None:
                    self.remaining -= 1
                yield item
        finally:
            if self.remaining:
                self.ticket.cancel()  # the client left (or failed): free the slots
            self.metrics.observe(time.perf_counter() - self.started, self.first_token)

    async def collect(self, request: Request) -> list[ChoiceState]:
        """All choices, gathered; a client that disconnects meanwhile cancels the request."""
        states: dict[int, ChoiceState] = {}

        async def gather() -> None:
            async for update in self.updates():
                states.setdefault(update.index, ChoiceState(update.index)).add(update)

        task = asyncio.ensure_future(gather())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    task.result()
                    break
                if await request.is_disconnected():
                    raise ClientGone
        finally:
            if not task.done():
                task.cancel()
                self.ticket.cancel()
        return [states[i] for i in sorted(states)]


def _running(update: Update) -> Update:
    """The update without its finish (the chat stream sends the finish in a chunk of its own)."""
    return Update(update.index, update.token_ids, update.logprobs, update.top_logprobs, update.text)


def _finished(update: Update) -> Update:
    return Update(update.index, finish_reason=update.finish_reason)


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except ApiError as e:  # a failure after the 200 went out: an error event, then the end
            yield _event(e.body())
        except Exception as e:  # noqa: BLE001 - a bug of the server: said in the stream, not a cut connection
            traceback.print_exc(file=sys.stderr)
            yield _event(error_body(f"internal server error: {type(e).__name__}: {e}", type="server_error"))
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


# ---- errors ---------------------------------------------------------------------------------------------
def _json_error(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\])$")  # pydantic's union branches
SHAPES = {  # what a field of several shapes takes, instead of one error per shape
    "prompt": "must be a string, a list of strings, a list of token ids or a list of lists of token ids",
    "stop": "must be a string or a list of up to 4 strings",
    "messages": "must be a list of messages {role, content}",
}


def validation_error(errors: list[dict[str, Any]], path: str) -> ApiError:
    """One 400 for a body that does not fit its schema: unknown fields named together, else the first
    problem with its field."""
    unknown = [".".join(str(p) for p in e["loc"][1:]) for e in errors if e.get("type") == "extra_forbidden"]
    if unknown:
        names = ", ".join(f"'{u}'" for u in unknown)
        return bad_request(
            f"Unrecognized request argument{'s' if len(unknown) > 1 else ''} supplied to {path}: {names}",
            unknown[0],
            code="unknown_field",
        )
    first = errors[0]
    if first.get("type") == "json_invalid":
        return bad_request(
            f"The request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        )
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _UNION_TAG.match(str(p))]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    field = ".".join(loc)
    if not field:
        return bad_request(message)
    if field in SHAPES and first.get("type") != "missing":
        message = SHAPES[field]
    given = first.get("input")
    shown = "" if first.get("type") == "missing" else f" (got {json.dumps(given, default=str)[:80]})"
    return bad_request(f"Invalid '{field}': {message}{shown}", field)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json_error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json_error(validation_error(list(exc.errors()), request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown route {request.method} {request.url.path}; the API is under /v1 (see GET /v1/models)"
        else:
            message = f"{exc.detail}: {request.method} {request.url.path}"
        return JSONResponse(error_body(message, code=str(exc.status_code)), status_code=exc.status_code)

    @app.exception_handler(PlmkitError)
    async def plmkit_error(request: Request, exc: PlmkitError) -> JSONResponse:
        return _json_error(bad_request(str(exc)))

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        body = error_body(f"internal server error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(body, status_code=500)
