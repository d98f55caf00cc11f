// `berth csi` (started by testing/berth-csi-process.ts) as the robustness suites use it: data,
// state and socket under one temp dir named with the test prefix, reached only through its gRPC
// socket (the CSI suite's client), its state database read (or, while it is down, written)
// directly, and a cleanup that unmounts, detaches and removes everything under that dir with
// the system tools.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { type BerthCsiProcess, startBerthCsi } from "../../testing/berth-csi-process.ts";
import { makeSharedDir, teardownKernelObjects } from "../../testing/storage.ts";
import { CsiClient } from "../csi/client.ts";

export const REPO = resolve(import.meta.dirname, "../..");
/** How long any single call may take; a driver spinning on a path misses it. */
export const CALL_MS = 10_000;
export const MiB = 1024 * 1024;

export const mountCap = (fsType = "") => ({ mount: { fs_type: fsType }, access_mode: { mode: "SINGLE_NODE_WRITER" } });

/** `berth csi` in a child process, with its data, state and socket under one temp dir. */
export class DriverProcess {
  readonly root: string;
  readonly socket: string;
  readonly dataDir: string;
  readonly stateDir: string;
  client: CsiClient | undefined;
  private process: BerthCsiProcess | undefined;
  private lastLog = "";

  constructor(readonly prefix: string) {
    this.root = mkdtempSync(join(tmpdir(), `${prefix}-`));
    this.socket = join(this.root, "csi.sock");
    this.dataDir = join(this.root, "data");
    this.stateDir = join(this.root, "state");
    // The CO's directory for staging and target paths, as kubelet makes its root dir.
    makeSharedDir(join(this.root, "kubelet"));
  }

  /** What the driver (the running one, else the last one) wrote on stderr. */
  get stderr(): string {
    return this.process?.log() ?? this.lastLog;
  }

  /** A path under the test's own kubelet dir. */
  path(name: string): string {
    return join(this.root, "kubelet", name);
  }

  /** Starts the driver; resolves once the socket answers, rejects when it does not within `readyMs`. */
  async start(readyMs = 30_000): Promise<void> {
    this.process = undefined;
    this.lastLog = "";
    this.process = await startBerthCsi({
      socket: this.socket,
      dataDir: this.dataDir,
      stateDir: this.stateDir,
      nodeId: "hostile-node",
      fromSources: true,
      ownProcessGroup: true,
      readyMs,
    });
    const client = CsiClient.connect(`unix://${this.socket}`);
    this.client = client;
    await client.waitReady(readyMs);
  }

  call<T = unknown>(service: "Identity" | "Controller" | "Node", method: string, request: object): Promise<T> {
    if (!this.client) throw new Error("driver not started");
    return this.client.call<T>(service, method, request, CALL_MS);
  }

  /** True when Probe answers ready within the call deadline. */
  async alive(): Promise<boolean> {
    try {
      await this.call("Identity", "Probe", {});
      return true;
    } catch {
      return false;
    }
  }

  /** SIGKILL of the driver's process group (the driver may be spinning), and wait for its exit. */
  async kill(): Promise<void> {
    this.client?.close();
    this.client = undefined;
    const proc = this.process;
    this.process = undefined;
    if (!proc) return;
    await proc.kill();
    this.lastLog = proc.log();
  }

  /** Rows of a state table, read-only. */
  rows(table: "publications" | "stagings" | "volumes"): Record<string, unknown>[] {
    const db = new Database(join(this.stateDir, "csi.db"), { readonly: true, fileMustExist: true });
    try {
      return db.prepare(`SELECT * FROM ${table}`).all() as Record<string, unknown>[];
    } finally {
      db.close();
    }
  }

  /** Writes to the state database while the driver is down. */
  write(sql: string, ...params: unknown[]): void {
    const db = new Database(join(this.stateDir, "csi.db"), { fileMustExist: true });
    try {
      db.prepare(sql).run(...params);
    } finally {
      db.close();
    }
  }

  async cleanup(): Promise<void> {
    await this.kill();
    teardownKernelObjects(this.root);
    rmSync(this.root, { recursive: true, force: true });
  }
}
