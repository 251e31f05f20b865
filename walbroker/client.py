"""Client plumbing shared by `Producer`, `Consumer` and the admin CLI: channels, errors, backoff.

Status codes become BrokerError subclasses here and nowhere else on the client side.
"""

from __future__ import annotations

import random
import threading
import weakref
from dataclasses import dataclass

import grpc

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from walbroker.credentials import BearerToken, ClientSecurity, TokenSource
from walbroker.errors import (
    BrokerError,
    Code,
    Fenced,
    InvalidArgument,
    NotFound,
    OutOfOrderSequence,
    PermissionDenied,
    ResourceExhausted,
    StaleGeneration,
    TlsMismatch,
    Unauthenticated,
    Unavailable,
)
from walbroker.tls import channel_credentials, speaks_tls

_BY_CODE: dict[int, type[BrokerError]] = {
    Code.INVALID_ARGUMENT: InvalidArgument,
    Code.NOT_FOUND: NotFound,
    Code.RESOURCE_EXHAUSTED: ResourceExhausted,
    Code.FAILED_PRECONDITION: StaleGeneration,
    Code.UNAVAILABLE: Unavailable,
    Code.ABORTED: Fenced,
    Code.CANCELLED: Unavailable,
    Code.DEADLINE_EXCEEDED: Unavailable,
    Code.UNAUTHENTICATED: Unauthenticated,
    Code.PERMISSION_DENIED: PermissionDenied,
}
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


def error_from_status(status: pb.Status, publish: bool = False) -> BrokerError:
    """The BrokerError of a wire status (on publish, FAILED_PRECONDITION = out-of-order)."""
    if publish and status.code == Code.FAILED_PRECONDITION:
        return OutOfOrderSequence(status.message)
    cls = _BY_CODE.get(status.code, BrokerError)
    return cls(status.message or Code(status.code).name, retry_after_ms=status.retry_after_ms)


def error_from_rpc(exc: grpc.RpcError, ch: grpc.Channel | None = None) -> BrokerError:
    """The BrokerError of a failed call (UNAVAILABLE when the broker is unreachable).

    Given the call's channel, a plaintext connection closed during the handshake is checked:
    when the broker answers TLS, the error is TlsMismatch (retrying cannot help). And an
    UNAUTHENTICATED call whose token file has changed since is Unavailable (retry: the
    client's token was rotated while a stream was open).
    """
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    retry_after = 0
    if isinstance(exc, grpc.Call):
        for key, value in exc.trailing_metadata() or ():
            if key == "retry-after-ms":
                retry_after = int(value)
    number = code.value[0] if code is not None else Code.INTERNAL
    bearer = _BEARER.get(ch) if ch is not None else None
    if number == Code.UNAUTHENTICATED and bearer is not None and bearer.rotated():
        return Unavailable("the token was rotated; reconnecting with the new one")
    target = _PLAINTEXT.get(ch) if ch is not None else None
    if (
        target
        and number == Code.UNAVAILABLE
        and _closed_in_handshake(details)
        and speaks_tls(target)
    ):
        return TlsMismatch(
            f"the broker at {target} speaks TLS but this client connects in plaintext: "
            "give --tls-ca (GPUTEL_BROKER_TLS_CA)"
        )
    return error_from_status(
        pb.Status(code=number, message=details or code.name, retry_after_ms=retry_after)
    )


# Plaintext channels and their targets, to explain a TLS broker closing on them; and the
# token interceptor of each channel, to tell a revoked token from a rotated one.
_PLAINTEXT: weakref.WeakKeyDictionary[grpc.Channel, str] = weakref.WeakKeyDictionary()
_BEARER: weakref.WeakKeyDictionary[grpc.Channel, BearerToken] = weakref.WeakKeyDictionary()


def _closed_in_handshake(details: str | None) -> bool:
    text = (details or "").lower()
    return "socket closed" in text or "connection reset" in text or "handshake" in text


def channel(target: str, security: ClientSecurity | None = None) -> grpc.Channel:
    """A channel to a broker with keepalives and the broker's message size limit.

    With `security`: TLS when it names a CA or a client certificate, and the bearer token of
    its token file on every call. ValueError if a file is unusable.
    """
    sec = security or ClientSecurity()
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]
    if sec.tls:
        creds = channel_credentials(sec.tls_ca, sec.tls_cert, sec.tls_key)
        ch = grpc.secure_channel(target, creds, options=options)
    else:
        ch = grpc.insecure_channel(target, options=options)
    if sec.token_file is not None:
        bearer = BearerToken(TokenSource(sec.token_file))
        ch = grpc.intercept_channel(ch, bearer)
        _BEARER[ch] = bearer
    if not sec.tls:
        _PLAINTEXT[ch] = target
    return ch


def stub(ch: grpc.Channel) -> pb_grpc.BrokerStub:
    """The Broker service stub."""
    return pb_grpc.BrokerStub(ch)


def metadata(
    ch: grpc.Channel, topics: list[str] | None = None, timeout_s: float = 5.0
) -> pb.MetadataResponse:
    """Topics, partitions and leaders; raises BrokerError."""
    try:
        resp: pb.MetadataResponse = stub(ch).Metadata(
            pb.MetadataRequest(topics=topics or []), timeout=timeout_s
        )
        return resp
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, ch) from None


# The jitter's own generator: a library's background loops must not draw from (and so move)
# the global `random` state of the program that embeds them (Hypothesis, for one, fails a
# test whose strategies saw that state change under them).
_JITTER = random.Random()


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter, honouring a server's retry-after hint."""

    initial_ms: int = 50
    max_ms: int = 2_000
    attempt: int = 0

    def next_s(self, retry_after_ms: int = 0) -> float:
        """Seconds to wait before the next attempt."""
        cap = min(self.max_ms, self.initial_ms * 2**self.attempt)
        self.attempt += 1
        return max(retry_after_ms, _JITTER.uniform(cap / 2, cap)) / 1000

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.attempt = 0

    def wait(self, stop: threading.Event, retry_after_ms: int = 0) -> bool:
        """Sleep the next delay; False if `stop` was set meanwhile."""
        return not stop.wait(self.next_s(retry_after_ms))
