"""The gateway's own work per request on the 100,000-GPU InfluxDB, in CPU instructions.

Latencies and CPU seconds on a machine other tenants keep busy move by 2x between windows;
an instruction count does not. This runs the gateway app in-process (Flask's test client,
no gunicorn) under valgrind's callgrind, once with 2 and once with 12 requests of one
endpoint after the same start-up and warm-up, and reports the difference / 10: the
instructions one request costs the gateway process (Flask, the store client, JSON in and
out, the garbage collector), not influxd's. `code` runs another checkout's gateway and
store against the same server (e.g. a `git archive` of main), for a before/after.

    python -m bench.fleet_instructions [code_dir] [default|tuned]

`tuned` applies the gunicorn worker's garbage-collector settings
(`gateway.gunicorn_conf.post_worker_init`); `default` leaves Python's. Needs valgrind and
the cached fleet of `bench.fleet_bench` (started here). Prints JSON.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ENDPOINTS = ("gpus", "hosts", "metrics", "gpu_detail", "telemetry_1h")
FEW, MANY = 2, 12
# The measured process: the app of `code` (argv[1]), warmed with 3 requests, then argv[3]
# requests of one endpoint. Plain source, so an older checkout needs no module of ours.
DRIVER = """
import gc, json, sys
from pathlib import Path
code, endpoint, n, gc_mode, url, paths_file = sys.argv[1:7]
sys.path.insert(0, code)
from gateway.app import create_app
from gateway.config import GatewayConfig
paths = json.loads(Path(paths_file).read_text())[endpoint]
config = GatewayConfig(store="influx", influx_url=url, influx_org="gputel",
                       influx_bucket="fleet", influx_token="unused:unused", catalog_cache_s=0)
client = create_app(config).test_client()
for path in paths[:3]:
    assert client.get(path).status_code == 200, path
if gc_mode == "tuned":
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
for k in range(int(n)):
    client.get(paths[(k + 3) % len(paths)])
"""


def instructions(code: Path, endpoint: str, n: int, gc_mode: str, url: str, paths: Path) -> int:
    """Instructions callgrind counted in a process that serves `n` requests of `endpoint`."""
    with tempfile.TemporaryDirectory(prefix="gputel-callgrind-") as tmp:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
                sys.executable, "-c", DRIVER, str(code), endpoint, str(n), gc_mode, url,
                str(paths)]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=tmp)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count: {out.stderr[-500:]}")
    return int(found[1])


def per_request(code: Path, gc_mode: str, url: str, paths: Path) -> dict[str, float]:
    """Millions of instructions per request of each endpoint."""
    out = {}
    for endpoint in ENDPOINTS:
        few = instructions(code, endpoint, FEW, gc_mode, url, paths)
        many = instructions(code, endpoint, MANY, gc_mode, url, paths)
        out[endpoint] = round((many - few) / (MANY - FEW) / 1e6, 2)
        print(f"fleet_instructions: {endpoint} {out[endpoint]} M", file=sys.stderr, flush=True)
    return out


def run(code: str = ".", gc_mode: str = "tuned") -> dict[str, Any]:
    """Instructions per request on the cached 100,000-GPU InfluxDB; see the module docstring."""
    from bench.fleet_bench import endpoints_in_process, influx_server
    from bench.fleet_data import fleet

    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed"}
    the_fleet = fleet(100_000)
    server, opts, _ = influx_server(the_fleet)
    try:
        with tempfile.TemporaryDirectory(prefix="gputel-fleet-instr-") as tmp:
            paths = Path(tmp) / "paths.json"
            paths.write_text(json.dumps(endpoints_in_process(opts, the_fleet)))
            figures = per_request(Path(code).resolve(), gc_mode, opts["url"], paths)
    finally:
        server.stop()
    return {"code": str(Path(code).resolve()), "gc": gc_mode,
            "million_instructions_per_request": figures}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(run(*sys.argv[1:3]), indent=2))
