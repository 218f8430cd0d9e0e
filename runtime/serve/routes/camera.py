"""WS /v1/camera: frames in, answers about the newest frame out (serve.camera)."""

from fastapi import APIRouter, WebSocket

from moai_edge.engines.errors import InputError

from ...request import DEFAULT_QUESTION
from ..camera import run_camera
from ..http import server_of

router = APIRouter()


@router.websocket("/v1/camera")
async def camera(ws: WebSocket):
    server = server_of(ws)
    config = server.config
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
