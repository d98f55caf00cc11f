// The etcd store: the distributed engine for many hosts, through the `etcd3` client.
// create-if-absent is a transaction (If version == 0 → Put with lease), exactly like flannel.
// Leases are granted and refreshed explicitly (no client-side auto keepalive) so that the
// lease manager decides what to do when a refresh fails. A watch that loses its stream or
// hits a compacted revision is ended with onReset: the consumer re-lists, then re-watches.
// The client's default fault handling (three tries, then a circuit breaker that refuses every
// call for 5 s) is replaced: a call is tried once per endpoint, an endpoint that just failed is
// skipped for a second while others are left, and with one endpoint every call goes through, so
// the agent's loops see etcd's return on their next call.
import { readFileSync } from "node:fs";
import { Etcd3, type IKeyValue, type IOptions, isRecoverableError, type Watcher } from "etcd3";
import {
  type ClusterStore,
  type ResetReason,
  type StoreEntry,
  StoreUnavailableError,
  type StoreWatch,
  type WatchEvent,
  type WriteResult,
} from "./store.ts";

export interface EtcdStoreOptions {
  /** e.g. ["http://127.0.0.1:2379"]; https:// when TLS files are given. */
  endpoints: string[];
  /** PEM file paths for TLS (client cert and key optional: server-auth only). */
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  /** Deadline for each unary call. */
  requestTimeoutMs?: number;
  /** How long `watch` waits for the stream to be established before giving up. */
  watchConnectTimeoutMs?: number;
  /** Deadline of probe(): how long a frozen or unreachable etcd may take to be called down. */
  probeTimeoutMs?: number;
}

type Policy = NonNullable<NonNullable<IOptions["faultHandling"]>["global"]>;
type Call<T> = (context: { signal: AbortSignal }) => Promise<T> | T;
const notAborted = new AbortController().signal;
const recoverable = (e: unknown) => e instanceof Error && isRecoverableError(e);

/** Runs the call once, as it is. */
const runOnce = { execute: async <T>(fn: Call<T>) => fn({ signal: notAborted }) } as unknown as Policy;

/** Tries the call up to `times` times while it fails for a connection-level reason. */
function retryOnOtherEndpoints(times: number): Policy {
  return {
    execute: async <T>(fn: Call<T>) => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await fn({ signal: notAborted });
        } catch (e) {
          if (attempt >= times || !recoverable(e)) throw e;
        }
      }
    },
  } as unknown as Policy;
}

/** One endpoint among several: skipped for `skipMs` after a connection-level failure. */
function skipAfterFailure(skipMs: number): Policy {
  let skipUntil = 0;
  return {
    execute: async <T>(fn: Call<T>) => {
      if (Date.now() < skipUntil) throw new StoreUnavailableError("etcd endpoint failed a moment ago; skipped");
      try {
        return await fn({ signal: notAborted });
      } catch (e) {
        if (recoverable(e)) skipUntil = Date.now() + skipMs;
        throw e;
      }
    },
  } as unknown as Policy;
}

export class EtcdStore implements ClusterStore {
  readonly kind = "etcd" as const;
  private readonly client: Etcd3;
  private readonly watchConnectTimeoutMs: number;
  private readonly probeTimeoutMs: number;

  constructor(options: EtcdStoreOptions) {
    if (options.endpoints.length === 0) throw new RangeError("etcd store: at least one endpoint is needed");
    const timeout = options.requestTimeoutMs ?? 5000;
    this.probeTimeoutMs = options.probeTimeoutMs ?? 2000;
    const config: IOptions = {
      hosts: options.endpoints,
      dialTimeout: timeout,
      // Every try gets its own deadline; the probe's is short so that a frozen etcd is noticed soon.
      defaultCallOptions: (ctx) =>
        ctx.isStream ? {} : { deadline: Date.now() + (ctx.method === "status" ? this.probeTimeoutMs : timeout) },
      faultHandling:
        options.endpoints.length === 1
          ? { host: () => runOnce, global: runOnce }
          : { host: () => skipAfterFailure(1000), global: retryOnOtherEndpoints(options.endpoints.length) },
    };
    if (options.caFile) {
      config.credentials = {
        rootCertificate: readFileSync(options.caFile),
        certChain: options.certFile ? readFileSync(options.certFile) : undefined,
        privateKey: options.keyFile ? readFileSync(options.keyFile) : undefined,
      };
    } else if (options.certFile || options.keyFile) {
      throw new RangeError("etcd store: a client certificate needs the CA file too (--etcd-ca)");
    }
    this.client = new Etcd3(config);
    this.watchConnectTimeoutMs = options.watchConnectTimeoutMs ?? timeout;
  }

