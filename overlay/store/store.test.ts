// The ClusterStore contract, run against both implementations: the embedded SQLite store and a
// real etcd process (random loopback ports, temp data dir, killed by PID afterwards).
import { fork } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { Etcd3 } from "etcd3";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { EtcdProcess } from "../../testing/etcd-process.ts";
import { EtcdStore } from "./etcd.ts";
import { LocalStore } from "./local.ts";
import type { ClusterStore, ResetReason, WatchEvent } from "./store.ts";

const IPAM_WORKER = join(import.meta.dirname, "../../testing/ipam-store-worker.ts");

interface Harness {
  open(): ClusterStore;
  compact(revision: number): Promise<void>;
}

let etcd: EtcdProcess | undefined;
let tmp: string;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "berth-store-"));
  etcd = await EtcdProcess.start();
});

afterAll(async () => {
  await etcd?.destroy();
  rmSync(tmp, { recursive: true, force: true });
});

const localStores: LocalStore[] = [];
const harnesses: Record<string, () => Harness> = {
  local: () => {
    const path = join(tmp, `${Math.random().toString(16).slice(2)}.db`);
    return {
      open: () => {
        const s = new LocalStore({ path, pollIntervalMs: 20 });
        localStores.push(s);
        return s;
      },
      compact: async (revision) => localStores.at(-1)!.compact(revision),
    };
  },
  etcd: () => ({
    open: () => new EtcdStore({ endpoints: [etcd!.endpoint] }),
    compact: async (revision) => {
      const c = new Etcd3({ hosts: etcd!.endpoint });
      try {
        await c.kv.compact({ revision: String(revision), physical: true });
      } finally {
        c.close();
      }
    },
  }),
};

