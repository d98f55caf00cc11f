// The release tarball and `berth install` / `berth uninstall`, run as an operator would: the
// tarball unpacked in a temporary directory, its own command line run with a PATH that has no
// node_modules and no tsx, everything installed under temporary directories (--root, or
// explicit dirs); never the host's /opt/cni/bin or /etc.
import { type SpawnSyncReturns, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  appendFileSync,
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join, relative, resolve } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { addNetns, delLink, delNetns, ipJson, sh, testPrefix } from "../testing/kernel.ts";

const REPO = resolve(import.meta.dirname, "..");
/** What an engine or an operator's shell has: no node_modules/.bin, no tsx. */
const CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const NODE = process.execPath;

const sha = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

let work: string;
let tarball: string;
let tree: string;

function run(cmd: string, args: string[], opts: { env?: Record<string, string>; input?: string; cwd?: string } = {}) {
  return spawnSync(cmd, args, {
    encoding: "utf8",
    cwd: opts.cwd ?? work,
    input: opts.input,
    env: { PATH: CLEAN_PATH, ...opts.env },
    timeout: 120_000,
  }) as SpawnSyncReturns<string>;
}

/** The unpacked release's own command line. */
function berth(args: string[], opts: { env?: Record<string, string>; from?: string } = {}) {
  return run(join(opts.from ?? tree, "bin", "berth"), args, opts);
}

/** Every file under dir (relative), with its inode and mtime. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        out.set(`${relative(dir, p)}/`, "dir");
        walk(p);
      } else {
        const st = statSync(p);
        out.set(relative(dir, p), `${st.ino}:${st.mtimeMs}:${st.size}`);
      }
    }
  };
  if (existsSync(dir)) walk(dir);
  return out;
}

function freshDir(name: string): string {
  const d = join(work, `${name}-${Math.random().toString(36).slice(2, 8)}`);
  mkdirSync(d);
  return d;
}

beforeAll(() => {
  work = mkdtempSync(join("/tmp", `${testPrefix()}-install-`));
  const r = run(NODE, [join(REPO, "scripts", "release.mjs")], { cwd: REPO });
  expect(r.stderr).toMatch(/berth release: build\/release\/berth-[\d.]+-linux-\w+\.tar\.gz: [\d.]+ MiB/);
  expect(r.status).toBe(0);
  const { version } = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8"));
  tarball = join(REPO, "build", "release", `berth-${version}-linux-${process.arch}.tar.gz`);
  sh("tar", ["xzf", tarball, "-C", work]);
  tree = join(work, `berth-${version}-linux-${process.arch}`);
}, 180_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

// A bridge ADD/DEL on the cold path in a netns of the test's own, with the plugins in binDir.
const netnsMade: string[] = [];
const linksMade: string[] = [];
afterEach(() => {
  for (const l of linksMade.splice(0)) delLink(l);
  for (const n of netnsMade.splice(0)) delNetns(n);
});

/** x such that no route on this host overlaps 10.251.x.0/24 (other tests' bridges run at the same time). */
function freeThirdOctet(): number {
  const taken = (ipJson(["-4", "route", "show", "table", "all"]) as { dst: string }[]).map((r) => r.dst);
  const toInt = (ip: string) => ip.split(".").reduce((n, o) => n * 256 + Number(o), 0);
  for (let i = 0; i < 200; i++) {
    const third = 1 + Math.floor(Math.random() * 250);
    const lo = toInt(`10.251.${third}.0`);
    const clash = taken.some((d) => {
      if (!/^\d/.test(d)) return false;
      const [addr, len = "32"] = d.split("/");
      const size = 2 ** (32 - Number(len));
      const start = Math.floor(toInt(addr!) / size) * size;
      return start < lo + 256 && lo < start + size;
    });
    if (!clash) return third;
  }
  throw new Error("no free 10.251.x.0/24 on this host");
}

/** How a plugin is run: the launcher itself, or a command that runs it (cmd, args). */
type Launch = (launcher: string) => [string, string[]];
const direct: Launch = (launcher) => [launcher, []];

function bridgeRoundTrip(binDir: string, env: Record<string, string> = { BERTH_CNI_SOCKET: "off" }, launch = direct) {
  const p = testPrefix();
  const ns = `${p}ns`;
  const br = `${p}br`;
  addNetns(ns);
  netnsMade.push(ns);
  linksMade.push(br);
  const dataDir = freshDir("ipam");
  const third = freeThirdOctet();
  const conf = JSON.stringify({
    cniVersion: "1.0.0",
    name: `${p}net`,
    type: "berth-bridge",
    bridge: br,
    isGateway: true,
    ipam: { type: "berth-host-local", ranges: [[{ subnet: `10.251.${third}.0/24` }]], dataDir },
  });
  const cniEnv = (command: string) => ({
    CNI_COMMAND: command,
    CNI_CONTAINERID: `${p}ctr`,
    CNI_NETNS: `/run/netns/${ns}`,
    CNI_IFNAME: "eth0",
    CNI_PATH: binDir,
    ...env,
  });
  // The engine's PATH has no Node: the launcher runs the one recorded at install.
  const [cmd, args] = launch(join(binDir, "berth-bridge"));
  const add = run(cmd, args, { env: { ...cniEnv("ADD"), PATH: "/nonexistent" }, input: conf });
  expect(add.stderr, add.stdout).toBe("");
  expect(add.status, add.stdout).toBe(0);
  const result = JSON.parse(add.stdout);
  expect(result.ips[0].address).toBe(`10.251.${third}.2/24`);
  const addrs = ipJson(["addr", "show", "eth0"], ns);
  expect(addrs[0].addr_info.map((a: { local: string }) => a.local)).toContain(`10.251.${third}.2`);
  const del = run(cmd, args, { env: { ...cniEnv("DEL"), PATH: "/nonexistent" }, input: conf });
  expect(del.stderr, del.stdout).toBe("");
  expect(del.status, del.stdout).toBe(0);
  expect(ipJson(["link", "show"], ns).map((l: { ifname: string }) => l.ifname)).toEqual(["lo"]);
}

