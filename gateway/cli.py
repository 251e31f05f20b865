"""`gputel-gateway`: check the flags, then exec gunicorn with `gateway.gunicorn_conf`.

The settings reach gunicorn and its workers as GPUTEL_* environment variables (see
`GatewayConfig.to_env`), so the InfluxDB token never shows on a command line or in a log.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import GatewayConfig, from_args
from store import InvalidArgument, influx_settings
from walbroker import logs
from walbroker.security import ExposureError, check_exposure
from walbroker.tokens import TokenFile, TokenFileError

log = logging.getLogger(__name__)
APP = "gateway.app:create_app()"


def gunicorn_argv() -> list[str]:
    """Return the command that runs the gateway under gunicorn with the repo's config module."""
    return [sys.executable, "-m", "gunicorn", "--config", "python:gateway.gunicorn_conf", APP]


def check(config: GatewayConfig) -> None:
    """Raise InvalidArgument when the settings cannot work (before starting gunicorn)."""
    if config.store == "influx":
        influx_settings(None, **config.store_opts())
    if bool(config.tls_cert) != bool(config.tls_key):
        raise InvalidArgument("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", config.tls_cert), ("--tls-key", config.tls_key)):
        if path and not Path(path).is_file():
            raise InvalidArgument(f"{flag} {path}: no such file")
    try:
        if config.auth_tokens:
            TokenFile(Path(config.auth_tokens))
        check_exposure("gputel-gateway", config.bind, bool(config.auth_tokens),
                       bool(config.tls_cert), config.insecure)  # fmt: skip
    except (TokenFileError, ExposureError) as exc:
        raise InvalidArgument(str(exc)) from None


def check_bind(bind: str) -> None:
    """OSError naming --bind when nothing can listen there (the port in use, a foreign host).

    gunicorn would find out too, but only after five retries, as "Can't connect to (...)".
    """
    host, _, port = bind.rpartition(":")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            s.bind(address)
    except OSError as exc:
        raise OSError(
            f"--bind {bind}: {exc.strerror or exc} (choose another --bind, "
            "or stop what listens there)"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway; returns only on a configuration error."""
    config = from_args(argv)
    logs.setup("gateway", config.log_level)
    try:
        check(config)
    except InvalidArgument as exc:
        log.error("bad configuration", extra={"error": str(exc)})
        return 2
    try:
        check_bind(config.bind)
    except OSError as exc:
        log.error("cannot listen", extra={"error": str(exc)})
        return 1
    log.info(
        "starting gunicorn",
        extra={
            "bind": config.bind,
            "workers": config.workers,
            "store": config.store,
            "tls": bool(config.tls_cert),
            "auth": bool(config.auth_tokens),
        },
    )
    sys.stdout.flush()
    sys.stderr.flush()
    argv_gunicorn = gunicorn_argv()
    os.execve(argv_gunicorn[0], argv_gunicorn, {**os.environ, **config.to_env()})


if __name__ == "__main__":
    raise SystemExit(main())
