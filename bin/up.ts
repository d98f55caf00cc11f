// `berth up`: everything berth runs on one host, in the foreground — the overlay agent on the
// embedded store (single-host defaults) and the CSI driver on its default endpoint. Ctrl-C
// stops both cleanly. `--no-csi` leaves the driver out; other flags go to the agent.
import { runUp } from "../overlay/agent.ts";

export const DEFAULT_CSI_ENDPOINT = "unix:///run/berth/csi.sock";

export async function runUpWithStorage(argv: string[]): Promise<number> {
  const noCsi = argv.includes("--no-csi");
  const agentArgs = argv.filter((a) => a !== "--no-csi");
  if (agentArgs.includes("--help") || agentArgs.includes("-h")) {
    process.stdout.write("berth up [--no-csi] [agent flags]: the agent on the embedded store plus the CSI driver\n");
    return runUp(agentArgs);
  }
  let csi: { close(): Promise<void> } | undefined;
  if (!noCsi) {
    const { startCsiDriver } = await import("../csi/server.ts");
    try {
      csi = await startCsiDriver({ endpoint: process.env.CSI_ENDPOINT ?? DEFAULT_CSI_ENDPOINT });
      process.stderr.write(`berth up: CSI driver serving ${process.env.CSI_ENDPOINT ?? DEFAULT_CSI_ENDPOINT}\n`);
    } catch (e) {
      process.stderr.write(`berth up: CSI driver not started: ${(e as Error).message}\n`);
      return 1;
    }
  }
  try {
    return await runUp(agentArgs);
  } finally {
    await csi?.close();
  }
}
