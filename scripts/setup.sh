#!/usr/bin/env bash
# Sets up a Debian (12+) or Ubuntu (22.04+) machine for berth: the system packages berth and
# its tests use, the npm dependencies (with the native addon and the plugin bundles), and the
# csi-sanity binary built from the vendored csi-test source, and Kubernetes (API server, kubelet,
# kubectl, CSI sidecars, reference CNI plugins) built from ../shared/k8s for the Kubernetes
# tests. Idempotent: a second run installs
# nothing and only rebuilds what is missing. Needs root for the packages (or sudo).
#   scripts/setup.sh                 everything
#   SETUP_SKIP_APT=1 ...             skip the Debian packages (already installed)
#   SETUP_STEPS="apt npm sanity"     only these steps (default: apt npm sanity kube)
#   BERTH_K8S_WORK=DIR               where Kubernetes is built (default /var/tmp/k8s-work; the
#                                    tests find its binaries in DIR/bin, or BERTH_KUBE_BIN)
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${SETUP_STEPS:-apt npm sanity kube}
[ "${SETUP_SKIP_APT:-0}" = 1 ] && STEPS=${STEPS//apt/}
step() { [[ " $STEPS " == *" $1 "* ]]; }

# Debian packages: what berth runs (iproute2 .. quota, conntrack; bin/doctor.ts TOOL_CHECKS
# names the same packages), the engines and stores the tests drive (etcd, podman, containerd,
# runc, reference CNI plugins, docker.io), the native build (python3, make, gcc, g++), golang-go for
# csi-sanity and Kubernetes (with jq, curl, git, patch, xz-utils, file for ../shared/k8s), systemd for systemd-analyze and systemd-socket-activate. Every name exists on
# Debian 12 and Ubuntu 22.04/24.04.
PACKAGES=(
  iproute2 nftables conntrack ethtool kmod util-linux mount e2fsprogs xfsprogs quota
  etcd-server etcd-client podman runc containerd containernetworking-plugins busybox-static
  iperf3 python3 make gcc g++ linux-libc-dev openssl procps strace golang-go systemd docker.io
  jq curl git patch xz-utils file
)

# Node.js is not installed here (Debian 12's is 18): berth needs >= 20.10.
if ! command -v node >/dev/null 2>&1; then
  echo "setup: Node.js >= 20.10 is needed first (https://nodejs.org, or NodeSource's Debian packages)" >&2
  exit 1
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 10) ? 0 : 1)'; then
  echo "setup: Node.js $(node --version) is too old: berth needs >= 20.10" >&2
  exit 1
fi

if step apt; then
  if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: not a Debian/Ubuntu system (no dpkg-query/apt-get); install the equivalents of: ${PACKAGES[*]}" >&2
    exit 1
  fi
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    as_root=()
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1; then as_root=(sudo); else
        echo "setup: run as root (or with sudo) to install: ${missing[*]}" >&2
        exit 1
      fi
    fi
    echo "setup: installing ${missing[*]}"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "setup: Debian packages: all ${#PACKAGES[@]} present"
  fi
fi

# npm dependencies; their install script builds the addon and the bundles.
if step npm; then
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci
  else
    npm run build
  fi
fi

# csi-sanity (kubernetes-csi/csi-test, vendored source) for the CSI conformance test.
if step sanity; then
  CSI_TEST_TARBALL=${CSI_TEST_TARBALL:-../shared/vendor/csi-test-v5.3.1.tar.gz}
  if [ -x build/tools/csi-sanity ]; then
    echo "setup: csi-sanity: already built"
  elif [ ! -f "$CSI_TEST_TARBALL" ]; then
    echo "setup: csi-sanity: $CSI_TEST_TARBALL not found (set CSI_TEST_TARBALL); the CSI conformance test needs build/tools/csi-sanity" >&2
  else
    echo "setup: building csi-sanity from $CSI_TEST_TARBALL"
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    tar xzf "$CSI_TEST_TARBALL" -C "$src"
    mkdir -p build/tools
    out=$(pwd)/build/tools/csi-sanity
    (cd "$src"/csi-test-* && CGO_ENABLED=0 GOFLAGS=-mod=vendor GOPROXY=off GOCACHE="$src/.gocache" \
      go build -o "$out.tmp" ./cmd/csi-sanity)
    mv -f "$out.tmp" "$out"
  fi
fi
# Kubernetes v1.20 from source (../shared/k8s, offline, ~6-10 min on 2 cores the first time; a
# binary that exists is not rebuilt).
if step kube; then
  KIT=${BERTH_K8S_KIT:-../shared/k8s}
  if [ ! -x "$KIT/scripts/build.sh" ]; then
    echo "setup: Kubernetes: $KIT not found (set BERTH_K8S_KIT); the Kubernetes tests need its binaries" >&2
  else
    export WORK=${BERTH_K8S_WORK:-/var/tmp/k8s-work}
    mkdir -p "$WORK"
    echo "setup: building Kubernetes into $WORK (log: $WORK/logs)"
    bash "$KIT/scripts/build.sh" k8s sidecars cni crictl images
  fi
fi
echo "setup: done"
