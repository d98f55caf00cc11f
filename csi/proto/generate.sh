#!/bin/sh
# Regenerates the TypeScript types for csi.proto (proto-loader-gen-types needs no protoc).
# The loader options here must match those in csi/proto/load.ts.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
rm -rf "$here/generated"
npx proto-loader-gen-types --grpcLib=@grpc/grpc-js --keepCase --longs=String --enums=String \
  --defaults --oneofs --importFileExtension=.ts --outDir="$here/generated" csi/proto/csi.proto
