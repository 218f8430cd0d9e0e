"""The uvicorn server around the app, with the limits a robot's network needs: a shutdown that never waits longer
than `shutdown_timeout_s`, a request head that must arrive within `read_timeout_s` (408, then closed), and an
access log that never shows a key given in a URL."""

from __future__ import annotations

import logging
import re

from moai_edge.engines.errors import require

from .config import ServeConfig

SECRET_QUERY = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|auth|authorization|password|secret)=)"
                          r"[^&\s]*")
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                    b"content-length: 50\r\n\r\nthe request's head did not arrive within the limit")


class RedactSecrets(logging.Filter):
    """Keys and tokens in a logged URL become '***' (uvicorn's access log writes the path with its query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(SECRET_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = SECRET_QUERY.sub(r"\1***", record.msg)
        return True


def redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())


def head_timeout_protocol(timeout_s: float):
    """uvicorn's h11 protocol, with a limit on how long a request's head may take to arrive (uvicorn has none: a
    client that sends half a head would hold its socket for good). The timer runs while the connection waits for a
    head: from its start, and again after each response."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutProtocol(H11Protocol):
        head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.arm()

        def arm(self) -> None:
            self.disarm()
            self.head_timer = self.loop.call_later(timeout_s, self.head_timed_out)

        def disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before or self.transport.get_protocol() is not self:  # a head came, or a WebSocket
                self.disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self.arm()

        def connection_lost(self, exc) -> None:
            self.disarm()
            super().connection_lost(exc)

        def head_timed_out(self) -> None:
            self.head_timer = None
            in_progress = self.cycle is not None and not self.cycle.response_complete
            if self.transport.is_closing() or in_progress or self.transport.get_protocol() is not self:
                return
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    return HeadTimeoutProtocol


def uvicorn_server(app, config: ServeConfig, *, log_level: str = "info"):
    """A uvicorn.Server for `app` (from create_app) on the config's host and port (port 0: a free one); told to stop,
    it tells the app at once, so a stream in flight ends with an error event rather than silently."""
    uvicorn = require("uvicorn", "serve")
    redact_access_log()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.server.begin_shutdown()
            super().handle_exit(sig, frame)

    return Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, ws_max_size=config.max_body_bytes,
        http=head_timeout_protocol(config.read_timeout_s), timeout_graceful_shutdown=config.shutdown_timeout_s))
