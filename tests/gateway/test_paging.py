"""Telemetry pages neither skip nor repeat points while new data is written between pages."""

from __future__ import annotations

import json

import pytest

from gateway.times import format_time
from proto.batch import Gpu
from store.catalog import gpu_key
from store.schema import MAX_TAG_LEN
from tests.gateway import data
from tests.gateway.data import METRICS, TIMES, S
from tests.store.helpers import batch


def test_pages_while_writing_lose_and_repeat_nothing(fresh, fresh_client) -> None:
    target = data.GPUS[0]
    url = f"/api/v1/gpus/{target.uuid}/telemetry"
    served: list[tuple[str, str]] = []
    written = list(TIMES)
    token = None
    for page_no in range(100):
        args = {"limit": 3, **({"cursor": token} if token else {})}
        body = fresh_client.get(url, query_string=args).get_json()
        served += [(p["time"], p["metric"]) for p in body["points"]]
        token = body["next_cursor"]
        if token is None:
            break
        if page_no < 5:  # newer points for this GPU (and another) between pages
            t = written[-1] + S
            written.append(t)
            fresh.store.write(data.points((target, data.GPUS[1]), (t,)))
    assert token is None
    assert len(served) == len(set(served)), "a point was served twice"
    assert served == [(format_time(t), m) for t in written for m in sorted(METRICS)]


def test_gpu_list_pages_while_gpus_appear(fresh, fresh_client) -> None:
    seen: list[str] = []
    token = None
    last = max(gpu_key(g.uuid) for g in data.GPUS)
    extra = [g for g in (data.gpu(9, i) for i in range(64)) if gpu_key(g.uuid) > last][:3]
    assert len(extra) == 3  # GPUs that sort after every seeded one in catalog order
    added = {g.uuid for g in extra}
    while True:
        args = {"limit": 2, **({"cursor": token} if token else {})}
        body = fresh_client.get("/api/v1/gpus", query_string=args).get_json()
        seen += [g["uuid"] for g in body["gpus"]]
        token = body["next_cursor"]
        if token is None:
            break
        if extra:
            fresh.store.write(data.points((extra.pop(),), TIMES[:1]))
    assert seen == sorted({g.uuid for g in data.GPUS} | added, key=gpu_key)


def test_page_bytes_match_the_stored_points(fresh, fresh_client) -> None:
    """Every point of every page, byte for byte: time to the nanosecond, metric, exact value.

    Several points share each timestamp and timestamps differ only in their nanoseconds, so a
    page that formats each distinct time once must still stamp every point with its own time.
    """
    target = data.GPUS[0]
    t1 = TIMES[-1] + S
    stamps = [t1, t1 + 1, t1 + 999_999_999, t1 + S]
    odd = ((target, 'a,metric "quoted"', t1, 0.1 + 0.2), (target, data.UTIL, t1 + 1, 1e-300))
    fresh.store.write(batch([*odd, *((target, data.TEMP, t, -2.5) for t in stamps)]))
    expected = [
        {
            "time": format_time(p.time_ns),
            "metric": p.metric,
            "value": p.value,
            "source_time": format_time(p.source_time_ns),
        }
        for p in fresh.store.query_points(target.uuid, t1, t1 + S)
    ]
    assert len(expected) == 6
    served, token = [], None
    while True:
        args = {"start_time": format_time(t1), "end_time": format_time(t1 + S), "limit": 4}
        resp = fresh_client.get(
            f"/api/v1/gpus/{target.uuid}/telemetry",
            query_string={**args, **({"cursor": token} if token else {})},
        )
        body = json.loads(resp.get_data())
        served += body["points"]
        # Same keys in the same order, compact, as the encoder of the previous release wrote.
        raw = resp.get_data()
        assert json.dumps(body["points"], separators=(",", ":")).encode() in raw
        token = body["next_cursor"]
        if token is None:
            break
    assert served == expected
    assert served[0] == {
        "time": format_time(t1),
        "metric": data.TEMP,
        "value": -2.5,
        "source_time": format_time(t1 - S),
    }
    assert (served[1]["metric"], served[1]["value"]) == ('a,metric "quoted"', 0.1 + 0.2)


@pytest.mark.parametrize("limit", [3, 5, 10])
def test_a_downsampled_page_never_hands_out_a_cursor_to_an_empty_page(client, limit) -> None:
    """The data ends long before end_time: the page holding the last window ends the paging."""
    args = {
        "every": "1s",
        "metric": data.UTIL,
        "limit": str(limit),
        "start_time": format_time(data.T0),
        "end_time": format_time(data.T0 + 3600 * data.S),
    }
    url = f"/api/v1/gpus/{data.GPUS[0].uuid}/telemetry"
    seen, pages, cursor_ = [], 0, None
    while True:
        body = client.get(
            url, query_string={**args, **({"cursor": cursor_} if cursor_ else {})}
        ).get_json()
        assert body["points"], f"page {pages + 1} is empty"
        seen += body["points"]
        pages += 1
        cursor_ = body["next_cursor"]
        if cursor_ is None:
            break
    assert len(seen) == len(data.TIMES) and pages == -(-len(data.TIMES) // limit)


def _walk(client, url: str, key: str, extra: dict | None = None) -> list:
    """Every item of a paged list, one per page (each page's cursor is the next's)."""
    items, token = [], None
    while True:
        args = {**(extra or {}), "limit": 1, **({"cursor": token} if token else {})}
        resp = client.get(url, query_string=args)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        body = resp.get_json()
        items += body[key]
        token = body["next_cursor"]
        if token is None:
            return items


def test_every_cursor_the_api_hands_out_is_accepted_back(fresh, fresh_client) -> None:
    """Names as long as a store takes, in 4-byte UTF-8: each page's cursor leads on."""
    odd = Gpu(
        "GPU-" + "\U0001f600" * (MAX_TAG_LEN - 4), "\u65e5" * MAX_TAG_LEN, 0, "d",
        "\U0001f3ae" * MAX_TAG_LEN,
    )  # fmt: skip
    metric = "M" * MAX_TAG_LEN
    fresh.store.write(data.points((odd,), TIMES[:2], (metric, data.UTIL)))
    uuids = [g["uuid"] for g in _walk(fresh_client, "/api/v1/gpus", "gpus")]
    assert sorted(uuids) == sorted([odd.uuid, *(g.uuid for g in data.GPUS)])
    assert odd.hostname in _walk(fresh_client, "/api/v1/hosts", "hosts")
    assert metric in _walk(fresh_client, "/api/v1/metrics", "metrics")
    assert odd.model in _walk(fresh_client, "/api/v1/models", "models")
    url = f"/api/v1/gpus/{odd.uuid}/telemetry"
    points = _walk(fresh_client, url, "points", {"start_time": "0"})
    assert len(points) == 4
