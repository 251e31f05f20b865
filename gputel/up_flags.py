"""The flags of `gputel-up`, and what is refused before anything starts (usage error, exit 2)."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from pathlib import Path

from gputel import status
from walbroker import flags

DESCRIPTION = """`gputel-up`: the whole pipeline on this machine, one process per component,
until Ctrl-C. Starts walbroker, the collectors, the gateway and the streamers (in that order,
each only once the previous one is healthy), prints where everything is and a status line every
10 s, passes on the components' logs (on a terminal only warnings after start-up, unless
--verbose; elsewhere one JSON object per line), and stops them all — streamers first, broker
last — on Ctrl-C, SIGTERM, a closed terminal, or when one of them dies.

The components inherit its environment, so their own variables (GPUTEL_BROKER_*,
GPUTEL_STREAMER_*, GPUTEL_COLLECTOR_*, GPUTEL_GATEWAY_*) apply, except for what connects
them, which gputel-up always sets: listen addresses and ports, the broker's data directory
and topics, the topic and group of the streamers and the collectors, the store, the
gateway's broker and, with --secure, the TLS settings. The streamers' source and pace are
gputel-up's own flags, whose defaults are the streamers' variables when set: --csv
GPUTEL_STREAMER_CSV, --passes
GPUTEL_STREAMER_PASSES or GPUTEL_STREAMER_FOREVER, --pass-interval GPUTEL_STREAMER_RATE
(rows/s instead) or GPUTEL_STREAMER_PASS_INTERVAL, --time GPUTEL_STREAMER_TIME,
--scrape-interval GPUTEL_STREAMER_SCRAPE_INTERVAL_S; the flag given to gputel-up (or its
GPUTEL_UP_* variable) wins."""
STREAMER = "GPUTEL_STREAMER_"
TIME_MODES = ("processing", "source")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gputel-up", description=DESCRIPTION)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var"),
        help="broker log and SQLite store go here",
    )
    p.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="DCGM CSV to stream in a loop (default: GPUTEL_STREAMER_CSV if set, else "
        "./data/dcgm.csv, else the repo's sample)",
    )
    p.add_argument("--port", type=int, default=8080, help="gateway port (REST API, web view)")
    p.add_argument("--broker-port", type=int, default=7070, help="the broker's gRPC port")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9100,
        help="base of the /metrics ports: broker +1, streamers +10.., collectors +20..",
    )
    p.add_argument(
        "--store",
        choices=["sqlite", "influx"],
        default="sqlite",
        help="sqlite: DATA_DIR/gputel.db; influx: the --influx-* flags, GPUTEL_INFLUX_TOKEN",
    )
    p.add_argument("--influx-url", default="", help="InfluxDB URL (with --store influx)")
    p.add_argument("--influx-org", default="", help="InfluxDB organisation")
    p.add_argument("--influx-bucket", default="", help="InfluxDB bucket")
    p.add_argument("--streamers", type=int, default=1, help="streamer processes (one group)")
    p.add_argument("--collectors", type=int, default=1, help="collector processes (one group)")
    p.add_argument(
        "--pass-interval",
        type=float,
        default=None,
        help="seconds per pass over the CSV (each pass gets fresh timestamps; default: 10, or "
        "GPUTEL_STREAMER_PASS_INTERVAL if set; GPUTEL_STREAMER_RATE paces in rows/s instead)",
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="TLS (mutual, to the broker) and one least-privilege token per component; "
        "CA, certificates and tokens are made once under DATA_DIR/secure (mode 0600)",
    )
    p.add_argument(
        "--passes",
        type=int,
        default=None,
        help="passes over the CSV, then the streamers exit and the rest keeps serving "
        "(default: GPUTEL_STREAMER_PASSES if set and GPUTEL_STREAMER_FOREVER is not, "
        "else loop forever)",
    )
    p.add_argument(
        "--time",
        choices=TIME_MODES,
        default=None,
        help="point timestamps: processing (when streamed) or source (the CSV's own: "
        "`--csv FILE --passes 1 --time source` imports an export once; default: "
        "GPUTEL_STREAMER_TIME if set, else processing)",
    )
    p.add_argument(
        "--scrape-demo",
        type=int,
        default=0,
        metavar="N",
        help="the live path: N fake dcgm-exporters (8 GPUs each) scraped by the streamers "
        "instead of the CSV",
    )
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=None,
        help="with --scrape-demo (default: GPUTEL_STREAMER_SCRAPE_INTERVAL_S if set, else 5)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="on a terminal, keep showing every component's log lines after start-up",
    )
    p.add_argument(
        "--status-interval-s",
        type=float,
        default=status.INTERVAL_S,
        help="seconds between status lines (points/s, lag, store; 0: none)",
    )
    a = flags.finish(p, os.environ, "GPUTEL_UP_").parse_args(argv)
    problem = streamer_defaults(a, os.environ) or check_args(a)
    if problem:
        p.error(problem)
    return a


def streamer_defaults(a: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """Fill in the streamers' settings gputel-up was not given from their own GPUTEL_STREAMER_*
    variables (resolved as gputel-streamer does), else gputel-up's defaults; `a.rate` is set
    (rows/s) when the streamers are paced by rate instead of --pass-interval. Returns what is
    wrong with a variable (None: nothing)."""

    def var(name: str) -> str:
        return env.get(STREAMER + name, "").strip()

    def number(name: str, default: float | None = None, kind: type = float) -> float | None:
        raw = var(name)
        try:
            return kind(raw) if raw else default
        except ValueError:
            raise ValueError(f"{STREAMER}{name}={raw!r} is not a number") from None

    a.rate = None
    try:
        if a.csv is None and var("CSV"):
            a.csv = Path(var("CSV"))
        if a.passes is None and var("FOREVER").lower() not in ("1", "true", "yes"):
            a.passes = number("PASSES", kind=int)
        if a.pass_interval is None:
            a.rate = number("RATE")
            a.pass_interval = None if a.rate is not None else number("PASS_INTERVAL", 10.0)
        if a.scrape_interval is None:
            a.scrape_interval = number("SCRAPE_INTERVAL_S", 5.0)
    except ValueError as exc:
        return str(exc)
    if a.time is None:
        a.time = var("TIME") or "processing"
    return None


def check_args(a: argparse.Namespace) -> str | None:
    """What is wrong with the flags, refused before anything starts (None: nothing)."""
    checks = [
        (a.scrape_demo < 0, "--scrape-demo must not be negative"),
        (a.passes is not None and a.passes < 1, "--passes must be at least 1"),
        # Their /metrics ports are --metrics-port +10..+19 and +20..+39 (see ports_of).
        (not 0 <= a.streamers <= 10, "--streamers must be between 0 and 10"),
        (not 0 <= a.collectors <= 20, "--collectors must be between 0 and 20"),
        (
            a.rate is None and not 0 < a.pass_interval < math.inf,
            "--pass-interval must be a positive number",
        ),
        (
            a.rate is not None and not 0 < a.rate < math.inf,
            "GPUTEL_STREAMER_RATE must be a positive number",
        ),
        (a.time not in TIME_MODES, f"GPUTEL_STREAMER_TIME must be one of {', '.join(TIME_MODES)}"),
        (not 0 < a.scrape_interval < math.inf, "--scrape-interval must be a positive number"),
        (not 0 <= a.status_interval_s < math.inf, "--status-interval-s must be 0 or more"),
        (
            a.store == "influx" and not (a.influx_url and a.influx_bucket),
            "--store influx needs --influx-url and --influx-bucket "
            "(or GPUTEL_INFLUX_URL, GPUTEL_INFLUX_BUCKET)",
        ),
    ]
    bad_ports = sorted({p for p in ports_of(a) if not 1 <= p <= 65535})
    checks.append(
        (
            bool(bad_ports),
            f"ports must be between 1 and 65535, these flags give {bad_ports} "
            "(--port, --broker-port, and --metrics-port +1..+40)",
        )
    )
    return next((msg for bad, msg in checks if bad), None)


def ports_of(a: argparse.Namespace) -> list[int]:
    """Every port the plan listens on."""
    return [port for port, _ in named_ports(a)]


def named_ports(a: argparse.Namespace) -> list[tuple[int, str]]:
    """Every port the plan listens on, with the flag that chose it (for error messages)."""
    m = a.metrics_port
    return [
        (a.broker_port, "the broker's gRPC port, --broker-port"),
        (m + 1, f"the broker's /metrics, --metrics-port {m} + 1"),
        (a.port, "the gateway's port, --port"),
        *(
            (m + 20 + i, f"collector-{i}'s /metrics, --metrics-port {m} + {20 + i}")
            for i in range(a.collectors)
        ),
        *(
            (m + 10 + i, f"streamer-{i}'s /metrics, --metrics-port {m} + {10 + i}")
            for i in range(a.streamers)
        ),
        *([(m + 40, f"the fake exporters, --metrics-port {m} + 40")] if a.scrape_demo else []),
    ]
