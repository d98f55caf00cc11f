#!/usr/bin/env bash
# Builds berth's container image offline, as an OCI image-layout tarball, from a release
# tarball (`npm run release`) and this host's Node and tools: no registry, no Dockerfile.
#
#   deploy/kubernetes/build-image.sh [RELEASE_TAR] [OUT_TAR] [IMAGE_NAME]
#     RELEASE_TAR  default: the newest build/release/berth-*.tar.gz
#     OUT_TAR      default: build/image/berth-<version>-oci.tar
#     IMAGE_NAME   default: localhost/berth:<version>
#   then: ctr -n k8s.io images import OUT_TAR
#
# The root holds Node (this host's binary), the release unpacked under /usr/local/lib/berth,
# `berth` on PATH, a busybox shell, the tools berth shells out to (nft, conntrack, mkfs.ext4/xfs, e2fsck,
# resize2fs, xfs_growfs, fsfreeze; ip for berth doctor) and the shared libraries all of these need, found with ldd.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/kubernetes/oci-image.sh
REL=${1:-$(ls -t build/release/berth-*.tar.gz 2>/dev/null | head -1)}
[ -n "$REL" ] && [ -f "$REL" ] || { echo "build-image: no release tarball (run npm run release)" >&2; exit 2; }
base=$(basename "$REL" .tar.gz)             # berth-<version>-linux-<arch>
version=${base#berth-}; version=${version%-linux-*}
OUT=${2:-build/image/berth-$version-oci.tar}
NAME=${3:-localhost/berth:$version}

W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
R=$W/rootfs
mkdir -p "$R"/{usr/local/bin,usr/local/lib/berth,usr/sbin,usr/bin,etc,tmp,run,var/lib,lib64}
chmod 1777 "$R/tmp"

# copy_bin SRC [DEST]: a binary and every shared library it loads, at the same paths.
copy_bin() {
  local src dest lib
  src=$(readlink -f "$(command -v "$1")")
  dest=${2:-$(command -v "$1")}
  install -D -m 0755 "$src" "$R$dest"
  for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
    [ -e "$R$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$R$lib"
  done
}

copy_bin node /usr/local/bin/node
for t in nft conntrack mkfs.ext4 e2fsck resize2fs mkfs.xfs xfs_growfs fsfreeze ip; do
  command -v "$t" > /dev/null || { echo "build-image: $t not found on this host (berth doctor names its package)" >&2; exit 2; }
  copy_bin "$t"
done
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$R/etc/"
# A shell for `kubectl exec` and for the release's bin/berth script (busybox-static's, when the
# host has it); the image's entrypoint runs Node on the CLI bundle directly.
if [ -x /bin/busybox ] && { ldd /bin/busybox 2>&1 || true; } | grep -q 'not a dynamic'; then
  install -D -m 0755 /bin/busybox "$R/bin/busybox"
  ln -s busybox "$R/bin/sh"
fi

tar -xzf "$REL" -C "$R/usr/local/lib/berth" --strip-components=1
ln -s ../lib/berth/bin/berth "$R/usr/local/bin/berth"
printf 'root:x:0:0:root:/root:/bin/false\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"

oci_image "$R" "$OUT" "$NAME" '["/usr/local/bin/node","/usr/local/lib/berth/lib/berth.cjs"]' "deploy/kubernetes/build-image.sh $base"
