"""`gputel-fake-exporter`: dcgm-exporter look-alikes for tests, benchmarks and the local demo.

One process serves `--targets N` exporters at `http://HOST:PORT/targets/<i>/metrics`, each
a node (`<prefix>-<i>`) with `--gpus` GPUs, in the text format dcgm-exporter writes:
`# HELP`/`# TYPE` lines and one sample per GPU and field, labelled `gpu`, `UUID`,
`pci_bus_id`, `device`, `modelName`, `Hostname`, `DCGM_FI_DRIVER_VERSION`, `container`,
`namespace`, `pod`. Values move with time (utilization and power follow a slow wave per
GPU, memory and temperature follow them; clocks are constant). UUIDs are stable for a
given `--prefix` and `--seed`. `--targets-file FILE` writes a Prometheus file_sd file
listing the exporters. A hanging target is made by stopping the process (SIGSTOP).

Serving: one thread and a selector (`PageServer`), HTTP/1.1 with keep-alive. The standard
library's ThreadingHTTPServer keeps a thread per kept-alive connection: a thousand targets
scraped every second meant a thousand threads taking turns on the GIL, and the exporters,
not the pipeline, set the pace of the scrape benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from walbroker import flags

FIELDS = (
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz)."),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_ENC_UTIL", "Encoder utilization (in %)."),
    ("DCGM_FI_DEV_DEC_UTIL", "Decoder utilization (in %)."),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
)
MODEL, DRIVER, FB_MIB = "NVIDIA H100 80GB HBM3", "535.129.03", 81559


LEVELS = 1000  # a GPU's load is one of these steps: each step's value texts are made once


def _value_texts(level: int) -> tuple[bytes, ...]:
    """The value of every field (in `FIELDS` order) at a load step, as exposition text."""
    x = 0.05 + 0.9 * level / (LEVELS - 1)
    used = float(round(FB_MIB * 0.9 * x))
    temp, power = float(round(31 + 45 * x)), round(68 + 632 * x, 3)
    values = (1980.0, 2619.0, temp, power, float(round(100 * x)), float(round(40 * x)),
              0.0, 0.0, FB_MIB - used, used)  # fmt: skip
    return tuple(f"{v:g}".encode() for v in values)


_VALUES = [_value_texts(level) for level in range(LEVELS)]


class Node:
    """One simulated node: its GPUs' label texts and load phases.

    A page is made by substitution: its fixed text (HELP/TYPE lines, each sample's name
    and labels) is rendered once, and each GPU's values are looked up by its load step
    (a slow wave per GPU: utilization and power follow it, memory and temperature with
    them; clocks are constant), so serving a thousand pages a second costs the fake
    exporters little next to the pipeline they feed.
    """

    def __init__(self, prefix: str, index: int, gpus: int, seed: int) -> None:
        rng = random.Random(f"{seed}/{prefix}/{index}")
        self.hostname = f"{prefix}-{index:04d}"
        self.labels: list[str] = []
        self.phase: list[float] = []
        for g in range(gpus):
            h = f"{rng.getrandbits(128):032x}"
            uuid = f"GPU-{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
            pod = f"trainer-{index}-{g}" if g % 4 == 1 else ""
            self.labels.append(
                f'{{gpu="{g}",UUID="{uuid}",pci_bus_id="00000000:{0x18 + g:02X}:00.0",'
                f'device="nvidia{g}",modelName="{MODEL}",Hostname="{self.hostname}",'
                f'DCGM_FI_DRIVER_VERSION="{DRIVER}",container="{"main" if pod else ""}",'
                f'namespace="{"ml" if pod else ""}",pod="{pod}"}}'
            )
            self.phase.append(rng.uniform(0, 2 * math.pi))
        # The page with a `%s` slot per value, field-major as dcgm-exporter writes (the
        # first sample of a field after its HELP and TYPE lines); `%` formatting fills
        # the 80 slots in C.
        parts: list[str] = []
        self._slots: list[tuple[int, int]] = []  # (gpu, field) of each value
        for f, (name, help_text) in enumerate(FIELDS):
            parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".replace("%", "%%"))
            for g, lab in enumerate(self.labels):
                parts.append(f"{name}{lab} ".replace("%", "%%") + "%s\n")
                self._slots.append((g, f))
        self._template = "".join(parts).encode()

    def body(self, now: float) -> bytes:
        """The metrics page at wall-clock time `now` (values move with time), as bytes."""
        steps = [
            _VALUES[int((0.5 + 0.5 * math.sin(now / 20 + p)) * (LEVELS - 1))] for p in self.phase
        ]
        return self._template % tuple([steps[g][f] for g, f in self._slots])

    def page(self, now: float) -> str:
        """The metrics page at wall-clock time `now`, as text."""
        return self.body(now).decode()


MAX_REQUEST_BYTES = 16 * 1024  # a request head beyond this closes the connection
_HEAD_END = b"\r\n\r\n"


@dataclass(eq=False)
class _Client:
    """One kept-alive connection: bytes received and not yet answered, bytes to send."""

    sock: socket.socket
    inbox: bytes = b""
    outbox: bytearray = field(default_factory=bytearray)
    closing: bool = False


class PageServer:
    """Serves `nodes` at /targets/<i>/metrics from one thread (see the module docstring)."""

    def __init__(self, host: str, port: int, nodes: list[Node]) -> None:
        self.nodes = nodes
        self._listener = socket.create_server((host, port), backlog=4096)
        self._listener.setblocking(False)
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-exporter", daemon=True)

    def start(self) -> PageServer:
        """Start the serving thread."""
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and close every connection."""
        self._stop.set()
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, events in self._sel.select(0.2):
                if key.data is None:
                    self._accept()
                else:
                    self._serve(key.data, events)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            self._sel.register(sock, selectors.EVENT_READ, _Client(sock))

    def _serve(self, c: _Client, events: int) -> None:
        """Read what arrived, answer every complete request, send what the socket takes."""
        if events & selectors.EVENT_READ:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                return self._close(c)  # the scraper closed (or reset) the connection
            c.inbox += data or b""
            while _HEAD_END in c.inbox and not c.closing:
                head, _, c.inbox = c.inbox.partition(_HEAD_END)
                c.outbox += self._answer(c, head)
            if len(c.inbox) > MAX_REQUEST_BYTES:
                return self._close(c)
        if c.outbox:
            try:
                sent = c.sock.send(c.outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return self._close(c)
            del c.outbox[:sent]
        if c.closing and not c.outbox:
            return self._close(c)
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbox else 0)
        if self._sel.get_key(c.sock).events != wanted:
            self._sel.modify(c.sock, wanted, c)
        return None

    def _answer(self, c: _Client, head: bytes) -> bytes:
        """The response to one request head (GET only; a request body is not expected)."""
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.partition(" ")[0]
        c.closing = any(h.lower().replace(" ", "") == "connection:close" for h in lines[1:])
        parts = path.strip("/").split("/")
        ok = method == "GET" and len(parts) == 3 and parts[0] == "targets"
        i = int(parts[1]) if ok and parts[1].isdigit() and parts[2] == "metrics" else -1
        if not 0 <= i < len(self.nodes):
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        body = self.nodes[i].body(time.time())
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def _close(self, c: _Client) -> None:
        self._sel.unregister(c.sock)
        c.sock.close()


