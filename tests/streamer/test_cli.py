"""`gputel-streamer` start-up errors: one line on stderr, a non-zero exit code, no traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

from gputel.up import UpError, csv_path
from tests.streamer.dcgm_fixture import HEADER, csv_text, row
from tests.streamer.streaming import STREAMER


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STREAMER, "--metrics-listen", "", *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0]


def test_missing_csv_file(tmp_path):
    result = run_cli("--broker", "127.0.0.1:1", "--csv", str(tmp_path / "nope.csv"))
    assert_one_line_error(result, "nope.csv")


def test_missing_required_column_is_named(tmp_path):
    header = [h for h in HEADER if h != "gpu_id"]
    path = tmp_path / "no_gpu_id.csv"
    path.write_text(csv_text([row()], header=header), encoding="utf-8")
    result = run_cli("--broker", "127.0.0.1:1", "--csv", str(path))
    assert_one_line_error(result, "gpu_id")


@pytest.mark.parametrize(
    ("args", "word"),
    [
        ([], "--broker"),
        (["--broker", "b:1", "--passes", "0"], "--passes"),
        (["--broker", "b:1", "--batch-size", "0"], "--batch-size"),
        (
            ["--broker", "b:1", "--scrape", "http://h:1/metrics", "--scrape-max-series", "0"],
            "--scrape-max-series",
        ),
    ],
)
def test_bad_configuration(args, word):
    assert_one_line_error(run_cli(*args), word)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:-1/x", "http://[::1/x", "http://127.0.0.1:99999/x", "ftp://h/x"]
)
def test_a_scrape_url_the_scraper_cannot_fetch_fails_at_start_and_is_named(url):
    result = run_cli("--broker", "127.0.0.1:1", "--scrape", url)
    assert result.returncode == 1
    assert_one_line_error(result, url)


def test_credentials_in_a_scrape_url_are_refused_at_start_without_showing_them():
    result = run_cli("--broker", "127.0.0.1:1", "--scrape", "http://user:s3cret@127.0.0.1:1/m")
    assert result.returncode == 1
    assert_one_line_error(result, "http://***@127.0.0.1:1/m", "credentials")
    assert "s3cret" not in result.stderr + result.stdout


def test_gputel_up_says_what_is_wrong_with_a_fifo_as_its_csv(tmp_path: Path) -> None:
    """It said "not found" for a FIFO that exists; it cannot take one (it reads the file
    once per pass), and says so, naming what can."""
    fifo = tmp_path / "dcgm.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UpError, match=r"not a regular file .*gputel-streamer --passes 1"):
        csv_path(argparse.Namespace(csv=fifo))
    with pytest.raises(UpError, match="CSV file not found"):
        csv_path(argparse.Namespace(csv=tmp_path / "absent.csv"))
