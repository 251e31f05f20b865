"""A port already in use is one line naming the flag, not a traceback (a new user's first error).

Each command is started as a real process while a socket holds the port it is told to use.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fixtures.broker import free_port


@contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port that something listens on for the duration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def serve(tmp_path: Path, listen: str, metrics_listen: str) -> subprocess.CompletedProcess[str]:
    """`walbroker serve` with these addresses (it fails at once when one is taken)."""
    data = str(tmp_path / "b")
    return run("-m", "walbroker.cli", "serve", "--data-dir", data, "--listen", listen,
               "--metrics-listen", metrics_listen)  # fmt: skip


def test_broker_listen_in_use(tmp_path: Path) -> None:
    with busy_port() as port:
        out = serve(tmp_path, f"127.0.0.1:{port}", "")
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert f"walbroker: --listen 127.0.0.1:{port}: cannot listen there" in out.stderr


def test_broker_metrics_listen_in_use(tmp_path: Path) -> None:
    with busy_port() as port:
        out = serve(tmp_path, f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}")
    assert out.returncode == 1, out.stderr
    assert f"walbroker: --metrics-listen 127.0.0.1:{port}: Address already in use" in out.stderr


def test_collector_metrics_listen_in_use(tmp_path: Path) -> None:
    with busy_port() as port:
        out = run(
            "-m",
            "collector.cli",
            "--broker",
            f"127.0.0.1:{free_port()}",
            "--store",
            f"sqlite:{tmp_path / 'g.db'}",
            "--metrics-listen",
            f"127.0.0.1:{port}",
        )
    assert out.returncode == 1, out.stderr
    assert f"cannot listen: --metrics-listen 127.0.0.1:{port}: Address already in use" in (
        out.stderr
    )


def test_gateway_bind_in_use(tmp_path: Path) -> None:
    with busy_port() as port:
        out = run(
            "-m",
            "gateway.cli",
            "--store",
            f"sqlite:{tmp_path / 'g.db'}",
            "--bind",
            f"127.0.0.1:{port}",
        )
    assert out.returncode == 1, out.stderr
    assert f"--bind 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "gunicorn" not in out.stderr  # refused before gunicorn's five retries
