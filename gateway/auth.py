"""Bearer-token authentication of the REST API, and the access log.

With `--auth-tokens FILE` (the broker's token-file format, `walbroker.tokens`; re-read when
it changes), every `/api/v1/...` (and `/ui/api/...`) request needs `Authorization: Bearer
<token>` of a principal with the `read` (or `admin`) role: without one the answer is 401
problem+json with `WWW-Authenticate: Bearer`, with a token lacking the role 403. `/healthz`
and `/readyz` are always open; `/metrics` (`--auth-metrics`) and `/openapi.json` (`--auth-docs`)
are open unless configured otherwise. `/swagger/` is always open: it is the Swagger UI
distribution and a start-up script, nothing of this deployment, and a browser cannot send a
bearer header when it opens a page (protected, it answered 401 to people holding a token);
the page fetches `/openapi.json` with the token the web view was given in that tab.

Access log: one JSON line per request (logger `gateway.access`): method, route template,
status, latency, principal and client address. The query string is never logged (it could
hold anything a client puts there), nor is the Authorization header.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flask import Flask, Response, current_app, g, request

from gateway.errors import ApiError
from gateway.metrics import route_label
from walbroker.tokens import Principal, TokenFile

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")
KEY = "gputel.auth"
READ_ROLES = ("read", "admin")
REALM = 'Bearer realm="gputel"'


class Unauthorized(ApiError):
    """No valid bearer token: the client must authenticate."""

    status = 401
    title = "Unauthorized"


class Forbidden(ApiError):
    """A valid token without the role this resource needs."""

    status = 403
    title = "Forbidden"


class ApiAuth:
    """Which paths need a token, and the token file that grants them."""

    def __init__(self, tokens: TokenFile | None, metrics: bool, docs: bool) -> None:
        self.tokens = tokens
        # /ui/api/: the web view's relay of the broker's Admin API read calls (gateway.ui)
        self.protected = ["/api/", "/ui/api/"]
        if metrics:
            self.protected.append("/metrics")
        if docs:
            self.protected.append("/openapi.json")

    def needs_token(self, path: str) -> bool:
        """True if `path` is served only to a principal with the read role."""
        return self.tokens is not None and path.startswith(tuple(self.protected))

    def principal(self, header: str | None) -> Principal:
        """The principal of an Authorization header; Unauthorized / Forbidden otherwise."""
        assert self.tokens is not None
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a bearer token is required: Authorization: Bearer <token>")
        principal = self.tokens.current().for_token(token.strip())
        if principal is None:
            raise Unauthorized("invalid bearer token", error="invalid_token")
        if not principal.has_role(READ_ROLES):
            raise Forbidden(f"the 'read' role is required for {request.path}")
        return principal


def _authenticate() -> None:
    auth: ApiAuth = current_app.extensions[KEY]
    g.gputel_principal = None
    g.gputel_t0 = time.perf_counter()
    if auth.needs_token(request.path):
        try:
            g.gputel_principal = auth.principal(request.headers.get("Authorization")).name
        except Unauthorized as exc:
            log.warning("request refused", extra={"status": 401, "path": request.path,
                                                  "remote": request.remote_addr})  # fmt: skip
            exc.headers = {"WWW-Authenticate": REALM + _error(exc)}
            raise
        except Forbidden:
            log.warning("request refused", extra={"status": 403, "path": request.path,
                                                  "remote": request.remote_addr})  # fmt: skip
            raise


def _error(exc: ApiError) -> str:
    code = exc.extra.get("error")
    return f', error="{code}"' if code else ""


def _access(response: Response) -> Response:
    started = g.get("gputel_t0")
    access_log.info(
        "request",
        extra={
            "method": request.method,
            "route": route_label(),
            "status": response.status_code,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
            "principal": g.get("gputel_principal"),
            "remote": request.remote_addr,
        },
    )
    return response


def init_app(app: Flask, tokens: Path | None, metrics: bool = False, docs: bool = False) -> None:
    """Check tokens before every request and log every answer (TokenFileError: refuse)."""
    app.extensions[KEY] = ApiAuth(TokenFile(tokens) if tokens else None, metrics, docs)
    app.before_request(_authenticate)
    app.after_request(_access)