async function until<T>(probe: () => Promise<T> | T, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms (last value ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.each(Object.keys(harnesses))("ClusterStore contract: %s", (kind) => {
  let harness: Harness;
  let store: ClusterStore;
  let prefix: string;
  const opened: ClusterStore[] = [];

  beforeEach(() => {
    harness = harnesses[kind]!();
    store = harness.open();
    opened.push(store);
    prefix = `/berth-test/${Math.random().toString(16).slice(2)}/`;
  });

  afterEach(async () => {
    for (const s of opened.splice(0)) await s.close();
  });

  it("creates a key only when it is absent", async () => {
    const first = await store.create(`${prefix}a`, "one", null);
    expect(first.ok).toBe(true);
    const second = await store.create(`${prefix}a`, "two", null);
    expect(second.ok).toBe(false);
    const got = await store.get(`${prefix}a`);
    expect(got).toMatchObject({ key: `${prefix}a`, value: "one", leaseId: null });
    if (first.ok) expect(got?.modRevision).toBe(first.revision);
  });

  it("lists a prefix with the revision of the listing, and nothing outside it", async () => {
    await store.create(`${prefix}x/1`, "1", null);
    await store.create(`${prefix}x/2`, "2", null);
    await store.create(`${prefix}y`, "3", null);
    const { entries, revision } = await store.list(`${prefix}x/`);
    expect(entries.map((e) => [e.key, e.value])).toEqual([
      [`${prefix}x/1`, "1"],
      [`${prefix}x/2`, "2"],
    ]);
    expect(revision).toBeGreaterThanOrEqual(Math.max(...entries.map((e) => e.modRevision)));
  });

  it("replaces and deletes only at the expected revision", async () => {
    const created = await store.create(`${prefix}k`, "v1", null);
    if (!created.ok) throw new Error("create failed");
    expect((await store.replace(`${prefix}k`, "v2", null, created.revision + 1000)).ok).toBe(false);
    const replaced = await store.replace(`${prefix}k`, "v2", 30, created.revision);
    expect(replaced.ok).toBe(true);
    const got = await store.get(`${prefix}k`);
    expect(got?.value).toBe("v2");
    expect(got?.leaseId).not.toBeNull();
    expect(await store.delete(`${prefix}k`, created.revision)).toBe(false);
    expect(await store.delete(`${prefix}k`, got!.modRevision)).toBe(true);
    expect(await store.get(`${prefix}k`)).toBeNull();
    expect(await store.delete(`${prefix}k`)).toBe(false);
  });

  it("expires a TTL key that is not kept alive, and keeps one that is", async () => {
    const dying = await store.create(`${prefix}dying`, "x", 1);
    const living = await store.create(`${prefix}living`, "y", 2);
    if (!dying.ok || !living.ok) throw new Error("create failed");
    expect(dying.leaseId).toBeTruthy();
    const keeper = setInterval(() => void store.keepAlive(living.leaseId!), 300);
    try {
      await until(
        () => store.get(`${prefix}dying`),
        (v) => v === null,
      );
      // The kept-alive key outlives several of its TTLs.
      await new Promise((r) => setTimeout(r, 2500));
      expect(await store.get(`${prefix}living`)).not.toBeNull();
    } finally {
      clearInterval(keeper);
    }
    expect(await store.keepAlive(dying.leaseId!)).toBe(false);
    await store.revoke(living.leaseId!);
    expect(await store.get(`${prefix}living`)).toBeNull();
    expect(await store.keepAlive(living.leaseId!)).toBe(false);
  });

  it("watches from a revision: replays history, then streams puts and deletes in order", async () => {
    const start = (await store.list(prefix)).revision + 1;
    await store.create(`${prefix}w1`, "a", null);
    const events: WatchEvent[] = [];
    const resets: ResetReason[] = [];
    // A second handle (another process, for the local store) sees the first one's writes.
    const other = harness.open();
    opened.push(other);
    const w = await other.watch(
      prefix,
      start,
      (e) => events.push(e),
      (r) => resets.push(r),
    );
    await store.create(`${prefix}w2`, "b", 30);
    await store.delete(`${prefix}w1`);
    await store.create(`${prefix}elsewhere`.replace(prefix, "/berth-other/"), "c", null);
    await until(
      () => events.length,
      (n) => n >= 3,
    );
    await w.cancel();
    expect(events.map((e) => [e.type, e.key])).toEqual([
      ["put", `${prefix}w1`],
      ["put", `${prefix}w2`],
      ["delete", `${prefix}w1`],
    ]);
    const revisions = events.map((e) => e.revision);
    expect([...revisions].sort((a, b) => a - b)).toEqual(revisions);
    expect(events[1]).toMatchObject({ value: "b" });
    expect((events[1] as { leaseId: string | null }).leaseId).toBeTruthy();
    expect(resets).toEqual([]);
    await store.delete(`/berth-other/elsewhere`);
  });

  it("ends a watch with a 'compacted' reset when its start revision is gone", async () => {
    const first = await store.create(`${prefix}c1`, "1", null);
    await store.create(`${prefix}c2`, "2", null);
    const { revision } = await store.list(prefix);
    if (!first.ok) throw new Error("create failed");
    await harness.compact(revision);
    const events: WatchEvent[] = [];
    const resets: ResetReason[] = [];
    await store.watch(
      prefix,
      first.revision,
      (e) => events.push(e),
      (r) => resets.push(r),
    );
    await until(
      () => resets.length,
      (n) => n > 0,
    );
    expect(resets).toEqual(["compacted"]);
    expect(events).toEqual([]);
  });
});

describe("etcd store outage", () => {
  it("ends the watch with a reset when etcd goes away, fails fast while it is down, and works again after", async () => {
    const store = new EtcdStore({ endpoints: [etcd!.endpoint], requestTimeoutMs: 1500 });
    try {
      const { revision } = await store.list("/berth-outage/");
      const resets: ResetReason[] = [];
      await store.watch(
        "/berth-outage/",
        revision + 1,
        () => undefined,
        (r) => resets.push(r),
      );
      await etcd!.stop();
      await until(
        () => resets.length,
        (n) => n > 0,
      );
      expect(resets[0]).toBe("disconnected");
      await expect(store.list("/berth-outage/")).rejects.toMatchObject({ name: "StoreUnavailableError" });
      await etcd!.resume();
      const created = await until(
        () => store.create(`/berth-outage/${Math.random()}`, "v", null).catch(() => ({ ok: false })),
        (r) => r.ok,
        20_000,
      );
      expect(created.ok).toBe(true);
    } finally {
      await etcd!.resume();
      await store.close();
    }
  });
});

describe("etcd store probe", () => {
  it("fails within its deadline while etcd is frozen, and the first call after etcd is back goes through", async () => {
    const store = new EtcdStore({ endpoints: [etcd!.endpoint], probeTimeoutMs: 1000 });
    const pid = etcd!.pid!;
    try {
      await store.probe();
      process.kill(pid, "SIGSTOP");
      const t0 = performance.now();
      await expect(store.probe()).rejects.toMatchObject({ name: "StoreUnavailableError" });
      expect(performance.now() - t0).toBeLessThan(2000);
      process.kill(pid, "SIGCONT");
      await store.probe();
      // Gone for several calls in a row, then back: no client-side breaker keeps refusing calls.
      await etcd!.stop();
      for (let i = 0; i < 4; i++) await expect(store.probe()).rejects.toMatchObject({ name: "StoreUnavailableError" });
      await etcd!.resume();
      await store.probe();
      expect((await store.create(`/berth-probe/${Math.random()}`, "v", null)).ok).toBe(true);
    } finally {
      if (etcd!.pid === pid) process.kill(pid, "SIGCONT");
      await etcd!.resume();
      await store.close();
    }
  });
});

describe("etcd store with several endpoints", () => {
  it("keeps answering while one endpoint is dead: each call moves on to the next endpoint", async () => {
    // A port nothing listens on (closed right after it was bound): connections are refused.
    const dead = await new Promise<number>((resolve) => {
      const srv = createServer().listen(0, "127.0.0.1", () => {
        const port = (srv.address() as AddressInfo).port;
        srv.close(() => resolve(port));
      });
    });
    const store = new EtcdStore({ endpoints: [`http://127.0.0.1:${dead}`, etcd!.endpoint], probeTimeoutMs: 1000 });
    try {
      for (let i = 0; i < 20; i++) {
        await store.probe();
        await store.list("/berth-multi/");
      }
    } finally {
      await store.close();
    }
  });
});

describe("etcd store over TLS", () => {
  let secure: EtcdProcess | undefined;
  beforeAll(async () => {
    secure = await EtcdProcess.start({ tls: true });
  });
  afterAll(async () => {
    await secure?.destroy();
  });

  it("works with --etcd-ca/--etcd-cert/--etcd-key and is refused without a client certificate", async () => {
    const pki = secure!.pki!;
    const store = new EtcdStore({
      endpoints: [secure!.endpoint],
      caFile: pki.ca,
      certFile: pki.clientCert,
      keyFile: pki.clientKey,
    });
    try {
      expect((await store.create("/berth-tls/a", "1", 30)).ok).toBe(true);
      expect((await store.list("/berth-tls/")).entries.map((e) => e.value)).toEqual(["1"]);
    } finally {
      await store.close();
    }
    const anonymous = new EtcdStore({ endpoints: [secure!.endpoint], caFile: pki.ca, requestTimeoutMs: 2000 });
    try {
      await expect(anonymous.list("/berth-tls/")).rejects.toMatchObject({ name: "StoreUnavailableError" });
    } finally {
      await anonymous.close();
    }
    expect(() => new EtcdStore({ endpoints: [secure!.endpoint], certFile: pki.clientCert })).toThrow(/needs the CA file/);
  });
});

describe("embedded store opened while another process holds the new file", () => {
  it("retries the immediate SQLITE_BUSY of switching to WAL, and then works", async () => {
    // A second agent (or `berth status`) opening a store file whose first opener still holds
    // its write lock: SQLite fails the WAL switch with SQLITE_BUSY at once, past the busy handler.
    const dir = mkdtempSync(join(tmp, "held-"));
    const child = fork(IPAM_WORKER, ["hold", dir, "400"], { execArgv: ["--import", "tsx"], stdio: "ignore" });
    const exited = new Promise((r) => child.once("exit", r));
    await new Promise<void>((resolve, reject) => {
      child.once("message", () => resolve());
      child.once("exit", (code) => reject(new Error(`holder exited early with ${code}`)));
    });
    const started = Date.now();
    const store = new LocalStore({ path: join(dir, "ipam.db"), pollIntervalMs: 20 });
    try {
      expect(Date.now() - started).toBeGreaterThanOrEqual(200);
      expect(await store.create("/k", "v", null)).toMatchObject({ ok: true });
      expect((await store.get("/k"))?.value).toBe("v");
    } finally {
      await store.close();
      await exited;
    }
    const raw = new Database(join(dir, "ipam.db"), { readonly: true });
    try {
      expect(raw.pragma("journal_mode", { simple: true })).toBe("wal");
    } finally {
      raw.close();
    }
  });
});
