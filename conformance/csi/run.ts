// CSI conformance suite, command line:
//   node --import tsx conformance/csi/run.ts --endpoint unix:///path/csi.sock
//     [--staging-root DIR] [--only PATTERN] [--param k=v ...] [--access-type mount|block]
//     [--fs-type ext4] [--size-mib 32]
// Prints one line per rule and `N passed, N failed, N skipped`; exits 1 when anything failed.
import { parseArgs } from "node:util";
import { MiB } from "./context.ts";
import { ConformanceRun } from "./suite.ts";

const USAGE = `usage: run.ts --endpoint unix:///path/csi.sock [--staging-root DIR] [--only PATTERN]
                 [--param key=value ...] [--access-type mount|block] [--fs-type TYPE] [--size-mib N]`;

class UsageError extends Error {}

function parse(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      endpoint: { type: "string" },
      "staging-root": { type: "string" },
      only: { type: "string" },
      param: { type: "string", multiple: true },
      "access-type": { type: "string" },
      "fs-type": { type: "string" },
      "size-mib": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) return null;
  const endpoint = values.endpoint ?? process.env.CSI_ENDPOINT;
  if (!endpoint) throw new UsageError("--endpoint (or CSI_ENDPOINT) is required");
  if (!/^(unix:\/\/?\/|\/)/.test(endpoint))
    throw new UsageError(`--endpoint "${endpoint}" is not unix:///path or an absolute path`);
  const params: Record<string, string> = {};
  for (const kv of values.param ?? []) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new UsageError(`--param "${kv}" is not key=value`);
    params[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const accessType = values["access-type"] ?? "mount";
  if (accessType !== "mount" && accessType !== "block")
    throw new UsageError(`--access-type "${accessType}" is not mount or block`);
  let only: RegExp | undefined;
  if (values.only) {
    try {
      only = new RegExp(values.only);
    } catch {
      throw new UsageError(`--only "${values.only}" is not a regular expression`);
    }
  }
  const sizeMiB = values["size-mib"] ? Number(values["size-mib"]) : 32;
  if (!Number.isInteger(sizeMiB) || sizeMiB < 1)
    throw new UsageError(`--size-mib "${values["size-mib"]}" is not a positive integer`);
  return {
    endpoint,
    stagingRoot: values["staging-root"],
    only,
    params,
    accessType: accessType as "mount" | "block",
    fsType: values["fs-type"] ?? "",
    volumeBytes: sizeMiB * MiB,
  };
}

async function main(): Promise<number> {
  let opts: ReturnType<typeof parse>;
  try {
    opts = parse(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`csi conformance: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (!opts) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const run = new ConformanceRun({ ...opts, print: (line) => process.stdout.write(`${line}\n`) });
  const interrupted = async (signal: string) => {
    process.stderr.write(`\n${signal}: cleaning up what the suite created…\n`);
    const left = await run.cleanup();
    for (const l of left) process.stderr.write(`  left behind: ${l}\n`);
    process.stdout.write(`${run.checklist.summary()}\n`);
    process.exit(130);
  };
  process.once("SIGINT", () => void interrupted("SIGINT"));
  process.once("SIGTERM", () => void interrupted("SIGTERM"));
  const report = await run.run();
  process.stdout.write(`${report.summary}\n`);
  return report.failed > 0 ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`csi conformance: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
