"""Response bodies as TypedDicts: views build them (checked by mypy), OpenAPI derives from them.

`gateway.openapi` turns these types into JSON Schema (through pydantic), so the document and
the code cannot drift apart; the schemathesis test checks real responses against it.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
SourceTime = Annotated[
    Time | None,
    Field(
        description="The point's own time in its source (the DCGM export's timestamp or the "
        "scrape's sample time); null when unknown and for window aggregates. `time` is the "
        "time it was ingested, or the same as this with the streamer's --time source."
    ),
]


class Gpu(TypedDict):
    """One GPU: its uuid is the identity; `gpu` is its index on its host (repeats across hosts)."""

    uuid: str
    hostname: str
    gpu: Annotated[int, Field(ge=0, description="Host-local GPU index (0..7 on a DGX).")]
    device: str
    model: str
    container: str | None
    pod: str | None
    namespace: str | None
    first_seen: Annotated[Time, Field(description="Time of its oldest stored point.")]
    last_seen: Annotated[
        Time,
        Field(
            description="Time of its newest stored point, from the GPU catalog: it may lag "
            "that point by less than the catalog granularity (the collector's "
            "--catalog-granularity-s, 60 s by default)."
        ),
    ]


class GpuPage(TypedDict):
    """A page of GPUs in catalog order; `next_cursor` is null on the last page."""

    gpus: list[Gpu]
    next_cursor: str | None


class LatestValue(TypedDict):
    """The newest stored value of one metric."""

    metric: str
    time: Time
    value: float
    source_time: SourceTime


class GpuDetail(TypedDict):
    """A GPU's descriptor and the newest value of each of its metrics, ordered by metric."""

    gpu: Gpu
    latest: list[LatestValue]


class LatestPage(TypedDict):
    """The newest values of the asked metrics for a page of GPUs in catalog order.

    A GPU without any of the metrics is listed with an empty `latest`; `next_cursor` is
    null on the last page.
    """

    metrics: Annotated[list[str], Field(description="The metrics asked for, sorted.")]
    gpus: list[GpuDetail]
    next_cursor: str | None


class Point(TypedDict):
    """One point; with downsampling, `time` is the window's start (aligned to the epoch)."""

    time: Time
    metric: str
    value: float
    source_time: SourceTime


class Downsampling(TypedDict):
    """The window and aggregate applied to the points."""

    every: str
    agg: Literal["mean", "min", "max", "last"]


class TelemetryPage(TypedDict):
    """A page of one GPU's points ordered by (time, metric); bounds are inclusive."""

    gpu: Gpu
    start_time: Annotated[Time | None, Field(description="Inclusive lower bound, if given.")]
    end_time: Annotated[Time | None, Field(description="Inclusive upper bound, if given.")]
    metrics: Annotated[list[str] | None, Field(description="The metric filter, if given.")]
    downsampling: Downsampling | None
    points: list[Point]
    next_cursor: str | None


class HostList(TypedDict):
    """A page of hostnames with data, in catalog order; `next_cursor` is null on the last page."""

    hosts: list[str]
    next_cursor: str | None


class MetricList(TypedDict):
    """A page of metric names with data, sorted; `next_cursor` is null on the last page."""

    metrics: list[str]
    next_cursor: str | None


class ModelList(TypedDict):
    """A page of GPU model names with data, sorted; `next_cursor` is null on the last page."""

    models: list[str]
    next_cursor: str | None


class Status(TypedDict):
    """A probe's answer."""

    status: Literal["ok", "ready"]


class Candidate(TypedDict):
    """A GPU that an ambiguous index could mean."""

    uuid: str
    hostname: str
    gpu: int


class Problem(TypedDict):
    """An RFC 9457 problem detail."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    parameter: NotRequired[Annotated[str, Field(description="The offending query parameter.")]]
    candidates: NotRequired[
        Annotated[list[Candidate], Field(description="GPUs an ambiguous index matches (409).")]
    ]
    known_metrics: NotRequired[
        Annotated[list[str], Field(description="The metric names with data (unknown metric).")]
    ]
