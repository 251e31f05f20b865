"""Parsing the CSV's own timestamp into nanoseconds."""

from __future__ import annotations

import pytest

from streamer.timestamps import parse_timestamp_ns

T = 1_752_871_350 * 10**9  # 2025-07-18T20:42:30Z


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2025-07-18T20:42:30Z", T),
        ("2025-07-18T20:42:30.5Z", T + 500_000_000),
        ("2025-07-18T20:42:30.123456789Z", T + 123_456_789),
        ("2025-07-18 20:42:30", T),
        ("2025-07-18T22:42:30+02:00", T),
        ("2025-07-18T15:42:30-0500", T),
        (" 2025-07-18t20:42:30z ", T),
        ("1752871350", T),
        ("1752871350.25", T + 250_000_000),
        ("-1.5", -1_500_000_000),
    ],
)
def test_accepted_forms(text: str, ns: int) -> None:
    assert parse_timestamp_ns(text) == ns


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2025-13-18T20:42:30Z", "2025-07-18T20:42:30.1234567891Z", "1.2.3"]
)
def test_rejected_forms(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp_ns(text)
