#!/usr/bin/env bash
# Builds the gputel image with a local Docker engine.
#
#   scripts/image.sh dockerd   start dockerd the safe way unless one answers already
#   scripts/image.sh base      make (or reuse) the local base image: Debian bookworm minbase +
#                              python3.11, cached under ~/.cache/gputel/base
#   scripts/image.sh build     base + wheels + docker build; prints the image size and build time
#
# Why a local base: no registry image can be pulled on the machines CI runs on. The Dockerfile's
# base is a build argument (PYTHON_IMAGE); with BASE=default a machine with a registry keeps
# python:3.11-slim-bookworm unchanged. The wheels are built on the host (wheelhouse/) because
# pip inside the build may not reach the package index the way the host's pip does.
#
# Why these dockerd flags: the default bridge network (NAT, iptables rules, 172.17.0.0/16) must
# never appear on the shared CI machines; every container here runs with --network host.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-docker}"
IMAGE="${IMAGE:-gputel:0.1.0}"
BASE="${BASE:-local}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python-is-python3 gives /usr/bin/python like the official python image; python3.11-venv carries
# ensurepip (the Dockerfile makes a venv). debootstrap fails to configure python3.11-venv among
# the base packages, so apt installs it in the new root afterwards.
BASE_PACKAGES="python3.11,python-is-python3,ca-certificates"
LATE_PACKAGES="python3.11-venv"
BASE_RECIPE=2  # bump when make_rootfs_tar changes: the cached tarball and the tag carry it
BASE_TAG="gputel-base:$SUITE-py3.11-r$BASE_RECIPE"
CACHE="${GPUTEL_CACHE:-$HOME/.cache/gputel}/base"
PYTHON="${PYTHON:-python3}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/gputel-dockerd.log}"
log() { printf 'image: %s\n' "$*" >&2; }

docker_answers() { "$DOCKER" version >/dev/null 2>&1; }

cmd_dockerd() {
  docker_answers && return
  command -v dockerd >/dev/null || {
    [[ "$(id -u)" -eq 0 ]] || { log "dockerd missing: install Debian's docker.io"; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  }
  log "starting dockerd (no bridge, no iptables; containers use --network host only)"
  setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
    --ip-masq=false --userland-proxy=false >>"$DOCKERD_LOG" 2>&1 </dev/null &
  for _ in $(seq 60); do
    docker_answers && return
    sleep 0.5
  done
  log "dockerd did not answer in 30 s; see $DOCKERD_LOG"
  exit 1
}

make_rootfs_tar() {  # debootstrap minbase + python3.11, trimmed, as a tarball for docker import
  local tar="$1" root
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  root="$(mktemp -d)"
  log "debootstrap --variant=minbase $SUITE (+ $BASE_PACKAGES)"
  mkdir -p "$CACHE/debs"
  { debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$BASE_PACKAGES" "$SUITE" "$root" "$MIRROR" \
      && chroot "$root" apt-get install -y -q --no-install-recommends $LATE_PACKAGES \
      && chroot "$root" apt-get clean; } >"$CACHE/debootstrap.log" 2>&1 \
    || { log "debootstrap failed, see $CACHE/debootstrap.log"; rm -rf "$root"; exit 1; }
  # Same trims as the official slim images: no apt lists, docs, man pages or locales.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
  printf 'deb %s %s main\ndeb %s %s-updates main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" >"$root/etc/apt/sources.list"
  # As in the official Debian images: apt keeps no package caches (~80 MB per apt-get update).
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"'
  printf 'DPkg::Post-Invoke { %s; };\nAPT::Update::Post-Invoke { %s; };\n' "$clean" "$clean" \
    >"$root/etc/apt/apt.conf.d/docker-clean"
  printf 'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' >>"$root/etc/apt/apt.conf.d/docker-clean"
  printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  printf 'Acquire::GzipIndexes "true";\n' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  tar -C "$root" --numeric-owner -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
  rm -rf "$root"
}

cmd_base() {
  [[ "$BASE" == default ]] && return
  cmd_dockerd
  "$DOCKER" image inspect "$BASE_TAG" >/dev/null 2>&1 && return
  mkdir -p "$CACHE"
  local tar="$CACHE/$SUITE-minbase-$(echo "$BASE_PACKAGES,$LATE_PACKAGES" | tr ',' '+')-r$BASE_RECIPE.tar"
  [[ -s "$tar" ]] || make_rootfs_tar "$tar"
  "$DOCKER" import -c 'CMD ["python3"]' -c 'ENV LANG=C.UTF-8' "$tar" "$BASE_TAG" >/dev/null
  log "base image $BASE_TAG imported from $tar"
}

wheelhouse() {  # gputel's and its dependencies' wheels, built where pip reaches the index
  rm -f wheelhouse/*.whl
  "$PYTHON" -m pip wheel -q --disable-pip-version-check -w wheelhouse . >"$CACHE/wheelhouse.log" 2>&1 \
    || { cat "$CACHE/wheelhouse.log" >&2; exit 1; }
}

cmd_build() {
  local args=(-t "$IMAGE") start=$SECONDS
  cmd_base
  cmd_dockerd
  wheelhouse
  [[ "$BASE" == default ]] || args+=(--build-arg "PYTHON_IMAGE=$BASE_TAG")
  # The classic builder: BuildKit would try to pull its Dockerfile frontend from a registry.
  # --network host: the build's pip and apt reach their registries like the host does.
  DOCKER_BUILDKIT=0 "$DOCKER" build -q --network host "${args[@]}" . >/dev/null
  local size
  size="$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")"
  printf 'image %s: %s MB (goal <= 250 MB), built in %s s\n' "$IMAGE" "$((size / 1000000))" "$((SECONDS - start))"
}

case "${1:-}" in
  dockerd) cmd_dockerd ;;
  base) cmd_base ;;
  build) cmd_build ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
