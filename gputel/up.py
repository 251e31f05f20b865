"""`gputel-up`: the whole pipeline on this machine, one process per component, until Ctrl-C.

Starts walbroker, the collectors, the gateway and the streamers (in that order,
each only once the previous one is healthy), prints where everything is and a status
line every 10 s, passes on the components' logs (see gputel.console), and stops them
all — streamers first, broker last — on Ctrl-C or when one of them dies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

if TYPE_CHECKING:  # gputel.secure needs `cryptography`: imported only with --secure
    from gputel.secure import SecureSetup
from gputel import source_stamp, status
from gputel.banner import banner, urls
from gputel.console import Console
from gputel.up_flags import named_ports, parse_args
from walbroker.errors import BrokerError

PACKAGED_CSV = Path(__file__).resolve().parent.parent / "data" / "dcgm.csv"
COLOURS = ["36", "33", "35", "32", "34", "31", "96", "93"]
# What connects the components is pinned, whatever GPUTEL_STREAMER_/COLLECTOR_ variables say:
# the broker creates these topics only, `--secure` grants only these (gputel.secure), and a
# new CSV resets the streamers' group's progress (gputel.source_stamp).
TOPIC = "telemetry"
PINNED_STREAMER = ["--topic", TOPIC, "--group", source_stamp.GROUP]
PINNED_COLLECTOR = ["--topic", TOPIC, "--group", "collectors"]


class UpError(Exception):
    """A problem worth one line to the user (port in use, missing file, unhealthy component)."""


@dataclass
class Component:
    """One child process and how to tell it is healthy."""

    name: str
    argv: list[str]
    health_url: str = ""
    grpc_address: str = ""
    finishes: bool = False  # exiting with 0 is the job done (a streamer with --passes)
    secure: SecureSetup | None = None  # how to reach it over TLS (--secure)
    env: dict[str, str] = field(default_factory=dict)  # added to the child's environment
    proc: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = field(default_factory=list)


def check_port(port: int, what: str = "") -> None:
    """UpError if something already listens on 127.0.0.1:port (`what`: the flag behind it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UpError(
                f"port {port} ({what}) is already in use: choose another with that flag, "
                "or stop what uses it"
                if what
                else f"port {port} is already in use: choose another, or stop what uses it"
            ) from None


def csv_path(a: argparse.Namespace) -> Path:
    """The CSV to stream: --csv, else ./data/dcgm.csv, else the packaged sample."""
    path: Path = a.csv or (
        Path("data/dcgm.csv") if Path("data/dcgm.csv").exists() else PACKAGED_CSV
    )
    if path.is_dir():
        raise UpError(f"--csv {path} is a directory: give a DCGM CSV file")
    if not path.exists():
        raise UpError(f"CSV file not found: {path}")
    if not path.is_file():  # its header is checked, then it is read once per pass
        raise UpError(
            f"--csv {path} is not a regular file (a FIFO or a device): gputel-up reads it "
            "again for each pass; copy it to a file, or give it to gputel-streamer --passes 1"
        )
    return path


def store_args(a: argparse.Namespace) -> list[str]:
    """The --store flags the collectors and the gateway share (the token comes from the env)."""
    if a.store == "sqlite":
        return ["--store", f"sqlite:{a.data_dir / 'gputel.db'}"]
    influx = [(f"--influx-{k}", getattr(a, f"influx_{k}")) for k in ("url", "org", "bucket")]
    return ["--store", "influx", *(x for flag, value in influx if value for x in (flag, value))]


def _local(port: int) -> str:
    return f"127.0.0.1:{port}"


def plan(a: argparse.Namespace, tls: SecureSetup | None = None) -> list[Component]:
    """The components and their command lines, in start order (with `tls`: secured)."""
    source, store, broker = csv_path(a), store_args(a), _local(a.broker_port)
    data = str(a.data_dir / "broker")

    def client(principal: str) -> list[str]:
        return tls.client_args(principal) if tls else []

    comps = [
        Component(
            "broker",
            [
                "walbroker",
                "serve",
                "--data-dir",
                data,
                "--listen",
                broker,
                "--metrics-listen",
                _local(a.metrics_port + 1),
                # Auto-creation is off: the collectors' topic and its dead-letter topic.
                "--topic",
                f"{TOPIC}:16",
                "--topic",
                f"{TOPIC}.dlq:4",
                *(tls.broker_args() if tls else []),
            ],
            grpc_address=broker,
            secure=tls,
        )
    ]
    for i in range(a.collectors):
        port = a.metrics_port + 20 + i
        argv = ["gputel-collector", "--broker", broker, *PINNED_COLLECTOR, *store]
        comps.append(_http_component(f"collector-{i}", [*argv, *client("collector")], port))
    gateway = ["gputel-gateway", *store, "--bind", _local(a.port), "--broker", broker]
    scheme = "https" if tls else "http"
    comps.append(
        Component(
            "gateway",
            [*gateway, *(tls.gateway_args() if tls else [])],
            f"{scheme}://{_local(a.port)}/readyz",
            secure=tls,
            env=tls.broker_client_env("gateway") if tls else {},
        )
    )
    source_args = [
        "--csv", str(source),
        *(["--forever"] if a.passes is None else ["--passes", str(a.passes)]),
        *(["--rate", str(a.rate)] if a.rate is not None else
          ["--pass-interval", str(a.pass_interval)]),
        "--time", a.time,
    ]  # fmt: skip
    if a.scrape_demo:
        exporter, source_args = scrape_demo(a)
        comps.append(exporter)
    for i in range(a.streamers):
        port = a.metrics_port + 10 + i
        argv = ["gputel-streamer", "--broker", broker, *PINNED_STREAMER, *source_args,
                *client("streamer")]  # fmt: skip
        comps.append(_http_component(f"streamer-{i}", argv, port))
        comps[-1].finishes = a.passes is not None and not a.scrape_demo
    return comps


def scrape_demo(a: argparse.Namespace) -> tuple[Component, list[str]]:
    """The fake dcgm-exporters (`--scrape-demo N`) and the streamer flags that scrape them."""
    listen = _local(a.metrics_port + 40)
    targets = a.data_dir / "scrape-targets.json"
    exporter = Component(
        "exporters",
        ["gputel-fake-exporter", "--listen", listen, "--targets", str(a.scrape_demo),
         "--prefix", "demo", "--targets-file", str(targets)],
        f"http://{listen}/targets/0/metrics",
    )  # fmt: skip
    args = ["--targets-file", str(targets), "--scrape-interval-s", str(a.scrape_interval)]
    return exporter, args


def _http_component(name: str, argv: list[str], port: int) -> Component:
    """A component serving /metrics and /healthz on `port`."""
    return Component(
        name, [*argv, "--metrics-listen", _local(port)], f"http://{_local(port)}/healthz"
    )


def healthy(c: Component) -> bool:
    """True once the component answers its health check."""
    try:
        if c.grpc_address:
            with _grpc_channel(c) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
        ctx = ssl.create_default_context(cafile=str(c.secure.ca)) if c.secure else None
        with urllib.request.urlopen(c.health_url, timeout=1, context=ctx) as resp:
            return bool(resp.status == 200)
    except (grpc.RpcError, OSError):
        return False


def _grpc_channel(c: Component) -> grpc.Channel:
    """A channel to the broker: plaintext, or TLS with the admin's client certificate."""
    if c.secure is None:
        return grpc.insecure_channel(c.grpc_address)
    tls = c.secure
    creds = grpc.ssl_channel_credentials(
        tls.ca.read_bytes(), tls.key("admin").read_bytes(), tls.cert("admin").read_bytes()
    )
    return grpc.secure_channel(c.grpc_address, creds)


def pump(c: Component, stream: object, colour: str, console: Console) -> None:
    """Copy a child's output to ours (see gputel.console for how)."""
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        console.child(c.name, colour, raw.decode(errors="replace"))


def executable(name: str) -> str:
    """A console script of this installation (next to the running Python), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise UpError(f"{name} not found: run `make install` first")
    return found


def start(c: Component, colour: str, console: Console, timeout_s: float = 60.0) -> None:
    """Spawn the component and wait until it is healthy."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GPUTEL_LOG_FORMAT": console.child_format}
    env.update(c.env)
    c.proc = subprocess.Popen(
        [executable(c.argv[0]), *c.argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    t = threading.Thread(
        target=pump, args=(c, c.proc.stdout, colour, console), name=f"pump-{c.name}", daemon=True
    )
    t.start()
    c.threads.append(t)
    deadline = time.monotonic() + timeout_s
    while not healthy(c):
        if c.proc.poll() == 0 and c.finishes:
            return  # done before its health check answered (a small import)
        if c.proc.poll() is not None:
            raise UpError(f"{c.name} exited with code {c.proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise UpError(f"{c.name} not healthy after {timeout_s:.0f}s")
        time.sleep(0.2)


def stop_all(comps: list[Component]) -> None:
    """SIGTERM in reverse start order, each given time to flush; SIGKILL if it hangs."""
    for c in reversed(comps):
        if c.proc is None or c.proc.poll() is not None:
            continue
        c.proc.send_signal(signal.SIGTERM)
        try:
            c.proc.wait(30)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
        for t in c.threads:
            t.join(2)


def run(a: argparse.Namespace) -> int:
    """Start everything, wait for Ctrl-C or a death, stop everything."""
    for port, what in named_ports(a):
        check_port(port, what)
    csv_path(a)  # a missing CSV is reported before anything is made
    a.data_dir.mkdir(parents=True, exist_ok=True)
    tls = None
    if a.secure:
        from gputel import secure

        tls = secure.ensure(a.data_dir)
    comps = plan(a, tls)
    console = Console.for_stdout(os.environ.get("GPUTEL_LOG_FORMAT", ""), a.verbose)
    stop = threading.Event()
    # SIGHUP: the terminal was closed. The components run in sessions of their own (a Ctrl-C
    # reaches them only through us), so without this they outlived it, holding their ports.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    reporter = None
    try:
        for i, c in enumerate(comps):
            start(c, COLOURS[i % len(COLOURS)], console)
            if c.grpc_address:  # the broker is up, no streamer has joined its group yet
                source_stamp.on_broker(a, csv_path(a), tls, console.say)
        gpu = status.wait_for_data(a, stop, tls)
        console.banner(banner(a, csv_path(a), executable("walbroker"), tls, gpu), **urls(a))
        reporter = status.reporter(a, console, tls)
        if reporter is not None:
            reporter.start()
        finished: set[str] = set()
        while not stop.wait(0.5):
            done = [c for c in comps if c.finishes and c.proc and c.proc.poll() == 0]
            for c in done:
                if c.name not in finished:
                    finished.add(c.name)
                    console.say(f"gputel-up: {c.name} finished its passes")
            dead = [
                c for c in comps
                if c.proc is not None and c.proc.poll() is not None and c not in done
            ]  # fmt: skip
            if dead:
                raise UpError(
                    f"{dead[0].name} exited with code {dead[0].proc.returncode}"
                    if dead[0].proc
                    else "a component exited"
                )
        return 0
    finally:
        if reporter is not None:
            reporter.stop()
        stop_all(comps)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `gputel-up`."""
    a = parse_args(argv)
    # Its last word in the shape of the rest: JSON lines unless stderr is a terminal.
    last = Console.for_stream(sys.stderr, os.environ.get("GPUTEL_LOG_FORMAT", ""))
    try:
        code = run(a)
    except (UpError, BrokerError) as exc:
        last.fail(f"gputel-up: {exc}")
        return 1
    last.say("gputel-up: stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
