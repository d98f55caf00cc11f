// Builds berth's native addon (native/build/Release/berth_native.node) and, when npm
// skipped its install script, better-sqlite3's. Uses only the npm registry's node-gyp
// and the machine's Node headers: nothing is downloaded.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const nodeGyp = require.resolve("node-gyp/bin/node-gyp.js");
const nodedir = join(dirname(process.execPath), "..");
const headers = existsSync(join(nodedir, "include", "node", "node_api.h")) ? [`--nodedir=${nodedir}`] : [];

function gyp(cwd, what) {
  console.error(`berth build: compiling ${what}`);
  execFileSync(process.execPath, [nodeGyp, "rebuild", "--release", ...headers], { cwd, stdio: ["ignore", "inherit", "inherit"] });
}

gyp(join(root, "native"), "native addon");
const sqliteDir = dirname(require.resolve("better-sqlite3/package.json"));
if (!existsSync(join(sqliteDir, "build", "Release", "better_sqlite3.node"))) gyp(sqliteDir, "better-sqlite3");
