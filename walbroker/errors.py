"""The broker's error tree: each error carries a gRPC status code and whether a retry may help.

The core never imports grpc; `walbroker.server` translates these to status
codes in one place and `walbroker.client` translates status codes back.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """The gRPC status codes the broker uses (same numbers as grpc.StatusCode)."""

    OK = 0
    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class BrokerError(Exception):
    """Base of every error the broker reports to a client."""

    code: Code = Code.INTERNAL
    retriable: bool = False

    def __init__(self, message: str, *, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms


class InvalidArgument(BrokerError):
    """A malformed request: bad name, partition out of range, empty or oversized batch."""

    code = Code.INVALID_ARGUMENT


class NotFound(BrokerError):
    """An unknown topic or group where one must exist."""

    code = Code.NOT_FOUND


class ResourceExhausted(BrokerError):
    """The append queue or the disk budget is full; retry after `retry_after_ms`."""

    code = Code.RESOURCE_EXHAUSTED
    retriable = True


class StaleGeneration(BrokerError):
    """A commit or request from a generation that is no longer current (the member was fenced)."""

    code = Code.FAILED_PRECONDITION


class NotAssigned(BrokerError):
    """A commit for a partition the member does not own in the current generation."""

    code = Code.FAILED_PRECONDITION


class OutOfOrderSequence(BrokerError):
    """A producer sequence skipped ahead: an earlier batch was not appended; resend it first."""

    code = Code.FAILED_PRECONDITION
    retriable = True


class Fenced(BrokerError):
    """A producer-group member published for a partition it no longer owns."""

    code = Code.ABORTED


class InUse(BrokerError):
    """A topic or group cannot be deleted while live members use it."""

    code = Code.FAILED_PRECONDITION


class Unavailable(BrokerError):
    """The broker is shutting down or cannot serve right now."""

    code = Code.UNAVAILABLE
    retriable = True


class AccessError(BrokerError):
    """The client's credentials or transport settings are wrong: retrying cannot help."""


class Unauthenticated(AccessError):
    """No token (or client certificate) was presented, or the broker does not know it."""

    code = Code.UNAUTHENTICATED


class PermissionDenied(AccessError):
    """The principal lacks the role or scope for the operation on the named resource."""

    code = Code.PERMISSION_DENIED


class TlsMismatch(AccessError):
    """A plaintext client reached a broker that speaks TLS."""

    code = Code.UNAVAILABLE