def serve(host: str, port: int, nodes: list[Node]) -> PageServer:
    """Start serving in a daemon thread; return the server (its `server_address` is bound)."""
    return PageServer(host, port, nodes).start()


def target_urls(host: str, port: int, count: int) -> list[str]:
    """The scrape URLs of `count` targets served at host:port."""
    return [f"http://{host}:{port}/targets/{i}/metrics" for i in range(count)]


def file_sd(host: str, port: int, count: int) -> list[dict[str, object]]:
    """Prometheus file_sd target groups for `count` targets served at host:port."""
    return [
        {"targets": [f"{host}:{port}"], "labels": {"__metrics_path__": f"/targets/{i}/metrics"}}
        for i in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point of `gputel-fake-exporter`."""
    p = argparse.ArgumentParser(prog="gputel-fake-exporter", description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:9400", help="HOST:PORT (port 0: any free)")
    p.add_argument("--targets", type=int, default=1, help="exporters (nodes) to serve")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--prefix", default="node", help="hostname prefix of the nodes")
    p.add_argument("--seed", type=int, default=7, help="random seed of the values")
    p.add_argument("--targets-file", default="", help="write a file_sd JSON file here")
    a = flags.finish(p, os.environ, "GPUTEL_FAKE_EXPORTER_").parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    nodes = [Node(a.prefix, i, a.gpus, a.seed) for i in range(a.targets)]
    server = serve(host or "127.0.0.1", int(port), nodes)
    bound = server.server_address[1]
    urls = target_urls(host or "127.0.0.1", int(bound), a.targets)
    if a.targets_file:
        tmp = Path(a.targets_file + ".tmp")
        tmp.write_text(json.dumps(file_sd(host or "127.0.0.1", int(bound), a.targets)))
        tmp.rename(a.targets_file)  # atomic: a reader never sees half a file
    print(json.dumps({"listening": f"{host}:{bound}", "targets": len(urls)}), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
