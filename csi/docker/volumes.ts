// The Docker Engine's VolumeDriver API as a thin adapter over the CSI driver's own services:
// a Docker volume is a CSI volume named `docker/<name>` in the same state database, made by
// ControllerService.createVolume (same capacity checks and enforcement), mounted by
// NodeService stage + publish at one path per volume, and repaired by the same start-up
// reconcile. What Docker adds is who uses a mounted volume: Mount/Unmount carry a caller ID
// (one per container), kept in a small database of its own so that a restarted plugin still
// knows the volume is in use. As kubelet keeps a CSI volume staged across pod restarts, a
// volume stays staged (loop device attached, filesystem mounted) while it is used now and then:
// the last caller's Unmount only unpublishes it, and it is unstaged once it has had no caller
// for the idle period, at Remove, or when the plugin stops. So a container start pays only the
// publish (a bind mount) when the volume was used recently.
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import type { Logger } from "pino";
import { statFs } from "../../native/fs.ts";
import { isMountPoint, readMountInfo } from "../../native/mount.ts";
import { BackingStore } from "../backing.ts";
import { ControllerService } from "../controller.ts";
import { type Driver, filesystemMountPoint, volumeCondition } from "../driver.ts";
import { CsiError } from "../errors.ts";
import { InFlight } from "../locks.ts";
import { NodeService } from "../node.ts";
import { makeDirectories } from "../paths.ts";
import type { VolumeCapability } from "../proto/generated/csi/v1/VolumeCapability.ts";
import { reconcile } from "../reconcile.ts";
import { type VolumeRow, VolumeStore } from "../state.ts";

/** CSI volume names of Docker volumes start with this; nothing else is shown to Docker. */
export const DOCKER_NAME_PREFIX = "docker/";
/** Docker's own rule for volume names, with a length bound. */
const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;
const CALLER_ID = /^[A-Za-z0-9_.:-]{1,128}$/;
/** `docker volume create -o KEY=VALUE` options, with their line in the configuration reference. */
export const VOLUME_OPTIONS: Readonly<Record<string, string>> = {
  size: "the capacity, e.g. 64M or 1G (binary units; default 1G, the CSI driver's default)",
  kind: '"dir" (default) or "block", as the StorageClass parameter kind',
  fsType: 'the filesystem: "ext4" (default) or "xfs"',
  "from-snapshot": "a CSI snapshot id (snap-<uuid>): the volume starts as a copy of it",
};
const KNOWN_OPTIONS = Object.keys(VOLUME_OPTIONS);
const UNITS: Record<string, number> = { "": 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };
/** The access mode Docker's use needs: one node, any number of containers writing. */
const MODE = "SINGLE_NODE_MULTI_WRITER";

/** An error Docker shows to its user as it is (the plugin answers {"Err": message}). */
export class DockerPluginError extends Error {
  constructor(
    message: string,
    readonly statusCode = 400,
  ) {
    super(message);
    this.name = "DockerPluginError";
  }
}

/** A Docker volume name, checked before it reaches a path or a query. */
export function volumeName(name: string): string {
  if (!VOLUME_NAME.test(name)) {
    throw new DockerPluginError(
      name.length > 100
        ? `volume name is ${name.length} characters long; at most 100 are allowed`
        : `volume name ${JSON.stringify(name.slice(0, 64))} is not allowed: use letters, digits, "_", "." and "-", starting with a letter or digit`,
    );
  }
  return name;
}

function callerId(id: string): string {
  if (!CALLER_ID.test(id)) throw new DockerPluginError(`caller ID ${JSON.stringify(id.slice(0, 64))} is not a container ID`);
  return id;
}

/** "64M", "1G", "512Mi", "1048576": binary units as Docker's own size options use them. */
export function parseSize(value: string): number {
  const m = /^([0-9]{1,16})(?:([KMGTP])(i?)[Bb]?)?$/i.exec(value.trim());
  if (!m) throw new DockerPluginError(`option size must be a positive size like 64M or 1G, got ${JSON.stringify(value)}`);
  const n = Number(m[1]) * UNITS[(m[2] ?? "").toUpperCase()]!;
  if (n <= 0) throw new DockerPluginError(`option size must be above zero, got ${JSON.stringify(value)}`);
  if (!Number.isSafeInteger(n)) throw new DockerPluginError(`option size ${JSON.stringify(value)} is too large`);
  return n;
}

interface CreateOptions {
  size?: number;
  kind: "dir" | "block";
  fsType: string;
  fromSnapshot: string;
}

