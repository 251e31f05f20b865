"""gunicorn settings for the gateway (`gunicorn -c python:gateway.gunicorn_conf ...`).

gunicorn reads this module's globals when it starts; they come from GPUTEL_GATEWAY_* (see
`gateway.config`). Metrics with several workers: `on_starting` points PROMETHEUS_MULTIPROC_DIR
at a fresh temporary folder (unless one is given) before any worker imports prometheus_client,
`child_exit` marks a dead worker's files and `on_exit` removes the folder it made. Logs are
JSON lines on stderr; gunicorn's own access log is off because it would print query strings:
the app writes one JSON line per request instead (`gateway.auth`). Each worker freezes its
startup objects out of the garbage collector's reach once the app is loaded
(`post_worker_init`). With --tls-cert/--tls-key
gunicorn serves HTTPS; each worker re-reads the files within a second of a change
(`gateway.tls`: renewal without a restart), and SIGHUP still replaces the workers.
Read when gunicorn loads it, as gunicorn config modules are.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from gunicorn import glogging, sock

from gateway import tls
from gateway.config import MULTIPROC_ENV, from_env
from gputel import gc_policy

_config = from_env()
bind = _config.bind
workers = _config.workers
threads = _config.threads
worker_connections = _config.max_connections
# gevent (default): a greenlet per connection, so slow clients hold no worker or thread; each
# request head must arrive within --head-timeout-s and each connection closes after its answer
# (see gateway/worker.py). gthread and sync are there to compare (gateway/README.md).
if _config.worker_class == "gevent":
    worker_class = "gateway.worker.GatewayWorker"
    # On: gunicorn's async worker times a head read only on its keep-alive path;
    # GatewayWorker applies --head-timeout-s itself, and the hook below closes each connection.
    keepalive = 1
else:
    worker_class = _config.worker_class
    # gthread: seconds an idle kept-alive connection (or one that sent nothing yet) is kept.
    keepalive = max(1, math.ceil(_config.head_timeout_s))
loglevel = _config.log_level.lower()
accesslog = None


class Logger(glogging.Logger):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's logger without its access log: the app writes one JSON line per request.

    Given a logging config, gunicorn built every request's access-log fields and handed them
    to a logger with no handler, which dropped them: ~3 % of a telemetry page's gateway CPU
    (py-spy, 16 connections).
    """

    def access(self, *args: Any) -> None:
        """Nothing: see `gateway.auth` for the access log."""


logger_class = Logger
if _config.tls_cert:
    certfile, keyfile = _config.tls_cert, _config.tls_key
graceful_timeout = 10
control_socket_disable = True  # no shared ~/.gunicorn socket; instances never collide
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "walbroker.logs.formatter", "component": "gateway"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": _config.log_level, "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": _config.log_level, "handlers": ["stderr"], "propagate": False}
    },
}
_OWNED_DIR = "GPUTEL_GATEWAY_OWNED_MULTIPROC_DIR"
_tls: tls.ReloadingContext | None = None  # this worker's, made by post_worker_init


def ssl_context(conf: Any, default_ssl_context_factory: Callable[[], Any]) -> Any:
    """The worker's one TLS context, its certificate re-read when the files change.

    gunicorn's gevent worker asks once, its sync and gthread workers at every connection:
    all get the same context (`gateway.tls`). Under gevent the handshake also waits for the
    worker's handler: gevent's server would complete it while wrapping the socket, before
    the handler runs and with no deadline, so a client that never sends a ClientHello would
    hold its connection for good. Deferred, `GatewayWorker` runs it under the request-head
    deadline.
    """
    global _tls
    if _tls is None:
        _tls = tls.ReloadingContext(
            default_ssl_context_factory,
            conf.certfile,
            conf.keyfile,
            defer_handshake=_config.worker_class == "gevent",
        )
    return _tls.context


def pre_request(worker: Any, req: Any) -> None:
    """gevent: answer with `Connection: close` and close, so a worker takes a new connection
    only when its loop is free and load spreads over workers (as with the sync worker)."""
    if _config.worker_class == "gevent":
        req.must_close = True


def post_worker_init(worker: Any) -> None:
    """Make the worker's TLS context and tune its garbage collector once its app is loaded.

    `gc.freeze()` moves everything loaded so far (modules, the app, the store) out of the
    collector's reach: full collections then traverse only what requests allocate. Measured
    on a 1,000-GPU page: ~2 ms of its ~12 ms of gateway CPU was the collector walking the
    worker's startup objects; the higher young threshold saves ~1 ms more.
    """
    if worker.cfg.is_ssl:  # load the files now, not at the first connection (sync, gthread)
        sock.ssl_context(worker.cfg)
    gc_policy.tune()


def on_starting(server: Any) -> None:
    """Give the workers a private, empty multiprocess metrics folder."""
    if not os.environ.get(MULTIPROC_ENV):
        folder = tempfile.mkdtemp(prefix="gputel-gateway-metrics-")
        os.environ[MULTIPROC_ENV] = folder
        os.environ[_OWNED_DIR] = folder


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (counters and histograms keep their totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """Remove the metrics folder `on_starting` made."""
    folder = os.environ.get(_OWNED_DIR)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