  async probe(): Promise<void> {
    await this.guard("probe", () => this.client.maintenance.status());
  }

  async create(key: string, value: string, ttlSeconds: number | null): Promise<WriteResult> {
    return this.guard("create", async () => {
      const leaseId = ttlSeconds === null ? null : await this.grant(ttlSeconds);
      const put = this.client.put(key).value(value);
      if (leaseId) put.lease(leaseId);
      const res = await this.client.if(key, "Version", "==", 0).then(put).commit();
      if (!res.succeeded) {
        if (leaseId) await this.client.leaseClient.leaseRevoke({ ID: leaseId }).catch(() => undefined);
        return { ok: false };
      }
      return { ok: true, leaseId, revision: Number(res.header.revision) };
    });
  }

  async replace(key: string, value: string, ttlSeconds: number | null, ifModRevision: number): Promise<WriteResult> {
    return this.guard("replace", async () => {
      const leaseId = ttlSeconds === null ? null : await this.grant(ttlSeconds);
      const put = this.client.put(key).value(value);
      if (leaseId) put.lease(leaseId);
      const res = await this.client.if(key, "Mod", "==", ifModRevision).then(put).commit();
      if (!res.succeeded) {
        if (leaseId) await this.client.leaseClient.leaseRevoke({ ID: leaseId }).catch(() => undefined);
        return { ok: false };
      }
      return { ok: true, leaseId, revision: Number(res.header.revision) };
    });
  }

  async get(key: string): Promise<StoreEntry | null> {
    return this.guard("get", async () => {
      const res = await this.client.get(key).exec();
      const kv = res.kvs[0];
      return kv ? toEntry(kv) : null;
    });
  }

  async list(prefix: string): Promise<{ entries: StoreEntry[]; revision: number }> {
    return this.guard("list", async () => {
      const res = await this.client.getAll().prefix(prefix).exec();
      return { entries: res.kvs.map(toEntry), revision: Number(res.header.revision) };
    });
  }

  async delete(key: string, ifModRevision?: number): Promise<boolean> {
    return this.guard("delete", async () => {
      if (ifModRevision === undefined) {
        const res = await this.client.delete().key(key).exec();
        return Number(res.deleted) > 0;
      }
      const res = await this.client.if(key, "Mod", "==", ifModRevision).then(this.client.delete().key(key)).commit();
      return res.succeeded;
    });
  }

