"""A request the server refuses, with the HTTP status that says why."""

from __future__ import annotations

from moai_edge.engines.errors import ImageError, InputError


class RequestRefused(InputError):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


def status_of(exc: Exception) -> tuple[int, str]:
    """(HTTP status, OpenAI error type) for an exception raised while answering."""
    if isinstance(exc, RequestRefused):
        return exc.status, exc.kind
    if isinstance(exc, (ImageError, InputError)):
        return 400, "invalid_request_error"
    return 500, "server_error"  # an engine failure or a bug: the server's fault, not the request's


def error_body(message: str, kind: str, status: int) -> dict:
    """The OpenAI error shape, which OpenAI clients turn into their exceptions."""
    return {"error": {"message": message, "type": kind, "code": status}}
