// Runs the black-box CSI suite against berth's own driver, once per volume kind: directory
// volumes, block volumes used through a file system, and raw block volumes. The driver is
// started as `berth csi` (from the sources) on a temp socket with temp data/state dirs;
// everything is named with a test prefix so the end-of-run leak check catches any mount or loop
// device left behind.
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { startBerthCsi } from "../../testing/berth-csi-process.ts";
import { testPrefix } from "../../testing/kernel.ts";
import { mountsUnder } from "./kernel-view.ts";
import { runSuite, type SuiteOptions } from "./suite.ts";

// berth's driver is optional from the suite's point of view: it may not be built yet.
const CLI = join(import.meta.dirname, "..", "..", "bin", "cli.ts");
const unavailable = existsSync(CLI) ? "" : `${CLI} is missing`;
if (unavailable) console.warn(`SKIP berth CSI conformance: ${unavailable}`);

const KINDS: [string, Pick<SuiteOptions, "params" | "accessType">][] = [
  ["kind=dir, mount access", { params: { kind: "dir" }, accessType: "mount" }],
  ["kind=block, mount access (ext4)", { params: { kind: "block" }, accessType: "mount" }],
  ["kind=block, raw block access", { params: { kind: "block" }, accessType: "block" }],
];

describe.skipIf(!!unavailable)("berth's CSI driver passes the CSI conformance suite", () => {
  let cleanup: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await cleanup?.();
    cleanup = undefined;
  });

  it.each(KINDS)("%s", async (_label, kind) => {
    const base = join(tmpdir(), testPrefix());
    const socket = `${base}.sock`;
    const dataDir = `${base}-data`;
    const stateDir = `${base}-state`;
    mkdirSync(dataDir, { recursive: true });
    mkdirSync(stateDir, { recursive: true });
    const driver = await startBerthCsi({ socket, dataDir, stateDir, nodeId: "conformance-node", fromSources: true });
    cleanup = async () => {
      await driver.stop();
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(stateDir, { recursive: true, force: true });
      rmSync(socket, { force: true });
    };
    const lines: string[] = [];
    const report = await runSuite({ endpoint: `unix://${socket}`, ...kind, print: (l) => lines.push(l) });
    // the SKIP and FAIL lines say what was not verified and why
    console.log([`${_label}: ${report.summary}`, ...lines.filter((l) => !l.startsWith("PASS"))].join("\n  "));
    expect(lines.filter((l) => l.startsWith("FAIL"))).toEqual([]);
    expect(report.failed).toBe(0);
    expect(report.passed).toBeGreaterThan(80);
    // what the kernel holds: no mount of the driver's data dir or of our targets remains
    // (the driver's own shared bind of its mounts dir stays until it stops)
    expect(mountsUnder(dataDir).filter((m) => m !== join(dataDir, "mounts"))).toEqual([]);
  });
});