  async keepAlive(leaseId: string): Promise<boolean> {
    return this.guard("keepAlive", async () => {
      const stream = await this.client.leaseClient.leaseKeepAlive();
      try {
        const res = await new Promise<{ TTL: string }>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error("lease keepalive timed out")), this.watchConnectTimeoutMs);
          stream.on("data", (r) => {
            clearTimeout(timer);
            resolve(r);
          });
          stream.on("error", (e) => {
            clearTimeout(timer);
            reject(e);
          });
          stream.write({ ID: leaseId });
        });
        // etcd answers TTL <= 0 for a lease it no longer has.
        return Number(res.TTL) > 0;
      } finally {
        stream.end();
      }
    });
  }

  async revoke(leaseId: string): Promise<void> {
    await this.guard("revoke", async () => {
      try {
        await this.client.leaseClient.leaseRevoke({ ID: leaseId });
      } catch (e) {
        if (!/lease not found/i.test(String((e as Error).message))) throw e;
      }
    });
  }

  async watch(
    prefix: string,
    fromRevision: number,
    onEvent: (event: WatchEvent) => void,
    onReset: (reason: ResetReason, cause?: unknown) => void,
  ): Promise<StoreWatch> {
    const watcher = this.client.watch().prefix(prefix).startRevision(String(fromRevision)).watcher() as Watcher;
    let over = false;
    let nextRevision = fromRevision;
    // etcd3 would resume the stream on its own; we end the watch instead and let the consumer
    // re-list, so that an outage always ends in a full comparison (nothing missed, nothing flapped).
    const end = (reason: ResetReason, cause?: unknown) => {
      if (over) return;
      over = true;
      watcher.removeAllListeners();
      watcher.on("error", () => undefined);
      void watcher.cancel().catch(() => undefined);
      onReset(reason, cause);
    };
    watcher.on("put", (kv: IKeyValue) => {
      if (!over) {
        nextRevision = Number(kv.mod_revision) + 1;
        onEvent({
          type: "put",
          key: kv.key.toString(),
          value: kv.value.toString(),
          revision: Number(kv.mod_revision),
          leaseId: kv.lease && kv.lease !== "0" ? kv.lease : null,
        });
      }
    });
    watcher.on("delete", (kv: IKeyValue) => {
      if (over) return;
      nextRevision = Number(kv.mod_revision) + 1;
      onEvent({ type: "delete", key: kv.key.toString(), revision: Number(kv.mod_revision) });
    });
    watcher.on("data", (res: { compact_revision?: string }) => {
      if (res.compact_revision && res.compact_revision !== "0") end("compacted");
    });
    watcher.on("disconnected", (e: unknown) => end("disconnected", e));
    // etcd3 reports a cancelled watch as a bare "Watcher canceled" error without the compact
    // revision, so ask etcd directly whether the revision we were at is still readable.
    watcher.on("error", (e: unknown) => {
      void this.isCompacted(prefix, nextRevision).then((compacted) => end(compacted ? "compacted" : "error", e));
    });

    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        over = true;
        watcher.removeAllListeners();
        watcher.on("error", () => undefined);
        void watcher.cancel().catch(() => undefined);
        reject(new StoreUnavailableError(`etcd watch on ${prefix} was not established within ${this.watchConnectTimeoutMs} ms`));
      }, this.watchConnectTimeoutMs);
      watcher.once("connected", () => {
        clearTimeout(timer);
        resolve();
      });
      // A compacted start revision is refused right at creation.
      watcher.once("error", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    return {
      cancel: async () => {
        if (over) return;
        over = true;
        watcher.removeAllListeners();
        watcher.on("error", () => undefined);
        await watcher.cancel().catch(() => undefined);
      },
    };
  }

  async close(): Promise<void> {
    this.client.close();
  }

  private async isCompacted(key: string, revision: number): Promise<boolean> {
    try {
      await this.client.get(key).revision(revision).exec();
      return false;
    } catch (e) {
      return /compacted/i.test(String((e as Error)?.message));
    }
  }

  private async grant(ttlSeconds: number): Promise<string> {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1)
      throw new RangeError(`TTL must be a whole number of seconds >= 1, got ${ttlSeconds}`);
    const res = await this.client.leaseClient.leaseGrant({ TTL: ttlSeconds });
    return res.ID;
  }

  /** Every client failure becomes a StoreUnavailableError naming the operation. */
  private async guard<T>(op: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof RangeError || e instanceof StoreUnavailableError) throw e;
      throw new StoreUnavailableError(`etcd ${op} failed: ${(e as Error)?.message ?? String(e)}`, { cause: e });
    }
  }
}

function toEntry(kv: IKeyValue): StoreEntry {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    modRevision: Number(kv.mod_revision),
    leaseId: kv.lease && kv.lease !== "0" ? kv.lease : null,
  };
}
