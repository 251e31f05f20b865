"""`gputel-gateway`: check the flags, then exec gunicorn with `gateway.gunicorn_conf`.

The settings reach gunicorn and its workers as GPUTEL_* environment variables (see
`GatewayConfig.to_env`), so the InfluxDB token never shows on a command line or in a log.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from gateway.config import GatewayConfig, from_args
from store import InvalidArgument, influx_settings
from walbroker import logs

log = logging.getLogger(__name__)
APP = "gateway.app:create_app()"


def gunicorn_argv() -> list[str]:
    """Return the command that runs the gateway under gunicorn with the repo's config module."""
    return [sys.executable, "-m", "gunicorn", "--config", "python:gateway.gunicorn_conf", APP]


def check(config: GatewayConfig) -> None:
    """Raise InvalidArgument when the store settings cannot work (before starting gunicorn)."""
    if config.store == "influx":
        influx_settings(None, **config.store_opts())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway; returns only on a configuration error."""
    config = from_args(argv)
    logs.setup("gateway", config.log_level)
    try:
        check(config)
    except InvalidArgument as exc:
        log.error("bad configuration", extra={"error": str(exc)})
        return 2
    log.info(
        "starting gunicorn",
        extra={"bind": config.bind, "workers": config.workers, "store": config.store},
    )
    sys.stdout.flush()
    sys.stderr.flush()
    argv_gunicorn = gunicorn_argv()
    os.execve(argv_gunicorn[0], argv_gunicorn, {**os.environ, **config.to_env()})


if __name__ == "__main__":
    raise SystemExit(main())
