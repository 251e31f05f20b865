"""`gputel-up --secure`: a CA, certificates and least-privilege tokens for a local pipeline.

Everything lives in `<data-dir>/secure/` (private files mode 0600) and is made once; later
runs reuse it, so tokens given to scripts keep working. What each component may do:

| principal | roles | scopes |
| --- | --- | --- |
| streamer | produce, read | topic `telemetry`, group `streamers` (read: its own group's progress) |
| collector | consume, produce | consume `telemetry` as `collectors`; produce `telemetry.dlq` |
| admin | admin | none (the `walbroker admin` CLI) |
| gateway | read | none (the web view's pipeline page: topics, groups, lag) |
| api | read | the gateway's REST API (a separate token file) |

Every broker client also has a client certificate (CN = its principal): the broker runs
with mutual TLS. The gateway serves HTTPS with the same CA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gputel.pki import CertificateAuthority, write_private
from walbroker.credentials import ENV
from walbroker.tokens import new_token, token_line

BROKER_PRINCIPALS = {
    "streamer": ("produce,read", ["topic=telemetry", "group=streamers"]),
    "collector": (
        "consume,produce",
        ["consume:topic=telemetry", "consume:group=collectors", "produce:topic=telemetry.dlq"],
    ),
    "admin": ("admin", []),
    "gateway": ("read", []),
}
SERVER_HOSTS = ["127.0.0.1", "localhost", "::1"]


@dataclass(frozen=True, slots=True)
class SecureSetup:
    """Paths of the generated files and the flags that use them."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"

    def token(self, name: str) -> Path:
        return self.root / f"{name}.token"

    @property
    def broker_tokens(self) -> Path:
        return self.root / "broker-tokens.txt"

    @property
    def gateway_tokens(self) -> Path:
        return self.root / "gateway-tokens.txt"

    def broker_args(self) -> list[str]:
        """`walbroker serve` flags: tokens, TLS, mutual TLS."""
        return ["--auth-tokens", str(self.broker_tokens), "--tls-cert", str(self.cert("server")),
                "--tls-key", str(self.key("server")), "--tls-client-ca", str(self.ca)]  # fmt: skip

    def client_args(self, principal: str) -> list[str]:
        """Broker-client flags (streamer, collector, walbroker admin) of `principal`."""
        cert, key = str(self.cert(principal)), str(self.key(principal))
        return ["--token-file", str(self.token(principal)), "--tls-ca", str(self.ca),
                "--tls-cert", cert, "--tls-key", key]  # fmt: skip

    def client_files(self, principal: str) -> dict[str, Path]:
        """The broker-client files of `principal` (`ClientSecurity.build`'s keywords)."""
        return {"token_file": self.token(principal), "tls_ca": self.ca,
                "tls_cert": self.cert(principal), "tls_key": self.key(principal)}  # fmt: skip

    def broker_client_env(self, principal: str) -> dict[str, str]:
        """GPUTEL_BROKER_TOKEN_FILE / _TLS_* for a process acting as `principal` ({} if the
        principal was added after these files were made: its data dir predates it)."""
        if not self.token(principal).exists():
            return {}
        return {ENV[k]: str(v) for k, v in self.client_files(principal).items()}

    def gateway_args(self) -> list[str]:
        """`gputel-gateway` flags: tokens and HTTPS."""
        return ["--auth-tokens", str(self.gateway_tokens), "--tls-cert", str(self.cert("server")),
                "--tls-key", str(self.key("server"))]  # fmt: skip


def ensure(data_dir: Path) -> SecureSetup:
    """Make the CA, certificates and tokens under `data_dir/secure` unless they exist."""
    setup = SecureSetup(data_dir / "secure")
    if setup.broker_tokens.exists() and setup.gateway_tokens.exists():
        return setup
    setup.root.mkdir(parents=True, exist_ok=True)
    os.chmod(setup.root, 0o700)
    ca = CertificateAuthority("gputel-up local CA")
    setup.ca.write_bytes(ca.cert_pem)
    _issue(setup, ca, "server", SERVER_HOSTS, client=False)
    lines = ["# gputel-up --secure: one token per component (hashes only)"]
    for name, (roles, scopes) in BROKER_PRINCIPALS.items():
        _issue(setup, ca, name, None, client=True)
        lines.append(_token(setup, name, roles, scopes))
    write_private(setup.broker_tokens, "\n".join(lines) + "\n")
    api = _token(setup, "api", "read", [])
    write_private(setup.gateway_tokens, f"# gputel-up --secure: REST API users\n{api}\n")
    return setup


def _issue(
    setup: SecureSetup, ca: CertificateAuthority, name: str, hosts: list[str] | None, client: bool
) -> None:
    issued = ca.issue(name, hosts, client=client)
    write_private(setup.cert(name), issued.cert_pem)
    write_private(setup.key(name), issued.key_pem)


def _token(setup: SecureSetup, name: str, roles: str, scopes: list[str]) -> str:
    token = new_token()
    write_private(setup.token(name), token + "\n")
    return token_line(name, roles.split(","), token, scopes)
