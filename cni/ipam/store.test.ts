import { type ChildProcess, execFile, fork } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { addNetns, delNetns, testPrefix } from "../../testing/kernel.ts";
import { execPlugin } from "../../testing/plugin-exec.ts";
import { formatIp, parseIp, valueFromKey } from "../address/address.ts";
import { CniError } from "../protocol/types.ts";
import { parseHostLocalConfig, type RangeSet } from "./ranges.ts";
import { DATABASE_FILE, IpamErrorCode, type LeaseOwner, LeaseStore, WAL_TRUNCATE_BYTES } from "./store.ts";

const execFileP = promisify(execFile);
const WORKER = join(import.meta.dirname, "../../testing/ipam-store-worker.ts");
/** The built launchers (npm test bundles first); BERTH_CNI_SOCKET=off makes them run the cold path. */
const COLD_CNI = resolve(import.meta.dirname, "../../build/cni");

function sets(ranges: unknown, ipam: Record<string, unknown> = {}): RangeSet[] {
  return parseHostLocalConfig({ ranges, ...ipam }).rangeSets;
}

function owner(containerId: string, network = "net1", ifname = "eth0"): LeaseOwner {
  return { network, containerId, ifname };
}

function cniError(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error("expected a CniError");
}

/** Rows as another process would see them: a separate connection, raw SQL. */
function rowsOnDisk(dir: string): { ip: string; network: string; container_id: string; ifname: string; range_set: number }[] {
  const db = new Database(join(dir, DATABASE_FILE), { readonly: true });
  try {
    return db.prepare("SELECT ip, network, container_id, ifname, range_set FROM leases ORDER BY address").all() as never;
  } finally {
    db.close();
  }
}

/** Frames of the WAL's current generation (salts equal to the header's): what an opener's recovery reads. */
function walLiveFrames(dir: string): number {
  const wal = readFileSync(join(dir, `${DATABASE_FILE}-wal`));
  if (wal.length < 32) return 0; // truncated: no header yet
  const pageSize = wal.readUInt32BE(8);
  let frames = 0;
  for (let off = 32; off + 24 + pageSize <= wal.length; off += 24 + pageSize) {
    if (!wal.subarray(off + 8, off + 16).equals(wal.subarray(16, 24))) break;
    frames++;
  }
  return frames;
}

/** Commit frames in the WAL (a frame header's "database size after commit" is non-zero). */
function walCommits(dir: string): number {
  const wal = readFileSync(join(dir, `${DATABASE_FILE}-wal`));
  if (wal.length < 32) return 0;
  const pageSize = wal.readUInt32BE(8);
  let commits = 0;
  for (let off = 32; off + 24 + pageSize <= wal.length; off += 24 + pageSize) {
    if (wal.readUInt32BE(off + 4) !== 0) commits++;
  }
  return commits;
}

function walBytes(dir: string): number {
  return statSync(join(dir, `${DATABASE_FILE}-wal`)).size;
}

