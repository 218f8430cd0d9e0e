"""Who may call a server that has no API key: pages in a browser are kept out.

Without a key, anything that can reach the port can ask, so the port must be one only this machine reaches (the
default 127.0.0.1) and a web page must not be able to use the visitor's browser to reach it:
- DNS rebinding: the Host header must name this server (a loopback name, `--host`, or an `--allow-host` name);
  with `--host` a wildcard (0.0.0.0, ::) any Host is taken;
- cross-site requests (a simple POST, a WebSocket): a request carrying an Origin is refused unless the origin is
  the server's own or one of `--allow-origin` (which also get CORS headers).
With a key, neither is needed: a page cannot send the Authorization header without the key. (Anchors: Jupyter's
allow_remote_access and Ollama's OLLAMA_ORIGINS.)
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .config import ServeConfig
from .errors import error_body

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def host_name(value: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1'; '[::1]:8000' -> '::1'."""
    try:
        return (urlsplit(f"//{value}").hostname or "").lower()
    except ValueError:
        return ""


def refusal(config: ServeConfig, headers: dict[str, str]) -> str | None:
    """Why a request with these headers is refused, or None."""
    if config.api_key is not None:
        return None
    host = headers.get("host", "")
    allowed = LOOPBACK | {config.host.lower()} | {h.lower() for h in config.allow_hosts}
    if config.host not in WILDCARDS and host_name(host) not in allowed:
        return (f"Host '{host[:80]}' does not name this server (a loopback name, --host or --allow-host); without an "
                f"API key no other name is served")
    origin = headers.get("origin")
    if origin is None or origin in config.allow_origins or "*" in config.allow_origins:
        return None
    if origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower()):
        return None  # the server's own pages
    return (f"cross-origin requests are refused: Origin '{origin[:80]}'; start the server with --allow-origin "
            f"ORIGIN or an API key")


class HostOriginGuard:
    """An ASGI middleware refusing, with 403 (a WebSocket: closed before it opens), what `refusal` names."""

    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        reason = refusal(self.config, headers)
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
        from starlette.responses import JSONResponse

        await JSONResponse(error_body(reason, "permission_error", 403), status_code=403)(scope, receive, send)
