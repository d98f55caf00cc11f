# Sourced by build-image.sh and build-sidecar-images.sh: writes a one-layer OCI image-layout
# tarball from a root directory, reproducibly (sorted, owner 0, mtime 0), for
# `ctr -n k8s.io images import`.
#
#   oci_image ROOTFS OUT_TAR IMAGE_NAME ENTRYPOINT_JSON CREATED_BY
#     ENTRYPOINT_JSON  e.g. '["/usr/local/bin/node","/usr/local/lib/berth/lib/berth.cjs"]'
# Prints "OUT_TAR IMAGE_NAME SIZE manifest=sha256:..." on success.
oci_image() {
  local root=$1 out=$2 name=$3 entrypoint=$4 created_by=$5 arch w
  case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
  w=$(mktemp -d)
  mkdir -p "$w/oci/blobs/sha256"
  _oci_put() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$w/oci/blobs/sha256/$d"; echo "$d"; }
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$w/layer.tar" .
  local lsize ldig csize cdig msize mdig
  lsize=$(stat -c %s "$w/layer.tar"); ldig=$(_oci_put "$w/layer.tar")
  printf '{"architecture":"%s","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Entrypoint":%s,"WorkingDir":"/","Env":["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"%s"}]}' \
    "$arch" "$entrypoint" "$ldig" "$created_by" > "$w/config.json"
  csize=$(stat -c %s "$w/config.json"); cdig=$(_oci_put "$w/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cdig" "$csize" "$ldig" "$lsize" > "$w/manifest.json"
  msize=$(stat -c %s "$w/manifest.json"); mdig=$(_oci_put "$w/manifest.json")
  echo '{"imageLayoutVersion":"1.0.0"}' > "$w/oci/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$mdig" "$msize" "$arch" "$name" "${name##*:}" > "$w/oci/index.json"
  mkdir -p "$(dirname "$out")"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$w/oci" -cf "$out" oci-layout index.json blobs
  rm -rf "$w"
  echo "$out $name $(du -h "$out" | cut -f1) manifest=sha256:$mdig"
}
