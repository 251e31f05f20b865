"""`gputel-store`: one-off maintenance of a telemetry store.

    gputel-store backfill-catalog --store sqlite:PATH
    gputel-store backfill-catalog --store influx --influx-url URL --influx-bucket B
    gputel-store migrate-layout --store influx --influx-url URL --influx-bucket B

`backfill-catalog` builds the GPU catalog (store.catalog) from the telemetry already stored,
for data written before the catalog existed. It reads every series once (O(data): minutes
for a large InfluxDB fleet), is idempotent, and may run while collectors write.
`migrate-layout` copies InfluxDB telemetry of the first layout (a series per GPU and metric)
into the current one (store.schema, store.influx_migrate): O(legacy data), idempotent, safe
while collectors write; it keeps the legacy data and prints how to delete it. SQLite's
layout did not change: there it copies nothing.
The token comes from GPUTEL_INFLUX_TOKEN only (never a flag: it would show in `ps`); the
other InfluxDB settings fall back to GPUTEL_INFLUX_URL / _ORG / _BUCKET.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from store import Store, StoreError, open_store
from walbroker import flags

PROG = "gputel-store"
SQLITE_NOTE = "SQLite's layout did not change: nothing to migrate"

# A command's work on the opened store: its summary fields (printed as JSON after "command";
# "seconds" goes before any "next"/"note" advice).
Summary = dict[str, Any]
Command = Callable[[Store, argparse.Namespace], Summary]


def _backfill(store: Store, _: argparse.Namespace) -> Summary:
    """`backfill-catalog`: build the catalog from the stored telemetry."""
    return {"gpus": store.backfill_catalog()}


def _migrate(store: Store, a: argparse.Namespace) -> Summary:
    """`migrate-layout`: copy legacy InfluxDB points into the current layout."""
    if a.store != "influx":
        return {"points": 0, "skipped": 0, "note": SQLITE_NOTE}
    from store.influx import InfluxStore  # not imported for SQLite (influxdb_client is heavy)
    from store.influx_migrate import delete_advice, migrate

    if not isinstance(store, InfluxStore):  # open_store("influx") always returns one
        raise StoreError(f"--store influx opened a {type(store).__name__}, not an InfluxStore")
    done = migrate(store)
    stop = max(time.time_ns(), (done.last_ns or 0) + 1)
    return {
        "points": done.points,
        "skipped": done.skipped,
        "next": delete_advice(store.bucket, stop),
    }


COMMANDS: dict[str, tuple[str, Command]] = {
    "backfill-catalog": ("build the GPU catalog from the stored telemetry (one-off)", _backfill),
    "migrate-layout": (
        "copy InfluxDB telemetry of the legacy layout into the current one (one-off)",
        _migrate,
    ),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Maintain a gputel telemetry store.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (text, _) in COMMANDS.items():
        command = sub.add_parser(name, help=text)
        command.add_argument("--store", required=True, help="sqlite:PATH or influx")
        command.add_argument("--influx-url", default=None, help="InfluxDB URL")
        command.add_argument("--influx-org", default=None, help="InfluxDB organisation")
        command.add_argument("--influx-bucket", default=None, help="InfluxDB bucket")
    return flags.finish(p, os.environ, "GPUTEL_STORE_")  # the flag convention of every command


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print a JSON summary on stdout, errors on stderr (exit 1)."""
    a = _parser().parse_args(argv)
    opts = {"url": a.influx_url, "org": a.influx_org, "bucket": a.influx_bucket}
    started = time.monotonic()
    try:
        with open_store(a.store, **(opts if a.store == "influx" else {})) as store:
            fields = COMMANDS[a.command][1](store, a)
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    advice = {k: fields.pop(k) for k in ("next", "note") if k in fields}
    took = round(time.monotonic() - started, 3)
    print(json.dumps({"command": a.command, **fields, "seconds": took, **advice}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
