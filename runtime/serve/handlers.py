"""Every error a route raises, as the OpenAI error body with the status that says why; a bug is a JSON 500 naming its
type, with the traceback in the log only."""

from __future__ import annotations

import logging

from moai_edge.engines.errors import MoaiEdgeError

from .errors import RequestRefused, error_body, status_of

log = logging.getLogger("moai_edge.serve")


def refused(exc: Exception):
    from fastapi.responses import JSONResponse

    status, kind = status_of(exc)
    message = str(exc)
    if status >= 500 and not isinstance(exc, RequestRefused):  # an engine failure or a bug: logged in full
        log.exception("a request failed", exc_info=exc)
        message = f"{type(exc).__name__}: {exc}"
    return JSONResponse(error_body(message, kind, status), status_code=status, headers=getattr(exc, "headers", None))


def add_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def our_error(request, exc: MoaiEdgeError):
        return refused(exc)

    async def any_error(request, exc: Exception):
        return refused(exc)

    async def http_error(request, exc: HTTPException):
        return refused(RequestRefused(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    async def bad_parameter(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}, found {e.get('input')!r}"
                             for e in exc.errors())
        return refused(RequestRefused(400, f"{request.url.path}: {problems}"))

    app.add_exception_handler(MoaiEdgeError, our_error)
    app.add_exception_handler(Exception, any_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, bad_parameter)
