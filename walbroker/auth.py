"""Who may call what: authentication and authorization of every broker call, in one interceptor.

Authentication: the bearer token of the call (`authorization: Bearer <token>` metadata), else
the subject common name of a verified client certificate (mutual TLS), names a principal of
the token file (`walbroker.tokens`). Without either: UNAUTHENTICATED. The health service is
open. With no token file and no client CA, authentication is off (every caller is
`anonymous` with every role): the loopback default.

Authorization (roles and scopes, `walbroker.tokens`), operation by operation:

| call | roles | resources checked |
| --- | --- | --- |
| Broker/Publish, each batch | produce | topic; the fence group |
| Broker/Consume, join as consumer | consume | topic, group |
| Broker/Consume, join as producer | produce | topic, group |
| Broker/Metadata | any | named topics; the answer lists only topics in scope |
| Admin/List*, Admin/Describe* | read or admin | topic, group; lists are filtered |
| every other Admin call | admin | the request's topic and group |

A refusal is PERMISSION_DENIED naming the operation and the resource, never the principals.
Every failure is logged with the peer address (and the principal when known) and counted in
`gpu_telemetry_broker_auth_failures_total{reason}`; every Admin call is logged with principal
and peer and counted in `gpu_telemetry_broker_admin_calls_total{principal,method}`.

Streams are re-checked when the token file has changed since the stream began, on every
request message and, on a Consume stream, before every response message (a consumer that
only receives would otherwise keep receiving): a revoked token ends its open streams with
UNAUTHENTICATED, and a Consume stream whose principal may no longer join its group or read
its topic ends PERMISSION_DENIED, without a restart. Each such ending is one auth failure.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter

from proto.gen import walbroker_pb2 as pb
from walbroker.tokens import ANONYMOUS, ROLES, Kind, Principal, TokenFile

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
BROKER = "/walbroker.v1.Broker/"
ADMIN = "/walbroker.v1.Admin/"
READ_ADMIN = ("ListTopics", "DescribeTopic", "ListGroups", "DescribeGroup")
READ = ("read", "admin")
NS = "gpu_telemetry_broker"


class AuthFailure(Exception):
    """A call that cannot go on: its status code, the client's message and the metric reason."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


class _Ended(grpc.RpcError):  # type: ignore[misc]
    """Ends a request stream; the handler treats it as the client going away."""


def _unauthenticated(reason: str, message: str) -> AuthFailure:
    return AuthFailure(grpc.StatusCode.UNAUTHENTICATED, message, reason)


def _denied(operation: str, kind: str, name: str) -> AuthFailure:
    what = f"{kind} {name!r}" if name else f"every {kind}"
    return AuthFailure(
        grpc.StatusCode.PERMISSION_DENIED, f"permission denied: {operation} on {what}", "denied"
    )


@dataclass(frozen=True, slots=True)
class Credential:
    """What a caller presented: a bearer token and/or a verified certificate's common name."""

    token: str | None
    common_name: str | None


