// The Kubernetes API as the overlay's cluster store (`berth agent --store kube`), as flannel's
// kube mode: Kubernetes already assigns every Node a pod CIDR (`spec.podCIDR`, `podCIDRs` for
// dual-stack), so nothing is leased. Each Node with a pod CIDR is one entry, keyed like an etcd
// lease (`<prefix>/subnets/<net>-<len>[&<net6>-<len6>]`) and valued from the annotations its agent
// publishes (underlay address, VTEP MAC, VNI, host id). A Node whose agent has not published yet
// is not an entry: there is nothing to route to. Revisions are the API server's resourceVersions.
//
// Writes are allowed only to this node's own entry (a merge patch of its annotations); every
// entry is a "reservation" (no TTL): the Node object lives as long as the node is in the cluster.

import { readFileSync } from "node:fs";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest, type RequestOptions } from "node:https";
import { parse as parseYaml } from "yaml";
import { Subnet } from "../../cni/address/address.ts";
import { LeaseError } from "../lease.ts";
import {
  type ClusterStore,
  type ResetReason,
  type StoreEntry,
  StoreUnavailableError,
  type StoreWatch,
  type WatchEvent,
  type WriteResult,
} from "./store.ts";

export const ANNOTATION_PREFIX = "berth.io/";
const A = {
  publicIP: `${ANNOTATION_PREFIX}public-ip`,
  publicIPv6: `${ANNOTATION_PREFIX}public-ipv6`,
  vtepMAC: `${ANNOTATION_PREFIX}vtep-mac`,
  vni: `${ANNOTATION_PREFIX}vni`,
  hostId: `${ANNOTATION_PREFIX}host-id`,
} as const;

/** How to reach the API server. */
export interface KubeConnection {
  server: string;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  token?: string;
  insecureSkipTlsVerify?: boolean;
}

export class KubeConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KubeConfigError";
  }
}

const SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** In-cluster configuration: the service account's token and CA, the service's address. */
export function inClusterConnection(env: NodeJS.ProcessEnv = process.env, saDir = SA_DIR): KubeConnection {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) {
    throw new KubeConfigError("not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig");
  }
  let token: string;
  let ca: Buffer;
  try {
    token = readFileSync(`${saDir}/token`, "utf8").trim();
    ca = readFileSync(`${saDir}/ca.crt`);
  } catch (e) {
    throw new KubeConfigError(`cannot read the service account in ${saDir}: ${(e as Error).message}`);
  }
  return { server: `https://${host.includes(":") ? `[${host}]` : host}:${port}`, token, ca };
}

function record(v: unknown): Record<string, unknown> | null {
  return v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
}

function named(list: unknown, name: unknown, what: string, path: string): Record<string, unknown> {
  if (!Array.isArray(list)) throw new KubeConfigError(`${path}: no ${what}s`);
  for (const item of list) {
    const o = record(item);
    if (o && o.name === name) {
      const inner = record(o[what]);
      if (inner) return inner;
    }
  }
  throw new KubeConfigError(`${path}: ${what} ${JSON.stringify(name)} not found`);
}

