"""Kafka's errors in gputel's error tree (`walbroker.errors`): the one place they are translated.

The streamer and the collector handle `BrokerError`s (retriable or not, access errors that no
retry heals, `Fenced`); librdkafka's `KafkaError` codes map onto them here, so no caller sees
a confluent-kafka type. A fatal producer error that is not fencing is still not retriable:
the producer instance is unusable and the process must restart.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from walbroker.errors import (
    BrokerError,
    Fenced,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StaleGeneration,
    Unauthenticated,
    Unavailable,
)

_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
_UNAUTHENTICATED = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}
_NOT_FOUND = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
}
_STALE = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
}
_UNAVAILABLE = {
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._MSG_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    # a coordinator moving or starting (a broker failover, the first use of a fresh cluster)
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.CONCURRENT_TRANSACTIONS,
}


def from_kafka(err: KafkaError | KafkaException | BaseException) -> BrokerError:
    """The BrokerError of a Kafka error (an exception or a delivery report's error)."""
    if isinstance(err, KafkaException):
        inner = err.args[0] if err.args else None
        if not isinstance(inner, KafkaError):
            return BrokerError(str(err))
        err = inner
    if not isinstance(err, KafkaError):
        return BrokerError(str(err))
    code, text = err.code(), f"kafka: {err.name()}: {err.str()}"
    if code in _FENCED:
        return Fenced(text)
    if code in _UNAUTHENTICATED or code == KafkaError._SSL:
        return Unauthenticated(text)
    if code in _DENIED:
        return PermissionDenied(text)
    if code in _NOT_FOUND:
        return NotFound(text)
    if code in _STALE:
        return StaleGeneration(text)
    if code == KafkaError._QUEUE_FULL:
        return ResourceExhausted(text)
    if code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError._INVALID_ARG):
        return InvalidArgument(text)
    if code in _UNAVAILABLE or (err.retriable() and not err.fatal()):
        return Unavailable(text)
    return BrokerError(text)
