"""The broker's trust settings (token file, TLS files, `--insecure`), their flags, and the
secure-by-default rule shared with the gateway: listening beyond loopback needs
authentication and TLS, or an explicit `--insecure` (warned about at every start).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ExposureError(ValueError):
    """Refusal to listen beyond loopback without authentication and TLS."""


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may connect to the broker and how (all off: loopback-only zero-config)."""

    auth_tokens: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        """True when the port speaks TLS."""
        return self.tls_cert is not None

    @property
    def authenticated(self) -> bool:
        """True when callers must prove who they are (tokens or client certificates)."""
        return self.auth_tokens is not None or self.tls_client_ca is not None


def _path(text: str) -> Path | None:
    return Path(text) if text else None


def add_security_args(p: argparse.ArgumentParser) -> None:
    """`walbroker serve` flags for authentication and TLS (env GPUTEL_BROKER_<NAME>)."""

    def env(name: str) -> str:
        return os.environ.get(f"GPUTEL_BROKER_{name}", "")

    p.add_argument(
        "--auth-tokens",
        default=env("AUTH_TOKENS"),
        metavar="FILE",
        help="token file (principals, roles, scopes, token hashes; docs/security.md); "
        "re-read when it changes or on SIGHUP",
    )
    p.add_argument("--tls-cert", default=env("TLS_CERT"), metavar="PEM", help="server certificate")
    p.add_argument("--tls-key", default=env("TLS_KEY"), metavar="PEM", help="server private key")
    p.add_argument(
        "--tls-client-ca",
        default=env("TLS_CLIENT_CA"),
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=env("INSECURE").lower() in ("1", "true", "yes"),
        help="allow listening beyond loopback without authentication and TLS",
    )


def security_from_args(a: argparse.Namespace) -> SecurityConfig:
    """The SecurityConfig of parsed `serve` flags; ValueError if the TLS flags are half given."""
    if bool(a.tls_cert) != bool(a.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if a.tls_client_ca and not a.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    return SecurityConfig(
        auth_tokens=_path(a.auth_tokens),
        tls_cert=_path(a.tls_cert),
        tls_key=_path(a.tls_key),
        tls_client_ca=_path(a.tls_client_ca),
        insecure=a.insecure,
    )


def is_loopback(listen: str) -> bool:
    """True if HOST of HOST:PORT only reaches this machine (every address it resolves to);
    a unix:PATH socket is local too."""
    if listen.startswith("unix:"):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_exposure(what: str, listen: str, authenticated: bool, tls: bool, insecure: bool) -> None:
    """ExposureError if `listen` is beyond loopback without auth and TLS (unless `insecure`)."""
    if is_loopback(listen) or (authenticated and tls):
        return
    missing = " and ".join(
        m for m, ok in (("authentication", authenticated), ("TLS", tls)) if not ok
    )
    if not insecure:
        raise ExposureError(
            f"{what} refuses to listen on {listen} without {missing}: configure them "
            "(docs/security.md) or pass --insecure to accept the risk"
        )
    log.warning(
        "INSECURE: listening beyond loopback without " + missing,
        extra={"listen": listen, "component": what},
    )