class Access:
    """The broker's authentication state: the token file and whether mutual TLS identifies."""

    def __init__(self, tokens: TokenFile | None, mtls: bool, registry: CollectorRegistry) -> None:
        self.tokens, self.mtls = tokens, mtls
        self.failures = Counter(
            f"{NS}_auth_failures",
            "Calls refused: UNAUTHENTICATED or PERMISSION_DENIED, by reason.",
            ["reason"],
            registry=registry,
        )
        self.admin_calls = Counter(
            f"{NS}_admin_calls",
            "Admin service calls by authenticated principal and method.",
            ["principal", "method"],
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        """False when every caller is anonymous (no token file, no client CA)."""
        return self.tokens is not None or self.mtls

    @property
    def generation(self) -> int:
        """Changes whenever the token file was re-read."""
        return self.tokens.generation if self.tokens is not None else 0

    def authenticate(self, cred: Credential) -> Principal:
        """The caller's principal; AuthFailure(UNAUTHENTICATED) if there is none."""
        if not self.enabled:
            return ANONYMOUS
        table = self.tokens.current() if self.tokens is not None else None
        if cred.token is not None:
            principal = table.for_token(cred.token) if table is not None else None
            if principal is None:
                raise _unauthenticated("invalid_token", "invalid bearer token")
            return principal
        if cred.common_name is not None:
            if table is None:  # mutual TLS alone: a verified certificate is enough
                return Principal(cred.common_name, frozenset(ROLES))
            principal = table.for_certificate(cred.common_name)
            if principal is None:
                raise _unauthenticated(
                    "unknown_certificate",
                    "client certificate not accepted without a token (no cert line for it in "
                    "the token file): send 'authorization: Bearer <token>'",
                )
            return principal
        raise _unauthenticated(
            "missing_token", "authentication required: send 'authorization: Bearer <token>'"
        )


def credential_of(metadata: Any, context: grpc.ServicerContext) -> Credential:
    """The bearer token of the call metadata and the client certificate's common name."""
    token = None
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, rest = str(value).partition(" ")
            if scheme.lower() != "bearer" or not rest.strip():
                raise _unauthenticated(
                    "malformed", "authorization metadata must be 'Bearer <token>'"
                )
            token = rest.strip()
    names = (context.auth_context() or {}).get("x509_common_name") or []
    common_name = names[0].decode("utf-8", "replace") if names else None
    return Credential(token, common_name)


# ---- authorization ---------------------------------------------------------------------------


def check(
    principal: Principal, roles: tuple[str, ...], operation: str, kind: Kind, name: str
) -> None:
    """AuthFailure(PERMISSION_DENIED) unless `principal` may do `operation` on `kind` `name`."""
    if not principal.allows(roles, kind, name):
        raise _denied(operation, kind, name)


def check_request(
    principal: Principal, roles: tuple[str, ...], operation: str, req: Message
) -> None:
    """Check a unary request's `topic`, `topics` and `group` fields against the scopes."""
    if not principal.has_role(roles):
        raise _denied(operation, "topic", getattr(req, "topic", "") or "")
    for field in req.DESCRIPTOR.fields:
        if field.name in ("topic", "group") and getattr(req, field.name):
            kind: Kind = "topic" if field.name == "topic" else "group"
            check(principal, roles, operation, kind, getattr(req, field.name))
        elif field.name == "topics":
            for topic in getattr(req, field.name):
                check(principal, roles, operation, "topic", topic)


def check_publish(principal: Principal, req: pb.PublishRequest) -> None:
    """A batch: produce on its topic (and on its fence group)."""
    check(principal, ("produce",), "publish", "topic", req.topic)
    if req.fence_group:
        check(principal, ("produce",), "publish", "group", req.fence_group)


def check_consume(principal: Principal, req: pb.ConsumeRequest) -> None:
    """A join: consume (or produce, for a producer group) on its topic and group."""
    if req.WhichOneof("kind") != "join":
        return
    join = req.join
    if join.role == pb.PRODUCER:
        roles, operation = ("produce",), "join producer group"
    else:
        roles, operation = ("consume",), "join consumer group"
    check(principal, roles, operation, "topic", join.topic)
    check(principal, roles, operation, "group", join.group)


def _filter(resp: Any, field: str, keep: Callable[[Any], bool]) -> None:
    items = [x for x in getattr(resp, field) if keep(x)]
    del getattr(resp, field)[:]
    getattr(resp, field).extend(items)


def filter_response(principal: Principal, method: str, resp: Any) -> Any:
    """Drop what a list answer shows beyond the principal's scopes."""
    if method == "Metadata":
        _filter(resp, "topics", lambda t: principal.allows(ROLES, "topic", t.name))
    elif method == "ListTopics":
        _filter(resp, "topics", lambda t: principal.allows(READ, "topic", t.name))
    elif method == "ListGroups":
        _filter(resp, "groups", lambda g: principal.allows(READ, "group", g.name))
    elif method == "DescribeTopic":
        _filter(resp, "groups", lambda g: principal.allows(READ, "group", g))
    return resp


# ---- the interceptor -------------------------------------------------------------------------


def rule_of(method: str) -> tuple[tuple[str, ...], str]:
    """(roles that may make the call, the operation's name in refusals) of a unary method."""
    name = method.rsplit("/", 1)[-1]
    if method == BROKER + "Metadata":
        return ROLES, "metadata"
    if method.startswith(ADMIN) and name in READ_ADMIN:
        return READ, name
    return ("admin",), name


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every call but health, and authorizes it (module docstring)."""

    def __init__(self, access: Access, log_per_s: float = 20.0) -> None:
        self.access = access
        # A stranger hammering the port must not fill the disk with log lines: at most
        # `log_per_s` refusal lines a second per reason; the rest are counted (metric) and
        # summed up in the next line's `suppressed`.
        self._log_interval_s = 1.0 / log_per_s
        self._next_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._log_lock = threading.Lock()

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        method: str = details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        if not self.access.enabled and not method.startswith(ADMIN):
            return handler  # nothing to check: the plaintext path stays untouched
        metadata = details.invocation_metadata
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, metadata, handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, metadata, handler.stream_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return None  # no such method kind on the broker: UNIMPLEMENTED

    def refuse(
        self, f: AuthFailure, context: Any, method: str, principal: Principal | None
    ) -> None:
        """Count and log a refusal (principal and peer), for the caller's eyes only the code."""
        self.access.failures.labels(f.reason).inc()
        with self._log_lock:
            now = time.monotonic()
            if now < self._next_log.get(f.reason, 0.0):
                self._suppressed[f.reason] = self._suppressed.get(f.reason, 0) + 1
                return
            self._next_log[f.reason] = now + self._log_interval_s
            suppressed = self._suppressed.pop(f.reason, 0)
        log.warning(
            "call refused",
            extra={
                "code": f.code.name,
                "reason": f.reason,
                "detail": f.message,
                "method": method,
                "principal": principal.name if principal else None,
                "peer": context.peer(),
                "suppressed": suppressed,
            },
        )

    def _admin_call(self, principal: Principal, method: str, context: Any) -> None:
        name = method.rsplit("/", 1)[-1]
        self.access.admin_calls.labels(principal.name, name).inc()
        log.info(
            "admin call",
            extra={"method": name, "principal": principal.name, "peer": context.peer()},
        )

    def _unary(self, method: str, metadata: Any, inner: Callable[[Any, Any], Any]) -> Any:
        roles, operation = rule_of(method)
        name = method.rsplit("/", 1)[-1]

        def behavior(request: Any, context: Any) -> Any:
            principal = None
            try:
                principal = self.access.authenticate(credential_of(metadata, context))
                if method.startswith(ADMIN):
                    self._admin_call(principal, method, context)
                check_request(principal, roles, operation, request)
            except AuthFailure as f:
                self.refuse(f, context, method, principal)
                context.abort(f.code, f.message)
            assert principal is not None
            return filter_response(principal, name, inner(request, context))

        return behavior

    def _stream(self, method: str, metadata: Any, inner: Callable[[Any, Any], Any]) -> Any:
        checks: dict[str, Callable[[Principal, Any], None]] = {
            BROKER + "Publish": check_publish,
            BROKER + "Consume": check_consume,
        }
        check_message = checks.get(method)

        def behavior(requests: Iterator[Any], context: Any) -> Any:
            principal, cred = None, Credential(None, None)
            try:
                cred = credential_of(metadata, context)
                principal = self.access.authenticate(cred)
                if check_message is None and not principal.has_role(("admin",)):
                    raise _denied(method, "cluster", "walbroker")  # a stream not in the table
                elif method == BROKER + "Consume":  # refuse the join before any work
                    first = next(requests, None)
                    if first is not None:
                        check_consume(principal, first)
                        requests = itertools.chain([first], requests)
            except AuthFailure as f:
                self.refuse(f, context, method, principal)
                context.abort(f.code, f.message)
            assert principal is not None
            guard = _StreamGuard(self, method, cred, principal, check_message, context)
            responses = inner(guard.iterate(requests), context)
            # A Consume stream's answers carry telemetry: each is checked before it goes
            # out. A Publish stream's acks carry none; its requests are checked.
            return guard.responses(responses) if method == BROKER + "Consume" else responses

        return behavior


class _StreamGuard:
    """Checks each request and response of one stream; re-authenticates after the token file
    changed.

    Used by two threads (the request reader, the response writer): `lock` guards the
    principal, its generation and the checks made already.
    """

    def __init__(
        self,
        interceptor: AuthInterceptor,
        method: str,
        cred: Credential,
        principal: Principal,
        check_message: Callable[[Principal, Any], None] | None,
        context: Any,
    ) -> None:
        self.interceptor, self.method, self.cred = interceptor, method, cred
        self.principal, self.check_message, self.context = principal, check_message, context
        self.generation = interceptor.access.generation
        self.allowed: set[tuple[str, str]] = set()  # (topic, group) pairs checked already
        self.join: Any = None  # a Consume stream's join, checked again after a change
        self.failure: AuthFailure | None = None
        self.counted = False
        self.lock = threading.Lock()

    def iterate(self, requests: Iterator[Any]) -> Iterator[Any]:
        for req in requests:
            try:
                self._refresh()
                with self.lock:
                    self._check(req)
            except AuthFailure as f:
                self._end(f)
                raise _Ended() from None
            yield req

    def responses(self, responses: Iterator[Any]) -> Iterator[Any]:
        """The handler's responses, each sent only if the stream's credential still holds."""
        try:
            for resp in responses:
                try:
                    self._refresh()
                except AuthFailure as f:
                    self._end(f)
                    return
                yield resp
        finally:
            close = getattr(responses, "close", None)
            if close is not None:
                close()  # the handler's own clean-up (leave the group, free the slot)

    def _refresh(self) -> None:
        """Re-authenticate (and re-authorize a join) if the token file changed since the last
        check; AuthFailure when the credential no longer holds."""
        access = self.interceptor.access
        if access.tokens is not None:
            access.tokens.current()  # re-reads a changed file (at most every check_s)
        with self.lock:
            if self.failure is not None:
                raise self.failure
            if access.generation == self.generation:
                return
            self.generation = access.generation
            self.allowed.clear()
            try:
                self.principal = access.authenticate(self.cred)
                if self.join is not None:
                    check_consume(self.principal, self.join)
            except AuthFailure as f:
                self.failure = f
                raise

    def _end(self, f: AuthFailure) -> None:
        """Count and log the refusal once, and make it the stream's status."""
        with self.lock:
            self.failure = self.failure or f
            first, self.counted = not self.counted, True
        if first:
            self.interceptor.refuse(f, self.context, self.method, self.principal)
        self.context.set_code(f.code)
        self.context.set_details(f.message)

    def _check(self, req: Any) -> None:
        if self.check_message is None:
            return
        if self.method == BROKER + "Consume" and req.WhichOneof("kind") == "join":
            self.join = req
        key = (getattr(req, "topic", ""), getattr(req, "fence_group", ""))
        if key in self.allowed:
            return
        self.check_message(self.principal, req)
        if self.method == BROKER + "Publish":
            self.allowed.add(key)
