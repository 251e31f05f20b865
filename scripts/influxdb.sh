#!/usr/bin/env bash
# Install a real InfluxDB 1.8.10 (2.x write API, Flux, /health) for tests, cached outside the repo.
#
#   scripts/influxdb.sh install   build influxd once into ~/.cache/gputel/influxdb-1.8.10/bin (idempotent)
#   scripts/influxdb.sh path      print the influxd binary path (exit 1 when not installed)
#
# The pytest fixture (tests/fixtures/influx.py) starts and stops the server itself.
# The machine's Go is tried first; Debian's Go 1.19 is the fallback (known to build 1.8.10).
set -euo pipefail

VERSION="${GPUTEL_INFLUXDB_VERSION:-1.8.10}"
CACHE="${GPUTEL_CACHE_DIR:-$HOME/.cache/gputel}/influxdb-$VERSION"
BIN="$CACHE/bin/influxd"

log() { printf '[influxdb.sh] %s\n' "$*" >&2; }

build_with() {
    local go="$1"
    log "building influxd v$VERSION with $("$go" version)"
    mkdir -p "$CACHE/bin" "$CACHE/gopath" "$CACHE/gocache"
    # A private GOPATH/GOCACHE keeps the build keyed by version and out of the repo.
    GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" GOBIN="$CACHE/bin" GOFLAGS=-mod=mod \
        GO111MODULE=on CGO_ENABLED=0 \
        "$go" install "github.com/influxdata/influxdb/cmd/influxd@v$VERSION"
}

go119() {
    if [ ! -x /usr/lib/go-1.19/bin/go ]; then
        log "installing Debian golang-1.19-go"
        if [ "$(id -u)" = 0 ]; then apt-get install -y golang-1.19-go >&2
        else sudo apt-get install -y golang-1.19-go >&2; fi
    fi
    echo /usr/lib/go-1.19/bin/go
}

install() {
    if [ -x "$BIN" ]; then log "cached: $BIN"; echo "$BIN"; return 0; fi
    local go
    go="$(command -v go || echo /usr/local/go/bin/go)"
    if [ -x "$go" ] && build_with "$go"; then :
    else
        log "build with $go failed; falling back to Go 1.19"
        build_with "$(go119)"
    fi
    # The module cache is only needed to build; drop it to save ~1 GB of disk.
    chmod -R u+w "$CACHE/gopath" 2>/dev/null || true
    rm -rf "$CACHE/gopath" "$CACHE/gocache"
    "$BIN" version >&2
    echo "$BIN"
}

case "${1:-}" in
    install) install ;;
    path) if [ -x "$BIN" ]; then echo "$BIN"; else log "not installed: run $0 install"; exit 1; fi ;;
    *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
