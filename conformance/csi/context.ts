// What every scenario shares: the client, the checklist, the cleanup ledger, the driver's
// advertised capabilities, and small verbs that create things *and* record them for cleanup.
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import type { Checklist, Level, Rule } from "./checklist.ts";
import type { AccessModeName, CsiClient, Volume, VolumeCapability } from "./client.ts";
import type { Ledger } from "./ledger.ts";

export interface Capabilities {
  plugin: Set<string>;
  expansion: Set<string>;
  controller: Set<string>;
  node: Set<string>;
  /** false when NodeGetCapabilities is UNIMPLEMENTED (a controller-only plugin) */
  hasNode: boolean;
}

export interface SuiteSettings {
  /** CreateVolume parameters (e.g. kind=block) */
  params: Record<string, string>;
  accessType: "mount" | "block";
  fsType: string;
  volumeBytes: number;
}

export interface VolumePaths {
  /** a directory of our own for this volume */
  dir: string;
  /** created by the suite, as a CO would */
  staging: string;
  /** not created: the driver must create it (S23) */
  target: string;
}

export function rule(id: string, level: Level, title: string): Rule {
  return { id, level, title };
}

export const MiB = 1024 * 1024;

export class SuiteContext {
  /** unique per run so that names never collide with another run against the same driver */
  readonly tag = `csiconf-${randomBytes(3).toString("hex")}`;
  private counter = 0;
  nodeId = "";

  constructor(
    readonly client: CsiClient,
    readonly t: Checklist,
    readonly ledger: Ledger,
    readonly caps: Capabilities,
    readonly settings: SuiteSettings,
    readonly root: string,
  ) {}

  name(label: string): string {
    this.counter += 1;
    return `${this.tag}-${label}-${this.counter}`;
  }

  capability(mode: AccessModeName = "SINGLE_NODE_WRITER"): VolumeCapability {
    const access_mode = { mode };
    if (this.settings.accessType === "block") return { block: {}, access_mode };
    return { mount: { fs_type: this.settings.fsType, mount_flags: [] }, access_mode };
  }

  /** CreateVolume with the suite's parameters and capability; records the volume for cleanup. */
  async createVolume(name: string, extra: Record<string, unknown> = {}): Promise<Volume> {
    const res = await this.client.call<{ volume: Volume }>("Controller", "CreateVolume", {
      name,
      capacity_range: { required_bytes: this.settings.volumeBytes },
      volume_capabilities: [this.capability()],
      parameters: this.settings.params,
      ...extra,
    });
    if (res.volume?.volume_id) this.ledger.addVolume(res.volume.volume_id);
    return res.volume;
  }

  async deleteVolume(id: string): Promise<void> {
    await this.client.call("Controller", "DeleteVolume", { volume_id: id });
    this.ledger.dropVolume(id);
  }

  paths(label: string): VolumePaths {
    const dir = join(this.root, this.name(label));
    const staging = join(dir, "staging");
    mkdirSync(staging, { recursive: true });
    return { dir, staging, target: join(dir, "target") };
  }

  get staged(): boolean {
    return this.caps.node.has("STAGE_UNSTAGE_VOLUME");
  }

  async stage(vol: Volume, p: VolumePaths, capability = this.capability()): Promise<void> {
    if (!this.staged) return;
    this.ledger.addStage(vol.volume_id, p.staging);
    await this.client.call("Node", "NodeStageVolume", {
      volume_id: vol.volume_id,
      staging_target_path: p.staging,
      volume_capability: capability,
      volume_context: vol.volume_context,
    });
  }

  async unstage(vol: Volume, p: VolumePaths): Promise<void> {
    if (!this.staged) return;
    await this.client.call("Node", "NodeUnstageVolume", { volume_id: vol.volume_id, staging_target_path: p.staging });
    this.ledger.dropStage(p.staging);
  }

  publishRequest(vol: Volume, p: VolumePaths, target = p.target, readonly = false): Record<string, unknown> {
    return {
      volume_id: vol.volume_id,
      staging_target_path: this.staged ? p.staging : "",
      target_path: target,
      volume_capability: this.capability(),
      readonly,
      volume_context: vol.volume_context,
    };
  }

  async publish(vol: Volume, p: VolumePaths, target = p.target, readonly = false): Promise<void> {
    // recorded before the call: a publish that fails half-way may still leave a mount
    this.ledger.addPublish(vol.volume_id, target);
    await this.client.call("Node", "NodePublishVolume", this.publishRequest(vol, p, target, readonly));
  }

  async unpublish(vol: Volume, target: string): Promise<void> {
    await this.client.call("Node", "NodeUnpublishVolume", { volume_id: vol.volume_id, target_path: target });
    this.ledger.dropPublish(target);
  }

  /** Writes `text` into the published volume (a file for mount access, sector 0 for block) and syncs it. */
  writeMarker(target: string, text: string): void {
    if (this.settings.accessType === "mount") {
      const file = join(target, "csi-conformance-marker");
      writeFileSync(file, text);
      const fd = openSync(file, "r");
      fsyncSync(fd);
      closeSync(fd);
      const dirFd = openSync(target, "r");
      fsyncSync(dirFd);
      closeSync(dirFd);
      return;
    }
    const fd = openSync(target, "r+");
    try {
      const buf = Buffer.alloc(4096);
      buf.write(text);
      writeSync(fd, buf, 0, buf.length, 0);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  readMarker(target: string): string {
    if (this.settings.accessType === "mount") {
      try {
        return readFileSync(join(target, "csi-conformance-marker"), "utf8");
      } catch {
        return "";
      }
    }
    const fd = openSync(target, "r");
    try {
      const buf = Buffer.alloc(4096);
      readSync(fd, buf, 0, buf.length, 0);
      const end = buf.indexOf(0);
      return buf.subarray(0, end < 0 ? buf.length : end).toString();
    } finally {
      closeSync(fd);
    }
  }
}
