"""`store.influx_migrate` and `gputel-store migrate-layout` against a real InfluxDB 1.8.

Legacy points are written as raw line protocol (the first layout's writer is gone); what the
migration wrote is read back with InfluxQL straight from the new measurement, not through the
store's read methods, so these tests check the stored layout itself.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from proto.batch import Gpu
from store import open_store, schema
from store.cli import main
from store.influx import InfluxStore
from store.influx_migrate import Migrated, migrate, migrate_layout, next_window
from tests.fixtures.influx import InfluxConn, InfluxServer
from tests.store.helpers import T0, S, batch

UTIL, TEMP, FB = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_FB_USED"
GPUS = [
    Gpu("GPU-a", "node-1", 0, "nvidia0", "NVIDIA H100 80GB HBM3"),  # no k8s tags
    Gpu("GPU-b", "node-1", 1, "nvidia1", "", "trainer", "job-7", "ml"),  # no model
    Gpu("GPU-c", "node-2", 0, "nvidia0", "A100, PCIe=x", "", "infer-1", "serving"),
]
METRICS = [UTIL, TEMP, FB]
# T0 and T0 + 1 s: the first window's edge (InfluxDB 1.8 reads `range(stop:)` inclusively);
# then points two and ten days later (windows grow across the gaps).
TIMES = [T0, T0 + S, T0 + S + 1, T0 + 2 * 86_400 * S, T0 + 10 * 86_400 * S]
DAY = 86_400 * S

Stored = tuple[tuple[tuple[str, str], ...], str, int, float, int]  # tags, metric, t, value, st


def _escape(text: str) -> str:
    """Escape a line-protocol tag key or value."""
    return text.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def legacy_line(gpu: Gpu, metric: str, t: int, value: float | None, source: int | None) -> str:
    """Return one point of the legacy layout (a field left out when None)."""
    tags = schema.gpu_tags(gpu) | {schema.TAG_METRIC: metric}
    key = ",".join(f"{k}={_escape(v)}" for k, v in sorted(tags.items()))
    fields = [f"value={value!r}"] if value is not None else []
    fields += [f"source_time={source}i"] if source is not None else []
    return f"{schema.LEGACY_MEASUREMENT},{key} {','.join(fields)} {t}"


def value_of(gi: int, mi: int, t: int) -> float:
    """A value unique to (GPU, metric, time), so a mixed-up point cannot match."""
    return (t - T0) / S + gi * 1000 + mi / 10


def source_of(gi: int, mi: int, t: int) -> int:
    """A source time unique to (GPU, metric, time)."""
    return t - S - gi * 1_000 - mi


def legacy_fleet() -> tuple[list[str], list[Stored]]:
    """Return the legacy lines and the points the new layout must then hold."""
    lines, expected = [], []
    for gi, gpu in enumerate(GPUS):
        tags = tuple(sorted(schema.gpu_tags(gpu).items()))
        for mi, metric in enumerate(METRICS):
            for t in TIMES:
                v, st = value_of(gi, mi, t), source_of(gi, mi, t)
                lines.append(legacy_line(gpu, metric, t, v, st))
                expected.append((tags, metric, t, v, st))
    # Skipped: a point without source_time and one without value.
    lines.append(legacy_line(GPUS[0], UTIL, T0 + 5 * S, 7.0, None))
    lines.append(legacy_line(GPUS[1], TEMP, T0 + 6 * S, None, T0))
    return lines, sorted(expected)


def http(server: InfluxServer, path: str, params: dict[str, str], body: bytes | None) -> Any:
    """POST to the server's v1 API; return the JSON answer (None for an empty one)."""
    url = f"{server.url}{path}?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, data=body or b"", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    return json.loads(text) if text else None


def write_lines(server: InfluxServer, db: str, lines: list[str]) -> None:
    """Write raw line protocol (ns precision) to database `db`."""
    http(server, "/write", {"db": db, "precision": "ns"}, "\n".join(lines).encode())