export function parseCreateOptions(opts: Record<string, string>): CreateOptions {
  const unknown = Object.keys(opts).filter((k) => !KNOWN_OPTIONS.includes(k));
  if (unknown.length > 0) {
    throw new DockerPluginError(
      `unknown option${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => JSON.stringify(k.slice(0, 64))).join(", ")} (known: ${KNOWN_OPTIONS.join(", ")})`,
    );
  }
  const kind = opts.kind ?? "dir";
  if (kind !== "dir" && kind !== "block")
    throw new DockerPluginError(`option kind must be "dir" or "block", got ${JSON.stringify(kind)}`);
  const fsType = opts.fsType ?? "ext4";
  if (fsType !== "ext4" && fsType !== "xfs")
    throw new DockerPluginError(`option fsType must be "ext4" or "xfs", got ${JSON.stringify(fsType)}`);
  const fromSnapshot = opts["from-snapshot"] ?? "";
  if ("from-snapshot" in opts && !/^snap-[0-9a-f-]{36}$/.test(fromSnapshot)) {
    throw new DockerPluginError(
      `option from-snapshot must be a snapshot id (snap-<uuid>), got ${JSON.stringify(fromSnapshot.slice(0, 64))}`,
    );
  }
  return { size: opts.size === undefined ? undefined : parseSize(opts.size), kind, fsType, fromSnapshot };
}

/** CSI's answer codes, as a Docker plugin's HTTP status: the message goes to Docker's user. */
function fromCsi(e: unknown): never {
  if (e instanceof CsiError) {
    // 3 INVALID_ARGUMENT, 5 NOT_FOUND, 6 ALREADY_EXISTS, 8 RESOURCE_EXHAUSTED, 9 FAILED_PRECONDITION, 11 OUT_OF_RANGE
    const status = [3, 5, 6, 8, 9, 11].includes(e.code) ? 400 : 500;
    throw new DockerPluginError(e.message, status);
  }
  throw e;
}

/** One caller per (volume, container): the use counts that outlive the plugin process. */
class CallerStore {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = FULL");
    this.db.exec(`CREATE TABLE IF NOT EXISTS callers (
      volume_id TEXT NOT NULL, caller TEXT NOT NULL, since INTEGER NOT NULL, PRIMARY KEY (volume_id, caller))`);
  }

  add(volumeId: string, caller: string): boolean {
    return this.db.prepare("INSERT OR IGNORE INTO callers VALUES (?, ?, ?)").run(volumeId, caller, Date.now()).changes > 0;
  }

  remove(volumeId: string, caller: string): void {
    this.db.prepare("DELETE FROM callers WHERE volume_id = ? AND caller = ?").run(volumeId, caller);
  }

  of(volumeId: string): string[] {
    return (
      this.db.prepare("SELECT caller FROM callers WHERE volume_id = ? ORDER BY since").all(volumeId) as { caller: string }[]
    ).map((r) => r.caller);
  }

  volumes(): string[] {
    return (this.db.prepare("SELECT DISTINCT volume_id FROM callers").all() as { volume_id: string }[]).map((r) => r.volume_id);
  }

  forget(volumeId: string): void {
    this.db.prepare("DELETE FROM callers WHERE volume_id = ?").run(volumeId);
  }

  close(): void {
    this.db.close();
  }
}

/** The devices ("major:minor") mounted in any mount namespace other than this process's. */
function mountNamespaceDevices(): Set<string> {
  const own = readlinkSync("/proc/self/ns/mnt");
  const seen = new Set([own]);
  const devices = new Set<string>();
  for (const e of readdirSync("/proc")) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      const ns = readlinkSync(`/proc/${e}/ns/mnt`);
      if (seen.has(ns)) continue;
      seen.add(ns);
      for (const m of readMountInfo(`/proc/${e}/mountinfo`)) devices.add(m.majorMinor);
    } catch {
      // the process went, or is not ours to read
    }
  }
  return devices;
}

/** Runs one operation per key at a time; the next waits (Docker does not retry ABORTED). */
class KeyedQueue {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => {});
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return next;
  }
}

export interface VolumeServiceOptions {
  /** The CSI driver's state dir (its csi.db): Docker's volumes are CSI volumes. */
  stateDir?: string;
  /** The CSI driver's data dir (images, mounts). */
  dataDir?: string;
  /** Where Docker's mount points and the caller database live. */
  dockerDir?: string;
  nodeId?: string;
  /** How long a volume no container uses stays staged (default IDLE_UNSTAGE_MS). */
  idleUnstageMs?: number;
  log: Logger;
}

