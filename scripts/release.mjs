// `npm run release`: build/release/berth-<version>-linux-<arch>.tar.gz, everything `berth install`
// needs and nothing else. The only prerequisite on the target is Node >= 20.10: no node_modules,
// no TypeScript, no compiler. The tree (one top directory, berth-<version>-linux-<arch>/):
//
//   bin/berth                  the command line: a shell script running Node on lib/berth.cjs
//   lib/berth.cjs              the CLI bundle, every package inside (better-sqlite3 and etcd3 too)
//   lib/csi.proto              the CSI driver's protocol, loaded at run time
//   lib/berth_native.node      berth's addon
//   lib/better_sqlite3.node    better-sqlite3's addon, loaded by path from every bundle
//   proto/*.proto              etcd3's protocol (the bundled etcd3 loads lib/../proto/rpc.proto)
//   cni/berth-*                the plugin launchers (what `berth install` copies to the CNI bin dir)
//   cni-node/berth-*.cjs       the plugin bundles (the cold path) and boot.cjs, their loader
//   systemd/                   berth.service, berth-cni.socket, berth-csi.socket
//   examples/                  network configs (bridge, overlay) and berth.env
//   LICENSE, INSTALL
//   RELEASE.json               name, version, arch, the Node ABI the addons are built for, and
//                              every file above with its SHA-256
//
// This is the one definition of a release's contents: `berth install` run from a checkout
// stages the same tree (stageRelease) and installs from it.
//
//   node scripts/release.mjs                the tarball
//   node scripts/release.mjs --stage DIR    only the tree, into DIR (created, must be empty)
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
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
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { bundle, LAUNCHER, NATIVE_ADDON, PLUGINS, SQLITE_ADDON } from "./bundle.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** The command line's entry: `install` rewrites the NODE line with the absolute Node it ran with. */
const BERTH_SCRIPT = `#!/bin/sh
# berth's command line: Node on the CLI bundle beside this script's directory.
NODE=node
here=$(dirname "$(readlink -f "$0")")
exec "$NODE" "$here/../lib/berth.cjs" "$@"
`;

export function releaseName() {
  const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  return { version, arch: process.arch, name: `berth-${version}-linux-${process.arch}` };
}

function sha256(file) {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

function listFiles(dir, base = dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listFiles(p, base));
    else out.push(relative(base, p));
  }
  return out;
}

