// Runs the black-box CNI conformance suite (conformance/cni/run.ts) as a child process:
// against berth's plugins when they are built, and against a shim fixture to prove the
// suite's GC/STATUS rules can fail.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import type { Verdict } from "./harness.ts";

interface SuiteReport {
  verdicts: Verdict[];
  passed: number;
  failed: number;
  skipped: number;
}

const RUN_TS = resolve(import.meta.dirname, "run.ts");
const BERTH_CNI = resolve(import.meta.dirname, "../../build/cni");
const FIXTURES = resolve(import.meta.dirname, "fixtures");

function runSuite(args: string[]): Promise<SuiteReport> {
  return new Promise((done, reject) => {
    // The child inherits BERTH_TEST_RUN, so its netns/links carry this run's tag for the leak check.
    execFile(
      process.execPath,
      ["--import", "tsx", RUN_TS, ...args, "--json"],
      { maxBuffer: 16 << 20, timeout: 120_000 },
      (err, stdout, stderr) => {
        try {
          done(JSON.parse(stdout) as SuiteReport);
        } catch {
          reject(new Error(`suite gave no JSON report (${err?.message ?? "no error"}): ${stderr.slice(0, 2000)}`));
        }
      },
    );
  });
}

const failures = (r: SuiteReport) => r.verdicts.filter((v) => v.status !== "PASS").map((v) => `${v.status} ${v.id}: ${v.why}`);

const berthBuilt = existsSync(resolve(BERTH_CNI, "berth-bridge"));
if (!berthBuilt) console.warn(`SKIPPED: CNI conformance against berth — ${BERTH_CNI}/berth-bridge is not built`);

describe.skipIf(!berthBuilt)("CNI conformance: berth", () => {
  it("berth-bridge + berth-host-local pass every rule, none skipped", { timeout: 120_000 }, async () => {
    const r = await runSuite(["--cni-path", BERTH_CNI, "--type", "berth-bridge", "--ipam", "berth-host-local"]);
    expect(failures(r)).toEqual([]);
    expect(r.passed).toBeGreaterThan(50);
  });

  it("berth-ptp + berth-host-local pass every rule, none skipped", { timeout: 120_000 }, async () => {
    if (!existsSync(resolve(BERTH_CNI, "berth-ptp"))) return;
    const r = await runSuite(["--cni-path", BERTH_CNI, "--type", "berth-ptp", "--ipam", "berth-host-local"]);
    expect(failures(r)).toEqual([]);
  });
});

describe.skipIf(!existsSync("/usr/lib/cni/bridge"))("CNI conformance suite catches defects", () => {
  it("a plugin whose GC and STATUS do nothing fails GC-RELEASES and STATUS-POOL-EXHAUSTED", { timeout: 120_000 }, async () => {
    const r = await runSuite([
      "--cni-path",
      FIXTURES,
      "--type",
      "shim-bridge",
      "--ipam",
      "shim-host-local",
      "--only",
      "^(VERSION-1.1.0|ADD-1.1.0-|GC-|STATUS-)",
    ]);
    const status = Object.fromEntries(r.verdicts.map((v) => [v.id, v.status]));
    expect(status).toMatchObject({
      "VERSION-1.1.0": "PASS",
      "ADD-1.1.0-SHAPE": "PASS",
      "ADD-1.1.0-KERNEL": "PASS",
      "GC-OUTPUT": "PASS",
      "GC-KEEPS-VALID": "PASS",
      "GC-RELEASES": "FAIL",
      "STATUS-HEALTHY": "PASS",
      "STATUS-POOL-EXHAUSTED": "FAIL",
    });
    expect(r.failed).toBeGreaterThanOrEqual(2);
  });
});