/** Reads a kubeconfig file (YAML or JSON): its current context's cluster and user. */
export function kubeconfigConnection(path: string): KubeConnection {
  let doc: Record<string, unknown> | null;
  try {
    doc = record(parseYaml(readFileSync(path, "utf8")));
  } catch (e) {
    throw new KubeConfigError(`${path}: ${(e as Error).message}`);
  }
  if (!doc) throw new KubeConfigError(`${path}: not a kubeconfig`);
  const context = named(doc.contexts, doc["current-context"], "context", path);
  const cluster = named(doc.clusters, context.cluster, "cluster", path);
  const user = context.user === undefined ? {} : named(doc.users, context.user, "user", path);
  const str = (o: Record<string, unknown>, k: string) => (typeof o[k] === "string" ? (o[k] as string) : undefined);
  const data = (o: Record<string, unknown>, inline: string, file: string): Buffer | undefined => {
    const b64 = str(o, inline);
    if (b64) return Buffer.from(b64, "base64");
    const f = str(o, file);
    if (!f) return undefined;
    try {
      return readFileSync(f.startsWith("/") ? f : `${path.replace(/[^/]*$/, "")}${f}`);
    } catch (e) {
      throw new KubeConfigError(`${path}: ${file}: ${(e as Error).message}`);
    }
  };
  const server = str(cluster, "server");
  if (!server) throw new KubeConfigError(`${path}: cluster ${JSON.stringify(context.cluster)} has no server`);
  const conn: KubeConnection = { server };
  const ca = data(cluster, "certificate-authority-data", "certificate-authority");
  if (ca) conn.ca = ca;
  if (cluster["insecure-skip-tls-verify"] === true) conn.insecureSkipTlsVerify = true;
  const cert = data(user, "client-certificate-data", "client-certificate");
  const key = data(user, "client-key-data", "client-key");
  if (cert) conn.cert = cert;
  if (key) conn.key = key;
  const token = str(user, "token");
  if (token) conn.token = token;
  return conn;
}

interface KubeNode {
  metadata: { name: string; resourceVersion: string; annotations?: Record<string, string> };
  spec?: { podCIDR?: string; podCIDRs?: string[] };
}

export class KubeApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
    this.name = "KubeApiError";
  }
}

/** A small client for the few calls the overlay makes: Nodes get/list/watch/patch. */
export class KubeClient {
  private readonly url: URL;
  constructor(
    private readonly conn: KubeConnection,
    private readonly timeoutMs = 5_000,
  ) {
    this.url = new URL(conn.server);
    if (this.url.protocol !== "https:" && this.url.protocol !== "http:") {
      throw new KubeConfigError(`API server ${conn.server}: not an http(s) URL`);
    }
  }

  private options(method: string, path: string, headers: Record<string, string>): RequestOptions {
    const h: Record<string, string> = { accept: "application/json", ...headers };
    if (this.conn.token) h.authorization = `Bearer ${this.conn.token}`;
    const base = this.url.pathname.replace(/\/$/, "");
    return {
      method,
      hostname: this.url.hostname.replace(/^\[|\]$/g, ""),
      port: this.url.port || (this.url.protocol === "https:" ? 443 : 80),
      path: `${base}${path}`,
      headers: h,
      ca: this.conn.ca,
      cert: this.conn.cert,
      key: this.conn.key,
      rejectUnauthorized: !this.conn.insecureSkipTlsVerify,
    };
  }

