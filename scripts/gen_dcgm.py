#!/usr/bin/env python3
"""Writes a realistic, deterministic DCGM exporter CSV (the sample data and benchmark inputs).

Traits of real exports reproduced here (SPEC §1): every field double-quoted; `labels_raw`
is a Prometheus label string whose inner quotes the CSV doubles; `gpu_id` is the host-local
index and repeats on every host while `uuid` is stable per GPU; one host is missing a GPU;
`container`/`pod`/`namespace` are empty except on GPUs that run a Kubernetes pod;
FB_USED + FB_FREE equals the model's frame buffer; clocks are constant per GPU.

Usage: scripts/gen_dcgm.py --hosts 32 --passes 2 --seed 7 --out data/dcgm.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

HEADER = (
    "timestamp", "metric_name", "gpu_id", "device", "uuid", "modelName", "Hostname",
    "container", "pod", "namespace", "value", "labels_raw",
)  # fmt: skip

METRICS = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
)

START = datetime(2025, 7, 18, 20, 42, 30, tzinfo=UTC)
SCRAPE_INTERVAL_S = 30


@dataclass(frozen=True)
class Model:
    """A GPU model's constants: name, frame buffer (MiB), clocks (MHz), power range (W)."""

    name: str
    host_prefix: str
    fb_total_mib: int
    sm_clock_mhz: int
    mem_clock_mhz: int
    idle_power_w: float
    max_power_w: float
    driver: str


MODELS = (
    Model("NVIDIA H100 80GB HBM3", "dgx-h100", 81559, 1980, 2619, 68.0, 700.0, "535.129.03"),
    Model("NVIDIA A100-SXM4-80GB", "dgx-a100", 81920, 1410, 1593, 55.0, 400.0, "535.129.03"),
    Model("NVIDIA L40S", "l40s-node", 46068, 2520, 9001, 32.0, 350.0, "550.54.15"),
)

WORKLOADS = (
    ("ml-training", "llama-finetune-{h}-7d9f8b6c4-{s}", "trainer"),
    ("inference", "triton-server-{h}-5b7c9d8f6-{s}", "triton"),
    ("research", "jupyter-{h}-0", "notebook"),
)


@dataclass(frozen=True)
class GpuSpec:
    """One simulated GPU: placement, identity, k8s placement and its load profile."""

    hostname: str
    index: int
    uuid: str
    model: Model
    container: str
    pod: str
    namespace: str
    load: float  # 0 idle .. 1 saturated
    fb_base_mib: int


def make_uuid(rng: random.Random) -> str:
    """Return a DCGM-style GPU UUID (`GPU-` + a UUID v4 layout) from the seeded generator."""
    h = f"{rng.getrandbits(128):032x}"
    return f"GPU-{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[rng.randrange(4)]}{h[17:20]}-{h[20:]}"


def _pod_for(rng: random.Random, hostname: str) -> tuple[str, str, str]:
    """Return (container, pod, namespace) for roughly one GPU in six, else empty strings."""
    if rng.random() >= 0.17:
        return "", "", ""
    namespace, pod, container = rng.choice(WORKLOADS)
    suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    return container, pod.format(h=hostname.rsplit("-", 1)[-1], s=suffix), namespace


def make_fleet(rng: random.Random, hosts: int, gpus_per_host: int) -> list[GpuSpec]:
    """Return every GPU of the fleet; one host (chosen by the seed) is missing one GPU."""
    short_host = rng.randrange(hosts)
    missing_index = rng.randrange(gpus_per_host)
    fleet: list[GpuSpec] = []
    for h in range(hosts):
        model = MODELS[0] if h < hosts * 5 // 8 else MODELS[1] if h < hosts * 7 // 8 else MODELS[2]
        hostname = f"{model.host_prefix}-{h + 1:03d}"
        for g in range(gpus_per_host):
            if h == short_host and g == missing_index and gpus_per_host > 1:
                continue
            container, pod, namespace = _pod_for(rng, hostname)
            load = rng.uniform(0.6, 1.0) if pod else rng.choice((0.0, 0.0, rng.uniform(0, 0.6)))
            fb_base = int(model.fb_total_mib * (0.15 + 0.8 * load)) if load else 0
            uuid = make_uuid(rng)
            fleet.append(
                GpuSpec(hostname, g, uuid, model, container, pod, namespace, load, fb_base)
            )
    return fleet