def influxql(server: InfluxServer, db: str, q: str) -> list[dict[str, Any]]:
    """Return the series of one InfluxQL statement's answer (times in ns)."""
    answer = http(server, "/query", {"db": db, "q": q, "epoch": "ns"}, None)
    result = answer["results"][0]
    assert "error" not in result, result
    return list(result.get("series", []))


def stored_points(server: InfluxServer, db: str) -> list[Stored]:
    """Return every (metric) point of the new measurement, with its series' non-empty tags."""
    out: list[Stored] = []
    for series in influxql(server, db, f'SELECT * FROM "{schema.MEASUREMENT}" GROUP BY *'):
        assert schema.TAG_METRIC not in series["tags"]  # no series of it has a metric tag
        tags = tuple(sorted((k, v) for k, v in series["tags"].items() if v))
        columns = series["columns"]
        for row in series["values"]:
            fields = dict(zip(columns, row, strict=True))
            out.extend(_metric_points(tags, fields))
    return sorted(out)


def _metric_points(tags: tuple[tuple[str, str], ...], fields: dict[str, Any]) -> Iterator[Stored]:
    """Yield the points of one row of the new layout (one per metric field it holds)."""
    for name, value in fields.items():
        if name == "time" or name.endswith(schema.SOURCE_SUFFIX) or value is None:
            continue
        source = fields.get(schema.source_field(name))
        assert isinstance(source, int), (tags, name, fields)  # source_time kept, an integer
        yield tags, name, fields["time"], value, source


def legacy_count(server: InfluxServer, db: str) -> int:
    """Return the number of legacy `value` points (the migration must keep them)."""
    series = influxql(server, db, f'SELECT count("value") FROM "{schema.LEGACY_MEASUREMENT}"')
    return int(series[0]["values"][0][1]) if series else 0


@pytest.fixture
def conn(influx_server: InfluxServer) -> InfluxConn:
    """Return a fresh database holding the legacy fleet."""
    created = influx_server.create_database()
    write_lines(influx_server, created.bucket, legacy_fleet()[0])
    return created


@contextmanager
def open_influx(conn: InfluxConn) -> Iterator[InfluxStore]:
    """Open the InfluxDB store of `conn` for a `with` block."""
    store = open_store("influx", **conn.store_opts())
    assert isinstance(store, InfluxStore)
    try:
        yield store
    finally:
        store.close()


def test_every_legacy_point_is_copied_once_with_its_tags_and_source_time(
    influx_server: InfluxServer, conn: InfluxConn
) -> None:
    lines, expected = legacy_fleet()
    # A collector of the new layout wrote meanwhile: its point stays as it is.
    newer = batch([(GPUS[0], UTIL, T0 + 3 * DAY, 99.5)])
    with open_influx(conn) as store:
        store.write(newer)
        # Small batches and windows: many of each, and points on window edges.
        done = migrate(store, batch_points=7, target_points=5)
    assert done == Migrated(len(expected), 2, T0, TIMES[-1])
    kept = (
        tuple(sorted(schema.gpu_tags(GPUS[0]).items())),
        UTIL,
        T0 + 3 * DAY,
        99.5,
        T0 + 3 * DAY - S,
    )
    assert stored_points(influx_server, conn.bucket) == sorted([*expected, kept])
    # One series per GPU, exactly the GPU's tags (an empty model or k8s tag left out).
    series = influxql(influx_server, conn.bucket, f'SHOW SERIES FROM "{schema.MEASUREMENT}"')
    keys = sorted(row[0] for row in series[0]["values"])
    assert len(keys) == len(GPUS)
    assert not any("model=" in k for k in keys if "uuid=GPU-b" in k)
    # The skipped points are nowhere in the new layout.
    at = influxql(
        influx_server,
        conn.bucket,
        f'SELECT * FROM "{schema.MEASUREMENT}" WHERE time = {T0 + 5 * S} OR time = {T0 + 6 * S}',
    )
    assert at == []
    assert legacy_count(influx_server, conn.bucket) == len(expected) + 1  # legacy data kept
    assert len(lines) == len(expected) + 2


