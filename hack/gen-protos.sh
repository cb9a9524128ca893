#!/usr/bin/env bash
# Regenerates the kubelet API stubs from protos/: the Device Plugin API in deviceplugin/kubelet/dpapi/v1beta1/,
# the DRA plugin API (v1, v1beta1) and plugin registration in deviceplugin/kubelet/dra/.
# Usage: hack/gen-protos.sh [OUT_DIR]   (OUT_DIR defaults to the repository root; the freshness tests
# pass a temporary directory and compare the result with the committed files.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
python=${PYTHON:-python3}
protos=(
  deviceplugin/kubelet/dpapi/v1beta1/api.proto
  deviceplugin/kubelet/dra/v1/api.proto
  deviceplugin/kubelet/dra/v1beta1/api.proto
  deviceplugin/kubelet/dra/pluginregistration/api.proto
)
for proto in "${protos[@]}"; do
  mkdir -p "$out/$(dirname "$proto")"
  "$python" -m grpc_tools.protoc -I"$root/protos" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    "$root/protos/$proto"
done
