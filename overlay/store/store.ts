// The cluster store behind the overlay: a small key/value contract that both etcd and the
// embedded SQLite store can honour. Keys with a TTL belong to a lease that must be kept
// alive; keys without one stay until deleted (the overlay uses them as reservations).

export interface StoreEntry {
  key: string;
  value: string;
  /** Revision of the last write to this key (etcd mod_revision). */
  modRevision: number;
  /** Id of the TTL lease the key is attached to; null for keys without TTL. */
  leaseId: string | null;
}

export type WatchEvent =
  | { type: "put"; key: string; value: string; revision: number; leaseId: string | null }
  | { type: "delete"; key: string; revision: number };

/** Why a watch ended: the consumer must re-list and watch again from the list's revision. */
export type ResetReason = "compacted" | "disconnected" | "error";

export interface StoreWatch {
  cancel(): Promise<void>;
}

export type WriteResult = { ok: true; leaseId: string | null; revision: number } | { ok: false };

export interface ClusterStore {
  readonly kind: "etcd" | "local" | "kube";

  /** Creates `key` only when absent. With a TTL the key is attached to a fresh lease. */
  create(key: string, value: string, ttlSeconds: number | null): Promise<WriteResult>;

  /**
   * Overwrites `key` only while its mod revision is still `ifModRevision` (compare-and-swap),
   * attaching it to a fresh lease when `ttlSeconds` is set. Used to take over one's own lease
   * after a restart without racing another host.
   */
  replace(key: string, value: string, ttlSeconds: number | null, ifModRevision: number): Promise<WriteResult>;

  get(key: string): Promise<StoreEntry | null>;

  /** All keys under `prefix` plus the store revision the listing reflects (watch from revision + 1). */
  list(prefix: string): Promise<{ entries: StoreEntry[]; revision: number }>;

  /** Deletes `key` (only while at `ifModRevision`, when given). Returns whether it was deleted. */
  delete(key: string, ifModRevision?: number): Promise<boolean>;

  /** Refreshes a TTL lease. Returns false when the lease no longer exists (expired or revoked). */
  keepAlive(leaseId: string): Promise<boolean>;

  /** Ends a lease now; its keys disappear. */
  revoke(leaseId: string): Promise<void>;

  /**
   * Streams changes under `prefix` from `fromRevision` (inclusive). When the history is gone
   * (compaction) or the connection drops, `onReset` is called once and the watch is over.
   */
  watch(
    prefix: string,
    fromRevision: number,
    onEvent: (event: WatchEvent) => void,
    onReset: (reason: ResetReason, cause?: unknown) => void,
  ): Promise<StoreWatch>;

  /**
   * A cheap round trip that proves the store answers, bounded by the store's probe timeout
   * (whatever the lease TTL). Rejects with StoreUnavailableError when it does not.
   */
  probe(): Promise<void>;

  close(): Promise<void>;
}

/** The store could not be reached or refused the request; the caller should retry later. */
export class StoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StoreUnavailableError";
  }
}
