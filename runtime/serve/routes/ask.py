"""POST /v1/ask: the image as the body's bytes, ?question=...&max_new_tokens=...&decoding=...&seed=..."""

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ...request import DEFAULT_QUESTION
from ...request import Request as AskRequest
from ..http import CLIENT_GONE, answer_of, body_of, server_of
from ..request_images import decode_image

router = APIRouter()
ENDPOINT = "/v1/ask"


@router.post(ENDPOINT)
async def ask_native(request: Request, question: str = DEFAULT_QUESTION, max_new_tokens: int | None = None,
                     decoding: str | None = None, seed: int | None = None):
    arrived = time.perf_counter()
    server = server_of(request)
    server.authorize(request.headers)
    pipe, config = server.ready_pipeline(), server.config
    data = await body_of(request, config.max_body_bytes)
    cfg = pipe.decoding(decoding, max_new_tokens=max_new_tokens, seed=seed)
    cfg.validate()
    config.check_new_tokens(cfg.max_new_tokens)
    image = await run_in_threadpool(decode_image, data, config.max_pixels)
    job, answer, _ = server.submit(AskRequest(image, question, cfg), stream=False)
    result = await answer_of(request, job, answer)
    if result is None:
        return Response(status_code=CLIENT_GONE)
    server.metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - arrived)
    return {**result.to_json(), "timings_ms": {**result.timings_ms, "queue": job.queue_ms}}