/** Writes the release tree into dir (created; must not exist or be empty). Returns RELEASE.json's content. */
export async function stageRelease(dir) {
  for (const [what, file] of [
    ["the plugin launcher", LAUNCHER],
    ["berth's addon", NATIVE_ADDON],
    ["better-sqlite3's addon", SQLITE_ADDON],
  ]) {
    if (!existsSync(file)) throw new Error(`${what} is not built (${relative(root, file)}): run npm run build first`);
  }
  // A release must not ship a launcher or addon older than its sources.
  const newest = (d, ext) =>
    Math.max(
      ...readdirSync(d)
        .filter((f) => ext.some((e) => f.endsWith(e)))
        .map((f) => statSync(join(d, f)).mtimeMs),
    );
  for (const [file, sources] of [
    [LAUNCHER, newest(join(root, "cni", "fastpath", "launcher"), [".c", ".h"])],
    [NATIVE_ADDON, newest(join(root, "native", "src"), [".cc", ".h"])],
  ]) {
    if (statSync(file).mtimeMs < sources)
      throw new Error(`${relative(root, file)} is older than its sources: run npm run build first`);
  }
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new Error(`${dir} is not empty`);
  for (const sub of ["bin", "lib", "proto", "cni", "cni-node", "systemd", "examples"])
    mkdirSync(join(dir, sub), { recursive: true });

  const addons = { native: join(dir, "lib", "berth_native.node"), sqlite: join(dir, "lib", "better_sqlite3.node") };
  copyFileSync(NATIVE_ADDON, addons.native);
  copyFileSync(SQLITE_ADDON, addons.sqlite);
  copyFileSync(join(root, "csi", "proto", "csi.proto"), join(dir, "lib", "csi.proto"));
  const etcdProto = join(dirname(fileURLToPath(import.meta.resolve("etcd3/package.json"))), "proto");
  for (const f of readdirSync(etcdProto).filter((f) => f.endsWith(".proto")))
    copyFileSync(join(etcdProto, f), join(dir, "proto", f));

  const plugins = Object.entries(PLUGINS).filter(([, entry]) => existsSync(join(root, entry)));
  await Promise.all([
    bundle("bin/cli.ts", join(dir, "lib", "berth.cjs"), { selfContained: true, addons }),
    // No pre-wrapped twin: its name is the installed bundle's identity (inode, mtime), which
    // only `berth install` knows.
    ...plugins.map(([name, entry]) =>
      bundle(entry, join(dir, "cni-node", `${name}.cjs`), { executable: true, lean: true, addons, twin: false }),
    ),
  ]);
  copyFileSync(join(root, "cni", "fastpath", "launcher", "boot.cjs"), join(dir, "cni-node", "boot.cjs"));
  for (const [name] of plugins) {
    copyFileSync(LAUNCHER, join(dir, "cni", name));
    chmodSync(join(dir, "cni", name), 0o755);
  }
  writeFileSync(join(dir, "bin", "berth"), BERTH_SCRIPT, { mode: 0o755 });
  for (const f of readdirSync(join(root, "deploy", "systemd")))
    copyFileSync(join(root, "deploy", "systemd", f), join(dir, "systemd", f));
  for (const f of readdirSync(join(root, "deploy", "examples")))
    copyFileSync(join(root, "deploy", "examples", f), join(dir, "examples", f));
  copyFileSync(join(root, "LICENSE"), join(dir, "LICENSE"));
  copyFileSync(join(root, "deploy", "INSTALL"), join(dir, "INSTALL"));

  const { version, arch, name } = releaseName();
  const files = {};
  for (const f of listFiles(dir)) files[f] = sha256(join(dir, f));
  // better-sqlite3's addon is built against this Node's ABI (NODE_MODULE_VERSION, not N-API):
  // the release runs on Node >= 20.10 of this major line only, which install checks.
  const nodeMajor = Number(process.versions.node.split(".")[0]);
  const release = { name, version, arch, node: ">=20.10", nodeMajor, nodeModules: process.versions.modules, files };
  writeFileSync(join(dir, "RELEASE.json"), `${JSON.stringify(release, null, 2)}\n`);
  return release;
}

async function main(argv) {
  if (argv[0] === "--stage") {
    if (!argv[1]?.startsWith("/")) throw new Error("--stage needs an absolute directory");
    await stageRelease(argv[1]);
    return;
  }
  if (argv.length > 0) throw new Error(`unknown argument ${JSON.stringify(argv[0])} (usage: release.mjs [--stage DIR])`);
  const { name } = releaseName();
  const outDir = join(root, "build", "release");
  const tree = join(outDir, name);
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });
  const release = await stageRelease(tree);
  const tarball = join(outDir, `${name}.tar.gz`);
  const tmp = `${tarball}.tmp${process.pid}`;
  // Sorted names, one owner, the files' own modes, no build times: the same sources and build
  // give a byte-identical tarball.
  execFileSync(
    "tar",
    ["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-I", "gzip -9n", "-cf", tmp, "-C", outDir, name],
    { stdio: "inherit" },
  );
  renameSync(tmp, tarball);
  const files = [...Object.keys(release.files), "RELEASE.json"];
  const unpacked = files.reduce((n, f) => n + statSync(join(tree, f)).size, 0);
  rmSync(tree, { recursive: true, force: true });
  const mib = (n) => `${(n / 1024 / 1024).toFixed(1)} MiB`;
  console.error(
    `berth release: ${relative(root, tarball)}: ${mib(statSync(tarball).size)} (${mib(unpacked)} unpacked, ${files.length} files)`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(`berth release: ${e.message}`);
    process.exit(1);
  });
}
