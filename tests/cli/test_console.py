"""What gputel-up writes when its output is not a terminal: one JSON object per line."""

from __future__ import annotations

import io
import json

from gputel.console import Console


def test_json_lines_carry_a_level_that_says_what_went_wrong() -> None:
    """A child's plain-text line (`gputel-streamer: error: …`, a traceback) was passed on at
    level info, and gputel-up's own last words were plain text amid the JSON."""
    out = io.StringIO()
    console = Console(out, json_lines=True)
    own = json.dumps({"ts": "t", "level": "info", "component": "streamer", "msg": "streaming"})
    console.child("streamer-0", "32", own + "\n")
    console.child("streamer-0", "32", "gputel-streamer: error: --pass-interval must be positive\n")
    console.say("gputel-up: stopped")
    console.fail("gputel-up: port 7070 is already in use")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[0] == json.loads(own)  # a child's own record passes unchanged
    assert [(r["level"], r["component"], r["msg"]) for r in records[1:]] == [
        ("warning", "streamer-0", "gputel-streamer: error: --pass-interval must be positive"),
        ("info", "gputel-up", "gputel-up: stopped"),
        ("error", "gputel-up", "gputel-up: port 7070 is already in use"),
    ]


def test_text_mode_writes_the_lines_as_they_are() -> None:
    out = io.StringIO()
    console = Console(out, json_lines=False)
    console.child("streamer-0", "32", "gputel-streamer: error: bad\n")
    console.fail("gputel-up: port 7070 is already in use")
    assert out.getvalue().splitlines() == [
        "  streamer-0 | gputel-streamer: error: bad",
        "gputel-up: port 7070 is already in use",
    ]
