"""The broker's trust machinery in one object: access state, its interceptor, TLS certificates."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry

from walbroker.auth import Access, AuthInterceptor
from walbroker.security import SecurityConfig
from walbroker.tls import ServerCertificates
from walbroker.tokens import TokenFile


@dataclass(slots=True)
class Guard:
    """The broker's trust machinery: the access state, its interceptor and TLS certificates."""

    access: Access
    interceptor: AuthInterceptor
    certificates: ServerCertificates | None

    @classmethod
    def build(cls, config: SecurityConfig, registry: CollectorRegistry) -> Guard:
        """TokenFileError / OSError / ValueError here mean: refuse to start."""
        tokens = TokenFile(config.auth_tokens) if config.auth_tokens else None
        access = Access(tokens, config.tls_client_ca is not None, registry)
        certs = None
        if config.tls_cert and config.tls_key:
            certs = ServerCertificates(config.tls_cert, config.tls_key, config.tls_client_ca)
        return cls(access, AuthInterceptor(access), certs)

    def bind(self, server: grpc.Server, listen: str) -> int:
        """Add the listening port (TLS when configured); its number, 0 on failure."""
        try:  # grpc returns 0 on failure, or (since 1.5x) raises RuntimeError
            if self.certificates is not None:
                return int(server.add_secure_port(listen, self.certificates.credentials()))
            return int(server.add_insecure_port(listen))
        except RuntimeError:
            return 0

    def reload(self) -> None:
        """Re-read the token file now (SIGHUP)."""
        if self.access.tokens is not None:
            self.access.tokens.reload()
