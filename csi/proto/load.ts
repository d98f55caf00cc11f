// Loads csi.proto at run time with the same options the generated types were made with.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import type { ProtoGrpcType } from "./generated/csi.ts";

export const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

/** csi.proto beside this module in the source tree; from a bundle (build/*.cjs), up in the checkout. */
function protoFile(): string {
  let dir = typeof __dirname === "string" ? __dirname : dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    for (const candidate of [join(dir, "csi.proto"), join(dir, "csi/proto/csi.proto")]) {
      if (existsSync(candidate)) return candidate;
    }
    dir = dirname(dir);
  }
  throw new Error("csi.proto not found next to the CSI driver (csi/proto/csi.proto in the checkout)");
}

export function loadCsiPackage(): ProtoGrpcType {
  return grpc.loadPackageDefinition(loadSync(protoFile(), LOADER_OPTIONS)) as unknown as ProtoGrpcType;
}
