"""`make bench`: runs every benchmark module and writes one machine-readable JSON file.

Each entry of SUITES is a module with a `run() -> dict`; a suite that fails is
recorded with its error instead of stopping the others. The file also records
the machine (CPU model, cores, memory, Python) so numbers are never read
without their context; compare ratios within one run, not absolute times
across runs on shared machines.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

SUITES = [
    "broker_bench",
    "codec_bench",
    "store_bench",
    "streamer_bench",
    "collector_bench",
    "e2e_bench",
    "secure_bench",
    "import_bench",
    "collector_path_bench",
    "sqlite_scrape_bench",
    "streamer_path_bench",
    "scrape_bench",
    "gateway_bench",
    "fleet_bench",
    "transport_raw_bench",
    "transport_bench",
]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the suites named on the command line (default: all that exist)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results/latest.json")
    parser.add_argument("suites", nargs="*", default=SUITES)
    a = parser.parse_args(argv)
    results: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "suites": {},
    }
    for name in a.suites:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            results["suites"][name] = module.run()
        except Exception as exc:  # recorded in the results, never hidden
            results["suites"][name] = {"error": repr(exc), "trace": traceback.format_exc()}
        results["suites"][name]["bench_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: results["suites"][name]}, indent=2), file=sys.stderr)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"bench: results in {out}", file=sys.stderr)
    return 1 if any("error" in r for r in results["suites"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
