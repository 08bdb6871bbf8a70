"""Every error the server sends, in one shape: ``{"object": "error", "message", "type", "param", "code"}``.

The HTTP status always equals ``code`` (validation errors are 400, not FastAPI's
422). :func:`engine_errors` is the one place that maps the engine's exceptions to
statuses; :func:`install_error_handlers` does the same for FastAPI's own errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ...async_engine import EngineClosedError, EngineExecutionError, QueueFullError, QueueTimeoutError
from .protocol import ErrorResponse
from .responses import ModelResponse

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` documenting ``statuses`` as :class:`ErrorResponse` bodies (``application/json``)."""
    return {status: {"model": ErrorResponse, "description": ERROR_TYPES[status]} for status in statuses}


# What any API route may answer besides its 200: its own errors, and the middleware's and the HTTP server's
# (401 without the API key, 408 for a body not sent in time, 413 for one over the size limit, 503 when the
# server is overloaded with connections or stopping). 405 (a method a path does not take) has the same shape.
API_ERRORS = error_responses(400, 401, 404, 408, 413, 429, 500, 503)


class APIError(Exception):
    """Raised by handlers and checks; answered as an error body with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_body(status: int, message: str) -> ErrorResponse:
    fallback = "BadRequestError" if status < 500 else "InternalServerError"
    return ErrorResponse(message=message, type=ERROR_TYPES.get(status, fallback), code=status)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> ModelResponse:
    return ModelResponse(error_body(status, message), status_code=status, headers=headers)


@contextmanager
def engine_errors() -> Iterator[None]:
    """Turn the engine's exceptions into :class:`APIError` (wrap every engine call in it).

    ``ValueError``/``TypeError`` are the engine's input validation: 400 with its
    exact message. They are mapped only around engine calls, so a bug elsewhere
    stays a 500.
    """
    try:
        yield
    except QueueFullError as exc:
        raise APIError(429, str(exc), {"Retry-After": str(exc.retry_after)}) from None
    except (EngineClosedError, QueueTimeoutError) as exc:
        raise APIError(503, str(exc)) from None
    except EngineExecutionError as exc:
        raise APIError(500, str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise APIError(400, str(exc)) from None


def validation_message(exc: RequestValidationError, content_type: str) -> str:
    """One readable line for a request that failed schema validation (pydantic's errors are long)."""
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"Malformed JSON body{': ' + str(detail) if detail else ''}"
        if tuple(err.get("loc", ())) == ("body",) and err.get("type") == "model_attributes_type":
            hint = "" if "json" in content_type else f" (got Content-Type {content_type!r}; send application/json)"
            return f"The request body must be a JSON object{hint}"
    by_field: dict[str, list[str]] = {}
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        top = loc[0] if loc else "body"
        by_field.setdefault(top, []).append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    parts: list[str] = []
    for top, messages in by_field.items():
        if len(messages) > 2:  # a union: every alternative failed
            parts.append(f"{top}: invalid value ({len(messages)} alternatives failed, e.g. {messages[0]})")
        else:
            parts.extend(messages)
    return "Invalid request: " + "; ".join(parts[:5])


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception that reaches FastAPI in the reference error shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(400, validation_message(exc, request.headers.get("content-type", "")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"{message}: {request.method} {request.url.path}"
        return error_response(exc.status_code, message, exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal server error: {type(exc).__name__}")
