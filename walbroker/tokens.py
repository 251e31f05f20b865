"""Principals, roles and scopes, and the token file that defines them (broker and gateway).

File format (`walbroker serve --auth-tokens FILE`, `gputel-gateway --auth-tokens FILE`): one
credential per line, `#` starts a comment, blank lines are ignored::

    <principal> <role>[,<role>...] <credential> [<scope> ...]

- roles: `produce` (publish; join producer groups), `consume` (join consumer groups,
  receive, commit), `read` (admin listing and describe; the gateway's API), `admin` (offset
  resets, replay and every other admin change; implies `read`).
- credential: `sha256:<64 hex digits>`, the SHA-256 of the bearer token (the file never holds a
  token), or `cert`: the principal authenticates with a client certificate whose subject
  common name is `<principal>` (mutual TLS).
- scope: `[<role>:]topic=<glob>` or `[<role>:]group=<glob>` (glob: `*`, `?`, `[...]`, as in
  fnmatch, case-sensitive). For a role and a kind (topic or group) the scopes prefixed with
  that role apply if there are any, else the unprefixed scopes of that kind, else the role is
  not restricted on that kind. A principal may have several lines (e.g. an old and a new
  token during a rotation); each line is checked on its own.

Example (a collector may only consume group `collectors` on `telemetry`, and write its
dead letters)::

    collector consume,produce sha256:9f86d0...  consume:topic=telemetry consume:group=collectors
        produce:topic=telemetry.dlq     (all on one line)

`TokenFile` re-reads the file when it changes (checked at most every `check_s`) or when
`reload()` is called (SIGHUP); a file that does not parse keeps the previous table (and is
logged), so a typo never opens or closes the door. Thread-safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

ROLES = ("produce", "consume", "read", "admin")
Kind = Literal["topic", "group"]
TOKEN_PREFIX = "gpt_"
_PRINCIPAL_RE = re.compile(r"^[A-Za-z0-9._@:-]{1,128}$")
_HASH_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_SCOPE_RE = re.compile(
    r"^(?:(?P<role>[a-z]+):)?(?P<kind>topic|group)=(?P<glob>[A-Za-z0-9._*?\[\]!-]{1,200})$"
)


class TokenFileError(ValueError):
    """The token file cannot be used (the message names the file and line)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One scope: `glob` restricts `kind` names for `role` (None: every role of the line)."""

    role: str | None
    kind: Kind
    glob: str

    def __str__(self) -> str:
        return f"{self.role + ':' if self.role else ''}{self.kind}={self.glob}"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated identity: its name, roles and scopes (one line of the token file)."""

    name: str
    roles: frozenset[str]
    scopes: tuple[Scope, ...] = ()

    def has_role(self, roles: Iterable[str]) -> bool:
        """True if the principal holds any of `roles`."""
        return any(r in self.roles for r in roles)

    def allows(self, roles: Iterable[str], kind: Kind, name: str) -> bool:
        """True if one of `roles` held by the principal may act on `kind` `name`."""
        return any(
            role in self.roles and any(fnmatchcase(name, g) for g in self.globs(role, kind))
            for role in roles
        )

    def globs(self, role: str, kind: Kind) -> tuple[str, ...]:
        """The globs that restrict `role` on `kind` (`*` when unrestricted)."""
        own = tuple(s.glob for s in self.scopes if s.role == role and s.kind == kind)
        if own:
            return own
        common = tuple(s.glob for s in self.scopes if s.role is None and s.kind == kind)
        return common or ("*",)


ANONYMOUS = Principal("anonymous", frozenset(ROLES))


@dataclass(frozen=True, slots=True)
class TokenTable:
    """Parsed token file: principals by token hash and by certificate name."""

    by_hash: dict[str, Principal] = field(default_factory=dict)
    by_cert: dict[str, Principal] = field(default_factory=dict)

    def for_token(self, token: str) -> Principal | None:
        """The principal of a presented bearer token, or None."""
        return self.by_hash.get(hash_token(token))

    def for_certificate(self, common_name: str) -> Principal | None:
        """The principal a verified client certificate names, or None."""
        return self.by_cert.get(common_name)