describe("npm run release", () => {
  it("packs what install needs and nothing else", () => {
    const entries = sh("tar", ["tzf", tarball]).trim().split("\n");
    const files = entries.filter((e) => !e.endsWith("/")).map((e) => e.split("/").slice(1).join("/"));
    expect(files.filter((f) => f.includes("node_modules") || /\.(ts|mts|cts)$/.test(f) || f.endsWith(".map"))).toEqual([]);
    const release = JSON.parse(readFileSync(join(tree, "RELEASE.json"), "utf8"));
    expect(release).toMatchObject({ name: "berth-0.1.0-linux-" + process.arch, node: ">=20.10" });
    expect(files.sort()).toEqual([...Object.keys(release.files), "RELEASE.json"].sort());
    for (const [f, hash] of Object.entries(release.files)) expect(sha(join(tree, f)), f).toBe(hash);
    for (const f of [
      "bin/berth",
      "lib/berth.cjs",
      "lib/berth_native.node",
      "lib/better_sqlite3.node",
      "lib/csi.proto",
      "cni/berth-bridge",
      "cni/berth-host-local",
      "cni/berth-portmap",
      "cni/berth-firewall",
      "cni/berth-bandwidth",
      "cni/berth-overlay",
      "cni-node/berth-bridge.cjs",
      "cni-node/boot.cjs",
      "systemd/berth.service",
      "systemd/berth-cni.socket",
      "systemd/berth-csi.socket",
      "examples/10-berth-bridge.conflist",
      "examples/10-berth-overlay.conflist",
      "examples/berth.env",
      "LICENSE",
      "INSTALL",
    ]) {
      expect(files).toContain(f);
    }
    expect(readFileSync(join(tree, "LICENSE"), "utf8")).toMatch(/Apache License\s+Version 2\.0, January 2004/);
    // Only the plugins' launchers and bundles: no pre-wrapped twins (install makes them).
    expect(files.filter((f) => f.includes(".wrapped.js") || f.includes(".v8cache"))).toEqual([]);
  });

  it("runs from the unpacked tree with a PATH that has no node_modules or tsx", () => {
    const version = berth(["version"]);
    expect(version.stderr).toBe("");
    expect(version.stdout).toMatch(/^berth 0\.1\.0 \(node v\d+/);
    const ns = `${testPrefix()}doc`;
    netnsMade.push(ns);
    const doctor = berth(["doctor", "--json"]);
    expect(doctor.status).toBe(0);
    const parsed = JSON.parse(doctor.stdout) as { ok: boolean; checks: { name: string; status: string }[] };
    expect(parsed.ok).toBe(true);
    expect(parsed.checks.find((c) => c.name === "native addon")?.status).toBe("ok");
    // A plugin from the unpacked tree, cold path (the Node compiled into the launcher).
    bridgeRoundTrip(join(tree, "cni"));
  });
});

describe("berth install", () => {
  it("lays the release out under --root, and a second install changes nothing", () => {
    const root = freshDir("root");
    const dry = berth(["install", "--root", root, "--dry-run"]);
    expect(dry.status).toBe(0);
    expect(readdirSync(root)).toEqual([]);
    const first = berth(["install", "--root", root]);
    expect(first.stderr).toBe("");
    expect(first.status).toBe(0);
    expect(first.stdout).toMatch(/ written, 0 unchanged/);
    // The dry run named every file the install wrote, and nothing else.
    const written = [...snapshot(root).keys()].filter((k) => !k.endsWith("/"));
    const named = dry.stdout
      .trim()
      .split("\n")
      .map((l) => l.replace(/^\S+\s+/, ""))
      .map((p) => relative(root, p));
    const twinPattern = (f: string) => f.replace(/\.\d+-\d+-\d+\.wrapped\.js$/, ".<identity>.wrapped.js");
    expect(named.sort()).toEqual(written.map(twinPattern).sort());

    const release = JSON.parse(readFileSync(join(tree, "RELEASE.json"), "utf8")) as { files: Record<string, string> };
    for (const f of Object.keys(release.files)) expect(existsSync(join(root, "usr/local/lib/berth", f)), f).toBe(true);
    for (const f of readdirSync(join(tree, "cni"))) {
      const st = lstatSync(join(root, "opt/cni/bin", f));
      expect(st.isFile()).toBe(true);
      expect(st.mode & 0o777).toBe(0o755);
    }
    const conf = JSON.parse(readFileSync(join(root, "etc/cni/net.d/10-berth.conflist"), "utf8"));
    expect(conf.plugins.map((p: { type: string }) => p.type)).toEqual([
      "berth-bridge",
      "berth-portmap",
      "berth-firewall",
      "berth-bandwidth",
    ]);
    expect(conf.plugins[0].ipam.type).toBe("berth-host-local");
    for (const u of ["berth.service", "berth-cni.socket", "berth-csi.socket"])
      expect(existsSync(join(root, "etc/systemd/system", u))).toBe(true);
    expect(existsSync(join(root, "etc/berth/berth.env"))).toBe(true);
    // The launchers carry the target's paths (not the root's) and this Node.
    const launcher = readFileSync(join(root, "opt/cni/bin/berth-bridge"));
    expect(launcher.includes(Buffer.from(`BERTH-INSTALL-PATHS-V1\0${NODE}\0/usr/local/lib/berth/cni-node\0`))).toBe(true);
    expect(readFileSync(join(root, "usr/local/lib/berth/bin/berth"), "utf8")).toContain(`NODE='${NODE}'`);
    // The manifest: every file written, with its SHA-256.
    const manifest = JSON.parse(readFileSync(join(root, "usr/local/lib/berth/manifest.json"), "utf8"));
    const listed = (manifest.files as { path: string; sha256: string }[]).map((f) => f.path.slice(1)).sort();
    expect([...listed, "usr/local/lib/berth/manifest.json"].sort()).toEqual(written.sort());
    for (const f of manifest.files) expect(sha(join(root, f.path))).toBe(f.sha256);

    const before = snapshot(root);
    const again = berth(["install", "--root", root]);
    expect(again.status).toBe(0);
    expect(again.stdout).toMatch(/ 0 written, \d+ unchanged/);
    expect(snapshot(root)).toEqual(before);
    const dryAgain = berth(["install", "--root", root, "--dry-run"]);
    expect(dryAgain.stdout.split("\n").filter((l) => l.startsWith("write"))).toEqual([]);
  });

  it("--root resolves links inside the root as the target would (an absolute link stays in the root)", () => {
    const root = freshDir("root");
    // An image whose /opt is an absolute link to /usr/opt, and whose /etc/cni is relative.
    const hostOpt = `/usr/opt-${testPrefix()}`;
    mkdirSync(join(root, "usr", "opt-target"), { recursive: true });
    sh("ln", ["-s", hostOpt, join(root, "opt")]);
    sh("ln", ["-s", "opt-target", join(root, hostOpt.slice(1))]);
    mkdirSync(join(root, "etc", "real-cni"), { recursive: true });
    sh("ln", ["-s", "real-cni", join(root, "etc", "cni")]);
    try {
      const r = berth(["install", "--root", root, "--no-systemd"]);
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
      expect(existsSync(hostOpt)).toBe(false);
      expect(readdirSync(join(root, "usr/opt-target/cni/bin"))).toContain("berth-bridge");
      expect(existsSync(join(root, "etc/real-cni/net.d/10-berth.conflist"))).toBe(true);
      expect(lstatSync(join(root, "opt")).isSymbolicLink()).toBe(true);
      const un = berth(["uninstall", "--root", root]);
      expect(un.status).toBe(0);
      expect(readdirSync(join(root, "usr/opt-target"))).toEqual([]);
    } finally {
      rmSync(hostOpt, { recursive: true, force: true });
    }
  });

  it("records the target's Node with --node", () => {
    const root = freshDir("root");
    const r = berth(["install", "--root", root, "--no-systemd", "--node", "/opt/node20/bin/node"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`berth install: note: /opt/node20/bin/node is not under ${root} yet`);
    const launcher = readFileSync(join(root, "opt/cni/bin/berth-bridge"));
    expect(launcher.includes(Buffer.from(`BERTH-INSTALL-PATHS-V1\0/opt/node20/bin/node\0/usr/local/lib/berth/cni-node\0`))).toBe(
      true,
    );
    expect(readFileSync(join(root, "usr/local/lib/berth/bin/berth"), "utf8")).toContain("NODE='/opt/node20/bin/node'");
    expect(JSON.parse(readFileSync(join(root, "usr/local/lib/berth/manifest.json"), "utf8")).node).toBe("/opt/node20/bin/node");
    // Explicit dirs under the root, so that even a broken check never writes to the host's.
    const dirs = ["--prefix", join(root, "p"), "--cni-bin-dir", join(root, "b"), "--network", "none", "--no-systemd"];
    const bad = berth(["install", ...dirs, "--node", join(root, "no-node")]);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toBe(`berth install: --node ${root}/no-node is not an executable file\n`);
  });

  it("--copy-node puts the running Node under the prefix for a host without one; the cold path runs that copy", () => {
    const base = freshDir("copy-node");
    const prefix = join(base, "prefix");
    const bin = join(base, "bin");
    const flags = ["--prefix", prefix, "--cni-bin-dir", bin, "--network", "none", "--no-systemd"];
    const r = berth(["install", ...flags, "--copy-node"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const copy = join(prefix, "bin", "node");
    // The Node the install ran (the release's bin/berth found it on PATH).
    const systemNode = realpathSync(run("/bin/sh", ["-c", "command -v node"]).stdout.trim());
    expect(sha(copy)).toBe(sha(systemNode));
    expect(statSync(copy).mode & 0o777).toBe(0o755);
    const launcher = readFileSync(join(bin, "berth-bridge"));
    expect(launcher.includes(Buffer.from(`BERTH-INSTALL-PATHS-V1\0${copy}\0${prefix}/cni-node\0`))).toBe(true);
    expect(readFileSync(join(prefix, "bin", "berth"), "utf8")).toContain(`NODE='${copy}'`);
    const manifest = JSON.parse(readFileSync(join(prefix, "manifest.json"), "utf8"));
    expect(manifest.node).toBe(copy);
    expect(manifest.files).toContainEqual({ path: copy, sha256: sha(copy), kind: "exec" });

    // Cold path with the system's Node hidden (a bind mount in a mount namespace of its own)
    // and none on PATH: only the copy can run the plugin.
    const hidden: Launch = (l) => [
      "/usr/bin/unshare",
      ["-m", "--propagation", "private", "/bin/sh", "-c", `/bin/mount --bind /dev/null ${systemNode} && exec "$0"`, l],
    ];
    bridgeRoundTrip(bin, { BERTH_CNI_SOCKET: "off" }, hidden);

    // Run again from the installed command line (its Node is the copy): the copy stays.
    const again = run(join(prefix, "bin", "berth"), ["install", ...flags]);
    expect(again.stderr).toBe("");
    expect(again.stdout).toMatch(/: 0 written, \d+ unchanged/);
    expect(sha(copy)).toBe(sha(systemNode));

    const both = berth(["install", ...flags, "--copy-node", "--node", systemNode]);
    expect(both.status).toBe(2);
    expect(both.stderr).toBe("berth install: --node and --copy-node exclude each other\n");

    const un = berth(["uninstall", "--prefix", prefix]);
    expect(un.status).toBe(0);
    expect(existsSync(prefix)).toBe(false);
    expect(existsSync(bin)).toBe(false);
  });

  it("writes the overlay chain, another subnet, or no network config", () => {
    const overlay = freshDir("root");
    expect(berth(["install", "--root", overlay, "--network", "overlay", "--no-systemd"]).status).toBe(0);
    const conf = JSON.parse(readFileSync(join(overlay, "etc/cni/net.d/10-berth.conflist"), "utf8"));
    expect(conf.plugins.map((p: { type: string }) => p.type)).toEqual(["berth-overlay", "berth-portmap", "berth-bandwidth"]);
    expect(existsSync(join(overlay, "etc/systemd"))).toBe(false);
    expect(existsSync(join(overlay, "etc/berth"))).toBe(false);

    const subnet = freshDir("root");
    expect(berth(["install", "--root", subnet, "--subnet", "172.30.0.0/16", "--no-systemd"]).status).toBe(0);
    const sconf = JSON.parse(readFileSync(join(subnet, "etc/cni/net.d/10-berth.conflist"), "utf8"));
    expect(sconf.plugins[0].ipam.ranges).toEqual([[{ subnet: "172.30.0.0/16" }]]);

    const none = freshDir("root");
    expect(berth(["install", "--root", none, "--network", "none", "--no-systemd"]).status).toBe(0);
    expect(existsSync(join(none, "etc"))).toBe(false);
    // Switching a bridge install to none takes its (unchanged) config away.
    expect(berth(["install", "--root", subnet, "--network", "none", "--no-systemd"]).status).toBe(0);
    expect(existsSync(join(subnet, "etc/cni/net.d/10-berth.conflist"))).toBe(false);
  });

  it("plugins work from the bin dir on both paths, read-only, next to other vendors' plugins", async () => {
    const base = freshDir("real");
    const bin = join(base, "bin");
    mkdirSync(bin);
    // Another vendor's plugins already in the bin dir.
    const vendor = ["loopback", "bridge", "host-local"].filter((f) => existsSync(join("/usr/lib/cni", f)));
    for (const f of vendor) copyFileSync(join("/usr/lib/cni", f), join(bin, f));
    writeFileSync(join(bin, "other-vendor"), "#!/bin/sh\necho other\n", { mode: 0o755 });
    const vendorBefore = new Map([...vendor, "other-vendor"].map((f) => [f, sha(join(bin, f))]));
    const prefix = join(base, "prefix");
    const r = berth(["install", "--prefix", prefix, "--cni-bin-dir", bin, "--network", "none", "--no-systemd"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    for (const [f, h] of vendorBefore) expect(sha(join(bin, f))).toBe(h);

    // Cold path, with nothing of the release's tree nearby: the unpacked tarball is moved away.
    const moved = `${tree}.moved`;
    sh("mv", [tree, moved]);
    try {
      bridgeRoundTrip(bin);
      // The cold path wrote its code caches beside the installed bundles.
      expect(
        readdirSync(join(prefix, "cni-node")).some((f) => f.startsWith("berth-bridge.cjs.ADD.") && f.endsWith(".v8cache")),
      ).toBe(true);

      // Fast path: the installed tree's own cni-server.
      const sock = join(base, "cni.sock");
      const server = await startServer(join(prefix, "bin", "berth"), sock);
      try {
        const cachesBefore = readdirSync(join(prefix, "cni-node"))
          .filter((f) => f.endsWith(".v8cache"))
          .sort();
        const version = run(join(bin, "berth-bridge"), [], {
          env: { CNI_COMMAND: "VERSION", BERTH_CNI_SOCKET: sock, PATH: "/nonexistent" },
          input: '{"cniVersion":"1.0.0"}',
        });
        expect(version.status).toBe(0);
        expect(JSON.parse(version.stdout).supportedVersions).toContain("1.1.0");
        bridgeRoundTrip(bin, { BERTH_CNI_SOCKET: sock });
        // Served by the server: no cold run made a cache for VERSION (or anything else).
        expect(
          readdirSync(join(prefix, "cni-node"))
            .filter((f) => f.endsWith(".v8cache"))
            .sort(),
        ).toEqual(cachesBefore);
      } finally {
        await server.stop();
      }

      // A read-only bin dir (a bind mount of it, remounted read-only).
      const ro = join(base, "ro-bin");
      mkdirSync(ro);
      sh("mount", ["--bind", bin, ro]);
      try {
        sh("mount", ["-o", "remount,ro,bind", ro]);
        expect(() => writeFileSync(join(ro, "x"), "")).toThrow(/EROFS/);
        bridgeRoundTrip(ro);
      } finally {
        sh("umount", [ro]);
      }
    } finally {
      sh("mv", [moved, tree]);
    }
    const un = berth(["uninstall", "--prefix", prefix]);
    expect(un.status).toBe(0);
    expect(readdirSync(bin).sort()).toEqual([...vendorBefore.keys()].sort());
    for (const [f, h] of vendorBefore) expect(sha(join(bin, f))).toBe(h);
    expect(existsSync(prefix)).toBe(false);
  });

  it("runs again from the installed prefix (another network, same files)", () => {
    const base = freshDir("again");
    const prefix = join(base, "prefix");
    const flags = ["--prefix", prefix, "--cni-bin-dir", join(base, "bin"), "--cni-conf-dir", join(base, "conf"), "--no-systemd"];
    expect(berth(["install", ...flags]).status).toBe(0);
    const bin = snapshot(join(base, "bin"));
    const r = run(join(prefix, "bin", "berth"), ["install", ...flags, "--network", "overlay"]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/: 1 written, \d+ unchanged/);
    expect(snapshot(join(base, "bin"))).toEqual(bin);
    const conf = JSON.parse(readFileSync(join(base, "conf", "10-berth.conflist"), "utf8"));
    expect(conf.plugins[0].type).toBe("berth-overlay");
  });

  it("the first plugin call through a socket a service manager holds starts the installed server and is served warm", async () => {
    const base = freshDir("activate");
    const prefix = join(base, "prefix");
    const bin = join(base, "bin");
    expect(berth(["install", "--prefix", prefix, "--cni-bin-dir", bin, "--network", "none", "--no-systemd"]).status).toBe(0);
    // As berth-cni.socket does: the socket is held before berth runs, and passed as "cni".
    const sock = join(base, "cni.sock");
    const manager = spawn(
      "systemd-socket-activate",
      ["-l", sock, "--fdname=cni", join(prefix, "bin", "berth"), "cni-server", "--socket", join(base, "unused.sock"), "--quiet"],
      { env: { PATH: CLEAN_PATH }, stdio: ["ignore", "ignore", "pipe"] },
    );
    const exited = new Promise<void>((done) => manager.once("exit", () => done()));
    try {
      for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      expect(existsSync(sock)).toBe(true);
      bridgeRoundTrip(bin, { BERTH_CNI_SOCKET: sock });
      // Served by the server the first call started: no cold run left a code cache.
      expect(readdirSync(join(prefix, "cni-node")).filter((f) => f.endsWith(".v8cache"))).toEqual([]);
      expect(existsSync(join(base, "unused.sock"))).toBe(false);
    } finally {
      manager.kill("SIGTERM");
      await exited;
    }
  });

  it("never replaces a file it did not write, unless --force", () => {
    const root = freshDir("root");
    mkdirSync(join(root, "etc/cni/net.d"), { recursive: true });
    writeFileSync(join(root, "etc/cni/net.d/10-berth.conflist"), '{"theirs":true}\n');
    const r = berth(["install", "--root", root]);
    expect(r.status).toBe(2);
    expect(r.stderr).toBe(
      `berth install: ${root}/etc/cni/net.d/10-berth.conflist exists and was not written by berth install (with --prefix /usr/local/lib/berth): use --force to replace it\n`,
    );
    expect([...snapshot(root).keys()].sort()).toEqual(["etc/", "etc/cni/", "etc/cni/net.d/", "etc/cni/net.d/10-berth.conflist"]);
    expect(readFileSync(join(root, "etc/cni/net.d/10-berth.conflist"), "utf8")).toBe('{"theirs":true}\n');
    const forced = berth(["install", "--root", root, "--force"]);
    expect(forced.status).toBe(0);
    expect(JSON.parse(readFileSync(join(root, "etc/cni/net.d/10-berth.conflist"), "utf8")).name).toBe("berth");
  });

  it("keeps a config an administrator edited, and uninstall refuses it without --force", () => {
    const root = freshDir("root");
    expect(berth(["install", "--root", root]).status).toBe(0);
    const conflist = join(root, "etc/cni/net.d/10-berth.conflist");
    const edited = readFileSync(conflist, "utf8").replace("10.86.0.0/16", "10.99.0.0/16");
    writeFileSync(conflist, edited);
    const editedStat = statSync(conflist);
    const again = berth(["install", "--root", root]);
    expect(again.status).toBe(0);
    expect(again.stdout).toContain(`berth install: kept ${conflist}: changed since berth installed it`);
    expect(readFileSync(conflist, "utf8")).toBe(edited);
    expect(statSync(conflist).ino).toBe(editedStat.ino);

    const before = snapshot(root);
    const refused = berth(["uninstall", "--root", root]);
    expect(refused.status).toBe(2);
    expect(refused.stderr).toBe(
      `berth uninstall: ${conflist} was changed since berth installed it: use --force to remove it anyway\n`,
    );
    expect(snapshot(root)).toEqual(before);
    const forced = berth(["uninstall", "--root", root, "--force"]);
    expect(forced.status).toBe(0);
    expect(existsSync(conflist)).toBe(false);
  });

  it("upgrades by rename: a reader of the old file keeps it whole; stale files go", () => {
    const root = freshDir("root");
    expect(berth(["install", "--root", root, "--no-systemd"]).status).toBe(0);
    const prefix = join(root, "usr/local/lib/berth");
    const twinsBefore = readdirSync(join(prefix, "cni-node")).filter(
      (f) => f.startsWith("berth-bridge.cjs.") && f.endsWith(".wrapped.js"),
    );
    expect(twinsBefore).toHaveLength(1);

    // The next release: a changed bridge bundle and launcher, one plugin fewer.
    const next = join(freshDir("next"), "tree");
    sh("cp", ["-a", tree, next]);
    appendFileSync(join(next, "cni-node/berth-bridge.cjs"), "\n// next release\n");
    appendFileSync(join(next, "cni/berth-bridge"), "next");
    rmSync(join(next, "cni/berth-static"));
    rmSync(join(next, "cni-node/berth-static.cjs"));
    const rel = JSON.parse(readFileSync(join(next, "RELEASE.json"), "utf8"));
    rel.files["cni-node/berth-bridge.cjs"] = sha(join(next, "cni-node/berth-bridge.cjs"));
    rel.files["cni/berth-bridge"] = sha(join(next, "cni/berth-bridge"));
    delete rel.files["cni/berth-static"];
    delete rel.files["cni-node/berth-static.cjs"];
    writeFileSync(join(next, "RELEASE.json"), JSON.stringify(rel));

    // Code caches the cold path wrote: the replaced bundle's go, the unchanged one's stay.
    writeFileSync(join(prefix, "cni-node/berth-bridge.cjs.ADD.1-2-3.v8cache"), "cache");
    writeFileSync(join(prefix, "cni-node/berth-host-local.cjs.ADD.1-2-3.v8cache"), "cache");
    const bridge = join(root, "opt/cni/bin/berth-bridge");
    const oldBytes = readFileSync(bridge);
    const oldIno = statSync(bridge).ino;
    const hostLocalBefore = statSync(join(root, "opt/cni/bin/berth-host-local"));
    const fd = openSync(bridge, "r"); // a plugin call in flight holds the old file
    try {
      const up = berth(["install", "--root", root, "--no-systemd"], { from: next });
      expect(up.stderr).toBe("");
      expect(up.status).toBe(0);
      const held = Buffer.alloc(oldBytes.length + 16);
      const n = readSync(fd, held, 0, held.length, 0);
      expect(held.subarray(0, n).equals(oldBytes)).toBe(true);
    } finally {
      closeSync(fd);
    }
    expect(statSync(bridge).ino).not.toBe(oldIno);
    expect(readFileSync(bridge).subarray(-4).toString()).toBe("next");
    const hostLocal = statSync(join(root, "opt/cni/bin/berth-host-local"));
    expect([hostLocal.ino, hostLocal.mtimeMs]).toEqual([hostLocalBefore.ino, hostLocalBefore.mtimeMs]);
    expect(existsSync(join(root, "opt/cni/bin/berth-static"))).toBe(false);
    expect(existsSync(join(prefix, "cni-node/berth-static.cjs"))).toBe(false);
    const twinsAfter = readdirSync(join(prefix, "cni-node")).filter(
      (f) => f.startsWith("berth-bridge.cjs.") && f.endsWith(".wrapped.js"),
    );
    expect(twinsAfter).toHaveLength(1);
    expect(twinsAfter[0]).not.toBe(twinsBefore[0]);
    expect(existsSync(join(prefix, "cni-node/berth-bridge.cjs.ADD.1-2-3.v8cache"))).toBe(false);
    expect(existsSync(join(prefix, "cni-node/berth-host-local.cjs.ADD.1-2-3.v8cache"))).toBe(true);
    // No temporary or backup file is left anywhere.
    expect([...snapshot(root).keys()].filter((f) => /\.berth-(old-)?\d+$/.test(f))).toEqual([]);
  });

  it("uninstall removes exactly what install wrote and keeps state unless --purge", () => {
    const root = freshDir("root");
    mkdirSync(join(root, "opt/cni/bin"), { recursive: true });
    writeFileSync(join(root, "opt/cni/bin/theirs"), "x", { mode: 0o755 });
    expect(berth(["install", "--root", root]).status).toBe(0);
    mkdirSync(join(root, "var/lib/berth/ipam"), { recursive: true });
    writeFileSync(join(root, "var/lib/berth/ipam/leases.db"), "state");
    const dry = berth(["uninstall", "--root", root, "--dry-run"]);
    expect(dry.status).toBe(0);
    const manifest = JSON.parse(readFileSync(join(root, "usr/local/lib/berth/manifest.json"), "utf8"));
    for (const f of manifest.files) expect(dry.stdout).toContain(`remove     ${root}${f.path}\n`);
    expect(existsSync(join(root, "usr/local/lib/berth/manifest.json"))).toBe(true);

    const un = berth(["uninstall", "--root", root]);
    expect(un.stderr).toBe("");
    expect(un.status).toBe(0);
    expect([...snapshot(root).keys()].sort()).toEqual(
      [
        "opt/",
        "opt/cni/",
        "opt/cni/bin/",
        "opt/cni/bin/theirs",
        "var/",
        "var/lib/",
        "var/lib/berth/",
        "var/lib/berth/ipam/",
        "var/lib/berth/ipam/leases.db",
      ].sort(),
    );
    const again = berth(["uninstall", "--root", root]);
    expect(again.status).toBe(0);
    expect(again.stdout).toMatch(/nothing installed/);
    // A volume still mounted under the state dir: --purge refuses rather than delete through it.
    const mounted = join(root, "var/lib/berth/csi/volumes/v1");
    mkdirSync(mounted, { recursive: true });
    sh("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mounted]);
    try {
      writeFileSync(join(mounted, "data"), "volume data");
      const refused = berth(["uninstall", "--root", root, "--purge"]);
      expect(refused.stderr).toBe(
        `berth uninstall: --purge: ${mounted} is mounted under ${root}/var/lib/berth: unmount the volumes first\n`,
      );
      expect(refused.status).toBe(2);
      expect(readFileSync(join(mounted, "data"), "utf8")).toBe("volume data");
    } finally {
      sh("umount", [mounted]);
    }
    // The state dir itself a mount point (a hostPath volume in Kubernetes' uninstall Job): its
    // contents go, the mount point stays.
    const state = join(root, "var/lib/berth");
    sh("mount", ["--bind", state, state]);
    try {
      const purgeMounted = berth(["uninstall", "--root", root, "--purge"]);
      expect(purgeMounted.stderr).toBe("");
      expect(purgeMounted.status).toBe(0);
      expect(readdirSync(state)).toEqual([]);
    } finally {
      sh("umount", [state]);
    }
    const purge = berth(["uninstall", "--root", root, "--purge"]);
    expect(purge.status).toBe(0);
    expect(existsSync(join(root, "var/lib/berth"))).toBe(false);
  });

  it("a failure part-way (disk full) undoes every write: nothing half-installed", () => {
    const base = freshDir("full");
    const bin = join(base, "bin");
    mkdirSync(bin);
    writeFileSync(join(bin, "theirs"), "x", { mode: 0o755 });
    const prefix = join(base, "prefix");
    mkdirSync(prefix);
    // Room for the launchers and a few bundles, not for the CLI bundle and the addons.
    sh("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", prefix]);
    try {
      const r = berth(["install", "--prefix", prefix, "--cni-bin-dir", bin, "--network", "none", "--no-systemd"]);
      expect(r.stderr).toBe("berth install: install failed, nothing changed: no space left on device\n");
      expect(r.status).toBe(1);
      expect(readdirSync(bin)).toEqual(["theirs"]);
      expect(readdirSync(prefix)).toEqual([]);
    } finally {
      sh("umount", [prefix]);
    }
  });

  it("bad input: one line, exit code 2, nothing written", () => {
    const root = freshDir("root");
    const file = join(root, "a-file");
    writeFileSync(file, "");
    const cases: [string[], string][] = [
      [["--bogus"], 'unknown flag "--bogus"'],
      [["--prefix", "relative/dir"], '--prefix must be an absolute path, got "relative/dir"'],
      [["--cni-bin-dir"], "--cni-bin-dir needs a value"],
      [["--network", "mesh"], '--network must be bridge, overlay or none, got "mesh"'],
      [["--subnet", "10.0.0.1/8"], "--subnet 10.0.0.1/8 has host bits set"],
      [["--subnet", "nonsense"], "--subnet must be a CIDR"],
      // host-local refuses these two at the first ADD: install refuses them up front.
      [["--subnet", "fd00::1/64"], "--subnet fd00::1/64 has host bits set"],
      [["--subnet", "10.0.0.0/08"], "--subnet must be a CIDR"],
      [["--network", "overlay", "--subnet", "10.0.0.0/8"], "--subnet applies to --network bridge"],
      [["--no-systemd", "--systemd-dir", "/x"], "--systemd-dir and --no-systemd exclude each other"],
      [["--cni-bin-dir", "/a-file"], "--cni-bin-dir /a-file is not a directory"],
      [["--cni-bin-dir", "/a-file/sub"], "--cni-bin-dir /a-file/sub is not a directory"],
    ];
    for (const [args, message] of cases) {
      const r = berth(["install", "--root", root, ...args]);
      expect(r.status, args.join(" ")).toBe(2);
      expect(r.stderr.split("\n")).toHaveLength(2);
      expect(r.stderr).toContain(message);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(readdirSync(root)).toEqual(["a-file"]);
    }
    const noRoot = berth(["install", "--root", join(root, "missing")]);
    expect(noRoot.status).toBe(2);
    expect(noRoot.stderr).toMatch(/^berth install: --root .*missing: /);
    const un = berth(["uninstall", "--root", root, "--network", "bridge"]);
    expect(un.status).toBe(2);
    expect(un.stderr).toMatch(/^berth uninstall: unknown flag "--network"/);

    // A release built for another Node ABI (better-sqlite3's addon would not load).
    const other = join(freshDir("abi"), "tree");
    sh("cp", ["-a", tree, other]);
    const rel = JSON.parse(readFileSync(join(other, "RELEASE.json"), "utf8"));
    writeFileSync(join(other, "RELEASE.json"), JSON.stringify({ ...rel, nodeMajor: 99, nodeModules: "999" }));
    const abi = berth(["install", "--root", root], { from: other });
    expect(abi.status).toBe(2);
    expect(abi.stderr).toMatch(
      /^berth install: this release's addons are built for Node 99\.x \(ABI 999\); .* is Node 20\.\d+\.\d+ \(ABI \d+\): install with a Node 99\.x \(--node\)\n$/,
    );
    expect(readdirSync(root)).toEqual(["a-file"]);

    // No permission: an unprivileged user installing into a root-owned directory.
    const owned = freshDir("owned");
    chmodSync(owned, 0o755);
    chmodSync(work, 0o755);
    const asNobody = run("setpriv", [
      "--reuid=65534",
      "--regid=65534",
      "--clear-groups",
      NODE,
      join(tree, "lib", "berth.cjs"),
      "install",
      "--root",
      owned,
    ]);
    expect(asNobody.status).toBe(2);
    expect(asNobody.stderr).toMatch(new RegExp(`^berth install: cannot write to ${owned}: permission denied\\n$`));
    expect(readdirSync(owned)).toEqual([]);
  });

  it("writes units that systemd-analyze verify accepts", () => {
    const base = freshDir("units");
    const prefix = join(base, "prefix");
    // The release at a real path (ExecStart must exist), the units into a root.
    expect(
      berth(["install", "--prefix", prefix, "--cni-bin-dir", join(base, "bin"), "--network", "none", "--no-systemd"]).status,
    ).toBe(0);
    const root = join(base, "root");
    mkdirSync(root);
    expect(berth(["install", "--root", root, "--prefix", prefix, "--network", "none"]).status).toBe(0);
    const units = join(root, "etc/systemd/system");
    const service = readFileSync(join(units, "berth.service"), "utf8");
    expect(service).toContain(`ExecStart=${prefix}/bin/berth $BERTH_COMMAND $BERTH_ARGS`);
    expect(service).toContain("EnvironmentFile=-/etc/berth/berth.env");
    const cni = readFileSync(join(units, "berth-cni.socket"), "utf8");
    expect(cni).toMatch(/^ListenStream=\/run\/berth\/cni\.sock$/m);
    expect(cni).toMatch(/^SocketMode=0600$/m);
    expect(cni).toMatch(/^FileDescriptorName=cni$/m);
    expect(readFileSync(join(units, "berth-csi.socket"), "utf8")).toMatch(/^FileDescriptorName=csi$/m);
    const files = ["berth.service", "berth-cni.socket", "berth-csi.socket"].map((u) => join(units, u));
    const verify = run("systemd-analyze", ["verify", ...files]);
    expect(verify.stderr).toBe("");
    expect(verify.status).toBe(0);
    // The check is real: a unit whose ExecStart is missing fails it.
    const broken = join(base, "broken");
    mkdirSync(broken);
    for (const f of files) copyFileSync(f, join(broken, f.split("/").pop()!));
    writeFileSync(join(broken, "berth.service"), service.replace(`${prefix}/bin/berth`, `${prefix}/bin/missing`));
    const bad = run("systemd-analyze", ["verify", ...files.map((f) => join(broken, f.split("/").pop()!))]);
    expect(bad.status).not.toBe(0);
  });

  it("from a checkout installs what npm run release packs", () => {
    const root = freshDir("root");
    const r = run(NODE, [join(REPO, "bin", "berth"), "install", "--root", root, "--no-systemd"], { cwd: REPO });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const fromCheckout = JSON.parse(readFileSync(join(root, "usr/local/lib/berth/RELEASE.json"), "utf8"));
    const fromTarball = JSON.parse(readFileSync(join(tree, "RELEASE.json"), "utf8"));
    // The same files; the same bytes but for bundles (a shared checkout's sources may have moved on since beforeAll).
    expect(Object.keys(fromCheckout.files)).toEqual(Object.keys(fromTarball.files));
    for (const [f, hash] of Object.entries(fromTarball.files))
      if (!f.endsWith(".cjs")) expect(fromCheckout.files[f], f).toBe(hash);
    for (const f of readdirSync(join(root, "opt/cni/bin"))) expect(existsSync(join(tree, "cni", f))).toBe(true);
  });
});

/** Starts `berth cni-server` from an installed tree and waits for its "listening" line. */
async function startServer(berthBin: string, socket: string): Promise<{ stop(): Promise<void> }> {
  const child = spawn(berthBin, ["cni-server", "--socket", socket, "--quiet"], {
    env: { PATH: CLEAN_PATH },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<void>((done) => child.once("exit", () => done()));
  await new Promise<void>((ready, fail) => {
    let out = "";
    const timer = setTimeout(() => fail(new Error("cni-server did not start")), 20_000);
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("listening")) {
        clearTimeout(timer);
        ready();
      }
    });
    child.once("exit", (code) => fail(new Error(`cni-server exited with ${code}`)));
  });
  return {
    async stop() {
      child.kill("SIGTERM");
      await exited;
    },
  };
}
