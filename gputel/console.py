"""What `gputel-up` writes: its children's logs, its banner and its status line.

On a terminal: text, each child's line prefixed with its name; once everything is up and the
banner is printed, children's lines below WARNING are held back (`--verbose` shows them) so the
banner and the status lines stay readable. Not on a terminal (a file, a pipe, `make run > log`):
one JSON object per line, the children's own JSON lines passed through and gputel-up's own
messages in the same shape, so the whole stream is machine-readable.
Thread-safe: one lock orders every write.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

LOUD = ("WARNING", "ERROR", "CRITICAL")


class Console:
    """The output of one gputel-up run."""

    def __init__(self, out: IO[str], json_lines: bool, verbose: bool = False) -> None:
        self.out, self.json_lines, self.verbose = out, json_lines, verbose
        self.colour = not json_lines and out.isatty()
        self._quiet = False
        self._lock = threading.Lock()

    @classmethod
    def for_stdout(cls, log_format: str, verbose: bool) -> Console:
        """JSON unless stdout is a terminal; GPUTEL_LOG_FORMAT (json|text) decides when set."""
        return cls.for_stream(sys.stdout, log_format, verbose)

    @classmethod
    def for_stream(cls, out: IO[str], log_format: str, verbose: bool = False) -> Console:
        """JSON unless `out` is a terminal; GPUTEL_LOG_FORMAT (json|text) decides when set."""
        json_lines = log_format == "json" if log_format in ("json", "text") else not out.isatty()
        return cls(out, json_lines, verbose)

    @property
    def child_format(self) -> str:
        """The GPUTEL_LOG_FORMAT the children get."""
        return "json" if self.json_lines else "text"

    def child(self, name: str, colour: str, raw: str) -> None:
        """One line a child wrote."""
        text = raw.rstrip()
        if self.json_lines:
            # A line that is not a JSON log record is a crash or usage message (what a terminal
            # shows even after the banner, see _is_loud): level warning, not info.
            self._write(text if _is_json_object(text) else self._record(name, text, "warning"))
        elif self.verbose or not self._quiet or _is_loud(text):
            prefix = f"\x1b[{colour}m{name:>12}\x1b[0m |" if self.colour else f"{name:>12} |"
            self._write(f"{prefix} {text}")

    def say(self, msg: str, **extra: Any) -> None:
        """One message of gputel-up's own (`extra` goes into the JSON record)."""
        self._write(self._record("gputel-up", msg, **extra) if self.json_lines else msg)

    def fail(self, msg: str) -> None:
        """gputel-up's last word when it gives up (level `error` in JSON)."""
        self._write(self._record("gputel-up", msg, level="error") if self.json_lines else msg)

    def banner(self, text: str, **extra: Any) -> None:
        """The banner; from now on children's routine lines are held back on a terminal."""
        if self.json_lines:  # the whole text too: its commands are meant to be copied
            self.say(text.strip().splitlines()[0], banner=text.strip(), **extra)
        else:
            self._write(text)
        self._quiet = True

    def _record(self, component: str, msg: str, level: str = "info", **extra: Any) -> str:
        now = time.time()
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        )
        doc = {"ts": stamp, "level": level, "component": component, "msg": msg, **extra}
        return json.dumps(doc, default=str)

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                self.out.write(text + "\n")
                self.out.flush()
            except (OSError, ValueError):  # the terminal was closed: stopping must go on
                pass


def _is_json_object(text: str) -> bool:
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _is_loud(text: str) -> bool:
    """A text log line at WARNING or above ('2024-05-01 12:00:00,123 WARNING name: …'),
    or a line that is not a log line at all (a traceback, a crash message)."""
    words = text.split(" ", 3)
    if len(words) >= 3 and words[0][:2].isdigit() and ":" in words[1]:
        return words[2] in LOUD
    return True
