"""The Flask app factory; gunicorn runs `gateway.app:create_app()` (config from the environment)."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, Response, request

from gateway import (
    auth,
    catalog,
    catalog_cache,
    docs,
    errors,
    extension,
    gpus,
    known_metrics,
    latest,
    metrics,
    ops,
    telemetry,
)
from gateway.config import GatewayConfig, from_env
from gateway.jsonprovider import OrjsonProvider
from gateway.ui import pages
from store import Store, StoreUnavailable, open_store


def store_opener(config: GatewayConfig) -> Store:
    """Open the store the config names (InfluxDB settings fall back to GPUTEL_INFLUX_*).

    The gateway only reads: a SQLite file that does not exist is not created (a mistyped
    `--store` made an empty database and a gateway that said ready with no GPUs); until the
    collector creates it, the API and /readyz answer 503 naming the path (the extension
    opens again on the next request).
    """
    if config.store == "influx":
        return open_store("influx", **config.store_opts())
    kind, _, path = config.store.partition(":")
    if kind == "sqlite" and path and not Path(path).exists():
        raise StoreUnavailable(
            f"no SQLite database at {path}: the collector creates it on its first start; "
            "check the gateway's --store if one is running"
        )
    return open_store(config.store)


def create_app(config: GatewayConfig | None = None) -> Flask:
    """Return a gateway app for `config` (built from the environment when None)."""
    config = config or from_env()
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config["GPUTEL"] = config
    extension.init_app(app, lambda: store_opener(config))
    errors.init_app(app)
    metrics.init_app(app)
    tokens = Path(config.auth_tokens) if config.auth_tokens else None
    auth.init_app(app, tokens, metrics=config.auth_metrics, docs=config.auth_docs)
    catalog_cache.init_app(app, config.catalog_cache_s)
    known_metrics.init_app(app)
    for blueprint in (
        gpus.bp,
        latest.bp,
        telemetry.bp,
        catalog.bp,
        ops.bp,
        docs.bp,
        pages.bp,
        pages.root,
    ):
        app.register_blueprint(blueprint)
    app.after_request(_hardened)
    return app


# Answers that are not pages (the API's JSON, /metrics, problem+json) load nothing and may
# not be framed; pages set their own policy first (gateway/ui/pages.py, gateway/docs.py).
NOT_A_PAGE_CSP = "default-src 'none'; frame-ancestors 'none'"


def _hardened(response: Response) -> Response:
    """Headers every answer carries: no MIME sniffing, no referrer, no framing; API answers
    (token-protected with --auth-tokens) are never kept by a cache."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Content-Security-Policy", NOT_A_PAGE_CSP)
    if request.path.startswith("/api/"):
        headers.setdefault("Cache-Control", "no-store")
    return response
