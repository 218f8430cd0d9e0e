"""The server on a thread of this process (tests, benchmarks, a robot's own Python program):

    with BackgroundServer(create_app(lambda: pipe, ServeConfig(port=0), owns_pipeline=False)) as server:
        httpx.post(f"{server.url}/v1/ask?question=...", content=jpeg_bytes)
"""

from __future__ import annotations

import threading
import time

from moai_edge.engines.errors import EngineError

from .listener import uvicorn_server

class BackgroundServer:
    def __init__(self, app, *, ready_timeout_s: float = 300.0):
        """`app` from create_app; it listens on its config's host and port (port 0: a free one). `__enter__` returns
        once the package is loaded and warm."""
        self.app, self.ready_timeout_s = app, ready_timeout_s
        self.server = uvicorn_server(app, app.state.server.config, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, name="serve-http", daemon=True)
        self.url = ""

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise EngineError("the HTTP server did not start (is the port taken?)")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        state = self.app.state.server
        while not state.ready.wait(0.05):
            if state.failure or time.monotonic() > deadline:
                self.__exit__()
                raise EngineError(f"the package did not get ready: {state.failure or 'timed out'}")
        return self

    def __exit__(self, *exc) -> None:
        self.app.state.server.begin_shutdown()
        self.server.should_exit = True
        self.thread.join(timeout=60)
