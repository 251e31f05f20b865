"""Where to scrape: static URLs, a Prometheus file_sd file, and DNS names, as one target set.

- `--scrape URL` (repeatable): fixed targets.
- `--targets-file FILE`: Prometheus file_sd, JSON or YAML (by content): a list of
  `{"targets": ["host:port", ...], "labels": {...}}`; `__scheme__` and `__metrics_path__`
  labels choose the URL's scheme and path (default `http` and `/metrics`). Re-read when
  its modification time or size changes; a file that does not parse keeps the previous
  targets (logged and counted), as Prometheus does. A target the scraper could not fetch
  (a malformed URL, a port out of range, a scheme other than http(s)) or with credentials
  in it (`user:password@`) is refused, logged and counted (`bad_url`); the file's other
  targets are kept.
- `--targets-dns NAME:PORT` (repeatable): every A/AAAA record of NAME (e.g. a headless
  Service of the GPU operator's dcgm-exporter), re-resolved on every `refresh`; a failed
  lookup keeps the previous addresses.

`TargetSet.refresh()` returns the current URLs (sorted, deduplicated). Not thread-safe:
the scrape loop's thread calls it once per interval.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[str]]


class TargetsError(ValueError):
    """A targets file or DNS name that cannot be used."""


def resolve(name: str, port: int) -> list[str]:
    """Every address of `name` (A and AAAA), as `host:port` strings."""
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    out = set()
    for family, _type, _proto, _canon, sockaddr in infos:
        host = str(sockaddr[0])
        out.add(f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}")
    return sorted(out)


def parse_file_sd(text: str) -> list[str]:
    """The target URLs of a file_sd document (JSON or YAML); `TargetsError` if malformed."""
    import yaml  # here: only --targets-file reads YAML, and yaml costs the CSV mode ~25 ms

    try:
        groups = yaml.safe_load(text) if text.strip() else []  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise TargetsError(f"not JSON or YAML: {exc}") from None
    if groups is None:
        return []
    if not isinstance(groups, list):
        raise TargetsError("a file_sd document is a list of target groups")
    urls: list[str] = []
    for g in groups:
        if not isinstance(g, dict) or not isinstance(g.get("targets", []), list):
            raise TargetsError(f"not a target group: {json.dumps(g)[:80]}")
        labels = g.get("labels") or {}
        if not isinstance(labels, dict):
            raise TargetsError("labels must be a mapping")
        scheme = str(labels.get("__scheme__", "http"))
        path = str(labels.get("__metrics_path__", "/metrics"))
        urls += [to_url(str(t), scheme, path) for t in g.get("targets", [])]
    return urls


def to_url(target: str, scheme: str = "http", path: str = "/metrics") -> str:
    """A scrape URL from `host:port` (a full URL is kept as it is)."""
    if "://" in target:
        return target
    if scheme not in ("http", "https"):
        raise TargetsError(f"unsupported scheme {scheme!r}")
    return f"{scheme}://{target}{path if path.startswith('/') else '/' + path}"


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def redact(url: str) -> str:
    """`url` with its userinfo shown as `***`: safe to show whatever the userinfo holds.

    A password may hold `/`, `?` or `#` unescaped, so the userinfo is taken to end at the
    last `@` before the query or fragment, or, when every `@` comes after a `?` or `#`
    with no path before it (that `?` may be the password's), at the last `@` of all.
    """
    scheme = _SCHEME.match(url)
    head = scheme.group(0) if scheme else ""
    rest = url[len(head) :]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, cut)
    if at < 0 and "@" in rest[cut:] and "/" not in rest[:cut]:
        at = rest.rfind("@")
    return url if at < 0 else f"{head}***{rest[at:]}"


def check_url(url: str) -> str:
    """`url` if the scraper can fetch it, else `TargetsError` naming it (redacted)."""
    parse_url(url)
    return url


def parse_url(url: str) -> urllib.parse.SplitResult:
    """The parts of a target URL the scraper can fetch, else `TargetsError` (redacted).

    Checked where targets come in (`--scrape` at start, each file_sd read), so a URL that
    `urlsplit` refuses or whose port is out of range is never scheduled: it would fail every
    interval, and before it did so by escaping the fetcher (counted as a timeout).
    Credentials in a URL are refused, not used: the scraper sends no Authorization, and
    the URL is the `target` label of every per-target series, which would show the
    password on /metrics.
    """
    shown = redact(url)
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError as exc:  # its text may quote the URL, so not when the URL has an @
        detail = "" if "@" in url else f": {exc}"
        raise TargetsError(f"malformed target URL {shown!r}{detail}") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise TargetsError(f"target URL {shown!r} is not http(s)://HOST[:PORT]/PATH")
    if "@" in u.netloc:
        raise TargetsError(f"target URL {shown!r}: credentials in a URL are not supported")
    if port == 0:
        raise TargetsError(f"target URL {shown!r}: port 0")
    return u


def check_urls(urls: Sequence[str]) -> list[str]:
    """Every URL checked (`TargetsError` names the first one the scraper cannot fetch)."""
    return [check_url(u) for u in urls]


def split_dns(spec: str) -> tuple[str, int]:
    """`NAME:PORT` -> (NAME, PORT); `TargetsError` if malformed."""
    name, sep, port = spec.rpartition(":")
    if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetsError(f"--targets-dns wants NAME:PORT, got {spec!r}")
    return name, int(port)


def split_dns_specs(specs: Sequence[str]) -> list[tuple[str, int]]:
    """Every `NAME:PORT` checked (`TargetsError` names the first malformed one)."""
    return [split_dns(s) for s in specs]


@dataclass
class TargetSet:
    """The union of static URLs, a file_sd file and DNS names (see module doc)."""

    static: Sequence[str] = ()
    file: str = ""
    dns: Sequence[str] = ()
    resolver: Resolver = resolve
    on_error: Callable[[str, str], None] = lambda _source, _reason: None  # discovery, bad_url
    _file_stamp: tuple[float, int] | None = None
    _from_file: list[str] = field(default_factory=list)
    _from_dns: dict[str, list[str]] = field(default_factory=dict)

    def refresh(self) -> list[str]:
        """Re-read the file if it changed and resolve the DNS names; the URLs now."""
        if self.file:
            self._read_file()
        for spec in self.dns:
            self._resolve(spec)
        urls = set(self.static) | set(self._from_file)
        for found in self._from_dns.values():
            urls |= set(found)
        return sorted(urls)

    def _read_file(self) -> None:
        try:
            st = os.stat(self.file)
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._file_stamp:
                return
            with open(self.file, encoding="utf-8") as f:
                urls = parse_file_sd(f.read())
        except (OSError, TargetsError) as exc:
            log.warning("targets file unusable; keeping the previous targets",
                        extra={"file": self.file, "reason": str(exc)})  # fmt: skip
            self.on_error("file", "discovery")
            return
        self._file_stamp, self._from_file = stamp, self._usable(urls)
        log.info("targets file read", extra={"file": self.file, "targets": len(self._from_file)})

    def _usable(self, urls: list[str]) -> list[str]:
        """The file's URLs the scraper can fetch; every other one logged and counted."""
        kept = []
        for url in urls:
            try:
                kept.append(check_url(url))
            except TargetsError as exc:
                log.warning("target refused", extra={"file": self.file, "reason": str(exc)})
                self.on_error("file", "bad_url")
        return kept

    def _resolve(self, spec: str) -> None:
        name, port = split_dns(spec)
        try:
            found = [to_url(a) for a in self.resolver(name, port)]
        except OSError as exc:
            log.warning("DNS lookup failed; keeping the previous addresses",
                        extra={"dns_name": name, "reason": str(exc)})  # fmt: skip
            self.on_error("dns", "discovery")
            return
        if found != self._from_dns.get(spec):
            log.info("DNS targets", extra={"dns_name": name, "targets": len(found)})
        self._from_dns[spec] = found
