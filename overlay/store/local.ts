// The embedded store: one SQLite file (WAL, synchronous=FULL) that any number of processes on
// one host can share. It mimics the parts of etcd the overlay uses: a global revision bumped on
// every write, an event log to watch from a revision, TTL leases expired by timestamp.
// Watchers poll the revision (one cheap SELECT per tick), so writers in other processes are seen.
import { randomBytes } from "node:crypto";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { retryWhileBusy } from "../../cni/ipam/store.ts";
import { makeDirectory } from "../../cni/protocol/files.ts";
import type { ClusterStore, ResetReason, StoreEntry, StoreWatch, WatchEvent, WriteResult } from "./store.ts";

export interface LocalStoreOptions {
  /** Path of the database file; its directory is created. */
  path: string;
  /** How often watchers look for new revisions and expired leases. */
  pollIntervalMs?: number;
  /** Event history kept for watchers that resume from an older revision. */
  historyRevisions?: number;
  /** Clock (ms since epoch); tests may inject one. */
  now?: () => number;
}

interface KvRow {
  key: string;
  value: string;
  mod_revision: number;
  lease_id: string | null;
}

interface EventRow {
  revision: number;
  key: string;
  type: "put" | "delete";
  value: string | null;
  lease_id: string | null;
}

interface LocalWatcher {
  prefix: string;
  nextRevision: number;
  onEvent: (event: WatchEvent) => void;
  onReset: (reason: ResetReason, cause?: unknown) => void;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL, compacted INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (id, revision, compacted) VALUES (1, 1, 0);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, mod_revision INTEGER NOT NULL, lease_id TEXT);
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease_id);
CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, ttl INTEGER NOT NULL, expires_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at);
CREATE TABLE IF NOT EXISTS events (revision INTEGER PRIMARY KEY, key TEXT NOT NULL, type TEXT NOT NULL, value TEXT, lease_id TEXT);
`;

function prefixUpperBound(prefix: string): string {
  // Keys are compared as TEXT (binary collation): everything starting with prefix sorts below this.
  return prefix + "\u{10FFFF}";
}

export class LocalStore implements ClusterStore {
  readonly kind = "local" as const;
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly pollIntervalMs: number;
  private readonly historyRevisions: number;
  private readonly watchers = new Set<LocalWatcher>();
  private pollTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(options: LocalStoreOptions) {
    makeDirectory(dirname(options.path), 0o700);
    // Agents sharing one store file may open it at the same moment (see retryWhileBusy).
    this.db = retryWhileBusy(() => {
      const db = new Database(options.path, { timeout: 5000 });
      try {
        db.pragma("journal_mode = WAL");
        db.pragma("synchronous = FULL");
        db.exec(SCHEMA);
        return db;
      } catch (e) {
        db.close();
        throw e;
      }
    }, 30_000);
    this.now = options.now ?? Date.now;
    this.pollIntervalMs = options.pollIntervalMs ?? 100;
    this.historyRevisions = options.historyRevisions ?? 10_000;
  }

  async create(key: string, value: string, ttlSeconds: number | null): Promise<WriteResult> {
    return this.write(() => {
      if (this.db.prepare("SELECT 1 FROM kv WHERE key = ?").get(key)) return { ok: false };
      return this.put(key, value, ttlSeconds);
    });
  }

  async replace(key: string, value: string, ttlSeconds: number | null, ifModRevision: number): Promise<WriteResult> {
    return this.write(() => {
      const row = this.db.prepare("SELECT mod_revision FROM kv WHERE key = ?").get(key) as { mod_revision: number } | undefined;
      if (!row || row.mod_revision !== ifModRevision) return { ok: false };
      return this.put(key, value, ttlSeconds);
    });
  }

  async get(key: string): Promise<StoreEntry | null> {
    this.expireDue();
    const row = this.db.prepare("SELECT * FROM kv WHERE key = ?").get(key) as KvRow | undefined;
    return row ? toEntry(row) : null;
  }

  async probe(): Promise<void> {
    this.revision();
  }

  async list(prefix: string): Promise<{ entries: StoreEntry[]; revision: number }> {
    this.expireDue();
    // One read transaction so entries and revision are consistent.
    return this.db.transaction(() => {
      const rows = this.db
        .prepare("SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key")
        .all(prefix, prefixUpperBound(prefix)) as KvRow[];
      return { entries: rows.map(toEntry), revision: this.revision() };
    })();
  }

  async delete(key: string, ifModRevision?: number): Promise<boolean> {
    return this.write(() => {
      const row = this.db.prepare("SELECT mod_revision FROM kv WHERE key = ?").get(key) as { mod_revision: number } | undefined;
      if (!row || (ifModRevision !== undefined && row.mod_revision !== ifModRevision)) return false;
      this.removeKey(key);
      return true;
    });
  }

  async keepAlive(leaseId: string): Promise<boolean> {
    return this.write(() => {
      const lease = this.db.prepare("SELECT ttl FROM leases WHERE id = ?").get(leaseId) as { ttl: number } | undefined;
      if (!lease) return false;
      this.db.prepare("UPDATE leases SET expires_at = ? WHERE id = ?").run(this.now() + lease.ttl * 1000, leaseId);
      return true;
    });
  }

  async revoke(leaseId: string): Promise<void> {
    this.write(() => this.dropLease(leaseId));
  }

  /** Forgets the event history before `revision` (like etcd compaction); for tests and housekeeping. */
  compact(revision: number): void {
    this.write(() => {
      this.db.prepare("DELETE FROM events WHERE revision < ?").run(revision);
      this.db.prepare("UPDATE meta SET compacted = MAX(compacted, ?)").run(revision - 1);
    });
  }

  async watch(
    prefix: string,
    fromRevision: number,
    onEvent: (event: WatchEvent) => void,
    onReset: (reason: ResetReason, cause?: unknown) => void,
  ): Promise<StoreWatch> {
    const watcher: LocalWatcher = { prefix, nextRevision: fromRevision, onEvent, onReset };
    this.watchers.add(watcher);
    this.schedulePoll(0);
    return {
      cancel: async () => {
        this.watchers.delete(watcher);
      },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.watchers.clear();
    this.db.close();
  }

  private schedulePoll(delay: number): void {
    if (this.closed || this.watchers.size === 0) return;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollTimer = setTimeout(() => this.poll(), delay);
    this.pollTimer.unref?.();
  }

  private poll(): void {
    this.pollTimer = undefined;
    if (this.closed) return;
    try {
      this.expireDue();
      const { revision, compacted } = this.db.prepare("SELECT revision, compacted FROM meta").get() as {
        revision: number;
        compacted: number;
      };
      for (const w of [...this.watchers]) {
        if (w.nextRevision > revision) continue;
        if (w.nextRevision <= compacted) {
          this.watchers.delete(w);
          w.onReset("compacted");
          continue;
        }
        const rows = this.db
          .prepare("SELECT * FROM events WHERE revision >= ? AND key >= ? AND key < ? ORDER BY revision")
          .all(w.nextRevision, w.prefix, prefixUpperBound(w.prefix)) as EventRow[];
        w.nextRevision = revision + 1;
        for (const row of rows) {
          if (!this.watchers.has(w)) break; // cancelled by a callback
          w.onEvent(
            row.type === "put"
              ? { type: "put", key: row.key, value: row.value ?? "", revision: row.revision, leaseId: row.lease_id }
              : { type: "delete", key: row.key, revision: row.revision },
          );
        }
      }
    } catch (e) {
      for (const w of [...this.watchers]) {
        this.watchers.delete(w);
        w.onReset("error", e);
      }
    }
    this.schedulePoll(this.pollIntervalMs);
  }

  /** Runs `fn` in an IMMEDIATE transaction (takes the write lock up front: no upgrade deadlocks). */
  private write<T>(fn: () => T): T {
    return this.db
      .transaction(() => {
        this.expireIn();
        return fn();
      })
      .immediate();
  }

  private revision(): number {
    return (this.db.prepare("SELECT revision FROM meta").get() as { revision: number }).revision;
  }

  private bump(): number {
    const rev = this.revision() + 1;
    this.db.prepare("UPDATE meta SET revision = ?").run(rev);
    if (rev % 1000 === 0 && rev > this.historyRevisions) {
      const before = rev - this.historyRevisions;
      this.db.prepare("DELETE FROM events WHERE revision < ?").run(before);
      this.db.prepare("UPDATE meta SET compacted = MAX(compacted, ?)").run(before - 1);
    }
    return rev;
  }

  private put(key: string, value: string, ttlSeconds: number | null): WriteResult {
    let leaseId: string | null = null;
    if (ttlSeconds !== null) {
      if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1)
        throw new RangeError(`TTL must be a whole number of seconds >= 1, got ${ttlSeconds}`);
      leaseId = randomBytes(8).toString("hex");
      this.db
        .prepare("INSERT INTO leases (id, ttl, expires_at) VALUES (?, ?, ?)")
        .run(leaseId, ttlSeconds, this.now() + ttlSeconds * 1000);
    }
    const previous = this.db.prepare("SELECT lease_id FROM kv WHERE key = ?").get(key) as { lease_id: string | null } | undefined;
    const rev = this.bump();
    this.db
      .prepare(
        "INSERT INTO kv (key, value, mod_revision, lease_id) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision, lease_id = excluded.lease_id",
      )
      .run(key, value, rev, leaseId);
    this.db
      .prepare("INSERT INTO events (revision, key, type, value, lease_id) VALUES (?, ?, 'put', ?, ?)")
      .run(rev, key, value, leaseId);
    if (previous?.lease_id) this.dropLeaseIfUnused(previous.lease_id);
    return { ok: true, leaseId, revision: rev };
  }

  private removeKey(key: string): void {
    const row = this.db.prepare("SELECT lease_id FROM kv WHERE key = ?").get(key) as { lease_id: string | null } | undefined;
    const rev = this.bump();
    this.db.prepare("DELETE FROM kv WHERE key = ?").run(key);
    this.db.prepare("INSERT INTO events (revision, key, type) VALUES (?, ?, 'delete')").run(rev, key);
    if (row?.lease_id) this.dropLeaseIfUnused(row.lease_id);
  }

  private dropLease(leaseId: string): void {
    const keys = this.db.prepare("SELECT key FROM kv WHERE lease_id = ?").all(leaseId) as { key: string }[];
    this.db.prepare("DELETE FROM leases WHERE id = ?").run(leaseId);
    for (const { key } of keys) this.removeKey(key);
  }

  private dropLeaseIfUnused(leaseId: string): void {
    if (!this.db.prepare("SELECT 1 FROM kv WHERE lease_id = ?").get(leaseId)) {
      this.db.prepare("DELETE FROM leases WHERE id = ?").run(leaseId);
    }
  }

  /** Inside a write transaction: drop every lease whose time is up, with delete events for its keys. */
  private expireIn(): void {
    const due = this.db.prepare("SELECT id FROM leases WHERE expires_at <= ?").all(this.now()) as { id: string }[];
    for (const { id } of due) this.dropLease(id);
  }

  /** Outside a transaction: a cheap check first, the write lock only when something expired. */
  private expireDue(): void {
    const row = this.db.prepare("SELECT MIN(expires_at) AS next FROM leases").get() as { next: number | null };
    if (row.next !== null && row.next <= this.now()) this.write(() => undefined);
  }
}

function toEntry(row: KvRow): StoreEntry {
  return { key: row.key, value: row.value, modRevision: row.mod_revision, leaseId: row.lease_id };
}
