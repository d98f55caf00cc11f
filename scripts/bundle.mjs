// Bundles berth's entry points with esbuild into build/: the CLI (build/berth.cjs) and one
// self-contained CommonJS executable per CNI plugin (build/cni/berth-<type>), so a plugin's
// cold start loads a single file. Native modules stay external and are found from the
// checkout (native/build, node_modules). The shebang names this Node binary, not `env node`:
// engines often run plugins with a minimal PATH.
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "build");

/** CNI plugin executables: name in build/cni → entry module. Missing entries are skipped. */
export const PLUGINS = {
  "berth-bridge": "cni/plugins/bridge/main.ts",
  "berth-ptp": "cni/plugins/ptp/main.ts",
  "berth-loopback": "cni/plugins/loopback/main.ts",
  "berth-macvlan": "cni/plugins/macvlan/main.ts",
  "berth-host-local": "cni/ipam/hostlocal.main.ts",
  "berth-static": "cni/ipam/static.main.ts",
  "berth-overlay": "overlay/cni/main.ts",
};

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  external: ["better-sqlite3", "*.node"],
  logLevel: "warning",
  legalComments: "none",
  // import.meta.url is only a fallback for the ESM source tree; bundles use __filename.
  logOverride: { "empty-import-meta": "silent" },
};

async function bundle(entry, file, executable) {
  await build({ ...common, entryPoints: [join(root, entry)], outfile: file });
  if (executable) {
    const body = readFileSync(file, "utf8").replace(/^#!.*\n/, "");
    writeFileSync(file, `#!${process.execPath}\n${body}`);
    chmodSync(file, 0o755);
  }
}

mkdirSync(join(out, "cni"), { recursive: true });
// The repo is "type": "module"; extensionless bundles under build/ must load as CommonJS.
writeFileSync(join(out, "package.json"), '{ "type": "commonjs" }\n');
const jobs = [bundle("bin/cli.ts", join(out, "berth.cjs"), false)];
for (const [name, entry] of Object.entries(PLUGINS)) {
  if (existsSync(join(root, entry))) jobs.push(bundle(entry, join(out, "cni", name), true));
}
await Promise.all(jobs);
console.error(`berth bundle: ${jobs.length} bundles in build/`);
