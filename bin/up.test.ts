// The README's first command, `npm start` (= `berth up`), as a newcomer runs it: bin/berth
// from the bundle (build/berth.cjs), the agent on the embedded store plus the CSI driver. It
// runs inside a throwaway "host" netns (testing/cluster.ts) with its own run,
// state and CSI directories; the defaults differ only in those paths.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCsiPackage } from "../csi/proto/load.ts";
import { Cluster, type Host } from "../testing/cluster.ts";
import { testPrefix } from "../testing/kernel.ts";

const REPO = resolve(import.meta.dirname, "..");
const bundled = existsSync(join(REPO, "build", "berth.cjs"));

async function probe(endpoint: string): Promise<{ ready: boolean; name: string }> {
  const csi = loadCsiPackage().csi.v1;
  const identity = new csi.Identity(endpoint, grpc.credentials.createInsecure());
  try {
    const ready = await new Promise<boolean>((done, fail) =>
      identity.Probe({}, (e, r) => (e || !r ? fail(e ?? new Error("no Probe reply")) : done(r.ready?.value ?? false))),
    );
    const name = await new Promise<string>((done, fail) =>
      identity.GetPluginInfo({}, (e, r) => (e || !r ? fail(e ?? new Error("no GetPluginInfo reply")) : done(r.name))),
    );
    return { ready, name };
  } finally {
    identity.close();
  }
}

describe.skipIf(!bundled).sequential("berth up (npm start) from the bundle", () => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-up-`));
  const csiSocket = join(dir, "csi.sock");
  let cluster: Cluster | undefined;
  let host: Host;

  beforeAll(async () => {
    cluster = await Cluster.create(
      {
        store: "local",
        clusterCidrs: ["10.251.0.0/16"],
        agentCommand: [
          process.execPath,
          join(REPO, "bin", "berth"),
          "up",
          "--csi-endpoint",
          `unix://${csiSocket}`,
          "--csi-dir",
          join(dir, "csi"),
        ],
      },
      (c) => {
        cluster = c;
      },
    );
    host = await cluster.addHost();
  }, 60_000);

  afterAll(async () => {
    await cluster?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it("serves the overlay (a pod gets an address of the host's lease) and the CSI endpoint; Ctrl-C stops both cleanly", {
    timeout: 90_000,
  }, async () => {
    const agent = host.startAgent();
    await host.waitReady();
    const lease = await host.lease();
    const pod = await host.addContainer({ fastPath: true });
    expect(pod.ipv4.startsWith(`${lease.subnet.split(".").slice(0, 3).join(".")}.`), agent.output()).toBe(true);
    // Into a pipe every line is a JSON log record, the agent's, the driver's and berth up's own.
    const records = agent
      .output()
      .split("\n")
      .filter((l) => l && !l.startsWith("--- agent"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records).toContainEqual(
      expect.objectContaining({ component: "berth-up", msg: "CSI driver serving", endpoint: `unix://${csiSocket}` }),
    );
    expect(records.some((r) => r.component === "berth-csi") && records.some((r) => r.component === "berth-agent")).toBe(true);
    expect(await probe(`unix://${csiSocket}`)).toEqual({ ready: true, name: "berth.csi.local" });

    await agent.stop("SIGINT");
    expect(await agent.exited, agent.output()).toBe(0);
    expect(existsSync(csiSocket)).toBe(false);
  });
});
