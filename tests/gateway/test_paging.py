"""Telemetry pages neither skip nor repeat points while new data is written between pages."""

from __future__ import annotations

from gateway.times import format_time
from tests.gateway import data
from tests.gateway.data import METRICS, TIMES, S


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
    extra = [data.gpu(9, i) for i in range(3)]  # sort after every seeded uuid
    while True:
        args = {"limit": 2, **({"cursor": token} if token else {})}
        body = fresh_client.get("/api/v1/gpus", query_string=args).get_json()
        seen += [g["uuid"] for g in body["gpus"]]
        token = body["next_cursor"]
        if token is None:
            break
        if extra:
            fresh.store.write(data.points((extra.pop(),), TIMES[:1]))
    assert seen == sorted({g.uuid for g in data.GPUS} | {f"GPU-h9-{i}" for i in range(3)})
