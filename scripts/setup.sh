#!/usr/bin/env bash
# Sets up a Debian/Ubuntu machine for berth: the system packages berth and its tests use,
# the npm dependencies (with the native addon and the plugin bundles), and the csi-sanity
# binary built from the vendored csi-test source. Idempotent; run as root.
#   scripts/setup.sh            everything
#   SETUP_SKIP_APT=1 ...        skip the Debian packages (already installed)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: what berth runs (iproute2 .. quota), the engines and stores the tests
# drive (etcd, podman, containerd, runc, reference CNI plugins), the native build (python3,
# make, gcc, g++), golang-go for csi-sanity, systemd for systemd-analyze and
# systemd-socket-activate.
PACKAGES=(
  iproute2 nftables conntrack ethtool kmod util-linux mount e2fsprogs xfsprogs quota
  etcd-server etcd-client podman runc containerd containernetworking-plugins busybox-static
  iperf3 python3 make gcc g++ linux-libc-dev openssl procps strace golang-go systemd
)

if [ "${SETUP_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  fi
fi

# npm dependencies; their install script builds the addon and the bundles.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci
else
  npm run build
fi

# csi-sanity (kubernetes-csi/csi-test, vendored source) for the CSI conformance test.
CSI_TEST_TARBALL=${CSI_TEST_TARBALL:-../shared/vendor/csi-test-v5.3.1.tar.gz}
if [ -f "$CSI_TEST_TARBALL" ] && [ ! -x build/tools/csi-sanity ]; then
  echo "setup: building csi-sanity from $CSI_TEST_TARBALL"
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  tar xzf "$CSI_TEST_TARBALL" -C "$src"
  mkdir -p build/tools
  out=$(pwd)/build/tools/csi-sanity
  (cd "$src"/csi-test-* && CGO_ENABLED=0 GOFLAGS=-mod=vendor GOPROXY=off GOCACHE="$src/.gocache" \
    go build -o "$out" ./cmd/csi-sanity)
fi
echo "setup: done"
