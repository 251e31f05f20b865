"""`gputel-collector`: store telemetry from a walbroker consumer group in SQLite or InfluxDB.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT: flushed, committed, left the group),
1 when the store or an HTTP port cannot be opened, 2 for bad flags (one line on stderr),
3 when a background loop (the writer, the consumer's or a producer's io) crashed: the
loop logged the error once with its name; what was not committed is redelivered to the
restarted process.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from collector.config import PROG, CollectorConfig, ConfigError, from_args
from collector.metrics import CollectorMetrics
from collector.runner import Collector
from gputel import gc_policy
from gputel.probes import ProbeServer, Readiness
from store import StoreError, open_store
from walbroker import logs
from walbroker.errors import AccessError
from walbroker.loops import LoopCrashed

log = logging.getLogger("collector.cli")  # not __main__ under `python -m`


def endpoints(
    config: CollectorConfig, readiness: Readiness, registry: CollectorRegistry
) -> list[ProbeServer]:
    """The HTTP endpoints to serve: /metrics (+ probes) and, if separate, the probes."""
    made: list[ProbeServer] = []
    bounds: dict[str, Any] = {
        "metric_prefix": "gpu_telemetry_collector_metrics",
        "max_connections": config.metrics_max_connections,
    }
    wanted: list[tuple[str, str, CollectorRegistry | None]] = [
        ("--metrics-listen", config.metrics_listen, registry)
    ]
    if config.health_listen != config.metrics_listen:
        wanted.append(("--health-listen", config.health_listen, None))
    for flag, listen, served in wanted:
        if not listen:
            continue
        try:
            made.append(ProbeServer(listen, readiness, served, "collector-http", **bounds))
        except OSError as exc:  # the flag and the address, not a bare "[Errno 98]"
            raise OSError(f"{flag} {listen}: {exc.strerror or exc}") from None
    return made


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gputel-collector` console script."""
    try:
        config = from_args(argv)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    logs.setup("collector", config.log_level)
    log.info(
        "collector starting",
        extra={
            "broker": config.broker, "topic": config.topic, "group": config.group,
            "store": config.store, "influx_url": config.influx_url,
            "influx_bucket": config.influx_bucket, "batch_size": config.batch_size,
            "flush_ms": config.flush_ms, "metrics_listen": config.metrics_listen,
            "health_listen": config.health_listen,
        },
    )  # fmt: skip
    try:
        store = open_store(config.store, config.catalog_granularity_s, **config.store_options())
    except StoreError as exc:
        return _fail(str(exc), 1)
    with store:
        collector = Collector(config, store, CollectorMetrics(REGISTRY))
        for sig in (signal.SIGTERM, signal.SIGINT):  # before the probes can say "ready"
            signal.signal(sig, lambda *_: collector.stop())
        try:
            served = [e.start() for e in endpoints(config, collector.readiness, REGISTRY)]
        except OSError as exc:
            return _fail(f"cannot listen: {exc} (choose another address)", 1)
        gc_policy.tune()
        try:
            collector.run()
        except AccessError as exc:  # the broker refused our token or TLS settings
            return _fail(f"broker {config.broker}: {exc.message}", 1)
        except LoopCrashed as exc:
            log.error("stopping: a background loop crashed", extra={"loop": exc.loop})
            return 3
        finally:
            for endpoint in served:
                endpoint.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
