"""POST /v1/chat/completions: the OpenAI chat format (serve.openai_chat), `stream: true` for server-sent events."""

import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from ...request import Request as AskRequest
from ..errors import RequestRefused, error_body, status_of
from ..http import CLIENT_GONE, answer_of, body_of, server_of
from ..openai_chat import ChatAsk, Completion, parse_chat
from ..request_images import decode_image, image_bytes_from_url

router = APIRouter()
ENDPOINT = "/v1/chat/completions"


@router.post(ENDPOINT)
async def chat(request: Request):
    arrived = time.perf_counter()
    server = server_of(request)
    server.authorize(request.headers)
    pipe, config = server.ready_pipeline(), server.config
    try:
        body = json.loads(await body_of(request, config.max_body_bytes))
    except ValueError as exc:
        raise RequestRefused(400, f"the body is not JSON: {exc}") from exc
    ask = parse_chat(body, pipe.manifest.generation)
    config.check_new_tokens(ask.decoding.max_new_tokens, "max_tokens")
    image = await run_in_threadpool(
        lambda: decode_image(image_bytes_from_url(ask.image_url, config.allow_paths), config.max_pixels))
    job, answer, tokens = server.submit(AskRequest(image, ask.question, ask.decoding), stream=ask.stream)
    completion = Completion(server.model)
    if ask.stream:
        return EventSourceResponse(events(server, job, answer, tokens, completion, ask, arrived))
    result = await answer_of(request, job, answer)
    if result is None:
        return Response(status_code=CLIENT_GONE)
    server.metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - arrived)
    return completion.whole(result, ask.decoding, job.queue_ms)


async def events(server, job, answer, tokens, completion: Completion, ask: ChatAsk, arrived: float):
    """The chunks of one streamed answer; the client going away cancels its job (sse-starlette cancels this)."""
    text = server.pipeline.text_stream()
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
        server.metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - arrived)
    finally:
        if not answer.done():
            job.cancelled.set()
