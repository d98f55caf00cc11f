// Bundles berth's entry points into build/:
//
//   build/berth.cjs               the CLI
//   build/cni-node/berth-<type>.cjs  one self-contained CommonJS plugin per type: the cold path
//   build/cni-node/berth-<type>.cjs.<identity>.wrapped.js  the same, wrapped as a CommonJS module (boot.cjs)
//   build/cni-node/boot.cjs       the cold path's loader: runs a bundle with a V8 code cache
//   build/cni/berth-<type>        the native launcher (native/build/Release/berth_launcher),
//                                 what runtimes run: it forwards to the agent's fast path and
//                                 execs Node on ../cni-node/berth-<type>.cjs when no agent answers
//
// Native modules stay external and are found from the checkout (native/build, node_modules).
// Plugin bundles include better-sqlite3's JavaScript; the CLI keeps it (and etcd3) external.
// Bundle shebangs name this Node binary, not `env node`: engines run plugins with a minimal
// PATH. Plugin bundles must stay lean (a cold start parses all of it): the build fails if one
// pulls in a server-side package, and prints each bundle's size.
//
// scripts/release.mjs imports bundle() and PLUGINS to make the release's own bundles (addons
// beside them, the CLI with every package inside); run directly, this builds build/.
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import Module, { createRequire } from "node:module";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "build");
export const LAUNCHER = join(root, "native", "build", "Release", "berth_launcher");
export const NATIVE_ADDON = join(root, "native", "build", "Release", "berth_native.node");
export const SQLITE_ADDON = join(
  dirname(createRequire(import.meta.url).resolve("better-sqlite3/package.json")),
  "build",
  "Release",
  "better_sqlite3.node",
);

/** CNI plugin executables: name in build/cni → entry module. Missing entries are skipped. */
export const PLUGINS = {
  "berth-bridge": "cni/plugins/bridge/main.ts",
  "berth-ptp": "cni/plugins/ptp/main.ts",
  "berth-loopback": "cni/plugins/loopback/main.ts",
  "berth-macvlan": "cni/plugins/macvlan/main.ts",
  "berth-host-local": "cni/ipam/host-local/main.ts",
  "berth-static": "cni/ipam/static/main.ts",
  "berth-overlay": "overlay/cni/main.ts",
  "berth-portmap": "cni/meta/portmap/main.ts",
  "berth-tuning": "cni/meta/tuning/main.ts",
  "berth-firewall": "cni/meta/firewall/main.ts",
  "berth-bandwidth": "cni/meta/bandwidth/main.ts",
};

/** Packages that belong to the agent or the CSI driver, never to a plugin's cold start. */
const NOT_IN_PLUGINS = ["fastify", "@grpc/", "etcd3", "prom-client", "pino", "cockatiel", "protobufjs"];

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  external: ["better-sqlite3", "etcd3", "*.node"],
  logLevel: "warning",
  legalComments: "none",
  // import.meta.url is only a fallback for the ESM source tree; bundles use __filename.
  logOverride: { "empty-import-meta": "silent" },
};

/** Writes through a temporary name and renames: replacing a running executable in place fails with ETXTBSY. */
function replaceFile(file, write) {
  const tmp = `${file}.tmp${process.pid}`;
  write(tmp);
  renameSync(tmp, file);
}

/**
 * better-sqlite3 finds its addon through the `bindings` package, which searches the package's
 * own build tree. A self-contained bundle (the release's CLI) has no package tree: this stands
 * in for `bindings` and loads the addon by path, relative to the bundle.
 */
function bindingsByPath(sqliteRelative) {
  return {
    name: "berth-bindings-by-path",
    setup(b) {
      b.onResolve({ filter: /^bindings$/ }, () => ({ path: "bindings", namespace: "berth-bindings" }));
      b.onLoad({ filter: /.*/, namespace: "berth-bindings" }, () => ({
        loader: "js",
        contents: `const { join } = require("node:path");
module.exports = () => { const m = { exports: {} }; process.dlopen(m, join(__dirname, ${JSON.stringify(sqliteRelative)})); return m.exports; };`,
      }));
    },
  };
}

/**
 * Bundles one entry point into file. executable: a plugin (shebang, mode 0755); lean: a plugin
 * bundle (no server-side packages, ASCII, a pre-wrapped twin); selfContained: every package
 * inside, better-sqlite3's addon loaded by path (the release's CLI). addons: where the compiled
 * addons are, for the paths each bundle carries relative to itself (default: the checkout's).
 */
