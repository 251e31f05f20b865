"""What `gputel-up` prints once everything is up: where each thing is, and commands to try.

The commands work as printed: console scripts are named by their full path (the .venv need not
be on PATH), and the banner comes after the store holds data, so they answer with some.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # gputel.secure needs `cryptography`: imported only with --secure
    from gputel.secure import SecureSetup


def _local(port: int) -> str:
    return f"127.0.0.1:{port}"


def sample_gpu(csv_path: Path) -> tuple[str, str]:
    """(hostname, uuid) of the CSV's first row, for the example commands."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        row = next(csv.DictReader(f), None) or {}
    return row.get("Hostname", "HOST"), row.get("uuid", "GPU-UUID")


def banner(
    a: argparse.Namespace,
    csv_path: Path,
    walbroker: str,
    tls: SecureSetup | None = None,
    gpu: dict[str, object] | None = None,
) -> str:
    """Where everything is, and what to try (with --secure: with the CA and the tokens).

    The examples name `gpu` (one the API listed) when given: the CSV's first row names a GPU
    the store may not hold (`--scrape-demo` streams the fake exporters' GPUs, not the CSV's)."""
    api = f"{'https' if tls else 'http'}://127.0.0.1:{a.port}"
    host, uuid = sample_gpu(csv_path)
    if gpu and gpu.get("uuid") and gpu.get("hostname"):
        host, uuid = str(gpu["hostname"]), str(gpu["uuid"])
    curl, admin = "curl -s", f"{walbroker} admin --broker 127.0.0.1:{a.broker_port}"
    if tls:
        curl += f' --cacert {tls.ca} -H "Authorization: Bearer $(cat {tls.token("api")})"'
        admin += " " + " ".join(tls.client_args("admin"))
    lines = [
        "",
        "gputel is up. Ctrl-C stops everything.",
        "",
        f"  Web view      {api}/ui/   (fleet, GPU plots, pipeline and lag)",
        f"  REST API      {api}/api/v1/gpus",
        f"  Swagger UI    {api}/swagger/",
        f"  OpenAPI       {api}/openapi.json",
        f"  broker        127.0.0.1:{a.broker_port} (gRPC),"
        f" metrics http://127.0.0.1:{a.metrics_port + 1}/metrics",
        *(
            f"  collector-{i}   metrics http://127.0.0.1:{a.metrics_port + 20 + i}/metrics"
            for i in range(a.collectors)
        ),
        *(
            f"  streamer-{i}    metrics http://127.0.0.1:{a.metrics_port + 10 + i}/metrics"
            for i in range(a.streamers)
        ),
        f"  gateway       metrics {api}/metrics",
        *(
            [f"  secure        TLS + a token per component; CA, certificates, tokens in {tls.root}"]
            if tls
            else []
        ),
        "",
        "Try (copy and paste):",
        f"  {curl} {api}/api/v1/gpus | python3 -m json.tool | head -30",
        f"  {curl} '{api}/api/v1/gpus?hostname={host}'",
        f"  {curl} '{api}/api/v1/gpus/{uuid}/telemetry?metric=DCGM_FI_DEV_GPU_UTIL&limit=5'",
        f"  {admin} describe-group collectors",
        "",
        f"(or `source {Path(walbroker).parent}/activate` once, then `walbroker …`)",
        "",
    ]
    return "\n".join(lines)


def urls(a: argparse.Namespace) -> dict[str, str]:
    """Where everything is, for the JSON form of the banner."""
    api = f"http://127.0.0.1:{a.port}"
    return {
        "ui": f"{api}/ui/",
        "api": f"{api}/api/v1/gpus",
        "swagger": f"{api}/swagger/",
        "broker": _local(a.broker_port),
        "broker_metrics": f"http://127.0.0.1:{a.metrics_port + 1}/metrics",
    }
