// Everything the suite asked the driver to create, so that it can all be undone at the end,
// in reverse dependency order, even after a failure or SIGINT.
import { CsiCallError, type CsiClient } from "./client.ts";

export class Ledger {
  private readonly volumes = new Set<string>();
  private readonly snapshots = new Set<string>();
  /** target path → volume id */
  private readonly published = new Map<string, string>();
  /** staging path → volume id */
  private readonly staged = new Map<string, string>();
  /** `${volumeId}\0${nodeId}` */
  private readonly attached = new Set<string>();

  addVolume(id: string): void {
    this.volumes.add(id);
  }
  dropVolume(id: string): void {
    this.volumes.delete(id);
  }
  addSnapshot(id: string): void {
    this.snapshots.add(id);
  }
  dropSnapshot(id: string): void {
    this.snapshots.delete(id);
  }
  addPublish(volumeId: string, targetPath: string): void {
    this.published.set(targetPath, volumeId);
  }
  dropPublish(targetPath: string): void {
    this.published.delete(targetPath);
  }
  addStage(volumeId: string, stagingPath: string): void {
    this.staged.set(stagingPath, volumeId);
  }
  dropStage(stagingPath: string): void {
    this.staged.delete(stagingPath);
  }
  addAttach(volumeId: string, nodeId: string): void {
    this.attached.add(`${volumeId}\0${nodeId}`);
  }
  dropAttach(volumeId: string, nodeId: string): void {
    this.attached.delete(`${volumeId}\0${nodeId}`);
  }

  get size(): number {
    return this.volumes.size + this.snapshots.size + this.published.size + this.staged.size + this.attached.size;
  }

  /** Undoes everything still recorded; returns one line per step that failed. */
  async release(client: CsiClient): Promise<string[]> {
    const problems: string[] = [];
    const attempt = async (what: string, call: () => Promise<unknown>) => {
      try {
        await call();
      } catch (e) {
        problems.push(`${what}: ${e instanceof CsiCallError ? `${e.code} ${e.statusMessage}` : String(e)}`);
      }
    };
    for (const [target, volumeId] of [...this.published]) {
      await attempt(`NodeUnpublishVolume ${volumeId} ${target}`, () =>
        client.call("Node", "NodeUnpublishVolume", { volume_id: volumeId, target_path: target }, 30_000),
      );
      this.published.delete(target);
    }
    for (const [staging, volumeId] of [...this.staged]) {
      await attempt(`NodeUnstageVolume ${volumeId} ${staging}`, () =>
        client.call("Node", "NodeUnstageVolume", { volume_id: volumeId, staging_target_path: staging }, 30_000),
      );
      this.staged.delete(staging);
    }
    for (const key of [...this.attached]) {
      const [volumeId, nodeId] = key.split("\0") as [string, string];
      await attempt(`ControllerUnpublishVolume ${volumeId}`, () =>
        client.call("Controller", "ControllerUnpublishVolume", { volume_id: volumeId, node_id: nodeId }, 30_000),
      );
      this.attached.delete(key);
    }
    // Volumes restored from a snapshot may pin it, and snapshots may pin their source: delete
    // volumes and snapshots in rounds until nothing more goes away.
    for (let round = 0; round < 3 && this.volumes.size + this.snapshots.size > 0; round++) {
      const last = round === 2;
      for (const id of [...this.volumes]) {
        try {
          await client.call("Controller", "DeleteVolume", { volume_id: id }, 30_000);
          this.volumes.delete(id);
        } catch (e) {
          if (last) problems.push(`DeleteVolume ${id}: ${e instanceof CsiCallError ? `${e.code} ${e.statusMessage}` : e}`);
        }
      }
      for (const id of [...this.snapshots]) {
        try {
          await client.call("Controller", "DeleteSnapshot", { snapshot_id: id }, 30_000);
          this.snapshots.delete(id);
        } catch (e) {
          if (last) problems.push(`DeleteSnapshot ${id}: ${e instanceof CsiCallError ? `${e.code} ${e.statusMessage}` : e}`);
        }
      }
    }
    return problems;
  }
}
