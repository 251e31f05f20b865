"""`gputel-streamer`: a DCGM CSV or live dcgm-exporters into walbroker, in a producer group.

Exit codes: 0 when finished (`--passes`) or stopped by SIGTERM/SIGINT after a clean
flush; 1 when the CSV is unusable, a batch is refused for good, or shutdown could not
flush; 2 for bad flags; 3 when a background loop (a producer's or the group member's
io) crashed, after that loop logged the error once with its name. Errors before streaming
are one line on stderr, no traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY

from gputel import gc_policy
from gputel.probes import ProbeServer
from streamer.config import ConfigError, StreamerConfig, parse_config
from streamer.metrics import ScrapeMetrics
from streamer.runner import Streamer
from streamer.source import SourceError, check_header, new_metrics
from streamer.targets import TargetsError, check_urls, split_dns_specs
from walbroker import logs
from walbroker.loops import LoopCrashed

if TYPE_CHECKING:
    from streamer.scraping import ScrapeStreamer


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gputel-streamer` console script."""
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    logs.setup("streamer", config.log_level)
    streamers: list[Streamer | ScrapeStreamer] = []  # the probes answer before streaming
    endpoints = None
    if config.metrics_listen:
        try:
            endpoints = ProbeServer(
                config.metrics_listen,
                lambda: (any(s.ready() for s in streamers), {}),
                REGISTRY,
                "streamer-http",
                metric_prefix="gpu_telemetry_streamer_metrics",
                max_connections=config.metrics_max_connections,
            ).start()
        except (OSError, ValueError) as exc:
            return _fail(f"--metrics-listen {config.metrics_listen}: {exc}", 1)
    try:
        return _stream(config, streamers)
    except (SourceError, TargetsError) as exc:
        return _fail(str(exc), 1)
    except LoopCrashed as exc:
        return _fail(f"stopping: {exc}", 3)
    finally:
        if endpoints is not None:
            endpoints.stop()


def _stream(config: StreamerConfig, streamers: list[Streamer | ScrapeStreamer]) -> int:
    """Stream the CSV, or scrape the targets, until finished or signalled."""
    streamer: Streamer | ScrapeStreamer
    if config.scraping:
        # Imported here: the scrape path (its fetcher, httptools, the exposition parser) is not
        # the CSV mode's, and costs its start-up ~45 ms.
        from streamer.scraping import ScrapeStreamer

        split_dns_specs(config.targets_dns)  # a malformed NAME:PORT fails before connecting
        check_urls(config.scrape)  # as does a --scrape URL the scraper cannot fetch
        streamer = ScrapeStreamer(config, new_metrics(REGISTRY), ScrapeMetrics(REGISTRY))
    else:
        check_header(config.csv)  # a file that cannot be streamed fails before connecting
        streamer = Streamer(config, new_metrics(REGISTRY))
    streamers.append(streamer)
    gc_policy.tune()  # after start-up, before the row or scrape path
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: streamer.stop())
    return streamer.run()


def _fail(message: str, code: int) -> int:
    print(f"gputel-streamer: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
