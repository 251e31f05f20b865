"""The one-line pipeline status `gputel-up` prints every 10 s: points/s in and stored, lag, store.

Everything comes from the broker's Admin API and the gateway's /readyz — what anyone could ask
with `walbroker admin` and curl. Points in = the topic's log end offset (every point ever
appended); points stored = the collectors' committed offsets summed (a collector commits only
after its store acknowledged the write). Rates are the differences between two samples.
"""

from __future__ import annotations

import argparse
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from walbroker.admin_client import AdminClient
from walbroker.credentials import ClientSecurity
from walbroker.errors import BrokerError, NotFound

if TYPE_CHECKING:  # gputel.secure needs `cryptography`: imported only with --secure
    from gputel.console import Console
    from gputel.secure import SecureSetup

INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Sample:
    """The pipeline's counters at one moment (monotonic `at`)."""

    at: float
    appended: int
    committed: int
    lag_points: int
    lag_seconds: float
    store: str
    broker: str = "ok"


def sample(
    admin: AdminClient, topic: str, group: str, readyz_url: str, ctx: ssl.SSLContext | None = None
) -> Sample:
    """Read the counters now; an unreachable broker or store is a state, not an error."""
    appended = committed = lag = 0
    lag_s, broker = 0.0, "ok"
    try:
        appended = sum(t.log_end_offset for t in admin.topics().topics if t.name == topic)
        try:
            g = admin.describe_group(group)
            committed = sum(p.committed_offset for p in g.partitions if p.topic == topic)
            lag, lag_s = g.group.lag_points, g.group.lag_seconds
        except NotFound:  # no collector has joined yet
            pass
    except BrokerError as exc:
        broker = f"unreachable ({exc.code.name})"
    state = store_state(readyz_url, ctx)
    return Sample(time.monotonic(), appended, committed, lag, lag_s, state, broker)


def store_state(readyz_url: str, ctx: ssl.SSLContext | None = None) -> str:
    """'ready' when the gateway's /readyz answers 200, else what went wrong."""
    try:
        with urllib.request.urlopen(readyz_url, timeout=2, context=ctx) as resp:
            return "ready" if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return "unavailable" if exc.code == 503 else f"HTTP {exc.code}"
    except OSError:
        return "gateway unreachable"


def fields(prev: Sample, cur: Sample) -> dict[str, object]:
    """The status as named numbers (rates over the time between the samples)."""
    dt = max(cur.at - prev.at, 1e-9)
    return {
        "published_per_s": round(max(cur.appended - prev.appended, 0) / dt, 1),
        "stored_per_s": round(max(cur.committed - prev.committed, 0) / dt, 1),
        "lag_points": cur.lag_points,
        "lag_seconds": round(cur.lag_seconds, 1),
        "store": cur.store,
        "broker": cur.broker,
    }


def line(f: dict[str, object]) -> str:
    """The status for people, one line."""
    text = (
        f"status: {f['published_per_s']:,.0f} points/s published, "
        f"{f['stored_per_s']:,.0f} points/s stored, lag {f['lag_points']:,} points "
        f"({f['lag_seconds']:.1f} s), store {f['store']}"
    )
    return text if f["broker"] == "ok" else f"{text}, broker {f['broker']}"


class StatusReporter:
    """A named thread that samples every `interval_s` and hands the status to `emit`."""

    def __init__(
        self,
        read: Callable[[], Sample],
        emit: Callable[[dict[str, object]], None],
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._read, self._emit, self.interval_s = read, emit, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gputel-up-status", daemon=True)

    def start(self) -> StatusReporter:
        """Start sampling (the first line comes one interval from now)."""
        self._thread.start()
        return self

    def _run(self) -> None:
        prev = self._read()
        while not self._stop.wait(self.interval_s):
            cur = self._read()
            self._emit(fields(prev, cur))
            prev = cur

    def stop(self) -> None:
        """Stop and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


def _https(tls: SecureSetup | None) -> tuple[str, ssl.SSLContext | None, dict[str, str]]:
    """Scheme, TLS context and headers of a request to the gateway (--secure: CA and token)."""
    if tls is None:
        return "http", None, {}
    token = tls.token("api").read_text().strip()
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    return "https", ctx, {"Authorization": f"Bearer {token}"}


def wait_for_data(
    a: argparse.Namespace, stop: threading.Event, tls: SecureSetup | None, timeout_s: float = 30
) -> dict[str, object] | None:
    """Wait (bounded) until the store holds a GPU, so the banner's examples answer with data:
    that GPU as the API lists it (None when none came in time)."""
    scheme, ctx, headers = _https(tls)
    req = urllib.request.Request(
        f"{scheme}://127.0.0.1:{a.port}/api/v1/gpus?limit=1", headers=headers
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                gpus = json.loads(resp.read()).get("gpus") or []
                if gpus and isinstance(gpus[0], dict):
                    return gpus[0]
        except (OSError, ValueError, AttributeError):
            pass
        stop.wait(0.5)
    return None


def reporter(
    a: argparse.Namespace, console: Console, tls: SecureSetup | None
) -> StatusReporter | None:
    """The thread printing a status line every --status-interval-s (None when 0)."""
    if a.status_interval_s <= 0:
        return None
    security = ClientSecurity.build(**tls.client_files("admin")) if tls else None
    admin = AdminClient(f"127.0.0.1:{a.broker_port}", security, timeout_s=2.0)
    scheme, ctx, _ = _https(tls)
    readyz = f"{scheme}://127.0.0.1:{a.port}/readyz"

    def emit(f: dict[str, object]) -> None:
        console.say(line(f), **({"pipeline": f} if console.json_lines else {}))

    return StatusReporter(
        lambda: sample(admin, "telemetry", "collectors", readyz, ctx), emit, a.status_interval_s
    )
