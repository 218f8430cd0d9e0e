"""POST /v1/chat/completions: the OpenAI chat format (serve.openai_chat), `stream: true` for server-sent events.

The request takes its place in the queue first (429 with nothing read or decoded), then its body is read and its
image decoded. A stream cut by the server's shutdown ends with an error event, which OpenAI clients raise."""

import asyncio
import json
import time

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from ...request import Request as AskRequest
from ..errors import RequestRefused, error_body, status_of
from ..http import CLIENT_GONE, answer_of, body_of, server_of
from ..openai_chat import ChatAsk, Completion, parse_chat
from ..request_images import image_bytes_from_url

router = APIRouter()
ENDPOINT = "/v1/chat/completions"
SHUTDOWN_GRACE_S = 1.0  # how long a stream cut by the server's shutdown has to send its error event
SHUTDOWN = object()


@router.post(ENDPOINT)
async def chat(request: Request):
    arrived = time.perf_counter()
    server = server_of(request)
    server.authorize(request.headers)
    pipe, config = server.ready_pipeline(), server.config
    admission = server.admit()
    try:
        ask = parse_chat(json_body(await body_of(request, config.max_body_bytes, config.read_timeout_s)),
                         pipe.manifest.generation)
        if ask.model is not None and ask.model != server.model:
            raise RequestRefused(404, f"model: this server serves '{server.model}', found {ask.model!r:.80}")
        config.check_new_tokens(ask.decoding.max_new_tokens, "max_tokens")
        image = await server.image(lambda: image_bytes_from_url(ask.image_url, config.allow_paths,
                                                                config.max_body_bytes))
        job, answer, tokens = server.submit(AskRequest(image, ask.question, ask.decoding), admission,
                                            stream=ask.stream)
    finally:
        admission.release()  # nothing once the job holds the place
    completion = Completion(server.model)
    if ask.stream:
        shutdown = anyio.Event()
        return EventSourceResponse(events(server, job, answer, tokens, completion, ask, arrived, shutdown),
                                   shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_S)
    result = await answer_of(request, job, answer)
    if result is None:
        return Response(status_code=CLIENT_GONE)
    server.metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - arrived)
    return completion.whole(result, ask.decoding, job.queue_ms)


def json_body(data: bytes):
    try:
        return json.loads(data)
    except RecursionError:
        raise RequestRefused(400, "the body is not JSON this server reads: it nests deeper than Python's recursion "
                                  "limit") from None
    except ValueError as exc:
        raise RequestRefused(400, f"the body is not JSON: {exc}") from exc


async def next_token(tokens: asyncio.Queue, stops: list):
    """The next token id (None at the end), or SHUTDOWN when one of `stops` (events) is set first."""
    get = asyncio.ensure_future(tokens.get())
    waits = {get, *(asyncio.ensure_future(event.wait()) for event in stops)}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return get.result() if get in done else SHUTDOWN


async def events(server, job, answer, tokens, completion: Completion, ask: ChatAsk, arrived: float,
                 shutdown: anyio.Event):
    """The chunks of one streamed answer; the client going away cancels its job (sse-starlette cancels this)."""
    text = server.pipeline.text_stream()
    try:
        yield {"data": json.dumps(completion.chunk({"role": "assistant", "content": ""}))}
        stops = [server.stopping, shutdown]  # ours (told at once) and sse-starlette's (it polls)
        while (token := await next_token(tokens, stops)) is not None:
            if token is SHUTDOWN:
                yield {"data": json.dumps(error_body("the server is shutting down: the answer was cut",
                                                     "server_error", 503))}
                return
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
        server.metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - arrived)
    finally:
        if not answer.done():
            job.cancelled.set()