/** A volume no container uses stays staged this long, for the next container's quick start. */
export const IDLE_UNSTAGE_MS = 5 * 60_000;

export interface DockerVolume {
  Name: string;
  Mountpoint?: string;
  CreatedAt?: string;
  Status?: Record<string, string | number>;
}

export class DockerVolumeService {
  private readonly queue = new KeyedQueue();
  /** Volume id → the timer that unstages it once it has stayed unused for the idle period. */
  private readonly idle = new Map<string, NodeJS.Timeout>();

  private constructor(
    private readonly d: Driver,
    private readonly controller: ControllerService,
    private readonly node: NodeService,
    private readonly callers: CallerStore,
    private readonly dockerDir: string,
    private readonly idleUnstageMs: number,
  ) {}

  /** Opens the CSI driver's state and back end in this process and runs its start-up reconcile. */
  static async open(options: VolumeServiceOptions): Promise<DockerVolumeService> {
    const stateDir = resolve(options.stateDir ?? "/var/lib/berth/csi");
    const dataDir = resolve(options.dataDir ?? join(stateDir, "volumes"));
    const dockerDir = resolve(options.dockerDir ?? "/var/lib/berth/docker");
    for (const dir of [stateDir, dataDir, dockerDir, join(dockerDir, "staging"), join(dockerDir, "mounts")])
      makeDirectories(dir, 0o700);
    const backing = new BackingStore(dataDir);
    const d: Driver = {
      store: new VolumeStore(join(stateDir, "csi.db")),
      backing,
      locks: new InFlight(),
      nodeId: options.nodeId ?? "docker",
      driverName: "berth.csi.local",
      log: options.log,
      enforcement: backing.detectEnforcement().enforcement,
      maxVolumesPerNode: 0,
    };
    const controller = new ControllerService(d);
    const node = new NodeService(d);
    const report = await reconcile(d, node);
    if (report.removed.length + report.repaired.length + report.abnormal.length > 0)
      options.log.warn(report, "reconciled volume state on start");
    const idleUnstageMs = options.idleUnstageMs ?? IDLE_UNSTAGE_MS;
    const service = new DockerVolumeService(
      d,
      controller,
      node,
      new CallerStore(join(dockerDir, "callers.db")),
      dockerDir,
      idleUnstageMs,
    );
    service.dropCallersOfMissingVolumes();
    await service.releaseAbandoned();
    // Volumes the reconcile restored staged with no caller (the plugin stopped while they were
    // idle): their idle period starts again now.
    for (const s of d.store.stagings()) {
      const v = d.store.volume(s.volumeId);
      if (v?.status !== "ready" || !v.name.startsWith(DOCKER_NAME_PREFIX)) continue;
      if (service.callers.of(v.id).length === 0) service.scheduleUnstage(v);
    }
    return service;
  }

  /**
   * Volumes whose containers went while the plugin was down: Docker's Unmount failed, gave
   * up, and never comes again. A container using a volume holds its filesystem in its own
   * mount namespace, so a volume no other mount namespace holds has no user left; it is
   * released. A namespace that merely copied the host's mounts keeps the volume (the safe
   * side: never unmount what may be in use).
   */
  async releaseAbandoned(): Promise<void> {
    const holders = mountNamespaceDevices();
    for (const id of this.callers.volumes()) {
      const v = this.d.store.volume(id);
      if (!v) continue;
      const loop = this.d.backing.loopFor(this.d.backing.imagePath(v.id));
      if (loop && holders.has(`7:${loop.number}`)) continue;
      const users = this.callers.of(id);
      this.callers.forget(id);
      try {
        await this.unpublish(v);
        this.scheduleUnstage(v);
        this.d.log.warn({ volumeId: id, callers: users }, "docker volume released: no container holds it any more");
      } catch (e) {
        this.d.log.error({ volumeId: id, err: (e as Error).message }, "could not release an abandoned docker volume");
      }
    }
  }

  /** Unstages every volume no container uses (the plugin is stopping); published ones stay. */
  async unstageIdle(): Promise<void> {
    for (const [id, timer] of [...this.idle]) {
      clearTimeout(timer);
      this.idle.delete(id);
      const v = this.d.store.volume(id);
      if (!v) continue;
      const name = v.name.slice(DOCKER_NAME_PREFIX.length);
      await this.queue
        .run(name, () => this.unstageIfUnused(v))
        .catch((e) => {
          this.d.log.error({ volumeId: id, err: (e as Error).message }, "could not unstage an idle docker volume");
        });
    }
  }

