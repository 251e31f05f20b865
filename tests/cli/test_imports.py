"""What a process loads before it starts working: a mode's modules only in that mode.

Each check runs a fresh interpreter on this tree, takes the path a process takes up to the
point where it picks its mode (entry modules imported, flags parsed, transport chosen) and
reads `sys.modules`. A CSV-mode streamer does not load the scrape path (its fetcher,
httptools, the exposition parser, YAML); no process on the walbroker transport loads the
Kafka client; and none loads importlib.metadata, which only `--version` needs. What every
mode uses (grpc, prometheus_client) must still be there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRAPE_PATH = {
    "streamer.scraping",
    "streamer.scraper",
    "streamer.exposition",
    "httptools",
    "yaml",
}
KAFKA = {
    "confluent_kafka",
    "gputel.transport.kafka_common",
    "gputel.transport.kafka_config",
    "gputel.transport.kafka_consumer",
    "gputel.transport.kafka_producer",
    "gputel.transport.kafka_stream",
}
VERSION_ONLY = {"importlib.metadata"}


def loaded(code: str) -> set[str]:
    """The modules in `sys.modules` after running `code` in a fresh interpreter on this tree."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_csv_streamer_loads_neither_the_scrape_path_nor_kafka():
    mods = loaded(
        "import streamer.cli, streamer.runner\n"
        "from streamer.config import parse_config\n"
        f"assert streamer.cli.__file__.startswith({str(ROOT)!r}), streamer.cli.__file__\n"
        "c = parse_config(['--broker', '127.0.0.1:7070', '--csv', 'x.csv',"
        " '--passes', '1', '--time', 'source'], env={})\n"
        "assert not c.scraping\n"
        "c.transport()\n"
    )
    assert not mods & SCRAPE_PATH, sorted(mods & SCRAPE_PATH)
    assert not mods & KAFKA, sorted(mods & KAFKA)
    assert not mods & VERSION_ONLY, sorted(mods & VERSION_ONLY)
    assert {"streamer.runner", "prometheus_client", "grpc"} <= mods


def test_scrape_mode_still_finds_its_modules():
    mods = loaded(
        "from streamer import cli\n"
        "from streamer.targets import parse_file_sd\n"
        "assert parse_file_sd('- targets: [a:9400]') == ['http://a:9400/metrics']\n"
        "from streamer.scraping import ScrapeStreamer\n"
    )
    assert mods >= SCRAPE_PATH


def test_walbroker_collector_loads_no_kafka_client():
    mods = loaded(
        "import collector.cli, collector.runner\n"
        "from collector.config import from_args\n"
        f"assert collector.cli.__file__.startswith({str(ROOT)!r}), collector.cli.__file__\n"
        "from_args(['--broker', '127.0.0.1:7070', '--store', 'sqlite:x.db'], env={})"
        ".transport()\n"
    )
    assert not mods & KAFKA, sorted(mods & KAFKA)
    assert not mods & VERSION_ONLY, sorted(mods & VERSION_ONLY)
    assert {"collector.runner", "prometheus_client", "grpc"} <= mods


def test_broker_serve_loads_no_package_metadata():
    mods = loaded(
        "import walbroker.cli, walbroker.server\n"
        f"assert walbroker.cli.__file__.startswith({str(ROOT)!r}), walbroker.cli.__file__\n"
        "walbroker.cli.build_parser({}).parse_args(['serve', '--data-dir', 'd'])\n"
    )
    assert not mods & KAFKA, sorted(mods & KAFKA)
    assert not mods & VERSION_ONLY, sorted(mods & VERSION_ONLY)
    assert {"walbroker.server", "prometheus_client", "grpc"} <= mods