export async function bundle(
  entry,
  file,
  {
    executable = false,
    lean = false,
    selfContained = false,
    addons = { native: NATIVE_ADDON, sqlite: SQLITE_ADDON },
    twin = lean,
  } = {},
) {
  const tmp = `${file}.tmp${process.pid}`;
  // A plugin bundle carries better-sqlite3's JavaScript too (resolving and compiling its dozen
  // files would add to every cold start); its compiled addon is loaded by path (cni/ipam/store.ts).
  const external = lean ? ["bindings", "*.node"] : selfContained ? ["*.node"] : common.external;
  // Plugin bundles turn import() of a builtin into require(): boot.cjs compiles them with
  // vm.Script, where import() needs an experimental loader hook that a code cache drops.
  const supported = lean ? { "dynamic-import": false } : undefined;
  // Where the compiled addons are, relative to the bundle (bundledFile in native/addon.ts).
  const define = {
    __BERTH_NATIVE_ADDON__: JSON.stringify(relative(dirname(file), addons.native)),
    __BERTH_SQLITE_ADDON__: JSON.stringify(relative(dirname(file), addons.sqlite)),
  };
  const plugins = selfContained ? [bindingsByPath(relative(dirname(file), addons.sqlite))] : [];
  const result = await build({
    ...common,
    external,
    supported,
    define,
    plugins,
    entryPoints: [join(root, entry)],
    outfile: tmp,
    metafile: lean,
  });
  if (lean) {
    const heavy = Object.keys(result.metafile.inputs).filter((p) =>
      NOT_IN_PLUGINS.some((pkg) => p.includes(`node_modules/${pkg}`)),
    );
    if (heavy.length > 0) {
      rmSync(tmp, { force: true });
      const pkgs = [...new Set(heavy.map((p) => p.replace(/^.*node_modules\/((@[^/]+\/)?[^/]+).*$/, "$1")))];
      throw new Error(`${entry} pulls server-side packages into a plugin bundle: ${pkgs.join(", ")}`);
    }
  }
  // One read of esbuild's output for what plugin bundles add: ASCII only, a shebang, and a
  // pre-wrapped twin for boot.cjs.
  let text;
  if (lean || executable) {
    text = readFileSync(tmp, "utf8");
    // esbuild escapes non-ASCII text in code but keeps some comments as written. One em dash in
    // a comment makes the whole source a two-byte string for V8: a cold start then decodes and
    // copies twice the bytes. Escaped, it reads as Latin-1.
    if (lean) text = text.replace(/[^\x00-\x7f]/gu, (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
    if (executable) text = `#!${process.execPath}\n${text.replace(/^#!.*\n/, "")}`;
    writeFileSync(tmp, text);
    if (executable) chmodSync(tmp, 0o755);
  }
  renameSync(tmp, file);
  if (lean && twin) {
    // The text boot.cjs compiles, wrapped here once, named by the bundle's identity (see
    // boot.cjs). The shebang's line stays, empty: line numbers match the bundle's.
    const dir = dirname(file);
    for (const f of readdirSync(dir)) if (f.startsWith(`${basename(file)}.`) && f.endsWith(".wrapped.js")) rmSync(join(dir, f));
    const st = statSync(file);
    const wrapped = `${file}.${st.ino}-${st.size}-${Math.floor(st.mtimeMs)}.wrapped.js`;
    replaceFile(wrapped, (t) => writeFileSync(t, Module.wrap(text.replace(/^#!.*/, ""))));
  }
  return { file, bytes: statSync(file).size };
}

/** The checkout's build/: the CLI, the plugin bundles and their launchers. */
async function buildCheckout() {
  mkdirSync(join(out, "cni"), { recursive: true });
  mkdirSync(join(out, "cni-node"), { recursive: true });
  // The repo is "type": "module"; bundles under build/ must load as CommonJS.
  writeFileSync(join(out, "package.json"), '{ "type": "commonjs" }\n');

  const plugins = Object.entries(PLUGINS).filter(([, entry]) => existsSync(join(root, entry)));
  const built = await Promise.all([
    bundle("bin/cli.ts", join(out, "berth.cjs")),
    ...plugins.map(([name, entry]) => bundle(entry, join(out, "cni-node", `${name}.cjs`), { executable: true, lean: true })),
  ]);

  // The cold path's loader (V8 code cache); caches of the bundles just replaced are stale.
  copyFileSync(join(root, "cni", "fastpath", "launcher", "boot.cjs"), join(out, "cni-node", "boot.cjs"));
  for (const f of readdirSync(join(out, "cni-node")))
    if (f.endsWith(".v8cache")) rmSync(join(out, "cni-node", f), { force: true });

  const haveLauncher = existsSync(LAUNCHER);
  if (!haveLauncher) {
    console.error(
      `berth bundle: ${relative(root, LAUNCHER)} is not built (npm run build): build/cni holds the Node bundles, no fast path`,
    );
  }
  for (const [name] of plugins) {
    const target = join(out, "cni", name);
    const source = haveLauncher ? LAUNCHER : join(out, "cni-node", `${name}.cjs`);
    replaceFile(target, (tmp) => {
      copyFileSync(source, tmp);
      chmodSync(tmp, 0o755);
    });
  }

  for (const b of built) console.error(`  ${relative(root, b.file).padEnd(34)} ${(b.bytes / 1024).toFixed(0).padStart(5)} KiB`);
  const launcherSize = haveLauncher ? `, launcher ${(statSync(LAUNCHER).size / 1024).toFixed(0)} KiB` : "";
  console.error(`berth bundle: ${built.length} bundles, ${plugins.length} plugins in build/cni${launcherSize}`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await buildCheckout();
