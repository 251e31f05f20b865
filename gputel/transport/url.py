"""The `--broker` value: which transport the streamer and the collector talk to, and where.

    HOST:PORT                   walbroker (the embedded default)
    walbroker://HOST:PORT       walbroker, spelt out
    kafka://HOST:PORT[,HOST:PORT...]   Apache Kafka; the list is librdkafka's bootstrap.servers

Hosts may be names, IPv4 addresses or bracketed IPv6 addresses (`[::1]:9092`). Nothing else
(paths, query strings, credentials in the URL) is accepted: Kafka credentials come from
`--kafka-config`, walbroker's from its token and TLS files, never from the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["walbroker", "kafka"]
WALBROKER: Kind = "walbroker"
KAFKA: Kind = "kafka"
FORMS = "HOST:PORT, walbroker://HOST:PORT or kafka://HOST:PORT[,HOST:PORT...]"

# A host name or IPv4 address, or a bracketed IPv6 address, then a port.
_HOST_PORT = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):(\d{1,5})$"
)


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """A parsed `--broker`: the transport kind and its servers (one for walbroker)."""

    kind: Kind
    servers: tuple[str, ...]

    @property
    def target(self) -> str:
        """walbroker's gRPC target (HOST:PORT)."""
        return self.servers[0]

    @property
    def bootstrap(self) -> str:
        """Kafka's `bootstrap.servers` (comma-separated HOST:PORT)."""
        return ",".join(self.servers)

    @property
    def is_kafka(self) -> bool:
        """True for the Kafka transport."""
        return self.kind == KAFKA

    def __str__(self) -> str:
        return f"kafka://{self.bootstrap}" if self.is_kafka else self.target


def _server(text: str, whole: str) -> str:
    m = _HOST_PORT.match(text)
    if m is None or not 0 < int(m.group(3)) <= 65535:
        raise ValueError(f"--broker must be {FORMS}, not {whole!r} ({text!r} is not HOST:PORT)")
    return text


def parse_broker(text: str) -> BrokerUrl:
    """Parse a `--broker` value; ValueError with a message a user can act on."""
    whole = text.strip()
    if not whole:
        raise ValueError(f"--broker is required: {FORMS}")
    scheme, sep, rest = whole.partition("://")
    if not sep:
        return BrokerUrl(WALBROKER, (_server(whole, whole),))
    if scheme == WALBROKER:
        return BrokerUrl(WALBROKER, (_server(rest, whole),))
    if scheme == KAFKA:
        servers = tuple(_server(s.strip(), whole) for s in rest.split(","))
        return BrokerUrl(KAFKA, servers)
    raise ValueError(f"--broker must be {FORMS}, not {whole!r} (unknown scheme {scheme!r})")
