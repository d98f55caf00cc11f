// What the CNI benchmark stands on: `berth cni-server` as installed (the bundle) serving the
// launcher, and berth_cnirun's timing of plugin processes (fork to reaped exit).
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { execPlugin, execPluginsTimed, timedRunnerAvailable } from "../../testing/plugin-exec.ts";
import { ServerProcess } from "./server-process.ts";

const BERTH = resolve(import.meta.dirname, "../../build/cni");
const built = existsSync(join(BERTH, "berth-bridge")) && existsSync(resolve(BERTH, "../berth.cjs"));
const VERSION_CONF = { cniVersion: "1.0.0", name: "v", type: "berth-bridge" };

describe.skipIf(!built)("berth cni-server (bundled)", () => {
  const dir = mkdtempSync(`/tmp/${testPrefix()}-`);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("answers the launcher: VERSION comes from the agent, not a cold Node", async () => {
    const socket = join(dir, "cni.sock");
    const server = await ServerProcess.start(socket, { bundled: true });
    try {
      const o = await execPlugin({
        cniPath: BERTH,
        type: "berth-bridge",
        env: { CNI_COMMAND: "VERSION", BERTH_CNI_SOCKET: socket },
        stdin: VERSION_CONF,
      });
      expect(o.exitCode).toBe(0);
      expect((o.json as { supportedVersions: string[] }).supportedVersions).toContain("1.1.0");
      expect(await server.servedWhen(1)).toBe(1);
    } finally {
      await server.stop();
    }
    expect(existsSync(socket)).toBe(false);
  });
});

describe.skipIf(!timedRunnerAvailable() || !existsSync("/usr/lib/cni/bridge"))("berth_cnirun", () => {
  it("runs plugins as a runtime does and reports exit code, output and fork-to-exit time of each", async () => {
    const ok = { cniPath: "/usr/lib/cni", type: "bridge", env: { CNI_COMMAND: "VERSION" }, stdin: VERSION_CONF };
    const bad = { cniPath: "/usr/lib/cni", type: "bridge", env: { CNI_COMMAND: "BOGUS" }, stdin: VERSION_CONF };
    const { outcomes, wallMs } = await execPluginsTimed([ok, bad, ok], 3);
    expect(outcomes.map((o) => o.exitCode)).toEqual([0, 1, 0]);
    expect((outcomes[0]!.json as { supportedVersions: string[] }).supportedVersions).toContain("1.0.0");
    expect(outcomes[1]!.json).toMatchObject({ code: expect.any(Number) });
    for (const o of outcomes) {
      expect(o.durationMs).toBeGreaterThan(0);
      expect(o.durationMs).toBeLessThanOrEqual(wallMs);
    }
  });
});
