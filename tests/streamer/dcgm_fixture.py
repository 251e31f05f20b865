"""Small hand-written DCGM CSV fixtures: one row per dict, every field double-quoted."""

from __future__ import annotations

from pathlib import Path

HEADER = (
    "timestamp", "metric_name", "gpu_id", "device", "uuid", "modelName", "Hostname",
    "container", "pod", "namespace", "value", "labels_raw",
)  # fmt: skip
UUID0 = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
UUID1 = "GPU-9a1c2b3d-1111-4222-8333-444455556666"
MODEL = "NVIDIA H100 80GB HBM3"


def labels_raw(uuid: str = UUID0, host: str = "h1", gpu: str = "0", **extra: str) -> str:
    """Return a DCGM label string for one series."""
    labels = {
        "DCGM_FI_DRIVER_VERSION": "535.129.03", "Hostname": host, "UUID": uuid,
        "__name__": "DCGM_FI_DEV_GPU_UTIL", "device": f"nvidia{gpu}", "gpu": gpu,
        "instance": f"{host}:9400", "job": "dgx_dcgm_exporter", "modelName": MODEL, **extra,
    }  # fmt: skip
    return ",".join(f'{k}="{v}"' for k, v in labels.items() if v)


def row(**fields: str) -> dict[str, str]:
    """Return a valid row (GPU 0 of host h1) with `fields` replaced."""
    base = {
        "timestamp": "2025-07-18T20:42:30Z", "metric_name": "DCGM_FI_DEV_GPU_UTIL",
        "gpu_id": "0", "device": "nvidia0", "uuid": UUID0, "modelName": MODEL,
        "Hostname": "h1", "container": "", "pod": "", "namespace": "", "value": "42",
        "labels_raw": labels_raw(),
    }  # fmt: skip
    return {**base, **fields}


def quoted(fields: list[str] | tuple[str, ...]) -> str:
    """Return one CSV record with every field double-quoted and inner quotes doubled."""
    return ",".join('"' + f.replace('"', '""') + '"' for f in fields)


def csv_text(
    rows: list[dict[str, str]], header: tuple[str, ...] | list[str] = HEADER, eol: str = "\n"
) -> str:
    """Return CSV text with `header` and one record per row (keys matched case-insensitively)."""
    lowered = [{k.lower(): v for k, v in r.items()} for r in rows]
    lines = [quoted(header)] + [quoted([r.get(h.lower(), "") for h in header]) for r in lowered]
    return eol.join(lines) + eol


def write_csv(path: Path, text: str, *, bom: bool = False) -> Path:
    """Write `text` as UTF-8 bytes (with a BOM if asked, line ends untouched)."""
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path