def test_a_second_run_rewrites_the_same_points(
    influx_server: InfluxServer, conn: InfluxConn
) -> None:
    _, expected = legacy_fleet()
    with open_influx(conn) as store:
        assert migrate_layout(store) == len(expected)
        first = stored_points(influx_server, conn.bucket)
        assert migrate_layout(store, batch_points=1) == len(expected)
    with open_influx(conn) as store:  # a new process: its catalog writer starts empty
        assert migrate(store, target_points=1) == Migrated(len(expected), 2, T0, TIMES[-1])
    assert stored_points(influx_server, conn.bucket) == first == expected
    count = influxql(influx_server, conn.bucket, f'SELECT count(*) FROM "{schema.MEASUREMENT}"')
    counts = dict(zip(count[0]["columns"], count[0]["values"][0], strict=True))
    per_metric = len(GPUS) * len(TIMES)
    assert {k: v for k, v in counts.items() if k != "time"} == {
        f"count_{name}": per_metric
        for metric in METRICS
        for name in (metric, schema.source_field(metric))
    }


def test_no_legacy_data_copies_nothing(influx_server: InfluxServer) -> None:
    with open_influx(influx_server.create_database()) as store:
        assert migrate(store) == Migrated(0, 0, None, None)
        assert migrate_layout(store) == 0


def test_windows_follow_the_data_density() -> None:
    assert next_window(S, 0, 100) == 4 * S  # empty: grow, at most 4x
    assert next_window(S, 10, 100) == 4 * S
    assert next_window(S, 200, 100) == S // 2  # too full: shrink to the target
    assert next_window(S, 10**12, 100) == 1_000_000  # never below 1 ms
    assert next_window(30 * DAY, 0, 100) == 7 * DAY  # never above 7 days
    with pytest.raises(ValueError):
        migrate(None, batch_points=0)  # type: ignore[arg-type]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, conn: InfluxConn) -> InfluxConn:
    """Clear GPUTEL_* settings but the token, as an operator's shell would hold it."""
    for name in [n for n in os.environ if n.startswith("GPUTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GPUTEL_INFLUX_TOKEN", conn.token)
    return conn


def test_migrate_layout_command(
    influx_server: InfluxServer, env: InfluxConn, capsys: pytest.CaptureFixture[str]
) -> None:
    _, expected = legacy_fleet()
    args = ["migrate-layout", "--store", "influx", "--influx-url", env.url]
    assert main([*args, "--influx-bucket", env.bucket]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert list(summary) == ["command", "points", "skipped", "seconds", "next"]
    assert summary["command"] == "migrate-layout"
    assert (summary["points"], summary["skipped"]) == (len(expected), 2)
    assert summary["seconds"] >= 0
    advice = summary["next"]
    assert f"influx delete --bucket {env.bucket} --start 1970-01-01T00:00:00Z" in advice
    assert """--predicate '_measurement="gpu_telemetry"'""" in advice
    assert """DROP MEASUREMENT "gpu_telemetry\"""" in advice
    assert env.token not in out.out + out.err
    assert stored_points(influx_server, env.bucket) == expected
    # Without a bucket: an error naming what is missing, exit 1.
    assert main(args) == 1
    assert "needs bucket" in capsys.readouterr().err


def test_migrate_layout_on_sqlite_copies_nothing(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"sqlite:{tmp_path / 't.db'}"
    assert main(["migrate-layout", "--store", spec]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["command"] == "migrate-layout" and summary["points"] == 0
    assert "SQLite" in summary["note"]
    assert main(["backfill-catalog", "--store", spec]) == 0  # unchanged by the refactor
    summary = json.loads(capsys.readouterr().out)
    assert list(summary) == ["command", "gpus", "seconds"] and summary["gpus"] == 0
    assert main(["migrate-layout", "--store", "sqlite:"]) == 1
    assert "sqlite store needs a path" in capsys.readouterr().err
