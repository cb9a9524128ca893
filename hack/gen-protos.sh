#!/usr/bin/env bash
# Regenerates the kubelet Device Plugin API stubs in deviceplugin/kubelet/dpapi/v1beta1/ from protos/.
# Usage: hack/gen-protos.sh [OUT_DIR]   (OUT_DIR defaults to the repository root; the freshness test
# passes a temporary directory and compares the result with the committed files.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
python=${PYTHON:-python3}
mkdir -p "$out/deviceplugin/kubelet/dpapi/v1beta1"
"$python" -m grpc_tools.protoc -I"$root/protos" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root/protos/deviceplugin/kubelet/dpapi/v1beta1/api.proto"
