// Standalone CNI fast-path server, for tests and for hosts that run no overlay agent:
//
//   node --import tsx overlay/cniserver/main.ts [--socket /run/berth/cni.sock] [--quiet]
//
// Prints "listening <path>" on stdout once the socket accepts; SIGTERM/SIGINT close it.
import { parseArgs } from "node:util";
import { CniServerStartError, DEFAULT_CNI_SOCKET, startCniServer } from "./server.ts";

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { socket: { type: "string", default: DEFAULT_CNI_SOCKET }, quiet: { type: "boolean", default: false } },
    strict: true,
  });
  const log = values.quiet ? undefined : (line: string) => process.stderr.write(`${line}\n`);
  const server = await startCniServer({ socketPath: values.socket, log });
  process.stdout.write(`listening ${server.socketPath}\n`);
  const stop = () => {
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}

main().catch((e) => {
  process.stderr.write(
    `berth cni server: ${e instanceof CniServerStartError ? e.message : e instanceof Error ? e.message : String(e)}\n`,
  );
  process.exit(e instanceof CniServerStartError ? 2 : 1);
});
