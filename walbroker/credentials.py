"""How a broker client proves who it is and protects its connection: a token file and TLS.

Every client (streamer, collector, `walbroker admin`, `Producer`, `Consumer`) takes:

- `--token-file FILE` / `GPUTEL_BROKER_TOKEN_FILE`: the bearer token (the file's first
  line), re-read when the file changes;
- `--tls-ca PEM` / `GPUTEL_BROKER_TLS_CA`: trust this CA for the broker's certificate (TLS on);
- `--tls-cert PEM` / `GPUTEL_BROKER_TLS_CLIENT_CERT` and `--tls-key PEM` /
  `GPUTEL_BROKER_TLS_CLIENT_KEY`: a client certificate, for mutual TLS.

The token never travels on a command line and is never logged; it is sent as
`authorization: Bearer <token>` call metadata on every call.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

ENV = {
    "token_file": "GPUTEL_BROKER_TOKEN_FILE",
    "tls_ca": "GPUTEL_BROKER_TLS_CA",
    "tls_cert": "GPUTEL_BROKER_TLS_CLIENT_CERT",
    "tls_key": "GPUTEL_BROKER_TLS_CLIENT_KEY",
}


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """A client's credentials: paths only (the token is read from its file when used)."""

    token_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        """True when the client connects with TLS."""
        return self.tls_ca is not None or self.tls_cert is not None

    @classmethod
    def build(cls, **paths: str | Path | None) -> ClientSecurity:
        """From path strings ('' or None: not given); ValueError if cert and key are half given."""
        given = {k: Path(v) if v else None for k, v in paths.items()}
        for key, path in given.items():
            if path is not None and not path.is_file():
                raise ValueError(f"--{key.replace('_', '-')} {path}: no such file")
        sec = cls(**given)
        if (sec.tls_cert is None) != (sec.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        return sec

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientSecurity:
        """From the GPUTEL_BROKER_TOKEN_FILE / _TLS_* variables alone."""
        env = os.environ if env is None else env
        return cls.build(**{k: env.get(v, "") for k, v in ENV.items()})


def add_client_security_args(
    p: argparse.ArgumentParser, env: Mapping[str, str] | None = None, suppress: bool = False
) -> None:
    """--token-file, --tls-ca, --tls-cert, --tls-key (defaults from `env`; SUPPRESS if asked)."""
    env = os.environ if env is None else env

    def default(key: str) -> Any:
        return argparse.SUPPRESS if suppress else env.get(ENV[key], "")

    p.add_argument("--token-file", default=default("token_file"), metavar="FILE",
                   help=f"bearer token for the broker (env {ENV['token_file']})")  # fmt: skip
    p.add_argument("--tls-ca", default=default("tls_ca"), metavar="PEM",
                   help=f"the broker's CA; TLS on (env {ENV['tls_ca']})")  # fmt: skip
    p.add_argument("--tls-cert", default=default("tls_cert"), metavar="PEM",
                   help=f"client certificate for mutual TLS (env {ENV['tls_cert']})")  # fmt: skip
    p.add_argument("--tls-key", default=default("tls_key"), metavar="PEM",
                   help=f"the client certificate's key (env {ENV['tls_key']})")  # fmt: skip


def client_security_from_args(
    a: argparse.Namespace, env: Mapping[str, str] | None = None
) -> ClientSecurity:
    """The ClientSecurity of parsed flags (a flag absent from `a` falls back to `env`)."""
    env = os.environ if env is None else env
    return ClientSecurity.build(
        **{k: getattr(a, k, None) or env.get(v, "") for k, v in ENV.items()}
    )


class TokenSource:
    """The token in a file, re-read when the file changes (client-side rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._token = ""
        self.token()  # ValueError now if the file is unusable

    def token(self) -> str:
        """The current token; a file that is missing or empty for a moment (being replaced)
        keeps the last one. ValueError only when there never was a usable token."""
        with self._lock:
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp != self._stamp:
                    text = self.path.read_text(encoding="utf-8").strip()
                    token = text.splitlines()[0].strip() if text else ""
                    if token:
                        self._token, self._stamp = token, stamp
            except OSError as exc:
                if not self._token:
                    raise ValueError(f"token file {self.path}: {exc.strerror}") from None
            if not self._token:
                raise ValueError(f"token file {self.path} is empty")
            return self._token


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source
        self.sent = ""  # the token of the latest call

    def rotated(self) -> bool:
        """True if the token file now holds another token than the latest call carried
        (a refusal of that call is then worth a retry with the new one)."""
        try:
            return self.source.token() != self.sent
        except ValueError:
            return False

    def _with_token(self, d: Any) -> Any:
        self.sent = self.source.token()
        metadata = [*(d.metadata or ()), ("authorization", f"Bearer {self.sent}")]
        details = _Details(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready,
                           d.compression)  # fmt: skip
        return _ClientCallDetails(*details)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


class _ClientCallDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    """gRPC wants an instance of its ClientCallDetails with these six fields."""