def sample(rng: random.Random, gpu: GpuSpec) -> dict[str, str]:
    """Return one scrape of the ten metrics for `gpu`, formatted as DCGM writes them."""
    m, load = gpu.model, gpu.load
    busy = load > 0
    util = min(100, max(0, round(load * 100 + rng.gauss(0, 4)))) if busy else 0
    fb_used = min(m.fb_total_mib, gpu.fb_base_mib + rng.randrange(0, 512)) if busy else 0
    power = m.idle_power_w + (m.max_power_w - m.idle_power_w) * load * rng.uniform(0.85, 1.0)
    temp = round(31 + 45 * load + rng.gauss(0, 1.5))
    return {
        "DCGM_FI_DEV_GPU_UTIL": str(util),
        "DCGM_FI_DEV_MEM_COPY_UTIL": str(round(util * rng.uniform(0.2, 0.6))),
        "DCGM_FI_DEV_POWER_USAGE": f"{power + rng.uniform(-2, 2):.3f}",
        "DCGM_FI_DEV_GPU_TEMP": str(temp),
        "DCGM_FI_DEV_FB_USED": str(fb_used),
        "DCGM_FI_DEV_FB_FREE": str(m.fb_total_mib - fb_used),
        "DCGM_FI_DEV_DEC_UTIL": str(rng.randrange(0, 30) if "triton" in gpu.pod else 0),
        "DCGM_FI_DEV_ENC_UTIL": "0",
        "DCGM_FI_DEV_SM_CLOCK": str(m.sm_clock_mhz),
        "DCGM_FI_DEV_MEM_CLOCK": str(m.mem_clock_mhz),
    }


def labels_raw(gpu: GpuSpec, metric: str) -> str:
    """Return the Prometheus label string of one series, sorted by name as Prometheus does."""
    labels = {
        "DCGM_FI_DRIVER_VERSION": gpu.model.driver,
        "Hostname": gpu.hostname,
        "UUID": gpu.uuid,
        "__name__": metric,
        "device": f"nvidia{gpu.index}",
        "gpu": str(gpu.index),
        "instance": f"{gpu.hostname}:9400",
        "job": "dgx_dcgm_exporter",
        "modelName": gpu.model.name,
    }
    if gpu.pod:
        labels.update(container=gpu.container, namespace=gpu.namespace, pod=gpu.pod)
    return ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))


def rows(seed: int, hosts: int, gpus_per_host: int, passes: int) -> Iterator[list[str]]:
    """Yield the CSV data rows: per pass (scrape), per metric, per GPU."""
    rng = random.Random(seed)
    fleet = make_fleet(rng, hosts, gpus_per_host)
    for p in range(passes):
        at = START + timedelta(seconds=p * SCRAPE_INTERVAL_S)
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        scrapes = [sample(rng, gpu) for gpu in fleet]
        for metric in METRICS:
            for gpu, scrape in zip(fleet, scrapes, strict=True):
                yield [
                    stamp, metric, str(gpu.index), f"nvidia{gpu.index}", gpu.uuid,
                    gpu.model.name, gpu.hostname, gpu.container, gpu.pod, gpu.namespace,
                    scrape[metric], labels_raw(gpu, metric),
                ]  # fmt: skip


def write(out: IO[str], seed: int, hosts: int, gpus_per_host: int, passes: int) -> int:
    """Write the header and rows to `out`; return the number of data rows."""
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(HEADER)
    n = 0
    for row in rows(seed, hosts, gpus_per_host, passes):
        writer.writerow(row)
        n += 1
    return n


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (a count below 1 is a usage error, exit 2)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hosts", type=_positive, default=32, help="hosts (default: 32)")
    p.add_argument(
        "--gpus-per-host", type=_positive, default=8, help="GPUs on each host (default: 8)"
    )
    p.add_argument(
        "--passes", type=_positive, default=2, help="scrapes (distinct timestamps) (default: 2)"
    )
    p.add_argument("--seed", type=int, default=7, help="same seed, same file (default: 7)")
    p.add_argument("--out", default="-", help="output file, '-' for stdout (default: -)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate the CSV the command line asks for."""
    args = parse_args(argv)
    if args.out == "-":
        try:
            n = write(sys.stdout, args.seed, args.hosts, args.gpus_per_host, args.passes)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted; no traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            n = write(f, args.seed, args.hosts, args.gpus_per_host, args.passes)
    print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
