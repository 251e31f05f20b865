#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the browser tests (tests/ui), when missing.
# Idempotent: a second run only prints where they are.
set -euo pipefail

say() { printf '[chromium.sh] %s\n' "$*" >&2; }

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [[ "$(id -u)" -ne 0 ]]; then
    say "chromium or chromedriver missing; run as root or: sudo apt-get install chromium chromium-driver"
    exit 1
  fi
  say "installing Debian chromium and chromium-driver (apt-get, ~1-2 min)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; }
fi
say "chromium: $(command -v chromium) ($(chromium --version 2>/dev/null | tr -s ' ' | cut -d' ' -f1-2))"
say "chromedriver: $(command -v chromedriver)"
