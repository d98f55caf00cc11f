// Loads csi.proto at run time with the same options the generated types were made with.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import type { ProtoGrpcType } from "./generated/csi.ts";

export const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function protoFile(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const candidate of [join(here, "csi.proto"), join(here, "proto/csi.proto"), join(here, "csi/proto/csi.proto")]) {
    if (existsSync(candidate)) return candidate;
  }
  throw new Error("csi.proto not found next to the CSI driver");
}

export function loadCsiPackage(): ProtoGrpcType {
  return grpc.loadPackageDefinition(loadSync(protoFile(), LOADER_OPTIONS)) as unknown as ProtoGrpcType;
}
