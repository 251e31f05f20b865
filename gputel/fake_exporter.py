"""`gputel-fake-exporter`: dcgm-exporter look-alikes for tests, benchmarks and the local demo.

One process serves `--targets N` exporters at `http://HOST:PORT/targets/<i>/metrics`, each
a node (`<prefix>-<i>`) with `--gpus` GPUs, in the text format dcgm-exporter writes:
`# HELP`/`# TYPE` lines and one sample per GPU and field, labelled `gpu`, `UUID`,
`pci_bus_id`, `device`, `modelName`, `Hostname`, `DCGM_FI_DRIVER_VERSION`, `container`,
`namespace`, `pod`. Values move with time (utilization and power follow a slow wave per
GPU, memory and temperature follow them; clocks are constant). UUIDs are stable for a
given `--prefix` and `--seed`. `--targets-file FILE` writes a Prometheus file_sd file
listing the exporters. A hanging target is made by stopping the process (SIGSTOP).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class Node:
    """One simulated node: its GPUs' label texts and load phases."""

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

    def page(self, now: float) -> str:
        """The metrics page at wall-clock time `now` (values move with time)."""
        loads = [0.5 + 0.45 * math.sin(now / 20 + p) for p in self.phase]
        values = {
            "DCGM_FI_DEV_SM_CLOCK": [1980.0] * len(loads),
            "DCGM_FI_DEV_MEM_CLOCK": [2619.0] * len(loads),
            "DCGM_FI_DEV_GPU_TEMP": [float(round(31 + 45 * x)) for x in loads],
            "DCGM_FI_DEV_POWER_USAGE": [round(68 + 632 * x, 3) for x in loads],
            "DCGM_FI_DEV_GPU_UTIL": [float(round(100 * x)) for x in loads],
            "DCGM_FI_DEV_MEM_COPY_UTIL": [float(round(40 * x)) for x in loads],
            "DCGM_FI_DEV_ENC_UTIL": [0.0] * len(loads),
            "DCGM_FI_DEV_DEC_UTIL": [0.0] * len(loads),
            "DCGM_FI_DEV_FB_USED": [float(round(FB_MIB * 0.9 * x)) for x in loads],
        }
        values["DCGM_FI_DEV_FB_FREE"] = [FB_MIB - u for u in values["DCGM_FI_DEV_FB_USED"]]
        out: list[str] = []
        for name, help_text in FIELDS:
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            out += [
                f"{name}{lab} {v:g}\n" for lab, v in zip(self.labels, values[name], strict=True)
            ]
        return "".join(out)


def handler(nodes: list[Node]) -> type[BaseHTTPRequestHandler]:
    """The request handler serving `nodes` at /targets/<i>/metrics."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a scraper expects

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            ok = len(parts) == 3 and parts[0] == "targets" and parts[2] == "metrics"
            i = int(parts[1]) if ok and parts[1].isdigit() else -1
            if not 0 <= i < len(nodes):
                self.send_error(404)
                return
            body = nodes[i].page(time.time()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: one line per scrape would drown the demo's output."""

    return Handler


def serve(host: str, port: int, nodes: list[Node]) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; return the server (its `server_address` is bound)."""
    server = ThreadingHTTPServer((host, port), handler(nodes))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="fake-exporter", daemon=True).start()
    return server


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
