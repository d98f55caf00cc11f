// Runs the black-box CSI suite against berth's own driver, once per volume kind: directory
// volumes, block volumes used through a file system, and raw block volumes. The driver is
// started in-process on a temp socket with temp data/state dirs; everything is named with a
// test prefix so the end-of-run leak check catches any mount or loop device left behind.
import { mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { mountsUnder } from "./kernel-view.ts";
import { runSuite, type SuiteOptions } from "./suite.ts";

interface Driver {
  close(): Promise<void>;
}
type StartCsiDriver = (opts: {
  endpoint: string;
  nodeId?: string;
  dataDir?: string;
  stateDir?: string;
  logger?: unknown;
}) => Promise<Driver>;

// berth's driver is optional from the suite's point of view: it may not be built yet.
let startCsiDriver: StartCsiDriver | undefined;
let unavailable = "";
try {
  const mod = (await import("../../csi/server.ts")) as { startCsiDriver?: StartCsiDriver };
  startCsiDriver = mod.startCsiDriver;
  if (typeof startCsiDriver !== "function") unavailable = "csi/server.ts does not export startCsiDriver";
} catch (e) {
  unavailable = `csi/server.ts cannot be loaded: ${(e as Error).message}`;
}
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
    const { default: pino } = await import("pino");
    const driver = await startCsiDriver!({
      endpoint: `unix://${socket}`,
      nodeId: "conformance-node",
      dataDir,
      stateDir,
      logger: pino({ level: "silent" }),
    });
    cleanup = async () => {
      await driver.close();
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