def hash_token(token: str) -> str:
    """The credential column for `token`: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_line(principal: str, roles: Iterable[str], token: str, scopes: Iterable[str] = ()) -> str:
    """The token-file line for `token` (validated by parsing it)."""
    line = " ".join([principal, ",".join(roles), hash_token(token), *scopes])
    parse_line(line, "<new>", 1)
    return line


def parse_line(line: str, source: str, number: int) -> tuple[str, Principal] | None:
    """(credential, principal) of one line; None for a blank or comment line."""
    fields = line.split("#", 1)[0].split()
    if not fields:
        return None

    def bad(why: str) -> TokenFileError:
        return TokenFileError(f"{source}:{number}: {why}")

    if len(fields) < 3:
        raise bad("expected '<principal> <role>[,<role>...] sha256:<hex>|cert [scope...]'")
    name, roles_text, credential, *scope_texts = fields
    if not _PRINCIPAL_RE.match(name):
        raise bad(f"invalid principal name {name!r}")
    roles = frozenset(roles_text.split(","))
    if unknown := roles - set(ROLES):
        raise bad(f"unknown role(s) {', '.join(sorted(unknown))} (roles: {', '.join(ROLES)})")
    if credential != "cert" and not _HASH_RE.match(credential):
        raise bad("credential must be sha256:<64 lowercase hex digits> or 'cert'")
    scopes = tuple(_scope(t, roles, bad) for t in scope_texts)
    return credential, Principal(name, roles, scopes)


def _scope(text: str, roles: frozenset[str], bad: Callable[[str], TokenFileError]) -> Scope:
    m = _SCOPE_RE.match(text)
    if m is None:
        raise bad(f"invalid scope {text!r}: [role:]topic=GLOB or [role:]group=GLOB")
    role = m["role"]
    if role is not None and role not in roles:
        raise bad(f"scope {text!r} names role {role!r} the line does not grant")
    kind: Kind = "topic" if m["kind"] == "topic" else "group"
    return Scope(role, kind, m["glob"])


def parse(text: str, source: str = "<tokens>") -> TokenTable:
    """Parse a whole token file; TokenFileError on the first bad line."""
    table = TokenTable()
    for number, line in enumerate(text.splitlines(), 1):
        parsed = parse_line(line, source, number)
        if parsed is None:
            continue
        credential, principal = parsed
        if credential == "cert":
            if principal.name in table.by_cert:
                raise TokenFileError(f"{source}:{number}: a second 'cert' line for this name")
            table.by_cert[principal.name] = principal
        elif credential in table.by_hash:
            raise TokenFileError(f"{source}:{number}: the same token hash appears twice")
        else:
            table.by_hash[credential] = principal
    return table


class TokenFile:
    """A token file kept current: re-read when its size, mtime or inode change, or on demand."""

    def __init__(self, path: Path, check_s: float = 1.0) -> None:
        self.path = path
        self.check_s = check_s
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self.generation = 0
        self.table = self._read()  # TokenFileError here: refuse to start

    def _read(self) -> TokenTable:
        try:
            st = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenFileError(f"{self.path}: {exc.strerror or exc}") from None
        table = parse(text, str(self.path))
        self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        self.generation += 1
        return table

    def current(self) -> TokenTable:
        """The table, re-read first if the file changed (stat at most every `check_s`)."""
        now = time.monotonic()
        if now >= self._next_check:
            with self._lock:
                if now >= self._next_check:
                    self._next_check = now + self.check_s
                    self._refresh(force=False)
        return self.table

    def reload(self) -> bool:
        """Re-read now (SIGHUP); False if the file is unusable (the old table stays)."""
        with self._lock:
            return self._refresh(force=True)

    def _refresh(self, force: bool) -> bool:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            log.error("token file unreadable; keeping the previous one",
                      extra={"path": str(self.path), "error": exc.strerror})  # fmt: skip
            return False
        if not force and (st.st_ino, st.st_size, st.st_mtime_ns) == self._stamp:
            return True
        try:
            self.table = self._read()
        except TokenFileError as exc:
            log.error("token file rejected; keeping the previous one", extra={"error": str(exc)})
            return False
        count = len(self.table.by_hash) + len(self.table.by_cert)
        log.info("token file loaded", extra={"path": str(self.path), "credentials": count})
        return True
