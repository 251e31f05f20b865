"""The gateway's error tree and the ONE place that turns any error into RFC 9457 problem+json.

`ApiError` subclasses carry their HTTP status; store errors map as: `InvalidArgument` -> 400,
`StoreUnavailable` -> 503 (with Retry-After), any other `StoreError` -> 502. Werkzeug's own
HTTP errors (unknown route, wrong method) keep their status. Anything else is a bug: it is
logged with its traceback and answered 500 with a generic detail, never the traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

from store.base import InvalidArgument, StoreError, StoreUnavailable

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5
log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client can act on; `extra` becomes RFC 9457 extension members."""

    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}  # e.g. WWW-Authenticate on a 401


class BadRequest(ApiError):
    """A query parameter is missing, malformed, out of range or inconsistent with another."""

    status = 400
    title = "Bad Request"


class NotFound(ApiError):
    """No GPU with this id has data."""

    status = 404
    title = "Not Found"


class Conflict(ApiError):
    """A bare GPU index matches GPUs on several hosts; `candidates` lists them."""

    status = 409
    title = "Conflict"


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    """Return an RFC 9457 problem+json response for the current request."""
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
        **extra,
    }
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def _api_error(exc: ApiError) -> Response:
    response = problem(exc.status, exc.title, exc.detail, **exc.extra)
    response.headers.update(exc.headers)
    return response


def _invalid_argument(exc: InvalidArgument) -> Response:
    return problem(400, "Bad Request", str(exc))


def _unavailable(exc: StoreUnavailable) -> Response:
    log.warning("store unavailable", extra={"path": request.path, "error": str(exc)})
    response = problem(503, "Service Unavailable", "the telemetry store cannot be reached")
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _store_error(exc: StoreError) -> Response:
    log.error("store error", extra={"path": request.path, "error": str(exc)})
    return problem(502, "Bad Gateway", "the telemetry store failed to answer this query")


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = problem(status, exc.name, exc.description or exc.name)
    methods = getattr(exc, "valid_methods", None)  # set by MethodNotAllowed
    if methods:
        response.headers["Allow"] = ", ".join(sorted(methods))
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.path})
    return problem(500, "Internal Server Error", "an unexpected error occurred; it was logged")


def init_app(app: Flask) -> None:
    """Register the handlers; Flask picks the most specific class, so the order is free."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(InvalidArgument, _invalid_argument)
    app.register_error_handler(StoreUnavailable, _unavailable)
    app.register_error_handler(StoreError, _store_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
