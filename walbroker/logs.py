"""Structured logging for every gputel process: one JSON object per line unless on a terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON with its `extra` fields at top level."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """A readable line with the `extra` fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        )
        return f"{base} {extras}" if extras else base


def formatter(component: str, json_logs: bool | None = None) -> logging.Formatter:
    """JSON unless stderr is a terminal; GPUTEL_LOG_FORMAT=json|text decides when set."""
    fmt = os.environ.get("GPUTEL_LOG_FORMAT", "")
    if json_logs is None:
        json_logs = fmt == "json" if fmt in ("json", "text") else not sys.stderr.isatty()
    if json_logs:
        return JsonFormatter(component)
    return TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup(component: str, level: str = "INFO", json_logs: bool | None = None) -> None:
    """Configure the root logger for a process (call once, from a `main`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(component, json_logs))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