  private open(
    method: string,
    path: string,
    body: string | undefined,
    headers: Record<string, string>,
    timeoutMs: number,
  ): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const send = this.url.protocol === "https:" ? httpsRequest : httpRequest;
      const req = send(this.options(method, path, headers), resolve);
      req.setTimeout(timeoutMs, () =>
        req.destroy(new StoreUnavailableError(`Kubernetes API ${method} ${path}: no answer within ${timeoutMs} ms`)),
      );
      req.on("error", (e) =>
        reject(e instanceof StoreUnavailableError ? e : new StoreUnavailableError(`Kubernetes API: ${e.message}`, { cause: e })),
      );
      req.end(body);
    });
  }

  /** One request with a JSON answer, bounded by the client's timeout. */
  async call<T>(method: string, path: string, body?: unknown, contentType = "application/json"): Promise<T> {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = text === undefined ? {} : { "content-type": contentType };
    const deadline = AbortSignal.timeout(this.timeoutMs);
    const res = await this.open(method, path, text, headers, this.timeoutMs);
    const chunks: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      const stop = () => res.destroy(new StoreUnavailableError(`Kubernetes API ${method} ${path}: answer not read in time`));
      deadline.addEventListener("abort", stop, { once: true });
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        deadline.removeEventListener("abort", stop);
        resolve();
      });
      res.on("error", reject);
    });
    const raw = Buffer.concat(chunks).toString("utf8");
    const status = res.statusCode ?? 0;
    if (status >= 200 && status < 300) return JSON.parse(raw) as T;
    let message = raw.slice(0, 300);
    try {
      message = (JSON.parse(raw) as { message?: string }).message ?? message;
    } catch {}
    const err = new KubeApiError(`Kubernetes API ${method} ${path}: ${status} ${message}`, status);
    if (status >= 500 || status === 429) throw new StoreUnavailableError(err.message, { cause: err });
    throw err;
  }

  getNode(name: string): Promise<KubeNode> {
    return this.call<KubeNode>("GET", `/api/v1/nodes/${encodeURIComponent(name)}`);
  }

  listNodes(): Promise<{ items: KubeNode[]; metadata: { resourceVersion: string } }> {
    return this.call("GET", "/api/v1/nodes");
  }

  patchNodeAnnotations(name: string, annotations: Record<string, string | null>): Promise<KubeNode> {
    return this.call<KubeNode>(
      "PATCH",
      `/api/v1/nodes/${encodeURIComponent(name)}`,
      { metadata: { annotations } },
      "application/merge-patch+json",
    );
  }

  /**
   * Watches Nodes after `resourceVersion`. Each event goes to `onEvent`; the promise resolves
   * once the stream is open and `cancel` ends it. `onEnd` is called once when the stream ends
   * for any other reason (410 Gone → "compacted"). Silence longer than `idleMs` (bookmarks
   * arrive at least every minute or so; the server ends a watch after `timeoutSeconds`) ends it too.
   */
  async watchNodes(
    resourceVersion: string,
    onEvent: (type: string, node: KubeNode) => void,
    onEnd: (reason: ResetReason, cause?: unknown) => void,
    idleMs = 90_000,
  ): Promise<{ cancel(): void }> {
    const path = `/api/v1/nodes?watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion=${encodeURIComponent(resourceVersion)}`;
    const res = await this.open("GET", path, undefined, {}, this.timeoutMs);
    if ((res.statusCode ?? 0) !== 200) {
      res.resume();
      const e = new StoreUnavailableError(`Kubernetes API watch: status ${res.statusCode}`);
      throw res.statusCode === 410 ? Object.assign(e, { gone: true }) : e;
    }
    let ended = false;
    let cancelled = false;
    let idle: NodeJS.Timeout | undefined;
    const end = (reason: ResetReason, cause?: unknown) => {
      if (ended) return;
      ended = true;
      clearTimeout(idle);
      res.destroy();
      if (!cancelled) onEnd(reason, cause);
    };
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(() => end("disconnected", new Error(`watch silent for ${idleMs} ms`)), idleMs);
      idle.unref?.();
    };
    arm();
    res.socket?.setTimeout(0);
    let buffered = "";
    res.setEncoding("utf8");
    res.on("data", (chunk: string) => {
      arm();
      buffered += chunk;
      let nl = buffered.indexOf("\n");
      while (nl >= 0 && !ended) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        nl = buffered.indexOf("\n");
        if (!line) continue;
        let ev: { type?: string; object?: unknown };
        try {
          ev = JSON.parse(line) as typeof ev;
        } catch (e) {
          end("error", e);
          return;
        }
        if (ev.type === "ERROR") {
          const status = record(ev.object);
          end(status?.code === 410 ? "compacted" : "error", new Error(String(status?.message ?? "watch error")));
          return;
        }
        const node = record(ev.object) as KubeNode | null;
        if (!node?.metadata?.name || typeof ev.type !== "string") continue;
        onEvent(ev.type, node);
      }
    });
    res.on("end", () => end("disconnected"));
    res.on("error", (e) => end("disconnected", e));
    return {
      cancel: () => {
        cancelled = true;
        end("disconnected");
      },
    };
  }
}

export interface KubeStoreOptions {
  client: KubeClient;
  /** This node's name (the Node object the agent may write). */
  nodeName: string;
  /** Key prefix of the entries (the agent's --etcd-prefix, default /berth/network). */
  prefix: string;
}

