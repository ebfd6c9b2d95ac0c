"""Exceptions -> responses, for everything raised inside a route. The error body itself is ``errors.error_response``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from captioner.errors import HTTP_ERROR_CODES, CaptionerError, InternalError, error_response
from captioner.http.access_log import request_id
from captioner.http.responses import FastJSONResponse

# nginx's code for "the client went away before the answer": counted, never sent.
CLIENT_CLOSED_REQUEST = 499


async def handle_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CaptionerError)
    return error_response(exc)


async def handle_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, wrong method) in the contract's error shape."""
    assert isinstance(exc, HTTPException)
    code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    body = {"status": "error", "error": {"code": code, "message": str(exc.detail)}}
    return FastJSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def handle_client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; uvicorn drops it


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback after this response is sent; the client gets no internals.
    response = error_response(InternalError())
    response.headers["X-Request-ID"] = request_id(request.scope)  # sent outside RequestObserver
    return response


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    CaptionerError: handle_error,
    HTTPException: handle_http_error,
    ClientDisconnect: handle_client_gone,
    Exception: handle_unexpected,
}
