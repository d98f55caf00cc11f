// A thin gRPC client for any CSI endpoint: loads the suite's own copy of csi.proto and turns
// every call into a promise. Errors become CsiCallError carrying the gRPC status code name, and
// every error reply is kept so the suite can check the spec's rules on error shape (S1).
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export type CsiService = "Identity" | "Controller" | "Node" | "GroupController";

/** gRPC status code names, as the spec's error tables write them. */
export type StatusName = keyof typeof grpc.status;

export class CsiCallError extends Error {
  constructor(
    readonly method: string,
    readonly code: StatusName,
    readonly statusMessage: string,
    /** true when the reply carried google.rpc.Status details, which S1 forbids */
    readonly hasStatusDetails: boolean,
  ) {
    super(`${method}: ${code}${statusMessage ? ` (${statusMessage})` : ""}`);
  }
}

export interface ObservedError {
  method: string;
  code: StatusName;
  message: string;
  hasStatusDetails: boolean;
}

const PROTO_PATH = fileURLToPath(new URL("./csi.proto", import.meta.url));

let packageCache: grpc.GrpcObject | undefined;
function csiPackage(): grpc.GrpcObject {
  if (!packageCache) {
    const definition = protoLoader.loadSync(PROTO_PATH, {
      keepCase: true,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    packageCache = grpc.loadPackageDefinition(definition);
  }
  return (packageCache.csi as grpc.GrpcObject).v1 as grpc.GrpcObject;
}

/** Accepts `unix:///abs/path.sock`, `unix:/abs/path.sock` or a bare absolute path. */
export function normaliseEndpoint(endpoint: string): string {
  if (endpoint.startsWith("/")) return `unix://${endpoint}`;
  return endpoint;
}

function statusName(code: number): StatusName {
  return ((grpc.status as unknown as Record<number, string>)[code] ?? "UNKNOWN") as StatusName;
}

export class CsiClient {
  readonly errors: ObservedError[] = [];
  private readonly stubs: Record<CsiService, grpc.Client>;

  private constructor(readonly endpoint: string) {
    const pkg = csiPackage();
    const target = normaliseEndpoint(endpoint);
    const make = (name: CsiService) =>
      new (pkg[name] as grpc.ServiceClientConstructor)(target, grpc.credentials.createInsecure(), {
        "grpc.max_receive_message_length": 16 * 1024 * 1024,
      });
    // One channel per service stub is fine: they share the same unix socket and grpc-js
    // pools subchannels by address.
    this.stubs = {
      Identity: make("Identity"),
      Controller: make("Controller"),
      Node: make("Node"),
      GroupController: make("GroupController"),
    };
  }

  static connect(endpoint: string): CsiClient {
    return new CsiClient(endpoint);
  }

  /** Waits until the socket accepts connections, or throws after `timeoutMs`. */
  waitReady(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.stubs.Identity.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve()));
    });
  }

  call<Res = unknown>(service: CsiService, method: string, request: object, timeoutMs = 60_000): Promise<Res> {
    const stub = this.stubs[service] as unknown as Record<
      string,
      (req: object, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: Res) => void) => void
    >;
    const fn = stub[method];
    if (typeof fn !== "function") throw new Error(`no such CSI method ${service}.${method} in the suite's proto`);
    return new Promise((resolve, reject) => {
      fn.call(stub, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (!err) return resolve(res);
        const code = statusName(err.code);
        const hasStatusDetails = err.metadata?.get("grpc-status-details-bin").length > 0;
        this.errors.push({ method, code, message: err.details ?? "", hasStatusDetails });
        reject(new CsiCallError(method, code, err.details ?? "", hasStatusDetails));
      });
    });
  }

  close(): void {
    for (const stub of Object.values(this.stubs)) stub.close();
  }
}

// ---- the message shapes the suite reads (as decoded with keepCase, oneofs, defaults)

export type AccessModeName =
  | "SINGLE_NODE_WRITER"
  | "SINGLE_NODE_READER_ONLY"
  | "MULTI_NODE_READER_ONLY"
  | "MULTI_NODE_SINGLE_WRITER"
  | "MULTI_NODE_MULTI_WRITER"
  | "SINGLE_NODE_SINGLE_WRITER"
  | "SINGLE_NODE_MULTI_WRITER";

export interface VolumeCapability {
  block?: Record<string, never> | null;
  mount?: { fs_type?: string; mount_flags?: string[]; volume_mount_group?: string } | null;
  access_mode?: { mode: AccessModeName } | null;
}

export interface ContentSource {
  snapshot?: { snapshot_id: string } | null;
  volume?: { volume_id: string } | null;
}

export interface Volume {
  capacity_bytes: number;
  volume_id: string;
  volume_context: Record<string, string>;
  content_source: ContentSource | null;
  accessible_topology: { segments: Record<string, string> }[];
}

export interface Snapshot {
  size_bytes: number;
  snapshot_id: string;
  source_volume_id: string;
  creation_time: { seconds: number; nanos: number } | null;
  ready_to_use: boolean;
}

export interface VolumeUsage {
  available: number;
  total: number;
  used: number;
  unit: "UNKNOWN" | "BYTES" | "INODES";
}
