"""Gateway configuration: one frozen dataclass, from `gputel-gateway` flags or GPUTEL_* env.

Flags fall back to GPUTEL_GATEWAY_<NAME> (store, bind, workers, worker class, threads, slow-client
bounds, log level) and
GPUTEL_INFLUX_<URL|ORG|BUCKET|TOKEN>; the environment is read only when a builder is called.
The token never appears in `repr()` and travels to gunicorn workers through the environment,
never on a command line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from walbroker import flags

DEFAULT_STORE = "sqlite:gputel.db"
DEFAULT_BIND = "127.0.0.1:8080"
# gunicorn worker models (see gateway/README.md, "Workers and slow clients"): gevent serves
# every connection in a greenlet, so a slow client holds no thread; the other two are kept for
# comparison and for deployments behind a buffering proxy.
WORKER_CLASSES = ("gevent", "gthread", "sync")
# Threads per gthread worker (a request mostly waits for the store there).
GTHREAD_THREADS = 4
# A client gets this long to send a whole request head (request line and headers).
HEAD_TIMEOUT_S = 5.0
# A client gets this long to take each answer: one deadline for the whole answer, not a
# timeout per write (gateway/worker.py; gevent worker only). A 10 MB GPU page reads in well
# under a second on a LAN; a client that stops reading held its connection slot for good before.
SEND_TIMEOUT_S = 60.0
# Open connections per worker (gunicorn's worker_connections), slow ones included.
MAX_CONNECTIONS = 1000
# Connections a gevent worker works on at once before it stops accepting (gateway/worker.py,
# `_Admission`): others wait in the listen backlog for the first worker with room. 2: one
# request's answer is made while the other waits for the store (measured, docs/benchmarks.md).
MAX_ACTIVE = 2
# A connection stops counting towards --max-active when its request head is still incomplete
# this long after its accept (a fast client's head is in the socket before the worker reads
# it), and when its request is still in the app this long after its head: then it waits for
# its client or the store, not for the worker's CPU.
HEAD_GRACE_S = 0.05
WORK_GRACE_S = 0.5
# prometheus_client reads it when first imported, so gunicorn sets it before workers start.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway process needs."""

    store: str = DEFAULT_STORE
    influx_url: str = ""
    influx_org: str = ""
    influx_bucket: str = ""
    influx_token: str = field(default="", repr=False)
    bind: str = DEFAULT_BIND
    workers: int = 1
    worker_class: str = "gevent"
    threads: int = 0  # gthread only; 0: GTHREAD_THREADS
    head_timeout_s: float = HEAD_TIMEOUT_S
    send_timeout_s: float = SEND_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_active: int = MAX_ACTIVE
    log_level: str = "INFO"
    # Seconds a GPU-list page is served from memory (0: always ask the store).
    catalog_cache_s: float = 1.0
    # walbroker HOST:PORT whose Admin API the web view's pipeline page reads ("": no page data).
    broker: str = ""
    # Trust (gateway.auth): token file (read role), TLS files, what else needs a token.
    auth_tokens: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    auth_metrics: bool = False
    auth_docs: bool = False
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.worker_class not in WORKER_CLASSES:
            raise ValueError(f"worker_class {self.worker_class!r}: use one of {WORKER_CLASSES}")
        if self.threads < 1:  # frozen: the resolved default is set once, here
            threads = GTHREAD_THREADS if self.worker_class == "gthread" else 1
            object.__setattr__(self, "threads", threads)

    def store_opts(self) -> dict[str, str]:
        """Return the InfluxDB keyword arguments of `store.open_store` (empty means env)."""
        return {
            "url": self.influx_url,
            "org": self.influx_org,
            "bucket": self.influx_bucket,
            "token": self.influx_token,
        }

    def to_env(self) -> dict[str, str]:
        """Return the environment that makes `from_env` rebuild this config (for workers)."""
        env = {
            "GPUTEL_GATEWAY_STORE": self.store,
            "GPUTEL_GATEWAY_BIND": self.bind,
            "GPUTEL_GATEWAY_WORKERS": str(self.workers),
            "GPUTEL_GATEWAY_WORKER_CLASS": self.worker_class,
            "GPUTEL_GATEWAY_THREADS": str(self.threads),
            "GPUTEL_GATEWAY_HEAD_TIMEOUT_S": str(self.head_timeout_s),
            "GPUTEL_GATEWAY_SEND_TIMEOUT_S": str(self.send_timeout_s),
            "GPUTEL_GATEWAY_MAX_CONNECTIONS": str(self.max_connections),
            "GPUTEL_GATEWAY_MAX_ACTIVE": str(self.max_active),
            "GPUTEL_GATEWAY_LOG_LEVEL": self.log_level,
            "GPUTEL_GATEWAY_CATALOG_CACHE_S": str(self.catalog_cache_s),
            "GPUTEL_GATEWAY_BROKER": self.broker,
            "GPUTEL_GATEWAY_AUTH_TOKENS": self.auth_tokens,
            "GPUTEL_GATEWAY_TLS_CERT": self.tls_cert,
            "GPUTEL_GATEWAY_TLS_KEY": self.tls_key,
            "GPUTEL_GATEWAY_AUTH_METRICS": _flag(self.auth_metrics),
            "GPUTEL_GATEWAY_AUTH_DOCS": _flag(self.auth_docs),
            "GPUTEL_GATEWAY_INSECURE": _flag(self.insecure),
        }
        for name, value in self.store_opts().items():
            if value:
                env[f"GPUTEL_INFLUX_{name.upper()}"] = value
        return env


def _flag(value: bool) -> str:
    return "1" if value else ""