/** This node's pod CIDRs from its Node object: null while the controller has not assigned one. */
export function nodePodCidrs(node: KubeNode): { subnet: Subnet; subnetV6?: Subnet } | null {
  const raw = node.spec?.podCIDRs?.length ? node.spec.podCIDRs : node.spec?.podCIDR ? [node.spec.podCIDR] : [];
  let subnet: Subnet | undefined;
  let subnetV6: Subnet | undefined;
  for (const text of raw) {
    let c: Subnet;
    try {
      c = Subnet.parse(text);
    } catch {
      continue;
    }
    if (c.family === 4 && !subnet) subnet = c;
    else if (c.family === 6 && !subnetV6) subnetV6 = c;
  }
  if (!subnet) return null;
  return subnetV6 ? { subnet, subnetV6 } : { subnet };
}

function keyOf(prefix: string, c: { subnet: Subnet; subnetV6?: Subnet }): string {
  const part = (x: Subnet) => String(x).replace("/", "-");
  return `${prefix}/subnets/${part(c.subnet)}${c.subnetV6 ? `&${part(c.subnetV6)}` : ""}`;
}

/** The lease value a Node's annotations publish; null when its agent has not published yet. */
function publishedValue(node: KubeNode): string | null {
  const a = node.metadata.annotations ?? {};
  if (!a[A.publicIP] || !a[A.vtepMAC] || !a[A.vni]) return null;
  const vni = Number(a[A.vni]);
  if (!Number.isInteger(vni)) return null;
  const v: Record<string, unknown> = { publicIP: a[A.publicIP], vtepMAC: a[A.vtepMAC], vni, hostname: node.metadata.name };
  if (a[A.publicIPv6]) v.publicIPv6 = a[A.publicIPv6];
  if (a[A.hostId]) v.hostId = a[A.hostId];
  return JSON.stringify(v);
}

function entryOf(prefix: string, node: KubeNode): StoreEntry | null {
  const cidrs = nodePodCidrs(node);
  const value = cidrs && publishedValue(node);
  if (!cidrs || !value) return null;
  return { key: keyOf(prefix, cidrs), value, modRevision: revisionOf(node.metadata.resourceVersion), leaseId: null };
}

function revisionOf(resourceVersion: string | undefined): number {
  const n = Number(resourceVersion);
  return Number.isSafeInteger(n) ? n : 0;
}

export class KubeStore implements ClusterStore {
  readonly kind = "kube" as const;
  private readonly client: KubeClient;
  private readonly watches = new Set<{ cancel(): void }>();

  constructor(private readonly options: KubeStoreOptions) {
    this.client = options.client;
  }

  get nodeName(): string {
    return this.options.nodeName;
  }

  /** This node's pod CIDRs, null while none is assigned. */
  async assignedSubnets(): Promise<{ subnet: Subnet; subnetV6?: Subnet } | null> {
    return nodePodCidrs(await this.ownNode());
  }

  private async ownNode(): Promise<KubeNode> {
    try {
      return await this.client.getNode(this.options.nodeName);
    } catch (e) {
      if (e instanceof KubeApiError && e.status === 404) {
        throw new LeaseError(`Node ${JSON.stringify(this.options.nodeName)} does not exist in the cluster`);
      }
      throw e;
    }
  }

  /** Writes this node's annotations: only for its own key, only while `expect` holds of its Node. */
  private async writeOwn(key: string, value: string, expect: { absent: true } | { modRevision: number }): Promise<WriteResult> {
    const node = await this.ownNode();
    const cidrs = nodePodCidrs(node);
    if (!cidrs || keyOf(this.options.prefix, cidrs) !== key) return { ok: false };
    if (
      "absent" in expect
        ? entryOf(this.options.prefix, node) !== null
        : revisionOf(node.metadata.resourceVersion) !== expect.modRevision
    )
      return { ok: false };
    const v = JSON.parse(value) as Record<string, unknown>;
    const patched = await this.client.patchNodeAnnotations(this.options.nodeName, {
      [A.publicIP]: String(v.publicIP),
      [A.publicIPv6]: typeof v.publicIPv6 === "string" ? v.publicIPv6 : null,
      [A.vtepMAC]: String(v.vtepMAC),
      [A.vni]: String(v.vni),
      [A.hostId]: typeof v.hostId === "string" ? v.hostId : null,
    });
    return { ok: true, leaseId: null, revision: revisionOf(patched.metadata.resourceVersion) };
  }

