"""GET /ui/api/pipeline: the broker's topics and groups as the Admin API describes them.

Read calls only (ListTopics, DescribeTopic, ListGroups, DescribeGroup: the broker's `read`
role suffices) through `walbroker.admin_client`, with the broker-client credentials of every
walbroker client (GPUTEL_BROKER_TOKEN_FILE, _TLS_CA, _TLS_CLIENT_CERT, _TLS_CLIENT_KEY); each
topic and group is the JSON `walbroker admin describe-topic|describe-group --json` prints. One
AdminClient per app, opened on first use; thread-safe like the gRPC channel under it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, jsonify

from gateway.catalog_cache import current_cache
from gateway.config import GatewayConfig
from gateway.errors import ApiError
from walbroker.admin_cli import to_json
from walbroker.admin_client import AdminClient
from walbroker.credentials import ClientSecurity
from walbroker.errors import BrokerError, NotFound

T = TypeVar("T")
_KEY = "gputel.admin_client"
_LOCK = threading.Lock()


class BrokerUnavailable(ApiError):
    """The broker's Admin API did not answer."""

    status = 503
    title = "Service Unavailable"


def broker_address() -> str:
    """The broker the gateway was told about ('' when none)."""
    config: GatewayConfig = current_app.config["GPUTEL"]
    return config.broker


def _client(app: Flask) -> AdminClient:
    with _LOCK:
        client: AdminClient | None = app.extensions.get(_KEY)
        if client is None:
            try:
                security = ClientSecurity.from_env()
                client = AdminClient(broker_address(), security, timeout_s=3.0)
            except ValueError as exc:  # names the unusable file
                raise BrokerUnavailable(f"broker client settings: {exc}") from None
            app.extensions[_KEY] = client
        return client


def snapshot() -> Response:
    """Every topic with its partitions and every group with its lag, as read at `read_at_ms`.

    One read serves every page open on this worker for --catalog-cache-s (1 s by default), so
    the broker answers at most one snapshot per second per worker however many pages poll.
    """
    address = broker_address()
    if not address:
        return jsonify({"broker": None, "topics": [], "groups": [], "read_at_ms": _now_ms()})
    admin = _client(current_app)

    def read() -> bytes:
        try:
            topics, groups = off_the_hub(lambda: _read(admin))
        except BrokerError as exc:
            first = exc.message.splitlines()[0] if exc.message else exc.code.name
            raise BrokerUnavailable(f"broker {address}: {first}", broker=address) from None
        doc = {"broker": address, "topics": topics, "groups": groups, "read_at_ms": _now_ms()}
        return jsonify(doc).get_data()

    return Response(current_cache().get(("ui-pipeline",), read), mimetype="application/json")


def _read(admin: AdminClient) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every topic described, every group described (one that vanished meanwhile is left out)."""
    topics = [to_json(admin.describe_topic(t.name)) for t in admin.topics().topics]
    groups = []
    for g in admin.groups().groups:
        try:
            groups.append(to_json(admin.describe_group(g.name)))
        except NotFound:  # expired between the two calls
            continue
    return topics, groups


def off_the_hub(fn: Callable[[], T]) -> T:
    """Run `fn` so that its blocking gRPC waits do not stall a gevent worker.

    Under the gateway's gevent worker sockets are cooperative but gRPC's C core is not: a call
    made on the hub would hold every other request of the worker until it returns (up to the
    3 s deadline when the broker is down). gevent's thread pool waits for it cooperatively.
    """
    try:
        from gevent import get_hub, monkey
    except ImportError:  # pragma: no cover - gevent is a dependency of the gateway
        return fn()
    if not monkey.is_module_patched("socket"):
        return fn()
    result: T = get_hub().threadpool.apply(fn)
    return result


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
