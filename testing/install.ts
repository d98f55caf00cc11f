// berth as an operator installs it, for the engine tests: `berth install` from this checkout
// into a test directory (prefix, CNI bin dir, CNI conf dir; no systemd units).
import { execFile } from "node:child_process";
import { join, resolve } from "node:path";
import { promisify } from "node:util";

const REPO = resolve(import.meta.dirname, "..");

export interface InstalledBerth {
  prefix: string;
  binDir: string;
  confDir: string;
}

/** Runs `berth install` into `dir` (`--network none` unless `args` says otherwise). */
export async function installBerth(dir: string, args: string[] = []): Promise<InstalledBerth> {
  const installed = { prefix: join(dir, "berth"), binDir: join(dir, "cni-bin"), confDir: join(dir, "cni-conf") };
  const network = args.includes("--network") ? [] : ["--network", "none"];
  await promisify(execFile)(
    process.execPath,
    [
      "--import",
      "tsx",
      join(REPO, "bin", "cli.ts"),
      "install",
      "--prefix",
      installed.prefix,
      "--cni-bin-dir",
      installed.binDir,
      "--cni-conf-dir",
      installed.confDir,
      "--no-systemd",
      ...network,
      ...args,
    ],
    { cwd: REPO, timeout: 120_000 },
  );
  return installed;
}
