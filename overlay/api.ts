// The agent's HTTP API (fastify): health, readiness, Prometheus metrics and read-only state,
// on a unix socket (and loopback TCP by option). Every route declares its response schema.
import { chmodSync } from "node:fs";
import { createServer } from "node:http";
import { dirname } from "node:path";
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from "fastify";
import type { Registry } from "prom-client";
import { makeDirectory } from "../cni/protocol/files.ts";
import { claimSocketPath } from "../native/unix-socket.ts";

export interface LeaseView {
  subnet: string;
  subnetV6?: string;
  network: string;
  networkV6?: string;
  publicIP: string;
  vtepMAC: string;
  vni: number;
  key: string;
  reservation: boolean;
}

export interface PeerView {
  key: string;
  subnet: string;
  subnetV6?: string;
  publicIP: string;
  vtepMAC: string;
  hostname: string;
}

export interface Readiness {
  ready: boolean;
  /** Why not ready (empty when ready). */
  reasons: string[];
}

/** What the API reads from the agent. */
export interface AgentView {
  readiness(): Readiness;
  lease(): LeaseView | null;
  peers(): PeerView[];
  status(): Record<string, unknown>;
}

const leaseSchema = {
  type: "object",
  required: ["subnet", "network", "publicIP", "vtepMAC", "vni", "key", "reservation"],
  properties: {
    subnet: { type: "string" },
    subnetV6: { type: "string" },
    network: { type: "string" },
    networkV6: { type: "string" },
    publicIP: { type: "string" },
    vtepMAC: { type: "string" },
    vni: { type: "integer" },
    key: { type: "string" },
    reservation: { type: "boolean" },
  },
} as const;

const peerSchema = {
  type: "object",
  required: ["key", "subnet", "publicIP", "vtepMAC", "hostname"],
  properties: {
    key: { type: "string" },
    subnet: { type: "string" },
    subnetV6: { type: "string" },
    publicIP: { type: "string" },
    vtepMAC: { type: "string" },
    hostname: { type: "string" },
  },
} as const;

const readinessSchema = {
  type: "object",
  required: ["ready", "reasons"],
  properties: { ready: { type: "boolean" }, reasons: { type: "array", items: { type: "string" } } },
} as const;

const errorSchema = { type: "object", required: ["error"], properties: { error: { type: "string" } } } as const;

export function buildApi(view: AgentView, registry: Registry, logger: FastifyBaseLogger): FastifyInstance {
  // Probes and scrapes every few seconds would drown the log: no per-request lines.
  const app = Fastify({ loggerInstance: logger, logController: new LogController({ disableRequestLogging: true }) });

  app.get(
    "/healthz",
    { schema: { response: { 200: { type: "object", properties: { ok: { type: "boolean" } } } } } },
    async () => ({
      ok: true,
    }),
  );

  app.get("/readyz", { schema: { response: { 200: readinessSchema, 503: readinessSchema } } }, async (_req, reply) => {
    const r = view.readiness();
    return reply.code(r.ready ? 200 : 503).send(r);
  });

  app.get("/metrics", { schema: { response: { 200: { type: "string" } } } }, async (_req, reply) => {
    reply.header("content-type", registry.contentType);
    return registry.metrics();
  });

  app.get("/v1/lease", { schema: { response: { 200: leaseSchema, 404: errorSchema } } }, async (_req, reply) => {
    const lease = view.lease();
    if (!lease) return reply.code(404).send({ error: "no subnet lease held yet" });
    return lease;
  });

  app.get("/v1/peers", { schema: { response: { 200: { type: "array", items: peerSchema } } } }, async () => view.peers());

  app.get("/v1/status", { schema: { response: { 200: { type: "object", additionalProperties: true } } } }, async () =>
    view.status(),
  );

  return app;
}

/**
 * Listens on the unix socket (replacing a stale one; a live agent's or a non-socket file is a
 * SocketClaimError) and, when asked, on TCP. Returns the closer.
 */
export async function listenApi(
  app: FastifyInstance,
  socketPath: string,
  tcp?: { host: string; port: number },
): Promise<{ close(): Promise<void>; tcpPort?: number }> {
  makeDirectory(dirname(socketPath), 0o755);
  await claimSocketPath(socketPath, "berth agent API");
  await app.listen({ path: socketPath });
  chmodSync(socketPath, 0o660);
  if (!tcp) return { close: () => app.close() };
  // fastify listens on one address per instance; a plain server hands TCP requests to its router.
  const server = createServer((req, res) => app.routing(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(tcp.port, tcp.host, () => resolve());
  });
  const address = server.address();
  return {
    tcpPort: typeof address === "object" && address ? address.port : undefined,
    close: async () => {
      await new Promise<void>((r) => server.close(() => r()));
      await app.close();
    },
  };
}
