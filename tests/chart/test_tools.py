"""A missing tool fails the chart tests with the fix in the message; it never skips them."""

from __future__ import annotations

import pytest

from tests.chart.conftest import INSTALL_HINT, find_tool


def test_missing_tool_fails_with_the_install_hint() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"scripts/install-tools\.sh"):
        find_tool("gputel-no-such-tool")
    assert "scripts/install-tools.sh" in INSTALL_HINT
