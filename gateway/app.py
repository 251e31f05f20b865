"""The Flask app factory; gunicorn runs `gateway.app:create_app()` (config from the environment)."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from gateway import (
    auth,
    catalog,
    catalog_cache,
    docs,
    errors,
    extension,
    gpus,
    known_metrics,
    metrics,
    ops,
    telemetry,
)
from gateway.config import GatewayConfig, from_env
from gateway.jsonprovider import OrjsonProvider
from gateway.ui import pages
from store import Store, open_store


def store_opener(config: GatewayConfig) -> Store:
    """Open the store the config names (InfluxDB settings fall back to GPUTEL_INFLUX_*)."""
    if config.store == "influx":
        return open_store("influx", **config.store_opts())
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
    for blueprint in (gpus.bp, telemetry.bp, catalog.bp, ops.bp, docs.bp, pages.bp, pages.root):
        app.register_blueprint(blueprint)
    return app
