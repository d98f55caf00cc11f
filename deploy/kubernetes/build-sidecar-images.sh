#!/usr/bin/env bash
# OCI images for the kubernetes-csi sidecars the base manifests run, from static binaries built
# elsewhere (e.g. ../shared/k8s's build.sh puts them in $WORK/bin), under the names
# 40-storage.yaml uses, for clusters without access to registry.k8s.io:
#
#   deploy/kubernetes/build-sidecar-images.sh BIN_DIR [OUT_DIR]
#     BIN_DIR  holds csi-node-driver-registrar (v2.1.0) and csi-provisioner (v2.1.2)
#     OUT_DIR  default: build/image
#   then: ctr -n k8s.io images import OUT_DIR/<name>-oci.tar
#
# Each image is the binary alone (static Go, CGO_ENABLED=0) as /<name>, its entrypoint.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/kubernetes/oci-image.sh
BIN=${1:?usage: build-sidecar-images.sh BIN_DIR [OUT_DIR]}
OUT=${2:-build/image}
for pair in csi-node-driver-registrar:v2.1.0 csi-provisioner:v2.1.2; do
  name=${pair%%:*}
  src=$BIN/$name
  [ -x "$src" ] || { echo "build-sidecar-images: $src missing" >&2; exit 2; }
  if ldd "$src" > /dev/null 2>&1; then echo "build-sidecar-images: $src is not a static binary" >&2; exit 2; fi
  R=$(mktemp -d)
  install -D -m 0755 "$src" "$R/$name"
  mkdir -m 1777 "$R/tmp"
  oci_image "$R" "$OUT/$name-oci.tar" "registry.k8s.io/sig-storage/$pair" "[\"/$name\"]" "deploy/kubernetes/build-sidecar-images.sh $name"
  rm -rf "$R"
done