  /** Publishes this node's VTEP; refused for any key but this node's own pod CIDR. */
  async create(key: string, value: string): Promise<WriteResult> {
    return this.writeOwn(key, value, { absent: true });
  }

  async replace(key: string, value: string, _ttl: number | null, ifModRevision: number): Promise<WriteResult> {
    return this.writeOwn(key, value, { modRevision: ifModRevision });
  }

  /** This node's own entry is read from its Node alone (the lease manager renews it often); others by a listing. */
  async get(key: string): Promise<StoreEntry | null> {
    const own = entryOf(this.options.prefix, await this.ownNode());
    if (own?.key === key) return own;
    const { entries } = await this.list(`${this.options.prefix}/subnets/`);
    return entries.find((e) => e.key === key) ?? null;
  }

  async list(prefix: string): Promise<{ entries: StoreEntry[]; revision: number }> {
    const res = await this.client.listNodes();
    const entries: StoreEntry[] = [];
    for (const node of res.items ?? []) {
      const e = entryOf(this.options.prefix, node);
      if (e?.key.startsWith(prefix)) entries.push(e);
    }
    return { entries, revision: revisionOf(res.metadata?.resourceVersion) };
  }

  /** Takes this node's annotations off (only its own entry can be deleted). */
  async delete(key: string): Promise<boolean> {
    const own = await this.get(key);
    if (!own || JSON.parse(own.value).hostname !== this.options.nodeName) return false;
    await this.client.patchNodeAnnotations(this.options.nodeName, {
      [A.publicIP]: null,
      [A.publicIPv6]: null,
      [A.vtepMAC]: null,
      [A.vni]: null,
      [A.hostId]: null,
    });
    return true;
  }

  /** Node entries have no TTL: the Node object lives as long as the node is in the cluster. */
  async keepAlive(): Promise<boolean> {
    return true;
  }

  async revoke(): Promise<void> {}

  async watch(
    prefix: string,
    fromRevision: number,
    onEvent: (event: WatchEvent) => void,
    onReset: (reason: ResetReason, cause?: unknown) => void,
  ): Promise<StoreWatch> {
    // Entries each Node had, so that a changed pod CIDR or withdrawn annotations become deletes.
    const current = new Map<string, string>();
    const seed = await this.list(prefix);
    for (const e of seed.entries) current.set(JSON.parse(e.value).hostname as string, e.key);
    let handle: { cancel(): void } | null = null;
    try {
      handle = await this.client.watchNodes(
        String(Math.max(0, fromRevision - 1)),
        (type, node) => {
          const name = node.metadata.name;
          const revision = revisionOf(node.metadata.resourceVersion);
          const before = current.get(name);
          const entry = type === "DELETED" ? null : entryOf(this.options.prefix, node);
          if (type === "BOOKMARK") return;
          if (before && before !== entry?.key) {
            current.delete(name);
            onEvent({ type: "delete", key: before, revision });
          }
          if (entry?.key.startsWith(prefix)) {
            current.set(name, entry.key);
            onEvent({ type: "put", key: entry.key, value: entry.value, revision, leaseId: null });
          }
        },
        (reason, cause) => {
          if (handle) this.watches.delete(handle);
          onReset(reason, cause);
        },
      );
    } catch (e) {
      if ((e as { gone?: boolean }).gone) {
        queueMicrotask(() => onReset("compacted", e));
        return { cancel: async () => {} };
      }
      throw e;
    }
    const h = handle;
    this.watches.add(h);
    return {
      cancel: async () => {
        this.watches.delete(h);
        h.cancel();
      },
    };
  }

  async probe(): Promise<void> {
    await this.client.call("GET", "/version");
  }

  async close(): Promise<void> {
    for (const w of this.watches) w.cancel();
    this.watches.clear();
  }
}
