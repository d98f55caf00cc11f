// Tests of the conformance suite itself, against the self-test fixture driver: a spec-following
// plugin must pass with 0 failures, and each planted spec violation must turn the matching rule
// into a FAIL. Mounts are real (tmpfs + bind), so the suite's kernel read-backs are exercised.
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { mountsUnder } from "./kernel-view.ts";
import { type PlantedBug, startFixtureDriver } from "./self-test-fixture-driver.ts";
import { runSuite } from "./suite.ts";

describe("CSI conformance suite against its self-test fixture", () => {
  let stop: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await stop?.();
    stop = undefined;
  });

  async function runAgainstFixture(plantBug?: PlantedBug, only?: RegExp) {
    const prefix = testPrefix();
    const base = join(tmpdir(), prefix);
    const socket = `${base}.sock`;
    const driver = await startFixtureDriver({ socket, dataDir: `${base}-data`, plantBug });
    stop = driver.stop;
    const lines: string[] = [];
    const report = await runSuite({ endpoint: `unix://${socket}`, only, print: (l) => lines.push(l) });
    return { report, lines, driver, base };
  }

  it("a spec-following plugin passes every rule and nothing is left behind", async () => {
    const { report, lines, driver, base } = await runAgainstFixture();
    expect(lines.filter((l) => l.startsWith("FAIL"))).toEqual([]);
    expect(report.failed).toBe(0);
    expect(report.passed).toBeGreaterThan(100);
    expect(report.summary).toMatch(/^\d+ passed, 0 failed, \d+ skipped$/);
    expect(report.leftovers).toEqual([]);
    expect(driver.leftVolumes()).toBe(0);
    // nothing of ours is mounted any more: the driver's volumes are gone, and so are the
    // suite's targets (read from the kernel's mount table)
    expect(mountsUnder(`${base}-data`)).toEqual([]);
    expect(mountsUnder(tmpdir()).filter((m) => m.includes("csiconf-"))).toEqual([]);
  });

  it.each([
    ["create-not-idempotent", ["create.idempotent", "create.name-conflict"]],
    ["delete-unknown-fails", ["delete.unknown-id", "delete.twice"]],
    ["unpublish-leaves-target", ["unpublish.ok"]],
  ] as [PlantedBug, string[]][])("a plugin with %s fails exactly %j", async (bug, rules) => {
    const { report } = await runAgainstFixture(bug);
    const failed = report.outcomes.filter((o) => o.verdict === "FAIL").map((o) => o.id);
    expect(failed.sort()).toEqual([...rules].sort());
  });

  it("--only limits the report to matching rules", async () => {
    const { report, lines } = await runAgainstFixture(undefined, /^identity\./);
    expect(report.outcomes.length).toBeGreaterThan(3);
    expect(report.outcomes.every((o) => o.id.startsWith("identity."))).toBe(true);
    expect(lines.every((l) => /^(PASS|FAIL|SKIP) \[(MUST|SHOULD)\] identity\./.test(l))).toBe(true);
  });
});