def _truthy(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_s(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _store_spec(text: str) -> str:
    kind, _, rest = text.partition(":")
    if (kind == "sqlite" and rest) or text == "influx":
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use sqlite:PATH or influx")


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """Return the `gputel-gateway` flag parser with defaults taken from `env`."""

    def gw(name: str, default: str) -> str:
        return env.get(f"GPUTEL_GATEWAY_{name}", default)

    def influx(name: str) -> str:
        return env.get(f"GPUTEL_INFLUX_{name}", "")

    p = argparse.ArgumentParser(prog="gputel-gateway", description="Serve the REST API.")
    p.add_argument(
        "--store",
        type=_store_spec,
        default=gw("STORE", DEFAULT_STORE),
        help="sqlite:PATH or influx",
    )
    p.add_argument("--influx-url", default=influx("URL"), help="InfluxDB URL (with --store influx)")
    p.add_argument("--influx-org", default=influx("ORG"), help="InfluxDB organisation")
    p.add_argument("--influx-bucket", default=influx("BUCKET"), help="InfluxDB bucket")
    p.add_argument(
        "--influx-token", default=influx("TOKEN"), help="InfluxDB token; prefer the variable"
    )
    p.add_argument(
        "--bind", type=flags.listen_address, default=gw("BIND", DEFAULT_BIND), help="HOST:PORT"
    )
    p.add_argument(
        "--workers", type=_positive, default=gw("WORKERS", "1"), help="gunicorn worker processes"
    )
    p.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        default=gw("WORKER_CLASS", "gevent"),
        help="gunicorn worker: gevent (default; slow clients hold no thread), gthread or "
        "sync (one slow client holds a thread or the whole worker: only behind a buffering proxy)",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=gw("THREADS", "") or None,
        help=f"threads per gthread worker (default {GTHREAD_THREADS}); other workers ignore it",
    )
    p.add_argument(
        "--head-timeout-s",
        type=_positive_s,
        default=gw("HEAD_TIMEOUT_S", str(HEAD_TIMEOUT_S)),
        help="seconds a client has to send a whole request head before the connection is closed",
    )
    p.add_argument(
        "--send-timeout-s",
        type=_positive_s,
        default=gw("SEND_TIMEOUT_S", str(SEND_TIMEOUT_S)),
        help="seconds a client has to take a whole answer (one deadline, not per write) before "
        "the connection is closed (gevent worker; a client that stops reading held a "
        "connection slot for good)",
    )
    p.add_argument(
        "--max-connections",
        type=_positive,
        default=gw("MAX_CONNECTIONS", str(MAX_CONNECTIONS)),
        help="open connections per worker, slow ones included (more wait in the listen backlog)",
    )
    p.add_argument(
        "--max-active",
        type=_not_negative,
        default=gw("MAX_ACTIVE", str(MAX_ACTIVE)),
        help="connections a gevent worker works on at once; at the bound it takes no new one "
        "and they wait in the listen backlog for the first worker with room (0: no bound; "
        f"slow clients and slow store reads stop counting after {WORK_GRACE_S:g} s)",
    )
    p.add_argument("--log-level", default=gw("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING")
    p.add_argument(
        "--catalog-cache-s",
        type=float,
        default=gw("CATALOG_CACHE_S", "1.0"),
        help="seconds a GPU-list page is served from memory (0: off)",
    )
    _trust_args(p, gw)
    p.add_argument(
        "--broker",
        default=gw("BROKER", ""),
        help="walbroker HOST:PORT whose Admin API (read calls only) feeds the web view's "
        "pipeline page",
    )
    return flags.finish(p, env, "GPUTEL_GATEWAY_")


def _trust_args(p: argparse.ArgumentParser, gw: Callable[[str, str], str]) -> None:
    p.add_argument(
        "--auth-tokens",
        default=gw("AUTH_TOKENS", ""),
        metavar="FILE",
        help="require bearer tokens with the read role on /api/v1 (walbroker's token-file "
        "format; docs/security.md)",
    )
    p.add_argument("--tls-cert", default=gw("TLS_CERT", ""), metavar="PEM", help="serve HTTPS")
    p.add_argument("--tls-key", default=gw("TLS_KEY", ""), metavar="PEM")
    for name, what in (
        ("metrics", "/metrics"),
        ("docs", "/openapi.json (Swagger UI then sends the web view's token)"),
    ):
        p.add_argument(
            f"--auth-{name}",
            action="store_true",
            default=_truthy(gw(f"AUTH_{name.upper()}", "")),
            help=f"require a token for {what} too (default: open)",
        )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=_truthy(gw("INSECURE", "")),
        help="allow a non-loopback --bind without --auth-tokens and TLS",
    )


def from_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Return the config from flags, falling back to the environment."""
    a = parser(os.environ if env is None else env).parse_args(argv)
    return GatewayConfig(
        store=a.store,
        influx_url=a.influx_url,
        influx_org=a.influx_org,
        influx_bucket=a.influx_bucket,
        influx_token=a.influx_token,
        bind=a.bind,
        workers=a.workers,
        worker_class=a.worker_class,
        threads=a.threads or 0,
        head_timeout_s=float(a.head_timeout_s),
        send_timeout_s=float(a.send_timeout_s),
        max_connections=int(a.max_connections),
        max_active=int(a.max_active),
        log_level=a.log_level.upper(),
        catalog_cache_s=max(float(a.catalog_cache_s), 0.0),
        broker=a.broker,
        auth_tokens=a.auth_tokens,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        auth_metrics=a.auth_metrics,
        auth_docs=a.auth_docs,
        insecure=a.insecure,
    )


def from_env(env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Return the config from the environment alone (what gunicorn workers use)."""
    return from_args([], env)
