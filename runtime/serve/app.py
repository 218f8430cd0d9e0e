"""The HTTP server's routes. `create_app(load, config)` builds the ASGI app; the package loads on a background thread
when the app starts, so /health answers at once and /health/ready once the package is loaded and warm.

    POST /v1/chat/completions   OpenAI chat format, `stream: true` for server-sent events; adds `experts`, `timings_ms`
    POST /v1/ask                the image as the body's bytes, ?question=...&max_new_tokens=...
    WS   /v1/camera             frames in, answers about the newest frame out (serve.camera)
    GET  /v1/models, /health, /health/ready, /metrics
"""

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Callable

from moai_edge.engines.errors import InputError, MoaiEdgeError, require

from ..pipeline import Pipeline
from ..request import DEFAULT_QUESTION, Request, Result
from .camera import run_camera
from .config import ServeConfig
from .errors import RequestRefused, error_body, status_of
from .metrics import CountRequests
from .openai_chat import Completion, parse_chat
from .request_images import decode_image, image_bytes_from_url
from .state import Server
from .worker import Job

log = logging.getLogger("moai_edge.serve")
ENDPOINTS = ("/v1/chat/completions", "/v1/ask", "/v1/camera", "/v1/models", "/health", "/health/ready", "/metrics")
CLIENT_GONE = 499  # nginx's "client closed request": counted, never seen by a client


