"""A request the server refuses, with the HTTP status that says why."""

from __future__ import annotations

from moai_edge.engines.errors import ImageError, InputError


class RequestRefused(InputError):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


class ClientGone(RequestRefused):
    """The client hung up before its request was read: its own outcome (499 in the metrics), never a server error."""

    def __init__(self, message: str):
        super().__init__(499, message, kind="client_gone")


def check_text(field: str, text: str) -> str:
    """400 naming `field` for text the tokenizer cannot take: a lone surrogate (JSON may carry one) is no character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestRefused(400, f"{field}: expected text, found a lone surrogate {text[exc.start]!r} at character "
                                  f"{exc.start}") from None
    return text


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
