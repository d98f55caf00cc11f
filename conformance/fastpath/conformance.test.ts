// The CNI conformance suite (conformance/cni/run.ts) against build/cni on both paths: with the
// agent's CNI server answering (fast path), and with it stopped, when every launcher must exec
// Node on the bundled plugin (cold path). Both must pass every rule.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { parseSuiteArgs, runSuite } from "../cni/run.ts";
import { ServerProcess } from "./server-process.ts";

const CNI = resolve(import.meta.dirname, "../../build/cni");
const built = existsSync(join(CNI, "berth-bridge")) && existsSync(resolve(CNI, "../cni-node/berth-bridge.cjs"));
if (!built) console.warn("SKIPPED: fast-path conformance — run `npm run build` (build/cni launchers + build/cni-node bundles)");

async function failuresOf(type: string): Promise<{ failures: string[]; passed: number }> {
  const verdicts = await runSuite(parseSuiteArgs(["--cni-path", CNI, "--type", type, "--ipam", "berth-host-local"]), () => {});
  return {
    failures: verdicts.filter((v) => v.status !== "PASS").map((v) => `${v.status} ${v.id}: ${v.why}`),
    passed: verdicts.filter((v) => v.status === "PASS").length,
  };
}

describe.skipIf(!built)("CNI conformance on the fast and the cold path", () => {
  const dir = mkdtempSync(`/tmp/${testPrefix()}-`);
  const socketPath = join(dir, "cni.sock");
  const savedSocket = process.env.BERTH_CNI_SOCKET;
  let server: ServerProcess | undefined;

  beforeAll(async () => {
    // execPlugin hands BERTH_* variables to the plugin children: this points their launchers here.
    process.env.BERTH_CNI_SOCKET = socketPath;
    server = await ServerProcess.start(socketPath);
  });

  afterAll(async () => {
    await server?.stop();
    if (savedSocket === undefined) delete process.env.BERTH_CNI_SOCKET;
    else process.env.BERTH_CNI_SOCKET = savedSocket;
    rmSync(dir, { recursive: true, force: true });
  });

  for (const type of ["berth-bridge", "berth-ptp"]) {
    it(`fast path: ${type} + berth-host-local pass every rule, each call answered by the agent`, {
      timeout: 120_000,
    }, async () => {
      const before = server!.served();
      const r = await failuresOf(type);
      expect(r.failures).toEqual([]);
      expect(r.passed).toBeGreaterThan(50);
      // Every rule runs at least one plugin call; all of them went through the agent.
      expect(server!.served() - before).toBeGreaterThan(r.passed);
    });
  }

  for (const type of ["berth-bridge", "berth-ptp"]) {
    it(`cold path (agent stopped): ${type} + berth-host-local pass every rule`, { timeout: 180_000 }, async () => {
      await server!.stop();
      expect(existsSync(socketPath)).toBe(false);
      const r = await failuresOf(type);
      expect(r.failures).toEqual([]);
      expect(r.passed).toBeGreaterThan(50);
    });
  }
});
