"""Unit tests without a store: time parsing, durations, cursors, config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cursor
from gateway.config import GatewayConfig, from_args, from_env
from gateway.errors import BadRequest
from gateway.times import format_time, parse_duration, parse_time
from store.validate import MAX_NS

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2023-11-14T22:13:20Z", 1_700_000_000 * S),
        ("2023-11-14t22:13:20z", 1_700_000_000 * S),
        ("2023-11-14 22:13:20Z", 1_700_000_000 * S),
        ("2023-11-15T00:13:20+02:00", 1_700_000_000 * S),
        ("2023-11-14T16:43:20.5-05:30", 1_700_000_000 * S + S // 2),
        ("2023-11-14T22:13:20.000000001Z", 1_700_000_000 * S + 1),
        ("2023-11-14T22:13:20.123456789+00:00", 1_700_000_000 * S + 123_456_789),
        ("1700000000", 1_700_000_000 * S),
        ("1700000000.25", 1_700_000_000 * S + S // 4),
        ("1700000000.000000001", 1_700_000_000 * S + 1),
        ("0", 0),
    ],
)
def test_parse_time(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("yesterday", "neither RFC 3339 nor Unix seconds"),
        ("2023-11-14T22:13:20", "neither RFC 3339 nor Unix seconds"),  # no offset
        ("2023-13-01T00:00:00Z", "month must be in 1..12"),
        ("2023-02-30T00:00:00Z", "not a valid date-time"),
        ("2023-11-14T22:13:60Z", "not a valid date-time"),
        ("2023-11-14T22:13:20+24:00", "invalid UTC offset"),
        ("1969-12-31T23:59:59Z", "before 1970"),
        ("-1", "neither RFC 3339 nor Unix seconds"),
        ("1e9", "neither RFC 3339 nor Unix seconds"),
        ("1.0000000001", "more than 9 fractional digits"),
        ("9999999999999", "neither RFC 3339 nor Unix seconds"),
        ("9999999999", "latest storable time"),
    ],
)
def test_parse_time_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_time(text)


@pytest.mark.parametrize("ns", [0, 1, S, 1_700_000_000 * S + 123, MAX_NS])
def test_format_time_round_trips(ns: int) -> None:
    text = format_time(ns)
    assert text.endswith("Z") and len(text) == 30
    assert parse_time(text) == ns


def test_durations() -> None:
    assert parse_duration("1m") == 60 * S
    assert parse_duration("500ms") == S // 2
    assert parse_duration("2h") == 7200 * S
    for bad in ("0s", "1", "m", "1.5m", "1w", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_cursor_round_trip_and_binding() -> None:
    fp = cursor.fingerprint("telemetry", "GPU-1", 0, 10)
    token = cursor.encode([5, "DCGM_FI_DEV_GPU_UTIL"], fp)
    assert cursor.time_key(token, fp) == (5, "DCGM_FI_DEV_GPU_UTIL")
    other = cursor.fingerprint("telemetry", "GPU-2", 0, 10)
    with pytest.raises(BadRequest, match="different query"):
        cursor.time_key(token, other)
    for bad in ("", "!!!", "bm90IGpzb24", cursor.encode(["x"], fp), token[:-3]):
        with pytest.raises(BadRequest):
            cursor.time_key(bad, fp)


def test_a_forged_cursor_no_store_could_answer_is_refused() -> None:
    """A lone surrogate is valid JSON but no UTF-8: 400, not a store error; True is no version."""
    import base64
    import json

    fp = cursor.fingerprint("gpus")
    for doc in ([1, fp, ["\ud800"]], [True, fp, ["GPU-1"]], [1.0, fp, ["GPU-1"]]):
        forged = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()
        with pytest.raises(BadRequest):
            cursor.uuid_key(forged, fp)
    longest = cursor.encode(["\U0001f600" * 256], fp)
    assert len(longest) <= cursor.MAX_LEN
    assert cursor.parse(longest) == longest and cursor.uuid_key(longest, fp) == "\U0001f600" * 256
    for bad in ("", "a b", "x" * (cursor.MAX_LEN + 1), "abc%", "ab=c"):
        with pytest.raises(ValueError):
            cursor.parse(bad)


def test_config_from_flags_and_env() -> None:
    env = {
        "GPUTEL_GATEWAY_STORE": "influx",
        "GPUTEL_INFLUX_URL": "http://db:8086",
        "GPUTEL_INFLUX_TOKEN": "t0ken",
        "GPUTEL_GATEWAY_WORKERS": "3",
    }
    config = from_env(env)
    assert (config.store, config.influx_url, config.workers) == ("influx", "http://db:8086", 3)
    assert "t0ken" not in repr(config)
    flagged = from_args(["--store", "sqlite:/tmp/x.db", "--bind", "0.0.0.0:9"], env)
    assert (flagged.store, flagged.bind, flagged.influx_token) == (
        "sqlite:/tmp/x.db",
        "0.0.0.0:9",
        "t0ken",
    )
    assert from_env(config.to_env()) == config
    # gevent on both stores (slow clients hold no thread); threads matter to gthread only.
    assert (config.worker_class, config.head_timeout_s, config.max_connections) == (
        "gevent",
        5.0,
        1000,
    )
    gthread = from_args(["--worker-class", "gthread"], env)
    assert (gthread.threads, from_args(["--threads", "3"], env).threads) == (4, 3)
    slow = from_args(["--head-timeout-s", "0.5", "--max-connections", "20"], env)
    assert (slow.head_timeout_s, slow.max_connections) == (0.5, 20)
    assert from_env(slow.to_env()) == slow
    assert GatewayConfig().workers == 1
    assert (GatewayConfig().threads, GatewayConfig(worker_class="gthread").threads) == (1, 4)
    with pytest.raises(ValueError, match="worker_class"):
        GatewayConfig(worker_class="eventlet")
    bad_flags = (["--threads", "0"], ["--worker-class", "tornado"], ["--head-timeout-s", "0"])
    for bad in (["--store", "postgres"], ["--max-connections", "0"], *bad_flags):
        with pytest.raises(SystemExit):
            from_args(bad, {})


@given(st.integers(min_value=0, max_value=2**63 - 2))
def test_format_time_matches_datetime_and_round_trips(ns: int) -> None:
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)).strftime(
        "%Y-%m-%dT%H:%M:%S"
    )
    assert format_time(ns) == f"{stamp}.{frac:09d}Z"
    assert parse_time(format_time(ns)) == ns


def test_worker_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    """gunicorn calls `post_worker_init` once a worker loaded the app (every worker class)."""
    import gc

    from gateway import gunicorn_conf
    from gputel import gc_policy

    before = gc.get_threshold()
    worker = SimpleNamespace(cfg=SimpleNamespace(is_ssl=False))  # a plain-HTTP worker
    try:
        gunicorn_conf.post_worker_init(worker)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (gc_policy.GEN0_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
