// Prometheus metrics of the CSI driver: a count and a latency histogram of every RPC, by method
// and gRPC status, served over HTTP at /metrics when --metrics-listen asks for it.
import { createServer } from "node:http";
import type * as grpc from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import { Counter, Histogram, Registry } from "prom-client";
import { ConfigError } from "./errors.ts";

export class RpcMetrics {
  readonly registry = new Registry();
  private readonly count = new Counter({
    name: "berth_csi_operations_total",
    help: "CSI RPCs handled, by method and gRPC status",
    labelNames: ["method", "status"],
    registers: [this.registry],
  });
  private readonly latency = new Histogram({
    name: "berth_csi_operation_seconds",
    help: "CSI RPC latency, by method and gRPC status",
    labelNames: ["method", "status"],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    registers: [this.registry],
  });

  observe(method: string, code: grpc.status, seconds: number): void {
    const labels = { method, status: status[code] ?? String(code) };
    this.count.inc(labels);
    this.latency.observe(labels, seconds);
  }
}

export interface MetricsServer {
  /** Where it listens (host:port). */
  address: string;
  close(): Promise<void>;
}

/** Serves the metrics at http://<listen>/metrics; `listen` is host:port ([v6]:port too). */
export async function serveMetrics(listen: string, metrics: RpcMetrics): Promise<MetricsServer> {
  const m = /^(.+):(\d+)$/.exec(listen);
  if (!m) throw new ConfigError(`--metrics-listen must be host:port, got ${listen}`);
  const http = createServer((req, res) => {
    if (req.url !== "/metrics") {
      res.writeHead(404).end();
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
      () => res.writeHead(500).end(),
    );
  });
  await new Promise<void>((resolve, reject) => {
    http.once("error", reject);
    http.listen(Number(m[2]), m[1]!.replace(/^\[|\]$/g, ""), () => resolve());
  });
  const a = http.address();
  return {
    address: typeof a === "object" && a ? `${a.address}:${a.port}` : listen,
    close: () => new Promise<void>((resolve) => http.close(() => resolve())),
  };
}