def create_app(load: Callable[[], Pipeline], config: ServeConfig | None = None, *, model: str = "moai-edge",
               owns_pipeline: bool = True):
    """`load()` returns the Pipeline to serve; with `owns_pipeline` the server closes it when it stops."""
    fastapi = require("fastapi", "serve")
    require("sse_starlette", "serve")
    from fastapi import Request as HttpRequest, WebSocket
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from sse_starlette.sse import EventSourceResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    config = config or ServeConfig()
    server = Server(load, config, model=model, owns_pipeline=owns_pipeline)

    @asynccontextmanager
    async def lifespan(app):
        server.loader.start()
        yield
        await run_in_threadpool(server.close)

    app = fastapi.FastAPI(title="moai-edge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(CountRequests, metrics=server.metrics, endpoints=ENDPOINTS)

    def refused(exc: Exception) -> JSONResponse:
        status, kind = status_of(exc)
        message = str(exc)
        if status >= 500 and not isinstance(exc, RequestRefused):  # an engine failure or a bug: logged in full
            log.exception("a request failed", exc_info=exc)
            message = f"{type(exc).__name__}: {exc}"
        return JSONResponse(error_body(message, kind, status), status_code=status,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(MoaiEdgeError)
    async def our_error(request, exc: MoaiEdgeError):
        return refused(exc)

    @app.exception_handler(Exception)
    async def any_error(request, exc: Exception):  # a bug: a JSON 500 with its type, the traceback in the log only
        return refused(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return refused(RequestRefused(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}, found {e.get('input')!r}"
                             for e in exc.errors())
        return refused(RequestRefused(400, f"{request.url.path}: {problems}"))

    async def body_of(request: HttpRequest) -> bytes:
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestRefused(413, f"the body is {declared} bytes, more than this server's limit of {limit}")
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > limit:
                raise RequestRefused(413, f"the body is more than this server's limit of {limit} bytes")
        return bytes(data)

    async def answer_of(request: HttpRequest, job: Job, answer: asyncio.Future) -> Result | None:
        """The result, or None when the client disconnected first (its job is then cancelled)."""
        while not answer.done():
            await asyncio.wait({answer}, timeout=0.1)
            if not answer.done() and await request.is_disconnected():
                job.cancelled.set()
                return None
        return answer.result()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/health/ready")
    async def health_ready():
        if server.ready.is_set():
            return {"status": "ready", "model": model, "family": server.pipeline.manifest.family}
        status = "failed" if server.failure else "loading"
        return JSONResponse({"status": status, **({"error": server.failure} if server.failure else {})},
                            status_code=503)

    @app.get("/metrics")
    async def metrics(request: HttpRequest):
        server.authorize(request.headers)
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.get("/v1/models")
    async def models(request: HttpRequest):
        server.authorize(request.headers)
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "moai-edge"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest):
        arrived = time.perf_counter()
        server.authorize(request.headers)
        pipe = server.ready_pipeline()
        try:
            body = json.loads(await body_of(request))
        except ValueError as exc:
            raise RequestRefused(400, f"the body is not JSON: {exc}") from exc
        ask = parse_chat(body, pipe.manifest.generation)
        config.check_new_tokens(ask.decoding.max_new_tokens, "max_tokens")
        image = await run_in_threadpool(
            lambda: decode_image(image_bytes_from_url(ask.image_url, config.allow_paths), config.max_pixels))
        job, answer, tokens = server.submit(Request(image, ask.question, ask.decoding), stream=ask.stream)
        completion = Completion(model)
        if ask.stream:
            return EventSourceResponse(events(job, answer, tokens, completion, ask, pipe, arrived))
        result = await answer_of(request, job, answer)
        if result is None:
            return Response(status_code=CLIENT_GONE)
        server.metrics.latency.labels("/v1/chat/completions").observe(time.perf_counter() - arrived)
        return completion.whole(result, ask.decoding, job.queue_ms)

    async def events(job, answer, tokens, completion, ask, pipe, arrived):
        """The chunks of one streamed answer; the client going away cancels its job (sse-starlette cancels this)."""
        text = pipe.text_stream()
        try:
            yield {"data": json.dumps(completion.chunk({"role": "assistant", "content": ""}))}
            while (token := await tokens.get()) is not None:
                if piece := text.push(token):
                    yield {"data": json.dumps(completion.chunk({"content": piece}))}
            try:
                result = await answer
            except Exception as exc:  # noqa: BLE001 - the stream has begun: the error is its last event
                status, kind = status_of(exc)
                yield {"data": json.dumps(error_body(str(exc), kind, status))}
                return
            if rest := text.finish(result.answer):
                yield {"data": json.dumps(completion.chunk({"content": rest}))}
            yield {"data": json.dumps(completion.last_chunk(result, ask.decoding, job.queue_ms, ask.include_usage))}
            yield {"data": "[DONE]"}
            server.metrics.latency.labels("/v1/chat/completions").observe(time.perf_counter() - arrived)
        finally:
            if not answer.done():
                job.cancelled.set()

    @app.post("/v1/ask")
    async def ask_native(request: HttpRequest, question: str = DEFAULT_QUESTION, max_new_tokens: int | None = None,
                         decoding: str | None = None, seed: int | None = None):
        arrived = time.perf_counter()
        server.authorize(request.headers)
        pipe = server.ready_pipeline()
        data = await body_of(request)
        cfg = pipe.decoding(decoding, max_new_tokens=max_new_tokens, seed=seed)
        cfg.validate()
        config.check_new_tokens(cfg.max_new_tokens)
        image = await run_in_threadpool(decode_image, data, config.max_pixels)
        job, answer, _ = server.submit(Request(image, question, cfg), stream=False)
        result = await answer_of(request, job, answer)
        if result is None:
            return Response(status_code=CLIENT_GONE)
        server.metrics.latency.labels("/v1/ask").observe(time.perf_counter() - arrived)
        return {**result.to_json(), "timings_ms": {**result.timings_ms, "queue": job.queue_ms}}

    @app.websocket("/v1/camera")
    async def camera(ws: WebSocket):
        try:
            server.authorize(ws.headers)
            pipe = server.ready_pipeline()
            asked = ws.query_params.get("max_new_tokens")
            max_new_tokens = int(asked) if asked is not None else config.max_new_tokens
            if max_new_tokens is not None:
                pipe.decoding("greedy", max_new_tokens=max_new_tokens).validate()
                config.check_new_tokens(max_new_tokens)
        except (InputError, ValueError) as exc:
            code = 1008 if getattr(exc, "status", 400) in (400, 401) else 1013  # policy violation / try again later
            await ws.accept()  # then closed with the reason: refused before accepting, a client sees only HTTP 403
            await ws.close(code=code, reason=str(exc)[:120])
            return
        await ws.accept()
        await run_camera(ws, pipe, question=ws.query_params.get("question", DEFAULT_QUESTION),
                         max_new_tokens=max_new_tokens, max_bytes=config.max_body_bytes, max_pixels=config.max_pixels,
                         metrics=server.metrics)

    return app
