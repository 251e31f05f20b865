"""The store layer: one contract (`store.base.Store`), SQLite and InfluxDB implementations.

`open_store("sqlite:PATH")` or `open_store("influx", url=..., org=..., bucket=..., token=...)`;
missing InfluxDB settings come from GPUTEL_INFLUX_URL / _ORG / _BUCKET / _TOKEN, read when called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from store.base import (
    GpuSummary,
    InvalidArgument,
    InvalidBatch,
    PointCursor,
    Store,
    StoredPoint,
    StoreError,
    StoreUnavailable,
    WindowValue,
)

__all__ = [
    "GpuSummary",
    "InvalidArgument",
    "InvalidBatch",
    "PointCursor",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredPoint",
    "WindowValue",
    "influx_settings",
    "open_store",
]

INFLUX_SETTINGS = ("url", "org", "bucket", "token")


def influx_settings(env: Mapping[str, str] | None = None, **given: str | None) -> dict[str, str]:
    """Return url/org/bucket/token from `given`, falling back to GPUTEL_INFLUX_* in `env`."""
    env = os.environ if env is None else env
    settings = {}
    for name in INFLUX_SETTINGS:
        value = given.get(name) or env.get(f"GPUTEL_INFLUX_{name.upper()}", "")
        settings[name] = value
    missing = [n for n in ("url", "bucket") if not settings[n]]
    if missing:
        names = ", ".join(f"GPUTEL_INFLUX_{n.upper()}" for n in missing)
        raise InvalidArgument(f"InfluxDB store needs {', '.join(missing)} (or {names})")
    return settings


def open_store(
    spec: str,
    catalog_granularity_s: float | None = None,
    write_catalog: bool = True,
    /,
    sqlite_synchronous: str = "full",
    **influx_opts: str | None,
) -> Store:
    """Open the store named by `spec`: `sqlite:PATH` or `influx` (see `influx_settings`).

    `sqlite_synchronous`: "full" (a commit is on disk) or "normal" (survives a process
    crash only); see `store.sqlite`.

    `catalog_granularity_s` bounds how far the catalog's `last_seen` may lag (InfluxDB default
    60 s; SQLite default exact, the collector passes its `--catalog-granularity-s`);
    `write_catalog=False` is for measuring the catalog's cost only.
    """
    kind, _, rest = spec.partition(":")
    if kind == "sqlite":
        if not rest:
            raise InvalidArgument("sqlite store needs a path: sqlite:PATH")
        from store.sqlite import SqliteStore

        granularity_ns = (
            1  # exact
            if catalog_granularity_s is None
            else max(1, int(catalog_granularity_s * 1_000_000_000))
        )
        return SqliteStore(
            rest,
            catalog=write_catalog,
            catalog_granularity_ns=granularity_ns,
            synchronous=sqlite_synchronous,
        )
    if kind == "influx" and not rest:
        from store.catalog import DEFAULT_GRANULARITY_NS
        from store.influx import InfluxStore

        settings = influx_settings(None, **influx_opts)
        granularity = (
            DEFAULT_GRANULARITY_NS
            if catalog_granularity_s is None
            else int(catalog_granularity_s * 1_000_000_000)
        )
        return InfluxStore(
            settings["url"],
            settings["org"],
            settings["bucket"],
            settings["token"],
            catalog_granularity_ns=granularity,
            write_catalog=write_catalog,
        )
    raise InvalidArgument(f"unknown store {spec!r}: use sqlite:PATH or influx")
