"""TLS for the broker's gRPC port (server side, certificates re-read when they change) and
for its clients, and the check that tells a plaintext client it is talking to a TLS broker.

Server: `--tls-cert` and `--tls-key` (PEM) turn TLS on; `--tls-client-ca` makes it mutual
(every client must present a certificate signed by that CA; its subject common name can
then name the principal). The files are checked at every new connection's handshake and
re-read when one changed (certificate renewal without a restart); a half-written file keeps
the previous certificate in use.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


def file_stamp(paths: list[Path]) -> tuple[tuple[int, int, int], ...]:
    """What tells a changed file (inode, size, mtime), for each path in turn; raises OSError."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ServerCertificates:
    """The broker's certificate, key and optional client CA, re-read when they change."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._stamp = file_stamp(self._paths())
        self.loaded = 1
        self.initial = self._configuration()  # OSError / ValueError here: refuse to start

    def _paths(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        cert, key = self.cert.read_bytes(), self.key.read_bytes()
        if b"-----BEGIN" not in cert or b"PRIVATE KEY-----" not in key:
            raise ValueError(f"{self.cert} / {self.key}: not a PEM certificate and key")
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration if a file changed since the last one, else None (gRPC's hook)."""
        with self._lock:
            try:
                stamp = file_stamp(self._paths())
                if stamp == self._stamp:
                    return None
                config = self._configuration()
            except (OSError, ValueError) as exc:
                log.error(
                    "TLS files unusable; keeping the previous ones", extra={"error": str(exc)}
                )
                return None
            self._stamp = stamp
            self.loaded += 1
        log.info("TLS certificate re-read", extra={"cert": str(self.cert)})
        return config

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that consult `fetch` on every handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self.fetch, require_client_authentication=self.client_ca is not None
        )


def channel_credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS credentials: trust `ca` (else the system roots), present `cert` if given."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def speaks_tls(target: str, timeout_s: float = 2.0) -> bool:
    """True if whatever listens at HOST:PORT answers a TLS handshake (used to explain
    the 'Socket closed' a plaintext client gets from a TLS broker)."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
            ctx.wrap_socket(raw, server_hostname=host or None),
        ):
            return True
    except ssl.SSLError as exc:
        # A TLS server that wants a client certificate answers with an alert: still TLS.
        return "ALERT" in (exc.reason or "").upper()
    except (OSError, ValueError):
        return False