let dir: string;
let store: LeaseStore;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-ipam-`));
  store = LeaseStore.open(dir);
});

afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("LeaseStore", () => {
  it("opens in WAL mode with synchronous=FULL", () => {
    const db = new Database(join(dir, DATABASE_FILE));
    try {
      expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    } finally {
      db.close();
    }
    // synchronous is per connection: read it through the store's own handle.
    expect((store as unknown as { db: Database.Database }).db.pragma("synchronous", { simple: true })).toBe(2);
  });

  it("an opener checkpoints and truncates a WAL longer than WAL_TRUNCATE_BYTES; every lease stays", () => {
    const pool = sets([[{ subnet: "10.1.0.0/24" }]]);
    for (let i = 0; i < 100; i++) store.allocate(owner(`w${i}`), pool);
    expect(walBytes(dir)).toBeGreaterThan(WAL_TRUNCATE_BYTES);
    const other = LeaseStore.open(dir);
    try {
      expect(walBytes(dir)).toBe(0);
      expect(rowsOnDisk(dir)).toHaveLength(100);
      // Both handles go on writing, the log starting again from its top.
      expect(store.allocate(owner("after1"), pool)[0]!.address).toBe("10.1.0.102");
      expect(other.allocate(owner("after2"), pool)[0]!.address).toBe("10.1.0.103");
      expect(walBytes(dir)).toBeGreaterThan(0);
      expect(walBytes(dir)).toBeLessThan(WAL_TRUNCATE_BYTES);
      expect(rowsOnDisk(dir)).toHaveLength(102);
      expect(other.verify()).toEqual([]);
    } finally {
      other.close();
    }
  });

  it("does not wait to truncate the WAL while another connection writes: a later opener does it", () => {
    const pool = sets([[{ subnet: "10.1.0.0/24" }]]);
    for (let i = 0; i < 100; i++) store.allocate(owner(`w${i}`), pool);
    const writer = new Database(join(dir, DATABASE_FILE));
    writer.exec("BEGIN IMMEDIATE");
    try {
      const t0 = performance.now();
      LeaseStore.open(dir, { busyTimeoutMs: 10_000 }).close();
      expect(performance.now() - t0).toBeLessThan(2_000);
      expect(walBytes(dir)).toBeGreaterThan(WAL_TRUNCATE_BYTES);
    } finally {
      writer.exec("ROLLBACK");
      writer.close();
    }
    LeaseStore.open(dir).close();
    expect(walBytes(dir)).toBe(0);
    expect(rowsOnDisk(dir)).toHaveLength(100);
  });

  it("allocates until the pool is exhausted, then fails with a clear error; a release frees a slot", () => {
    const pool = sets([[{ subnet: "10.1.0.0/29" }]]); // .1 gateway, .2-.6 assignable
    const got = [1, 2, 3, 4, 5].map((i) => store.allocate(owner(`c${i}`), pool)[0]!.address);
    expect(got).toEqual(["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]);
    const err = cniError(() => store.allocate(owner("c6"), pool));
    expect(err.code).toBe(IpamErrorCode.PoolExhausted);
    expect(err.message).toBe("no free address in 10.1.0.0/29 (range set 0) for network net1");
    expect(store.exhaustedRangeSets("net1", pool)).toEqual([0]);
    expect(rowsOnDisk(dir).map((r) => r.ip)).toEqual(got);

    expect(store.release(owner("c3")).map((l) => l.address)).toEqual(["10.1.0.4"]);
    expect(store.exhaustedRangeSets("net1", pool)).toEqual([]);
    expect(store.allocate(owner("c6"), pool)[0]!.address).toBe("10.1.0.4");
    expect(rowsOnDisk(dir).find((r) => r.ip === "10.1.0.4")!.container_id).toBe("c6");
    expect(store.verify()).toEqual([]);
  });

  it("groups writes queued in one event-loop turn into one commit; a failing one rejects alone", async () => {
    const pool = sets([[{ subnet: "10.1.0.0/29" }]]); // 5 assignable
    const before = walCommits(dir);
    const calls = [1, 2, 3, 4, 5, 6, 7].map((i) => store.grouped(() => store.allocate(owner(`g${i}`), pool)));
    const settled = await Promise.allSettled(calls);
    expect(walCommits(dir) - before).toBe(1);
    const ok = settled.flatMap((r) => (r.status === "fulfilled" ? [r.value[0]!.address] : []));
    expect(ok).toEqual(["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]);
    for (const r of settled.slice(5)) {
      expect(r.status).toBe("rejected");
      expect(((r as PromiseRejectedResult).reason as CniError).code).toBe(IpamErrorCode.PoolExhausted);
    }
    expect(rowsOnDisk(dir).map((r) => r.container_id)).toEqual(["g1", "g2", "g3", "g4", "g5"]);
    // Releases group the same way; separate turns commit separately.
    await Promise.all(["g1", "g2"].map((c) => store.grouped(() => store.release(owner(c)))));
    await store.grouped(() => store.release(owner("g3")));
    expect(walCommits(dir) - before).toBe(3);
    expect(rowsOnDisk(dir).map((r) => r.container_id)).toEqual(["g4", "g5"]);
    expect(store.verify()).toEqual([]);
  });

  it("a grouped write whose store is closed before the commit is rejected with code 5, never reported done", async () => {
    const other = LeaseStore.open(dir);
    const pending = other.grouped(() => other.allocate(owner("late"), sets([[{ subnet: "10.1.0.0/29" }]])));
    other.close();
    const err = await pending.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(5);
    expect((err as CniError).message).toMatch(/lease database .*ipam\.db/);
    expect(rowsOnDisk(dir)).toEqual([]);
  });

  it("goes round-robin from the last address handed out and wraps around", () => {
    const pool = sets([[{ subnet: "10.1.0.0/29" }]]);
    expect(store.allocate(owner("a"), pool)[0]!.address).toBe("10.1.0.2");
    expect(store.allocate(owner("b"), pool)[0]!.address).toBe("10.1.0.3");
    store.release(owner("a"));
    // Not .2 again: a freed address is reused last, so a stale peer cache rarely hits a new pod.
    expect(store.allocate(owner("c"), pool)[0]!.address).toBe("10.1.0.4");
    expect(store.allocate(owner("d"), pool)[0]!.address).toBe("10.1.0.5");
    expect(store.allocate(owner("e"), pool)[0]!.address).toBe("10.1.0.6");
    expect(store.allocate(owner("f"), pool)[0]!.address).toBe("10.1.0.2"); // wrapped, skipping the gateway .1
    // The cursor survives a reopen (another process sees it).
    store.release(owner("d"));
    store.close();
    store = LeaseStore.open(dir);
    expect(store.allocate(owner("g"), pool)[0]!.address).toBe("10.1.0.5");
  });

  it("skips a gateway in the middle of the range and walks every range of a set in order", () => {
    const pool = sets([[{ subnet: "10.1.0.0/29", gateway: "10.1.0.3" }, { subnet: "10.2.0.0/30" }]]);
    const got = ["a", "b", "c", "d", "e", "f"].map((c) => store.allocate(owner(c), pool)[0]!.address);
    expect(got).toEqual(["10.1.0.1", "10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6", "10.2.0.2"]);
    expect(cniError(() => store.allocate(owner("g"), pool)).code).toBe(IpamErrorCode.PoolExhausted);
    store.release(owner("b"));
    expect(store.allocate(owner("g"), pool)[0]!.address).toBe("10.1.0.2");
  });

  it("gives one address per range set (dual-stack) in one transaction", () => {
    const pool = sets([[{ subnet: "10.1.0.0/24" }], [{ subnet: "fd00:1::/64" }]]);
    const leases = store.allocate(owner("a"), pool);
    expect(leases.map((l) => [l.address, l.rangeSet])).toEqual([
      ["10.1.0.2", 0],
      ["fd00:1::2", 1],
    ]);
    expect(rowsOnDisk(dir).map((r) => [r.ip, r.range_set])).toEqual([
      ["10.1.0.2", 0],
      ["fd00:1::2", 1],
    ]);
  });

  it("is all or nothing: an exhausted second set leaves no lease from the first", () => {
    const pool = sets([[{ subnet: "10.1.0.0/24" }], [{ subnet: "10.2.0.0/30" }]]); // set 1: only 10.2.0.2
    store.allocate(owner("a"), pool);
    expect(cniError(() => store.allocate(owner("b"), pool)).code).toBe(IpamErrorCode.PoolExhausted);
    expect(rowsOnDisk(dir).map((r) => r.container_id)).toEqual(["a", "a"]);
    expect(store.verify()).toEqual([]);
  });

  it("re-ADD of the same attachment returns the lease it holds (idempotent)", () => {
    const pool = sets([[{ subnet: "10.1.0.0/24" }], [{ subnet: "fd00:1::/64" }]]);
    const first = store.allocate(owner("a"), pool);
    const again = store.allocate(owner("a"), pool);
    expect(again.map((l) => l.address)).toEqual(first.map((l) => l.address));
    expect(rowsOnDisk(dir)).toHaveLength(2);
    // Same container, other interface or other network: a separate attachment.
    expect(store.allocate(owner("a", "net1", "eth1"), pool)[0]!.address).toBe("10.1.0.3");
    expect(rowsOnDisk(dir)).toHaveLength(4);
  });

  it("hands out a requested IP only when it is inside a range and free", () => {
    const pool = sets([[{ subnet: "10.1.0.0/24", rangeStart: "10.1.0.10", rangeEnd: "10.1.0.20" }], [{ subnet: "fd00::/120" }]]);
    const leases = store.allocate(owner("a"), pool, [parseIp("10.1.0.15")]);
    expect(leases.map((l) => l.address)).toEqual(["10.1.0.15", "fd00::2"]);
    // Both sets requested.
    expect(store.allocate(owner("b"), pool, [parseIp("fd00::80"), parseIp("10.1.0.16")]).map((l) => l.address)).toEqual([
      "10.1.0.16",
      "fd00::80",
    ]);

    const taken = cniError(() => store.allocate(owner("c"), pool, [parseIp("10.1.0.15")]));
    expect(taken.code).toBe(IpamErrorCode.AddressInUse);
    expect(taken.message).toBe("requested IP 10.1.0.15 is already leased to container a interface eth0 in network net1");

    const outside = cniError(() => store.allocate(owner("c"), pool, [parseIp("10.1.0.21")]));
    expect(outside.code).toBe(7);
    expect(outside.message).toMatch(/10\.1\.0\.21 is not inside any range of network net1/);

    const gateway = cniError(() => store.allocate(owner("c"), pool, [parseIp("fd00::1")]));
    expect(gateway.code).toBe(7);
    expect(gateway.message).toMatch(/fd00::1 is the gateway of ipam\.ranges\[1\]\[0\]/);

    const twice = cniError(() => store.allocate(owner("c"), pool, [parseIp("10.1.0.17"), parseIp("10.1.0.18")]));
    expect(twice.code).toBe(7);

    // Re-ADD asking for the held address is fine; asking for another one is a conflict.
    expect(store.allocate(owner("a"), pool, [parseIp("10.1.0.15")])[0]!.address).toBe("10.1.0.15");
    const other = cniError(() => store.allocate(owner("a"), pool, [parseIp("10.1.0.19")]));
    expect(other.code).toBe(IpamErrorCode.AddressInUse);
    expect(other.message).toMatch(/already holds 10\.1\.0\.15/);
    expect(rowsOnDisk(dir)).toHaveLength(4);
  });

  it("never gives the same address to two networks with overlapping subnets in one database", () => {
    const small = sets([[{ subnet: "10.7.0.0/29" }]]); // .2-.6
    const big = sets([[{ subnet: "10.7.0.0/28" }]]); // .2-.14
    const a = [1, 2, 3, 4, 5].map((i) => store.allocate(owner(`a${i}`, "netA"), small)[0]!.address);
    const b: string[] = [];
    for (let i = 0; ; i++) {
      try {
        b.push(store.allocate(owner(`b${i}`, "netB"), big)[0]!.address);
      } catch (e) {
        expect((e as CniError).code).toBe(IpamErrorCode.PoolExhausted);
        break;
      }
    }
    expect(b).toHaveLength(13 - 5);
    expect(new Set([...a, ...b]).size).toBe(13);
    // A requested address held by the other network is refused too.
    store.release(owner("b0", "netB"));
    const err = cniError(() => store.allocate(owner("b99", "netB"), big, [parseIp("10.7.0.3")]));
    expect(err.message).toMatch(/already leased to container a2 interface eth0 in network netA/);
    // The same container id in two networks is two attachments.
    expect(store.allocate(owner("a1", "netB"), big)[0]!.address).not.toBe(a[0]);
  });

  it("releases by (container, ifname, network), idempotently", () => {
    const pool = sets([[{ subnet: "10.1.0.0/24" }], [{ subnet: "fd00::/64" }]]);
    store.allocate(owner("a"), pool);
    store.allocate(owner("a", "net2"), sets([[{ subnet: "10.9.0.0/24" }]]));
    store.allocate(owner("a", "net1", "eth1"), pool);
    expect(store.release(owner("a")).map((l) => l.address)).toEqual(["10.1.0.2", "fd00::2"]);
    expect(store.release(owner("a"))).toEqual([]);
    expect(store.release(owner("nobody"))).toEqual([]);
    expect(rowsOnDisk(dir).map((r) => `${r.network}/${r.ifname}/${r.ip}`)).toEqual([
      "net1/eth1/10.1.0.3",
      "net2/eth0/10.9.0.2",
      "net1/eth1/fd00::3",
    ]);
  });

  it("GC drops the network's leases whose attachment is not valid, and nothing else", () => {
    const pool = sets([[{ subnet: "10.1.0.0/24" }]]);
    for (const c of ["a", "b", "c"]) store.allocate(owner(c), pool);
    store.allocate(owner("b", "net1", "eth1"), pool);
    store.allocate(owner("a", "other"), pool);
    const dropped = store.gc("net1", [
      { containerID: "a", ifname: "eth0" },
      { containerID: "b", ifname: "eth1" },
    ]);
    expect(dropped.map((l) => `${l.containerId}/${l.ifname}`).sort()).toEqual(["b/eth0", "c/eth0"]);
    expect(rowsOnDisk(dir).map((r) => `${r.network}/${r.container_id}/${r.ifname}`)).toEqual([
      "net1/a/eth0",
      "net1/b/eth1",
      "other/a/eth0",
    ]);
    expect(store.gc("net1", [])).toHaveLength(2);
    expect(rowsOnDisk(dir).map((r) => r.network)).toEqual(["other"]);
    expect(store.verify()).toEqual([]);
  });

  it("replaces a held lease that the current config no longer covers", () => {
    store.allocate(owner("a"), sets([[{ subnet: "10.1.0.0/24" }]]));
    const leases = store.allocate(owner("a"), sets([[{ subnet: "10.3.0.0/24" }]]));
    expect(leases[0]!.address).toBe("10.3.0.2");
    expect(rowsOnDisk(dir).map((r) => r.ip)).toEqual(["10.3.0.2"]);
  });

  it("keeps used_spans equal to the leases under random allocate/release/GC", () => {
    const pool = sets([[{ subnet: "10.1.0.0/26" }, { subnet: "10.1.1.0/27", gateway: "10.1.1.17" }], [{ subnet: "fd00::/122" }]]);
    const held = new Set<string>();
    let seed = 42;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let step = 0; step < 1500; step++) {
      const c = `c${rand(120)}`;
      if (rand(50) === 0) {
        const keep = [...held].filter(() => rand(2) === 0);
        store.gc(
          "net1",
          keep.map((id) => ({ containerID: id, ifname: "eth0" })),
        );
        for (const id of [...held]) if (!keep.includes(id)) held.delete(id);
      } else if (held.has(c)) {
        expect(store.release(owner(c))).toHaveLength(2);
        held.delete(c);
      } else {
        try {
          store.allocate(owner(c), pool);
          held.add(c);
        } catch (e) {
          expect((e as CniError).code).toBe(IpamErrorCode.PoolExhausted);
          expect(store.exhaustedRangeSets("net1", pool).length).toBeGreaterThan(0);
        }
      }
    }
    expect(store.verify()).toEqual([]);
    const rows = rowsOnDisk(dir);
    expect(new Set(rows.map((r) => r.container_id))).toEqual(held);
    expect(new Set(rows.map((r) => r.ip)).size).toBe(rows.length);
  });

  it("cannot open a database in an unwritable place: code 5 naming the path", () => {
    const err = cniError(() => LeaseStore.open("/proc/berth-ipam"));
    expect(err.code).toBe(5);
    expect(err.message).toMatch(/cannot open lease database \/proc\/berth-ipam\/ipam\.db/);
  });
});

describe("LeaseStore deferred sync (the agent)", () => {
  const SYNC_CHILD = join(import.meta.dirname, "../../testing/ipam-deferred-sync.ts");

  /** Runs the child under strace; returns its JSON line and, between its marks, the syncs of the WAL by thread. */
  async function tracedAllocation(mode: "deferred" | "full") {
    const trace = join(dir, "strace.out");
    const { stdout } = await execFileP("strace", [
      "-f",
      "-y",
      "-qq",
      "-e",
      "trace=fsync,fdatasync,write",
      "-e",
      "signal=none",
      "-o",
      trace,
      process.execPath,
      "--import",
      "tsx",
      SYNC_CHILD,
      dir,
      mode,
    ]);
    const lines = readFileSync(trace, "utf8").split("\n");
    const mainPid = lines[0]!.split(/\s+/)[0];
    const begin = lines.findIndex((l) => l.includes('"MARK begin'));
    const end = lines.findIndex((l) => l.includes('"MARK end'));
    const syncs = lines
      .slice(begin, end)
      .filter((l) => /\b(fsync|fdatasync)\(\d+<[^>]*ipam\.db-wal>\)/.test(l))
      .map((l) => (l.split(/\s+/)[0] === mainPid ? "main" : "pool"));
    return { ...(JSON.parse(stdout) as { address: string; pendingAtResult: number; synchronous: string }), syncs, begin, end };
  }

  it("commits without waiting for the disk, then fsyncs the WAL on the thread pool before the sink settles", async () => {
    const t = await tracedAllocation("deferred");
    expect(t.begin).toBeGreaterThan(0);
    expect(t.end).toBeGreaterThan(t.begin);
    expect(t.synchronous).toBe("NORMAL");
    expect(t.pendingAtResult).toBe(1); // the value came first, its fsync was handed over
    expect(t.syncs).toContain("pool");
    expect(t.syncs).not.toContain("main");
    expect(rowsOnDisk(dir).map((r) => r.container_id)).toEqual(["warm", "c1"]);
  });

  it("a short-lived plugin's store (the default) syncs inside the commit, on its own thread", async () => {
    const t = await tracedAllocation("full");
    expect(t.synchronous).toBe("FULL");
    expect(t.pendingAtResult).toBe(0);
    expect(t.syncs).toContain("main");
    expect(t.syncs).not.toContain("pool");
  });
});

describe("LeaseStore across processes", () => {
  /** A child holding the write lock of a new rollback-journal database `<dir>/fresh` for `ms`. */
  async function holdFreshDatabase(ms: number): Promise<{ fresh: string; done: Promise<unknown> }> {
    const fresh = join(dir, "fresh");
    mkdirSync(fresh);
    const child = fork(WORKER, ["hold", fresh, String(ms)], { execArgv: ["--import", "tsx"], stdio: "ignore" });
    const done = new Promise((r) => child.once("exit", r));
    await new Promise<void>((resolve, reject) => {
      child.once("message", () => resolve());
      child.once("exit", (code) => reject(new Error(`holder exited early with ${code}`)));
    });
    return { fresh, done };
  }

  it("opens a new database whose first opener still holds it: the immediate SQLITE_BUSY is retried", async () => {
    // Our connection reads, then must lock the file to switch it to WAL while the other holds
    // its write lock: SQLite answers SQLITE_BUSY at once (waiting could deadlock), without its
    // busy handler. Many plugins opening a new dataDir at once meet exactly this.
    const { fresh, done } = await holdFreshDatabase(400);
    const started = Date.now();
    const opened = LeaseStore.open(fresh);
    const waited = Date.now() - started;
    try {
      expect(waited).toBeGreaterThanOrEqual(200);
      expect(opened.allocate(owner("c1"), sets([[{ subnet: "10.45.0.0/24" }]]))[0]!.address).toBe("10.45.0.2");
    } finally {
      opened.close();
    }
    await done;
    const raw = new Database(join(fresh, DATABASE_FILE), { readonly: true });
    try {
      expect(raw.pragma("journal_mode", { simple: true })).toBe("wal");
      expect(raw.prepare("SELECT ip FROM leases").all()).toEqual([{ ip: "10.45.0.2" }]);
    } finally {
      raw.close();
    }
  });

  it("gives up on a database held longer than the busy timeout: code 5, database is locked", async () => {
    const { fresh, done } = await holdFreshDatabase(3000);
    const started = Date.now();
    const err = cniError(() => LeaseStore.open(fresh, { busyTimeoutMs: 300 }));
    const waited = Date.now() - started;
    expect(err.code).toBe(5);
    expect(err.message).toMatch(/cannot open lease database .*fresh\/ipam\.db: database is locked/);
    expect(waited).toBeGreaterThanOrEqual(300);
    expect(waited).toBeLessThan(2500);
    await done;
  });

  it("16 processes × 50 allocations against one database give 800 distinct addresses", async () => {
    // Workers wait for a common start time so that all 16 contend for the write lock at once.
    const startAt = Date.now() + 3000;
    const runs = Array.from({ length: 16 }, (_, w) =>
      execFileP(process.execPath, ["--import", "tsx", WORKER, "allocate", dir, String(w), "50", String(startAt)], {
        encoding: "utf8",
      }),
    );
    const results = await Promise.all(runs);
    const addresses = results.flatMap((r) => JSON.parse(r.stdout) as string[]);
    expect(addresses).toHaveLength(800);
    expect(new Set(addresses).size).toBe(800);
    const rows = rowsOnDisk(dir);
    expect(rows).toHaveLength(800);
    expect(new Set(rows.map((r) => r.ip))).toEqual(new Set(addresses));
    expect(store.verify()).toEqual([]);
  }, 120_000);

  it("survives SIGKILL mid-transaction: the database stays consistent and every lease whole", async () => {
    // Four lanes at once, so some kills land while another process holds or waits for the lock.
    const lanes = 4;
    const roundsPerLane = 8;
    const lane = async (id: number) => {
      for (let round = 0; round < roundsPerLane; round++) {
        const child: ChildProcess = fork(WORKER, ["churn", dir, String(id)], {
          execArgv: ["--import", "tsx"],
          stdio: ["ignore", "ignore", "pipe", "ipc"],
        });
        try {
          await new Promise<void>((resolve, reject) => {
            child.once("message", () => resolve());
            child.once("exit", (code) => reject(new Error(`worker exited early with ${code}`)));
          });
          await new Promise((r) => setTimeout(r, 5 + Math.random() * 80));
        } finally {
          child.kill("SIGKILL");
          await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(null) : child.once("exit", r)));
        }
        expect(child.signalCode).toBe("SIGKILL");
      }
    };
    await Promise.all(Array.from({ length: lanes }, (_, id) => lane(id)));
    store.close();
    store = LeaseStore.open(dir);
    expect(store.verify()).toEqual([]);
    const db = new Database(join(dir, DATABASE_FILE), { readonly: true });
    try {
      expect(db.pragma("integrity_check", { simple: true })).toBe("ok");
      const rows = db.prepare("SELECT * FROM leases").all() as Record<string, unknown>[];
      expect(rows.length).toBeGreaterThan(0);
      for (const r of rows) {
        // Whole: the text column matches the key, and the owner holds exactly one lease per set.
        const v = valueFromKey(r.address as Buffer);
        const ip = r.family === 4 ? formatIp({ family: 4, value: v & 0xffffffffn }) : formatIp({ family: 6, value: v });
        expect(r.ip).toBe(ip);
        expect(r.container_id).toMatch(/^w\d-c\d+$/);
        expect(r.ifname).toBe("eth0");
      }
      const perOwner = db
        .prepare("SELECT container_id, COUNT(*) AS n, COUNT(DISTINCT range_set) AS sets FROM leases GROUP BY container_id")
        .all() as { n: number; sets: number }[];
      for (const o of perOwner) expect(o).toEqual(expect.objectContaining({ n: 2, sets: 2 }));
    } finally {
      db.close();
    }
    // And it still allocates.
    expect(store.allocate(owner("after"), sets([[{ subnet: "10.44.0.0/22" }]])).length).toBe(1);
  }, 180_000);

  it("cold plugin processes, each the database's only connection and exiting with it open, keep the WAL short", async () => {
    // The cold path: no process keeps the database open between calls (this test's own handle
    // would keep SQLite's WAL index alive, as a resident agent does).
    store.close();
    const ns = `${testPrefix()}-wal`;
    addNetns(ns);
    try {
      const conf = {
        cniVersion: "1.0.0",
        name: "walnet",
        type: "berth-bridge",
        ipam: { type: "berth-host-local", dataDir: dir, ranges: [[{ subnet: "10.45.0.0/24" }]] },
      };
      let longest = 0;
      for (let i = 0; i < 40; i++) {
        const o = await execPlugin({
          cniPath: COLD_CNI,
          type: "berth-host-local",
          env: {
            CNI_COMMAND: "ADD",
            CNI_CONTAINERID: `cold${i}`,
            CNI_NETNS: `/run/netns/${ns}`,
            CNI_IFNAME: "eth0",
            BERTH_CNI_SOCKET: "off",
          },
          stdin: conf,
        });
        expect(o.exitCode, o.stdout + o.stderr).toBe(0);
        longest = Math.max(longest, walLiveFrames(dir));
      }
      // 40 commits of several pages each: ~200 frames, all read by every opener, if the log
      // were never started again (it was not, before openers truncated it).
      expect(longest).toBeLessThanOrEqual(Math.ceil(WAL_TRUNCATE_BYTES / 4120) + 10);
      expect(new Set(rowsOnDisk(dir).map((r) => r.ip)).size).toBe(40);
    } finally {
      delNetns(ns);
      store = LeaseStore.open(dir);
    }
  }, 60_000);
});
