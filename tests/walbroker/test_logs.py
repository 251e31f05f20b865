"""Structured logs: one JSON object per line (extras at top level), or text when asked."""

from __future__ import annotations

import json
import logging

from walbroker import logs


def record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("walbroker.test", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_lines_carry_component_message_and_extras(monkeypatch):
    monkeypatch.setenv("GPUTEL_LOG_FORMAT", "json")
    doc = json.loads(logs.formatter("walbroker").format(record(loop="log-writer", n=3)))
    assert doc["component"] == "walbroker" and doc["msg"] == "hello you"
    assert doc["level"] == "info" and doc["loop"] == "log-writer" and doc["n"] == 3
    assert doc["ts"].endswith("Z")


def test_text_when_asked(monkeypatch):
    monkeypatch.setenv("GPUTEL_LOG_FORMAT", "text")
    line = logs.formatter("walbroker").format(record(loop="log-writer"))
    assert "hello you" in line and "loop=log-writer" in line and not line.startswith("{")
