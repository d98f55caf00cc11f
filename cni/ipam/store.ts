// The IPAM lease store: one SQLite database per dataDir, shared by every network and every
// plugin process on the host.
//
// Why SQLite and not host-local's one-file-per-IP directory: allocation, release and GC are
// each one transaction (BEGIN IMMEDIATE serialises writers across processes, WAL lets readers
// run alongside), synchronous=FULL makes a committed lease survive power loss (in the agent, an
// explicit fsync of the WAL does, before any result is given: see grouped), and the address
// is the PRIMARY KEY across all networks, so two networks with overlapping subnets can never
// hand out the same address (host-local's per-network directories can, and do).
//
// Why allocation cost stays flat as the pool fills: besides the leases, the store keeps
// `used_spans`, the leased addresses coalesced into maximal runs [lo, hi]. "First free address
// at or after x" is one index probe (the span starting at or before x; if it covers x, the
// answer is its hi+1, which is free because spans are maximal). Allocating or releasing an
// address merges or splits at most two spans. Nothing ever scans the leases of a pool, except GC.
import { closeSync, existsSync, fdatasync, fdatasyncSync, openSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { bundledFile, loadNativeAddon } from "../../native/addon.ts";
import { type Family, formatIp, type Ip, keyFromValue, keyValue, valueFromKey } from "../address/address.ts";
import { makeDirectory } from "../protocol/files.ts";
import { sleepSync } from "../protocol/sleep.ts";
import { CniError, ErrorCode } from "../protocol/types.ts";
import { IpamErrorCode } from "./errors.ts";
import { findRange, type RangeSet } from "./ranges.ts";

export { IpamErrorCode };

export const DATABASE_FILE = "ipam.db";
/** A WAL longer than this (~62 frames of 4 KiB pages) is checkpointed and truncated by its next opener (see truncateLongWal). */
export const WAL_TRUNCATE_BYTES = 256 * 1024;

/** Who holds a lease: the CNI attachment (container id, interface) within one network. */
export interface LeaseOwner {
  network: string;
  containerId: string;
  ifname: string;
}

export interface Lease extends LeaseOwner {
  ip: Ip;
  /** Canonical text of ip. */
  address: string;
  rangeSet: number;
  /** Milliseconds since the epoch. */
  createdAt: number;
}

interface LeaseRow {
  address: Buffer;
  ip: string;
  family: number;
  network: string;
  range_set: number;
  container_id: string;
  ifname: string;
  created_at: number;
}

interface SpanRow {
  lo: Buffer;
  hi: Buffer;
}

const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE leases (
  address      BLOB PRIMARY KEY,  -- 16-byte big-endian key (IPv4 as ::ffff:a.b.c.d), see cni/address addressKey
  ip           TEXT NOT NULL,     -- canonical text form of the same address
  family       INTEGER NOT NULL CHECK (family IN (4, 6)),
  network      TEXT NOT NULL,
  range_set    INTEGER NOT NULL,
  container_id TEXT NOT NULL,
  ifname       TEXT NOT NULL,
  created_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX leases_by_owner ON leases (container_id, ifname, network, range_set);
CREATE INDEX leases_by_network ON leases (network, range_set);
-- Leased addresses coalesced into maximal runs; kept in step with leases in every transaction.
CREATE TABLE used_spans (
  lo BLOB PRIMARY KEY,
  hi BLOB NOT NULL
) WITHOUT ROWID;
-- Round-robin position: the last address handed out per (network, range set).
CREATE TABLE cursors (
  network   TEXT NOT NULL,
  range_set INTEGER NOT NULL,
  last      BLOB NOT NULL,
  PRIMARY KEY (network, range_set)
) WITHOUT ROWID;
`;

const MAX_KEY = (1n << 128n) - 1n;

function toLease(row: LeaseRow): Lease {
  const family = row.family as Family;
  const v = valueFromKey(row.address);
  return {
    ip: { family, value: family === 4 ? v & 0xffffffffn : v },
    address: row.ip,
    network: row.network,
    rangeSet: row.range_set,
    containerId: row.container_id,
    ifname: row.ifname,
    createdAt: row.created_at,
  };
}

function ownerText(o: LeaseOwner): string {
  return `container ${o.containerId} interface ${o.ifname}`;
}

function setBounds(set: RangeSet, i: number): { lo: bigint; hi: bigint; gateway: bigint } {
  const r = set.ranges[i]!;
  const f = r.subnet.family;
  return {
    lo: keyValue({ family: f, value: r.start }),
    hi: keyValue({ family: f, value: r.end }),
    gateway: keyValue({ family: f, value: r.gateway }),
  };
}

export interface OpenOptions {
  /** How long a writer waits for another process's transaction, in ms (default 30 s). */
  busyTimeoutMs?: number;
  /**
   * Commits do not wait for the disk: each fsyncs the log afterwards, on the thread pool (see
   * grouped). For a resident process whose callers await Request.pendingSync before answering
   * (InvocationHost.deferSyncs); short-lived plugins keep synchronous=FULL (the default).
   */
  deferSyncs?: boolean;
}

let binding: object | null | undefined;

/**
 * Set in bundles by scripts/bundle.mjs: better-sqlite3's compiled addon relative to the bundle,
 * so that a cold start skips resolving the package through Node's module resolution.
 */
declare const __BERTH_SQLITE_ADDON__: string | undefined;

/**
 * better-sqlite3's compiled addon, loaded by path: without one it searches a dozen candidate
 * paths through the `bindings` package, and even a path goes through require()'s resolution,
 * several milliseconds of every cold plugin start.
 */
function sqliteBinding(): object | undefined {
  if (binding === undefined) {
    try {
      // bundledFile has checked that its path exists.
      const bundled = bundledFile(typeof __BERTH_SQLITE_ADDON__ === "string" ? __BERTH_SQLITE_ADDON__ : undefined);
      // import.meta.resolve, not createRequire: loading node:module is not free on a cold start
      // (a bundle never gets here; its import.meta is empty).
      const file =
        bundled ??
        join(
          dirname(fileURLToPath(import.meta.resolve("better-sqlite3/package.json"))),
          "build",
          "Release",
          "better_sqlite3.node",
        );
      binding = bundled || existsSync(file) ? loadNativeAddon<object>(file) : null;
    } catch {
      binding = null;
    }
  }
  return binding ?? undefined;
}

/** An object whose properties are made by their thunks on first read, then kept. */
function lazily<T extends object>(make: { [K in keyof T]: () => T[K] }): T {
  const out = {} as T;
  for (const key of Object.keys(make) as (keyof T)[]) {
    Object.defineProperty(out, key, {
      configurable: true,
      enumerable: true,
      get() {
        const value = make[key]();
        Object.defineProperty(out, key, { value, enumerable: true });
        return value;
      },
    });
  }
  return out;
}

export class LeaseStore {
  private readonly q;

  private constructor(
    readonly path: string,
    private readonly db: Database.Database,
    /** Commits skip their fsync; grouped()/gc() sync the WAL themselves (OpenOptions.deferSyncs). */
    private readonly deferred = false,
  ) {
    // Prepared on first use: a plugin process runs a few of them, once.
    this.q = lazily({
      byOwner: () =>
        db.prepare<[string, string, string], LeaseRow>(
          "SELECT * FROM leases WHERE container_id = ? AND ifname = ? AND network = ? ORDER BY range_set",
        ),
      byNetwork: () => db.prepare<[string], LeaseRow>("SELECT * FROM leases WHERE network = ? ORDER BY address"),
      byAddress: () => db.prepare<[Buffer], LeaseRow>("SELECT * FROM leases WHERE address = ?"),
      insertLease: () =>
        db.prepare(
          "INSERT INTO leases (address, ip, family, network, range_set, container_id, ifname, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ),
      deleteLease: () => db.prepare<[Buffer]>("DELETE FROM leases WHERE address = ?"),
      spanAtOrBefore: () => db.prepare<[Buffer], SpanRow>("SELECT lo, hi FROM used_spans WHERE lo <= ? ORDER BY lo DESC LIMIT 1"),
      spanStartingAt: () => db.prepare<[Buffer], SpanRow>("SELECT lo, hi FROM used_spans WHERE lo = ?"),
      insertSpan: () => db.prepare<[Buffer, Buffer]>("INSERT INTO used_spans (lo, hi) VALUES (?, ?)"),
      setSpanEnd: () => db.prepare<[Buffer, Buffer]>("UPDATE used_spans SET hi = ? WHERE lo = ?"),
      deleteSpan: () => db.prepare<[Buffer]>("DELETE FROM used_spans WHERE lo = ?"),
      cursor: () =>
        db.prepare<[string, number], { last: Buffer }>("SELECT last FROM cursors WHERE network = ? AND range_set = ?"),
      setCursor: () =>
        db.prepare<[string, number, Buffer]>(
          "INSERT INTO cursors (network, range_set, last) VALUES (?, ?, ?) ON CONFLICT (network, range_set) DO UPDATE SET last = excluded.last",
        ),
    });
  }

  /**
   * Opens (creating if needed) `<dataDir>/ipam.db`. Failure is CniError 5 naming the path.
   *
   * Many plugin processes may open a brand-new database at once. Most lock waits go through
   * SQLite's busy handler, but not all: switching to WAL, or two openers both upgrading a read
   * to a write, can fail with SQLITE_BUSY at once (waiting could deadlock). Such an open is
   * retried from scratch, after a short random pause, until the busy timeout runs out.
   */
  static open(dataDir: string, opts: OpenOptions = {}): LeaseStore {
    const path = join(dataDir, DATABASE_FILE);
    const timeoutMs = opts.busyTimeoutMs ?? 30_000;
    try {
      return retryWhileBusy(() => {
        makeDirectory(dataDir);
        return LeaseStore.openOnce(path, timeoutMs, opts.deferSyncs ?? false);
      }, timeoutMs);
    } catch (e) {
      throw new CniError(ErrorCode.IoFailure, `cannot open lease database ${path}: ${(e as Error).message}`);
    }
  }

  private static openOnce(path: string, timeoutMs: number, deferSyncs: boolean): LeaseStore {
    let db: Database.Database | undefined;
    try {
      // The busy timeout is set as the connection opens: switching to WAL and creating the
      // schema may wait for other openers.
      // better-sqlite3 takes the loaded addon object too (its typings only say string).
      const nativeBinding = sqliteBinding() as unknown as string | undefined;
      db = new Database(path, { nativeBinding, timeout: timeoutMs });
      db.pragma("journal_mode = WAL");
      // Deferred mode (the agent): a commit only writes the WAL; grouped() fsyncs it on the
      // thread pool while the caller goes on, and gc() fsyncs it before returning.
      db.pragma(`synchronous = ${deferSyncs ? "NORMAL" : "FULL"}`);
      truncateLongWal(db, path, timeoutMs);
      const init = db.transaction(() => {
        const version = db!.pragma("user_version", { simple: true }) as number;
        if (version === SCHEMA_VERSION) return;
        if (version !== 0) throw new Error(`schema version ${version} is newer than this berth (${SCHEMA_VERSION})`);
        db!.exec(SCHEMA);
        db!.pragma(`user_version = ${SCHEMA_VERSION}`);
      });
      // Cheap read first: only the very first opener pays for a write transaction.
      if ((db.pragma("user_version", { simple: true }) as number) !== SCHEMA_VERSION) init.immediate();
      return new LeaseStore(path, db, deferSyncs);
    } catch (e) {
      db?.close();
      throw e;
    }
  }

  /** SQLite's synchronous setting as it reads back: "FULL", or "NORMAL" in deferred-sync mode. */
  synchronousMode(): string {
    const v = this.db.pragma("synchronous", { simple: true }) as number;
    return ["OFF", "NORMAL", "FULL", "EXTRA"][v] ?? String(v);
  }

  close(): void {
    this.db.close();
    this.closed = true;
    if (this.syncing === 0) this.closeWal();
  }

  private pending: {
    work: () => unknown;
    done: (value: unknown) => void;
    fail: (error: unknown) => void;
    syncs?: Promise<void>[];
  }[] = [];

  /**
   * Runs `work` (calls of this store's write methods) in one transaction with every other call
   * queued in the same event-loop turn: a burst of concurrent requests in the agent commits,
   * and waits for the disk, once. Each nested write is its own savepoint, so one that throws
   * (pool exhausted, address in use) is undone alone and rejects only its own caller. A single
   * call costs one setImmediate more than calling the method directly.
   *
   * In deferred-sync mode the commit does not wait for the disk: the WAL's fsync starts on the
   * thread pool right after it. With `syncs` (an invocation's Request.pendingSync) the caller
   * gets its value at once and the fsync goes into `syncs`, to be awaited before the result is
   * given, so the kernel work of an ADD overlaps the disk; without it, the value comes once the
   * fsync is done.
   */
  grouped<T>(work: () => T, syncs?: Promise<void>[]): Promise<T> {
    return new Promise<T>((done, fail) => {
      this.pending.push({ work, done: done as (value: unknown) => void, fail, syncs });
      if (this.pending.length === 1) setImmediate(() => this.commitPending());
    });
  }

  private commitPending(): void {
    const batch = this.pending.splice(0);
    const outcomes: { ok: boolean; value: unknown }[] = [];
    try {
      this.db
        .transaction(() => {
          for (const item of batch) {
            try {
              outcomes.push({ ok: true, value: item.work() });
            } catch (error) {
              // Some errors (disk full, I/O) make SQLite roll back the whole transaction: the
              // rest must not run as transactions of their own, and nothing here is durable.
              if (!this.db.inTransaction) throw error;
              outcomes.push({ ok: false, value: this.failure(error) });
            }
          }
        })
        .immediate();
    } catch (e) {
      // BEGIN or COMMIT failed, or the transaction was lost: nobody may see success.
      const error =
        e instanceof CniError
          ? e
          : new CniError(ErrorCode.IoFailure, `lease database ${this.path}: ${(e as Error)?.message ?? String(e)}`);
      for (const item of batch) item.fail(error);
      return;
    }
    const synced = this.deferred ? this.syncWal() : undefined;
    synced?.catch(() => {}); // handled by whoever awaits it; an unawaited failure must not crash the agent
    batch.forEach((item, i) => {
      const o = outcomes[i]!;
      if (!o.ok) item.fail(o.value);
      else if (!synced) item.done(o.value);
      else if (item.syncs) {
        item.syncs.push(synced);
        item.done(o.value);
      } else {
        synced.then(
          () => item.done(o.value),
          (e) => item.fail(e),
        );
      }
    });
  }

  /** Our descriptor on the WAL, kept for its fsyncs (the file lives as long as this connection). */
  private walFd = -1;
  private syncing = 0;
  private closed = false;

  /**
   * fsync of the WAL after a deferred commit: one thread-pool job, so it runs while this
   * thread does the ADD's kernel work (an open/sync/close chain would wait for this thread
   * between its steps).
   */
  private async syncWal(): Promise<void> {
    try {
      if (this.walFd < 0) this.walFd = openSync(`${this.path}-wal`, "r");
    } catch (e) {
      // No WAL: the checkpoint that removed it synced everything first.
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
      throw this.syncError(e);
    }
    const fd = this.walFd;
    this.syncing++;
    try {
      await new Promise<void>((done, fail) => fdatasync(fd, (e) => (e ? fail(this.syncError(e)) : done())));
    } finally {
      if (--this.syncing === 0 && this.closed) this.closeWal();
    }
  }

  private syncError(e: unknown): CniError {
    return new CniError(ErrorCode.IoFailure, `lease database ${this.path}: fsync of its log failed: ${(e as Error).message}`);
  }

  private closeWal(): void {
    if (this.walFd >= 0) closeSync(this.walFd);
    this.walFd = -1;
  }

  /** The same, blocking: for the rare writes outside grouped() (GC). */
  private syncWalNow(): void {
    if (!this.deferred) return;
    try {
      if (this.walFd < 0) this.walFd = openSync(`${this.path}-wal`, "r");
      fdatasyncSync(this.walFd);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
      throw this.syncError(e);
    }
  }

  /**
   * One address per range set for `owner`, all in one transaction (all or nothing).
   * `requested` addresses each pick the range set they fall in; other sets go round-robin.
   *
   * Re-ADD of an attachment that already holds a lease in a set returns that lease instead of
   * failing as host-local does: runtimes retry ADD after a timeout (the plugin may have been
   * killed after the commit, before printing its result), and the spec makes (container id,
   * ifname) unique per network, so the held address is the right answer, not a conflict.
   */
  allocate(owner: LeaseOwner, rangeSets: readonly RangeSet[], requested: readonly Ip[] = []): Lease[] {
    const wanted = new Map<number, Ip>();
    for (const ip of requested) {
      const hit = findRange(rangeSets, ip);
      if (!hit) {
        throw new CniError(
          ErrorCode.InvalidConfig,
          `requested IP ${formatIp(ip)} is not inside any range of network ${owner.network}`,
        );
      }
      if (wanted.has(hit.set)) {
        throw new CniError(
          ErrorCode.InvalidConfig,
          `requested IPs ${formatIp(wanted.get(hit.set)!)} and ${formatIp(ip)} both fall in range set ${hit.set} of network ${owner.network}; one address per range set`,
        );
      }
      if (ip.value === hit.range.gateway) {
        throw new CniError(ErrorCode.InvalidConfig, `requested IP ${formatIp(ip)} is the gateway of ${hit.range.key}`);
      }
      wanted.set(hit.set, ip);
    }
    const run = this.db.transaction((): Lease[] => {
      const held = this.q.byOwner.all(owner.containerId, owner.ifname, owner.network).map(toLease);
      return rangeSets.map((set, i) => {
        const want = wanted.get(i);
        const mine = held.find((l) => l.rangeSet === i);
        if (mine) {
          const stillInSet = findRange([set], mine.ip) !== null;
          if (stillInSet && (!want || want.value === mine.ip.value)) return mine;
          if (stillInSet) {
            throw new CniError(
              IpamErrorCode.AddressInUse,
              `${ownerText(owner)} already holds ${mine.address} in range set ${i} of network ${owner.network}; requested ${formatIp(want!)}`,
            );
          }
          // Left over from an older config whose ranges no longer include it.
          this.drop(mine);
        }
        return want ? this.claimRequested(owner, i, want) : this.claimNext(owner, set, i);
      });
    });
    return run.immediate();
  }

  /** Releases every lease of `owner` (idempotent: nothing held is not an error). */
  release(owner: LeaseOwner): Lease[] {
    const run = this.db.transaction(() => {
      const held = this.q.byOwner.all(owner.containerId, owner.ifname, owner.network).map(toLease);
      for (const l of held) this.drop(l);
      return held;
    });
    return run.immediate();
  }

  /** The leases `owner` holds, by range set. */
  leasesOf(owner: LeaseOwner): Lease[] {
    return this.guard(() => this.q.byOwner.all(owner.containerId, owner.ifname, owner.network).map(toLease));
  }

  /** Every lease of a network, in address order. */
  leasesIn(network: string): Lease[] {
    return this.q.byNetwork.all(network).map(toLease);
  }

  leaseAt(ip: Ip): Lease | undefined {
    const row = this.q.byAddress.get(keyFromValue(keyValue(ip)));
    return row ? toLease(row) : undefined;
  }

  /** Drops every lease of `network` whose (containerId, ifname) is not in `keep`; returns what it dropped. */
  gc(network: string, keep: readonly { containerID: string; ifname: string }[]): Lease[] {
    return this.guard(() => this.gcNow(network, keep));
  }

  private gcNow(network: string, keep: readonly { containerID: string; ifname: string }[]): Lease[] {
    const valid = new Set(keep.map((a) => `${a.containerID}\0${a.ifname}`));
    const run = this.db.transaction(() => {
      const stale = this.q.byNetwork
        .all(network)
        .map(toLease)
        .filter((l) => !valid.has(`${l.containerId}\0${l.ifname}`));
      for (const l of stale) this.drop(l);
      return stale;
    });
    const stale = run.immediate();
    this.syncWalNow();
    return stale;
  }

  /** Indexes of the range sets that have no free address left (for STATUS). */
  exhaustedRangeSets(network: string, rangeSets: readonly RangeSet[]): number[] {
    const read = this.db.transaction(() =>
      rangeSets.flatMap((set, i) => (this.nextFree(set, this.cursorOf(network, i)) === null ? [i] : [])),
    );
    return this.guard(() => read.deferred());
  }

  /**
   * A damaged database file (SQLITE_CORRUPT, SQLITE_NOTADB, I/O errors) is the store's failure,
   * code 5 naming the file, not an internal error; anything else passes unchanged.
   */
  private failure(e: unknown): unknown {
    if (e instanceof Database.SqliteError) return new CniError(ErrorCode.IoFailure, `lease database ${this.path}: ${e.message}`);
    return e;
  }

  private guard<T>(read: () => T): T {
    try {
      return read();
    } catch (e) {
      throw this.failure(e);
    }
  }

  /** Takes and releases the write lock: proves the database is writable right now (for STATUS). */
  probeWritable(): void {
    this.db.transaction(() => this.db.prepare("UPDATE cursors SET last = last WHERE 0").run()).immediate();
  }

  /** Runs `PRAGMA integrity_check` and checks that used_spans mirrors leases; returns the problems found. */
  verify(): string[] {
    const problems = (this.db.pragma("integrity_check") as { integrity_check: string }[])
      .map((r) => r.integrity_check)
      .filter((m) => m !== "ok");
    const leased = this.db.prepare<[], { address: Buffer }>("SELECT address FROM leases ORDER BY address").all();
    const spans = this.db.prepare<[], SpanRow>("SELECT lo, hi FROM used_spans ORDER BY lo").all();
    const covered: bigint[] = [];
    let prevHi = -2n;
    for (const s of spans) {
      const lo = valueFromKey(s.lo);
      const hi = valueFromKey(s.hi);
      if (hi < lo || lo <= prevHi + 1n) problems.push(`span ${lo}-${hi} is empty, overlapping or not maximal`);
      for (let v = lo; v <= hi && covered.length <= leased.length; v++) covered.push(v);
      prevHi = hi;
    }
    const addresses = leased.map((r) => valueFromKey(r.address));
    if (covered.length !== addresses.length || covered.some((v, i) => v !== addresses[i])) {
      problems.push(`used_spans cover ${covered.length} address(es) but ${addresses.length} are leased`);
    }
    return problems;
  }

  private cursorOf(network: string, rangeSet: number): bigint | undefined {
    const row = this.q.cursor.get(network, rangeSet);
    return row ? valueFromKey(row.last) : undefined;
  }

  private claimRequested(owner: LeaseOwner, rangeSet: number, ip: Ip): Lease {
    const taken = this.q.byAddress.get(keyFromValue(keyValue(ip)));
    if (taken) {
      const by = toLease(taken);
      throw new CniError(
        IpamErrorCode.AddressInUse,
        `requested IP ${by.address} is already leased to ${ownerText(by)} in network ${by.network}`,
      );
    }
    return this.insert(owner, rangeSet, ip);
  }

  private claimNext(owner: LeaseOwner, set: RangeSet, rangeSet: number): Lease {
    const key = this.nextFree(set, this.cursorOf(owner.network, rangeSet));
    if (key === null) {
      const pools = set.ranges.map((r) => r.subnet.toString()).join(", ");
      throw new CniError(
        IpamErrorCode.PoolExhausted,
        `no free address in ${pools} (range set ${rangeSet}) for network ${owner.network}`,
      );
    }
    this.q.setCursor.run(owner.network, rangeSet, keyFromValue(key));
    const value = set.family === 4 ? key & 0xffffffffn : key;
    return this.insert(owner, rangeSet, { family: set.family, value });
  }

  /**
   * Round-robin: the first free address after `cursor`, walking the set's ranges in order and
   * wrapping around, skipping every range's gateway. Works in key space (see addressKey).
   */
  private nextFree(set: RangeSet, cursor: bigint | undefined): bigint | null {
    const bounds = set.ranges.map((_, i) => setBounds(set, i));
    const gateways = new Set(bounds.map((b) => b.gateway));
    const at = cursor === undefined ? -1 : bounds.findIndex((b) => cursor >= b.lo && cursor <= b.hi);
    const segments: { lo: bigint; hi: bigint }[] = [];
    if (at < 0) {
      segments.push(...bounds);
    } else {
      const c = cursor!;
      if (c < bounds[at]!.hi) segments.push({ lo: c + 1n, hi: bounds[at]!.hi });
      for (let k = 1; k < bounds.length; k++) segments.push(bounds[(at + k) % bounds.length]!);
      segments.push({ lo: bounds[at]!.lo, hi: c });
    }
    for (const s of segments) {
      const found = this.firstFreeIn(s.lo, s.hi, gateways);
      if (found !== null) return found;
    }
    return null;
  }

  /** Each step jumps a whole used span or one gateway, so this is a handful of index probes. */
  private firstFreeIn(lo: bigint, hi: bigint, skip: ReadonlySet<bigint>): bigint | null {
    let c = lo;
    while (c <= hi) {
      const span = this.spanCovering(c);
      if (span) c = span.hi + 1n;
      else if (skip.has(c)) c += 1n;
      else return c;
    }
    return null;
  }

  private spanCovering(v: bigint): { lo: bigint; hi: bigint } | null {
    const row = this.q.spanAtOrBefore.get(keyFromValue(v));
    if (!row) return null;
    const hi = valueFromKey(row.hi);
    return hi >= v ? { lo: valueFromKey(row.lo), hi } : null;
  }

  private insert(owner: LeaseOwner, rangeSet: number, ip: Ip): Lease {
    const key = keyValue(ip);
    const lease: Lease = { ...owner, ip, address: formatIp(ip), rangeSet, createdAt: Date.now() };
    this.q.insertLease.run(
      keyFromValue(key),
      lease.address,
      ip.family,
      owner.network,
      rangeSet,
      owner.containerId,
      owner.ifname,
      lease.createdAt,
    );
    this.markUsed(key);
    return lease;
  }

  private drop(lease: Lease): void {
    const key = keyValue(lease.ip);
    this.q.deleteLease.run(keyFromValue(key));
    this.markFree(key);
  }

  // x was free: join it to the span ending at x-1 and/or the one starting at x+1.
  private markUsed(x: bigint): void {
    const left = x > 0n ? this.spanCovering(x - 1n) : null;
    const right = x < MAX_KEY ? this.q.spanStartingAt.get(keyFromValue(x + 1n)) : undefined;
    if (left && right) {
      this.q.deleteSpan.run(right.lo);
      this.q.setSpanEnd.run(right.hi, keyFromValue(left.lo));
    } else if (left) {
      this.q.setSpanEnd.run(keyFromValue(x), keyFromValue(left.lo));
    } else if (right) {
      this.q.deleteSpan.run(right.lo);
      this.q.insertSpan.run(keyFromValue(x), right.hi);
    } else {
      this.q.insertSpan.run(keyFromValue(x), keyFromValue(x));
    }
  }

  // x was used: cut it out of its span, splitting the span in two when x is inside it.
  private markFree(x: bigint): void {
    const span = this.spanCovering(x);
    if (!span) return;
    const lo = keyFromValue(span.lo);
    if (span.lo === x) {
      this.q.deleteSpan.run(lo);
      if (span.hi > x) this.q.insertSpan.run(keyFromValue(x + 1n), keyFromValue(span.hi));
    } else {
      this.q.setSpanEnd.run(keyFromValue(x - 1n), lo);
      if (span.hi > x) this.q.insertSpan.run(keyFromValue(x + 1n), keyFromValue(span.hi));
    }
  }
}

/**
 * Keeps the WAL short when no process keeps the database open. SQLite restarts its log from the
 * top only once a writer sees every frame checkpointed, and that count lives in the -shm index,
 * which the first connection to open the database rebuilds from the log with nothing counted as
 * checkpointed. Plugin processes on the cold path are each the only connection and exit with it
 * open (a clean close would checkpoint and delete the log): so each appends its commit to a log
 * that is never restarted, and each next opener's recovery reads all of it, a cost that grows
 * with every cold call. A resident agent keeps the index, and its checkpoints restart the log.
 * So an opener that finds the log longer than WAL_TRUNCATE_BYTES checkpoints it and truncates
 * it to nothing: an occasional short step that bounds what any opener reads (about 60 frames).
 * Best effort, without waiting: with another connection inside a transaction it gives up at
 * once, and a later opener does it.
 */
function truncateLongWal(db: Database.Database, path: string, timeoutMs: number): void {
  let size: number;
  try {
    size = statSync(`${path}-wal`).size;
  } catch {
    return; // no log yet
  }
  if (size <= WAL_TRUNCATE_BYTES) return;
  db.pragma("busy_timeout = 0");
  try {
    db.pragma("wal_checkpoint(TRUNCATE)");
  } catch (e) {
    if (!isBusy(e)) throw e;
  } finally {
    db.pragma(`busy_timeout = ${timeoutMs}`);
  }
}

/**
 * Runs `open` (opening a SQLite database and setting it up) again, after a short random pause,
 * while it fails with SQLITE_BUSY and `timeoutMs` has not run out. Switching a new database to
 * WAL, or two openers both upgrading a read to a write, fail with SQLITE_BUSY at once instead of
 * waiting in SQLite's busy handler (waiting could deadlock).
 */
export function retryWhileBusy<T>(open: () => T, timeoutMs: number): T {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return open();
    } catch (e) {
      if (!isBusy(e) || Date.now() >= deadline) throw e;
      sleepSync(Math.min(5 * attempt, 50) * (0.5 + Math.random()));
    }
  }
}

/** SQLITE_BUSY and its extended codes (SQLITE_BUSY_RECOVERY, _SNAPSHOT, _TIMEOUT). */
function isBusy(e: unknown): boolean {
  const code = (e as { code?: unknown })?.code;
  return typeof code === "string" && code.startsWith("SQLITE_BUSY");
}
