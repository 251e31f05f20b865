#!/usr/bin/env bash
# Regenerates proto/gen from proto/*.proto (grpc_tools' protoc), with import paths
# rewritten to the `proto.gen` package. Usage: scripts/gen_proto.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-proto/gen}
py=${PYTHON:-python}
mkdir -p "$out"
rm -f "$out"/*_pb2*.py "$out"/*_pb2*.pyi
"$py" -m grpc_tools.protoc -I proto \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" \
  proto/*.proto
# protoc emits `import x_pb2 as ...`; make them package-relative.
sed -i -E 's/^import ([a-z_]+_pb2) as /from proto.gen import \1 as /' "$out"/*_pb2*.py
touch "$out/__init__.py"
