// The Kubernetes community's CSI conformance suite (csi-sanity, kubernetes-csi/csi-test v5.3.1,
// built by scripts/setup.sh into build/tools/csi-sanity) against `berth csi` started as a user
// starts it (bin/berth csi, its own socket, data and state dirs), in mount mode (kind dir) and
// block mode (kind block, raw block access), 64 MiB volumes expanded to 128 MiB. The two runs
// use separate drivers and directories, so they run side by side; the GroupController specs
// run too (berth advertises the service). csi-sanity's summary line
// goes to the test log. Without the binary the test fails in CI and is skipped elsewhere.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { type BerthCsiProcess, startBerthCsi } from "../../testing/berth-csi-process.ts";
import { loopsTagged, makeScratch, mountsUnder } from "../../testing/storage.ts";

const root = join(import.meta.dirname, "..", "..");
const SANITY = process.env.CSI_SANITY ?? join(root, "build", "tools", "csi-sanity");
const present = existsSync(SANITY);
const inCi = process.env.CI === "true" || process.env.CI === "1";
if (!present && !inCi) {
  console.warn(`SKIP csi-sanity: ${SANITY} is missing; build it with scripts/setup.sh (or set CSI_SANITY)`);
}

const VOLUME_SIZE = 64 * 1024 * 1024;
const EXPAND_SIZE = 128 * 1024 * 1024;

interface Mode {
  label: string;
  args: (dir: string) => string[];
}

const MODES: Mode[] = [
  { label: "mount mode (kind dir)", args: () => [] },
  {
    label: "block mode (kind block, raw block access)",
    args: (dir) => {
      const params = join(dir, "volume-parameters.yaml");
      writeFileSync(params, "kind: block\n");
      return ["--csi.testvolumeaccesstype=block", `--csi.testvolumeparameters=${params}`];
    },
  },
];

function runSanity(args: string[]): Promise<string> {
  return new Promise((resolve) => {
    // A failing suite exits non-zero; its output says why, and the assertions read it.
    execFile(SANITY, args, { maxBuffer: 64 * 1024 * 1024, timeout: 240_000 }, (err, stdout, stderr) => {
      resolve(`${stdout}\n${stderr}${err && !stdout.includes("Ran ") ? `\n${err.message}` : ""}`);
    });
  });
}

interface Summary {
  line: string;
  ran: number;
  passed: number;
  failed: number;
  skipped: number;
}

function summarize(output: string): Summary | undefined {
  const ran = /Ran (\d+) of (\d+) Specs in [\d.]+ seconds/.exec(output);
  const counts = /(\d+) Passed \| (\d+) Failed \|(?: (\d+) Pending \|)? (\d+) Skipped/.exec(output);
  if (!ran || !counts) return undefined;
  return {
    line: `${ran[0]} -- ${counts[0]}`,
    ran: Number(ran[1]),
    passed: Number(counts[1]),
    failed: Number(counts[2]),
    skipped: Number(counts[4]),
  };
}

describe.skipIf(!present && !inCi)("csi-sanity (kubernetes-csi/csi-test v5.3.1) against berth csi", () => {
  it("the csi-sanity binary is there", () => {
    expect(present, `${SANITY} is missing: scripts/setup.sh builds it from the vendored csi-test source`).toBe(true);
  });

  it.concurrent.each(MODES)(
    "$label: 0 failed",
    async (mode) => {
      if (!present) throw new Error(`${SANITY} is missing`);
      const scratch = makeScratch();
      const socket = join(scratch.dir, "plugin", "csi.sock");
      mkdirSync(join(scratch.dir, "plugin"));
      let driver: BerthCsiProcess | undefined;
      try {
        driver = await startBerthCsi({
          socket,
          dataDir: join(scratch.dir, "data"),
          stateDir: join(scratch.dir, "state"),
          nodeId: "sanity-node",
        });
        const output = await runSanity([
          `--csi.endpoint=unix://${socket}`,
          `--csi.mountdir=${join(scratch.dir, "target")}`,
          `--csi.stagingdir=${join(scratch.dir, "staging")}`,
          `--csi.testvolumesize=${VOLUME_SIZE}`,
          `--csi.testvolumeexpandsize=${EXPAND_SIZE}`,
          "--ginkgo.no-color",
          ...mode.args(scratch.dir),
        ]);
        const summary = summarize(output);
        if (!summary) throw new Error(`no csi-sanity summary in its output:\n${output.slice(-4000)}`);
        console.log(`csi-sanity ${mode.label}: ${summary.line}`);
        const failures = output.split("\n").filter((l) => /^\s*\[FAIL\]/.test(l));
        expect(failures, output.slice(-6000)).toEqual([]);
        expect(summary.failed).toBe(0);
        expect(summary.passed).toBeGreaterThanOrEqual(60);
        // Skipped: 10 ControllerPublish specs (node-local volumes have no attach step) and 8
        // ModifyVolume specs; the 6 GroupController specs run.
        expect(summary.skipped).toBeLessThanOrEqual(18);
        await driver.stop();
        // csi-sanity deleted what it made: nothing of the driver is mounted or attached.
        expect(mountsUnder(scratch.dir)).toEqual([]);
        expect(loopsTagged(scratch.prefix)).toEqual([]);
      } finally {
        if (driver) await driver.stop();
        scratch.cleanup();
      }
    },
    300_000,
  );
});
