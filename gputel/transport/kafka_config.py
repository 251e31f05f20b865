"""librdkafka properties from a `--kafka-config` file, with secrets kept out of it.

The file is a small subset of Java's properties format, the one Kafka tools take:

    # comment (also `!`); blank lines are ignored
    security.protocol=SASL_SSL
    sasl.mechanism=SCRAM-SHA-512
    sasl.username=gputel-collector
    sasl.password=${file:/etc/gputel/kafka-user/password}
    ssl.ca.location=/etc/gputel/kafka-ca/ca.crt

One `key=value` per line (spaces around both are trimmed; no line continuations, no `key: value`).
A value may contain references, resolved when the file is loaded:
- `${env:NAME}` — the environment variable NAME (it must be set);
- `${file:/absolute/path}` — the file's content, without its trailing newline (how a Kubernetes
  Secret arrives: mounted as a file).

So a secret is never on a command line, in values.yaml or in the properties file itself. A
literal secret in the file (a password, a private key, an OAuth client secret written out rather
than referenced) is refused when others (not the owner, not the group) may read the file, with
how to fix it (chmod 600, or a reference): refusing rather than warning is the secure default, a
warning in a log is read after the secret leaked. When only the file's group may read it, loading
goes on with a warning (logged once per load, naming the key, never the value): that is how a
Kubernetes Secret volume arrives in a pod with an fsGroup (kubelet adds group read for the pod's
own group), where the group is the pod itself.

Loading never logs or echoes a value; `redacted` gives a copy fit for a log line.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

# `${env:NAME}` or `${file:/path}`; any other `${…}` is an error, not literal text, so a typo in a
# reference cannot send the reference itself to the broker as a password.
_REFERENCE = re.compile(r"\$\{([^}:]*):?([^}]*)\}")
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
# librdkafka properties that carry a secret (CONFIGURATION.md); a key naming a password or a
# secret is treated as one too, so a new property is covered without a code change.
_SECRET_KEYS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "ssl_key",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.assertion.private.key.pem",
        "sasl.oauthbearer.assertion.private.key.passphrase",
    }
)
log = logging.getLogger(__name__)
# Large enough for a PEM chain; bounds what a mistaken ${file:} (a log, a device) can pull in.
MAX_FILE_BYTES = 1024 * 1024
REDACTED = "***"


class KafkaConfigError(ValueError):
    """The --kafka-config file cannot be used; the message says where and why (never a secret)."""


def is_secret(key: str) -> bool:
    """Whether the librdkafka property `key` holds a secret."""
    k = key.lower()
    return k in _SECRET_KEYS or "password" in k or "secret" in k


def redacted(properties: Mapping[str, str]) -> dict[str, str]:
    """A copy of `properties` with every secret value replaced, for logs and error messages."""
    return {k: REDACTED if is_secret(k) else v for k, v in properties.items()}


def load_properties(path: str | Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The librdkafka properties of the file at `path`, references resolved (KafkaConfigError)."""
    path = Path(path)
    environ = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise KafkaConfigError(f"--kafka-config {path}: cannot read it: {exc}") from exc
    raw = parse(text, str(path))
    _refuse_shared_literal_secrets(raw, path, mode)
    return {key: _resolve(value, key, path, environ) for key, (value, _) in raw.items()}


def parse(text: str, source: str = "<text>") -> dict[str, tuple[str, int]]:
    """`key -> (raw value, line number)` of properties text (KafkaConfigError when malformed)."""
    props: dict[str, tuple[str, int]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise KafkaConfigError(f"{source}:{lineno}: expected key=value")
        if key in props:
            # Two values for one key: whichever won, one of them was a mistake.
            raise KafkaConfigError(
                f"{source}:{lineno}: {key} is already set on line {props[key][1]}"
            )
        props[key] = (value.strip(), lineno)
    return props


def _refuse_shared_literal_secrets(
    raw: Mapping[str, tuple[str, int]], path: Path, mode: int
) -> None:
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return
    for key, (value, lineno) in raw.items():
        if not (is_secret(key) and value and not _REFERENCE.search(value)):
            continue
        where = f"--kafka-config {path}:{lineno}: {key} is a literal secret"
        fix = f"chmod 600 {path}, or write {key}=${{file:/path/to/secret}} or {key}=${{env:NAME}}"
        if mode & stat.S_IRWXO:
            raise KafkaConfigError(
                f"{where} in a file that others may read (mode {stat.filemode(mode)}): {fix}"
            )
        log.warning(
            "kafka-config: literal secret in a group-readable file",
            extra={"file": str(path), "line": lineno, "key": key, "fix": fix},
        )
        return


def _resolve(value: str, key: str, path: Path, environ: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        kind, ref = match.group(1), match.group(2)
        where = f"--kafka-config {path}: {key}"
        if kind == "env":
            if not ref or ref not in environ:
                raise KafkaConfigError(
                    f"{where}: environment variable {ref or '(empty)'} is not set"
                )
            return environ[ref]
        if kind == "file":
            return _read_secret_file(ref, where)
        raise KafkaConfigError(f"{where}: unknown reference ${{{kind}:…}} (use env: or file:)")

    return _REFERENCE.sub(one, value)


def _read_secret_file(ref: str, where: str) -> str:
    secret = Path(ref)
    if not secret.is_absolute():
        raise KafkaConfigError(f"{where}: ${{file:{ref}}} must be an absolute path")
    try:
        with secret.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KafkaConfigError(f"{where}: cannot read {ref}: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise KafkaConfigError(f"{where}: {ref} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise KafkaConfigError(f"{where}: {ref} is not UTF-8 text") from exc
