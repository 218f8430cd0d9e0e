"""What the HTTP routes share: the server behind an app, a body read within its limits, an answer awaited while
watching for the client to leave."""

from __future__ import annotations

import asyncio

from ..request import Result
from .errors import ClientGone, RequestRefused
from .state import Server
from .worker import Job

CLIENT_GONE = 499  # nginx's "client closed request": counted, never seen by a client


def server_of(connection) -> Server:
    """The Server of the app a request or WebSocket came to (create_app puts it in the app's state)."""
    return connection.app.state.server


async def body_of(request, limit: int, timeout_s: float) -> bytes:
    """The request's body: 413 once it is known to be longer than `limit` bytes (from its header, or as it comes),
    408 when it has not all come within `timeout_s`, ClientGone when the client hangs up while sending it."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRefused(413, f"the body is {declared} bytes, more than this server's limit of {limit}")

    async def read() -> bytes:
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > limit:
                raise RequestRefused(413, f"the body is more than this server's limit of {limit} bytes")
        return bytes(data)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestRefused(408, f"the body did not arrive within {timeout_s:g} s", kind="timeout") from None
    except ClientDisconnect:
        raise ClientGone("the client went away while sending its body") from None


async def answer_of(request, job: Job, answer: asyncio.Future) -> Result | None:
    """The result, or None when the client disconnected first (its job is then cancelled)."""
    while not answer.done():
        await asyncio.wait({answer}, timeout=0.1)
        if not answer.done() and await request.is_disconnected():
            job.cancelled.set()
            return None
    return answer.result()
