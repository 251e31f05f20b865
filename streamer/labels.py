"""A parser for Prometheus label strings, the `labels_raw` column of a DCGM export.

Grammar (the Prometheus text exposition format): `name="value"` pairs separated by
commas, optionally wrapped in braces, with optional blanks around tokens and an
optional trailing comma. A name is `[A-Za-z_][A-Za-z0-9_]*`; inside a value, `\\"`,
`\\\\` and `\\n` are escapes and a comma is plain text. A repeated name is an error.
"""

from __future__ import annotations

import re

_PAIR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)', re.DOTALL)
# The common case (no blanks, no escapes): every pair at once, checked by rebuilding the text.
_SIMPLE_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="([^"\\]*)"')
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPED = {"n": "\n", "\\": "\\", '"': '"'}


class LabelsError(ValueError):
    """The text is not a valid Prometheus label string."""


def parse_labels(text: str) -> dict[str, str]:
    """Return the labels of a Prometheus label string; raise `LabelsError` if it is malformed."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    if "\\" not in body:
        pairs = _SIMPLE_PAIR.findall(body)
        labels = dict(pairs)
        if len(labels) == len(pairs) and ",".join(f'{k}="{v}"' for k, v in pairs) == body:
            return labels
    labels = {}
    pos, end = 0, len(body)
    while pos < end and not body[pos:].isspace():
        m = _PAIR.match(body, pos)
        if m is None:
            raise LabelsError(
                f"malformed label string at character {pos}: {body[pos : pos + 40]!r}"
            )
        name, value = m.group(1), m.group(2)
        if name in labels:
            raise LabelsError(f"label {name!r} repeated")
        labels[name] = _ESCAPE.sub(_unescape, value) if "\\" in value else value
        pos = m.end()
    return labels


def _unescape(m: re.Match[str]) -> str:
    """Return the character an escape sequence stands for (unknown escapes stay as written)."""
    return _UNESCAPED.get(m.group(1), m.group(0))
