"""POST /v1/ask: the image as the body's bytes, ?question=...&max_new_tokens=...&decoding=...&seed=...

The request takes its place in the queue before its body is read or its image decoded (429 first)."""

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...request import DEFAULT_QUESTION
from ...request import Request as AskRequest
from ..errors import check_text
from ..http import CLIENT_GONE, answer_of, body_of, server_of

router = APIRouter()
ENDPOINT = "/v1/ask"


@router.post(ENDPOINT)
async def ask_native(request: Request, question: str = DEFAULT_QUESTION, max_new_tokens: int | None = None,
                     decoding: str | None = None, seed: int | None = None):
    arrived = time.perf_counter()
    server = server_of(request)
    server.authorize(request.headers)
    pipe, config = server.ready_pipeline(), server.config
    check_text("question", question)
    cfg = pipe.decoding(decoding, max_new_tokens=max_new_tokens, seed=seed)
    cfg.validate()
    config.check_new_tokens(cfg.max_new_tokens)
    admission = server.admit()
    try:
        data = await body_of(request, config.max_body_bytes, config.read_timeout_s)
        image = await server.image(lambda: data)
        job, answer, _ = server.submit(AskRequest(image, question, cfg), admission, stream=False)
    finally:
        admission.release()
    result = await answer_of(request, job, answer)
    if result is None:
        return Response(status_code=CLIENT_GONE)
    server.metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - arrived)
    return {**result.to_json(), "timings_ms": {**result.timings_ms, "queue": job.queue_ms}}
