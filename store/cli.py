"""`gputel-store`: one-off maintenance of a telemetry store.

    gputel-store backfill-catalog --store sqlite:PATH
    gputel-store backfill-catalog --store influx --influx-url URL --influx-bucket B

`backfill-catalog` builds the GPU catalog (store.catalog) from the telemetry already stored,
for data written before the catalog existed. It reads every series once (O(data): minutes
for a large InfluxDB fleet), is idempotent, and may run while collectors write. The token
comes from GPUTEL_INFLUX_TOKEN only (never a flag: it would show in `ps`); the other
InfluxDB settings fall back to GPUTEL_INFLUX_URL / _ORG / _BUCKET.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from store import StoreError, open_store
from walbroker import flags

PROG = "gputel-store"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Maintain a gputel telemetry store.")
    sub = p.add_subparsers(dest="command", required=True)
    backfill = sub.add_parser(
        "backfill-catalog", help="build the GPU catalog from the stored telemetry (one-off)"
    )
    backfill.add_argument("--store", required=True, help="sqlite:PATH or influx")
    backfill.add_argument("--influx-url", default=None, help="InfluxDB URL")
    backfill.add_argument("--influx-org", default=None, help="InfluxDB organisation")
    backfill.add_argument("--influx-bucket", default=None, help="InfluxDB bucket")
    return flags.finish(p, os.environ, "GPUTEL_STORE_")  # the flag convention of every command


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print a JSON summary on stdout, errors on stderr (exit 1)."""
    a = _parser().parse_args(argv)
    opts = {"url": a.influx_url, "org": a.influx_org, "bucket": a.influx_bucket}
    started = time.monotonic()
    try:
        with open_store(a.store, **(opts if a.store == "influx" else {})) as store:
            gpus = store.backfill_catalog()
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    took = round(time.monotonic() - started, 3)
    print(json.dumps({"command": a.command, "gpus": gpus, "seconds": took}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
