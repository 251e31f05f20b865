"""Binding a DCGM CSV header to the columns the reader uses, by name and case-insensitively.

Required: `timestamp`, `metric_name`, `gpu_id`, `Hostname`, `value`; a missing one is a
`SourceError` naming it. Optional: `uuid`, `device`, `modelName`, `container`, `pod`,
`namespace`, `labels_raw`. A known column named twice is a `SourceError` (ambiguous);
repeated unknown columns are ignored, and so are extra columns. A BOM is stripped.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUIRED_COLUMNS = ("timestamp", "metric_name", "gpu_id", "hostname", "value")
OPTIONAL_COLUMNS = ("uuid", "device", "modelname", "container", "pod", "namespace", "labels_raw")


class SourceError(Exception):
    """The file cannot be read as a DCGM export (unreadable, or its header is unusable)."""


@dataclass(frozen=True, slots=True)
class Columns:
    """Field positions of the known columns; a missing optional one points past the row."""

    width: int
    timestamp: int
    metric_name: int
    gpu_id: int
    hostname: int
    value: int
    uuid: int
    device: int
    modelname: int
    container: int
    pod: int
    namespace: int
    labels_raw: int

    @property
    def padded(self) -> bool:
        """Return True when some optional column is missing (rows get an empty field appended)."""
        return any(getattr(self, name) == self.width for name in OPTIONAL_COLUMNS)


def bind_columns(header: list[str]) -> Columns:
    """Return the positions of the known columns in `header`; raise `SourceError` if unusable."""
    known = set(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    position: dict[str, int] = {}
    for i, name in enumerate(header):
        key = name.strip().lstrip("\ufeff").lower()
        if key in position and key in known:
            raise SourceError(f"column {name.strip()!r} appears twice in the header (ambiguous)")
        position.setdefault(key, i)
    missing = [name for name in REQUIRED_COLUMNS if name not in position]
    if missing:
        raise SourceError(
            f"required column(s) missing from the CSV header: {', '.join(missing)} "
            f"(header: {_shown(header)}; is this a DCGM exporter CSV?)"
        )
    width = len(header)
    return Columns(width, **{name: position.get(name, width) for name in sorted(known)})


def _shown(header: list[str], limit: int = 200) -> str:
    """The header as a message may show it: escaped and cut, since a binary file's first "line"
    can be kilobytes of control characters that would garble the user's terminal."""
    text = ", ".join(h.strip() for h in header)
    return repr(text[:limit]) + (f" … ({len(text)} characters)" if len(text) > limit else "")