  close(): void {
    for (const timer of this.idle.values()) clearTimeout(timer);
    this.idle.clear();
    this.callers.close();
    this.d.store.close();
  }

  private dropCallersOfMissingVolumes(): void {
    for (const id of this.callers.volumes()) {
      const v = this.d.store.volume(id);
      if (v?.status !== "ready") this.callers.forget(id);
    }
  }

  private row(name: string): VolumeRow {
    const v = this.d.store.volumeByName(DOCKER_NAME_PREFIX + volumeName(name));
    if (v?.status !== "ready") throw new DockerPluginError(`no such volume: ${name}`, 404);
    return v;
  }

  private capability(v: VolumeRow): VolumeCapability {
    return { access_mode: { mode: MODE }, mount: { fs_type: v.fsType, mount_flags: [] } };
  }

  /** Where Docker finds the volume while any container uses it. */
  mountpoint(v: VolumeRow): string {
    return join(this.dockerDir, "mounts", v.id);
  }

  private stagingPath(v: VolumeRow): string {
    return join(this.dockerDir, "staging", v.id);
  }

  async create(name: string, opts: Record<string, string>): Promise<void> {
    volumeName(name);
    const o = parseCreateOptions(opts);
    await this.queue.run(name, async () => {
      const existing = this.d.store.volumeByName(DOCKER_NAME_PREFIX + name);
      if (existing?.status === "ready") {
        // Docker calls Create again for a volume it already knows (docker run -v name:...).
        if (Object.keys(opts).length === 0) return;
      }
      await this.controller
        .createVolume({
          name: DOCKER_NAME_PREFIX + name,
          capacity_range: o.size === undefined ? null : { required_bytes: String(o.size), limit_bytes: "0" },
          volume_capabilities: [
            { access_mode: { mode: MODE }, mount: { fs_type: o.fsType, mount_flags: [], volume_mount_group: "" } },
          ],
          parameters: { kind: o.kind },
          secrets: {},
          volume_content_source: o.fromSnapshot ? { snapshot: { snapshot_id: o.fromSnapshot } } : null,
          accessibility_requirements: null,
          mutable_parameters: {},
        } as unknown as Parameters<ControllerService["createVolume"]>[0])
        .catch(fromCsi);
      this.d.log.info({ volume: name, ...o }, "docker volume created");
    });
  }

  async remove(name: string): Promise<void> {
    volumeName(name);
    await this.queue.run(name, async () => {
      const v = this.d.store.volumeByName(DOCKER_NAME_PREFIX + name);
      if (!v) return;
      const users = this.callers.of(v.id);
      if (users.length > 0) {
        throw new DockerPluginError(
          `volume ${name} is in use by ${users.length} container(s): ${users.map((u) => u.slice(0, 12)).join(", ")}`,
          409,
        );
      }
      // Unused means no publication: a volume kept staged for quick starts is unstaged here.
      this.cancelUnstage(v.id);
      if (v.status === "ready") await this.detach(v).catch(fromCsi);
      await this.controller.deleteVolume({ volume_id: v.id, secrets: {} }).catch(fromCsi);
      this.d.log.info({ volume: name, volumeId: v.id }, "docker volume removed");
    });
  }

  async mount(name: string, id: string): Promise<string> {
    volumeName(name);
    callerId(id);
    return this.queue.run(name, async () => {
      const v = this.row(name);
      this.cancelUnstage(v.id);
      // Recorded before anything is mounted: a crash in between leaves a use Docker will end.
      const added = this.callers.add(v.id, id);
      try {
        await this.attach(v);
      } catch (e) {
        if (added) this.callers.remove(v.id, id);
        if (this.callers.of(v.id).length === 0) await this.detach(v).catch(() => {});
        fromCsi(e);
      }
      this.d.log.info({ volume: name, caller: id, users: this.callers.of(v.id).length }, "docker volume mounted");
      return this.mountpoint(v);
    });
  }

  async unmount(name: string, id: string): Promise<void> {
    volumeName(name);
    callerId(id);
    await this.queue.run(name, async () => {
      const v = this.row(name);
      this.callers.remove(v.id, id);
      if (this.callers.of(v.id).length > 0) return;
      await this.unpublish(v).catch(fromCsi);
      this.scheduleUnstage(v);
      this.d.log.info({ volume: name, caller: id }, "docker volume unmounted (last user gone; stays staged while idle)");
    });
  }

