"""The HTTP server's app. `create_app(load, config)` builds the ASGI app from the routers in serve/routes; the
package loads on a background thread when the app starts, so /health answers at once and /health/ready once the
package is loaded and warm.

    POST /v1/chat/completions   OpenAI chat format, `stream: true` for server-sent events; adds `experts`, `timings_ms`
    POST /v1/ask                the image as the body's bytes, ?question=...&max_new_tokens=...
    WS   /v1/camera             frames in, answers about the newest frame out (serve.camera)
    GET  /v1/models, /health, /health/ready, /metrics
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Callable

from moai_edge.engines.errors import require

from ..pipeline import Pipeline
from .config import ServeConfig
from .guard import HostOriginGuard
from .metrics import CountRequests
from .state import Server

ENDPOINTS = ("/v1/chat/completions", "/v1/ask", "/v1/camera", "/v1/models", "/health", "/health/ready", "/metrics")


def create_app(load: Callable[[], Pipeline], config: ServeConfig | None = None, *, model: str = "moai-edge",
               owns_pipeline: bool = True):
    """`load()` returns the Pipeline to serve; with `owns_pipeline` the server closes it when it stops."""
    fastapi = require("fastapi", "serve")
    require("sse_starlette", "serve")
    from starlette.concurrency import run_in_threadpool

    from .handlers import add_error_handlers
    from .routes import ask, camera, chat, status

    server = Server(load, config or ServeConfig(), model=model, owns_pipeline=owns_pipeline)

    @asynccontextmanager
    async def lifespan(app):
        server.bind(asyncio.get_running_loop())
        server.loader.start()
        yield
        await run_in_threadpool(server.close)

    app = fastapi.FastAPI(title="moai-edge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    if server.config.allow_origins:  # their preflights answered, their responses given CORS headers
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(server.config.allow_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(HostOriginGuard, config=server.config)
    app.add_middleware(CountRequests, metrics=server.metrics, endpoints=ENDPOINTS)  # outermost: counts refusals too
    add_error_handlers(app)
    for routes in (status, chat, ask, camera):
        app.include_router(routes.router)
    return app
