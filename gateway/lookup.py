"""Resolving the `{id}` of /gpus/{id}: a uuid, or a bare host-local index matching one GPU."""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway import schemas
from gateway.errors import Conflict, NotFound
from gateway.times import format_time
from store import GpuSummary, Store, StoredPoint

_INDEX = re.compile(r"[0-9]{1,6}")
# A 409 lists at most this many candidates: an index is on every host of a large fleet.
MAX_CANDIDATES = 50
ID_HELP = (
    "The GPU's uuid, or a bare host-local index (like `1`) when exactly one host has that "
    "index and no GPU has it as its uuid; an index present on several hosts answers 409 "
    "with the candidates."
)


def resolve(store: Store, gpu_id: str) -> GpuSummary:
    """Return the GPU `gpu_id` names; 409 when an index is ambiguous, 404 when nothing has data.

    An exact uuid wins over an index: a GPU whose uuid is all digits ("5") stays reachable.
    """
    gpu = store.get_gpu(gpu_id)
    if gpu is not None:
        return gpu
    if _INDEX.fullmatch(gpu_id):
        found = store.gpus_by_index(int(gpu_id), MAX_CANDIDATES + 1)
        if len(found) == 1:
            return found[0]
        if found:
            hosts = f"{MAX_CANDIDATES}+" if len(found) > MAX_CANDIDATES else str(len(found))
            raise Conflict(
                f"GPU index {gpu_id} exists on {hosts} hosts; use one of the candidate uuids",
                candidates=[candidate(g) for g in found[:MAX_CANDIDATES]],
            )
    raise NotFound(f"no GPU with uuid or index {gpu_id[:64]!r} has data")


def candidate(gpu: GpuSummary) -> schemas.Candidate:
    """Return the short identity listed in a 409."""
    return {"uuid": gpu.uuid, "hostname": gpu.hostname, "gpu": gpu.gpu}


def describe(gpu: GpuSummary) -> schemas.Gpu:
    """Return the GPU's descriptor as the API shows it."""
    return {
        "uuid": gpu.uuid,
        "hostname": gpu.hostname,
        "gpu": gpu.gpu,
        "device": gpu.device,
        "model": gpu.model,
        "container": gpu.container or None,
        "pod": gpu.pod or None,
        "namespace": gpu.namespace or None,
        "first_seen": format_time(gpu.first_seen_ns),
        "last_seen": format_time(gpu.last_seen_ns),
    }


def latest_values(latest: Mapping[str, StoredPoint]) -> list[schemas.LatestValue]:
    """Return a GPU's newest values as the API shows them, ordered by metric."""
    return [
        {
            "metric": name,
            "time": format_time(p.time_ns),
            "value": p.value,
            "source_time": format_time(p.source_time_ns) if p.source_time_ns else None,
        }
        for name, p in sorted(latest.items())
    ]