  /**
   * Stage and publish, each idempotent: a Mount repairs what drifted. A volume still staged
   * here with its filesystem mounted (kept staged after its last use) is only published.
   */
  private async attach(v: VolumeRow): Promise<void> {
    const cap = this.capability(v);
    const staging = this.stagingPath(v);
    const fsAt = filesystemMountPoint(this.d, v);
    const staged = this.d.store.staging(v.id)?.stagingPath === staging && fsAt !== undefined && isMountPoint(fsAt);
    if (!staged)
      await this.node.stage({
        volume_id: v.id,
        staging_target_path: staging,
        volume_capability: cap,
        secrets: {},
        volume_context: {},
      } as never);
    await this.node.publish({
      volume_id: v.id,
      staging_target_path: staging,
      target_path: this.mountpoint(v),
      volume_capability: cap,
      readonly: false,
      secrets: {},
      volume_context: {},
    } as never);
  }

  private async unpublish(v: VolumeRow): Promise<void> {
    await this.node.unpublish({ volume_id: v.id, target_path: this.mountpoint(v) } as never);
  }

  private async detach(v: VolumeRow): Promise<void> {
    await this.unpublish(v);
    await this.node.unstage({ volume_id: v.id, staging_target_path: this.stagingPath(v) } as never);
  }

  /** Starts (again) the idle period after which an unused volume is unstaged. */
  private scheduleUnstage(v: VolumeRow): void {
    this.cancelUnstage(v.id);
    const name = v.name.slice(DOCKER_NAME_PREFIX.length);
    const timer = setTimeout(() => {
      if (this.idle.get(v.id) !== timer) return;
      this.idle.delete(v.id);
      this.queue
        .run(name, () => this.unstageIfUnused(v))
        .catch((e) => {
          this.d.log.error({ volumeId: v.id, err: (e as Error).message }, "could not unstage an idle docker volume");
        });
    }, this.idleUnstageMs);
    timer.unref();
    this.idle.set(v.id, timer);
  }

  private cancelUnstage(volumeId: string): void {
    const timer = this.idle.get(volumeId);
    if (timer) clearTimeout(timer);
    this.idle.delete(volumeId);
  }

  /** Runs in the volume's queue: a Mount that came first keeps it staged. */
  private async unstageIfUnused(v: VolumeRow): Promise<void> {
    const now = this.d.store.volume(v.id);
    if (now?.status !== "ready" || this.callers.of(v.id).length > 0) return;
    await this.detach(now);
    this.d.log.info({ volumeId: v.id }, "idle docker volume unstaged");
  }

  path(name: string): string {
    const v = this.row(name);
    return this.callers.of(v.id).length > 0 ? this.mountpoint(v) : "";
  }

  get(name: string): DockerVolume {
    const v = this.row(name);
    return this.describe(v, true);
  }

  list(): DockerVolume[] {
    return this.d.store
      .volumes()
      .filter((v) => v.status === "ready" && v.name.startsWith(DOCKER_NAME_PREFIX))
      .map((v) => this.describe(v, false));
  }

  private describe(v: VolumeRow, withStatus: boolean): DockerVolume {
    const users = this.callers.of(v.id);
    const mountpoint = users.length > 0 ? this.mountpoint(v) : "";
    const out: DockerVolume = {
      Name: v.name.slice(DOCKER_NAME_PREFIX.length),
      Mountpoint: mountpoint,
      CreatedAt: new Date(v.createdAt).toISOString(),
    };
    if (!withStatus) return out;
    const condition = volumeCondition(this.d, v);
    // Used bytes: the volume's own filesystem when it is mounted, else the image's allocated blocks.
    const used =
      mountpoint && isMountPoint(mountpoint)
        ? statFs(mountpoint).bytes.used
        : existsSync(this.d.backing.imagePath(v.id))
          ? this.d.backing.allocatedBytes(this.d.backing.imagePath(v.id))
          : 0;
    out.Status = {
      id: v.id,
      size: v.capacity,
      used,
      kind: v.kind,
      fsType: v.fsType,
      users: users.length,
      condition: condition.abnormal ? `abnormal: ${condition.message}` : "healthy",
    };
    if (v.sourceType === "snapshot") out.Status["from-snapshot"] = v.sourceId;
    return out;
  }
}
