// Malformed configurations and environments against the built berth-bridge executable (with
// berth-host-local IPAM), one row each, on both paths: cold (a Node process per call) and fast
// (the launcher handing the call to a `berth cni-server`). Every row must end with: a non-zero exit; stdout that
// is exactly one JSON error object with the expected code and a message naming the offending
// key or variable; no stack trace anywhere; and nothing left behind — no link, no change in
// any netns, no lease, no file where a path traversal would have put it.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ipJson, testPrefix } from "../../testing/kernel.ts";
import { type CniOutcome, describeOutcome } from "../../testing/plugin-exec.ts";
import { ServerProcess } from "../fastpath/server-process.ts";
import { BUILT, World } from "./world.ts";

type Conf = Record<string, unknown>;

interface Row {
  name: string;
  /** CNI_COMMAND (default ADD). */
  command?: "ADD" | "DEL" | "CHECK" | "GC" | "STATUS";
  /** The config sent on stdin: built from the good one, or raw text. */
  stdin: (good: Conf, w: World) => Conf | string;
  /** CNI_* overrides; undefined removes a variable. */
  env?: (w: World, netnsPath: string) => Record<string, string | undefined>;
  code: number;
  /** The message must match: it names the key, value or variable at fault. */
  msg: RegExp;
  /** Paths that must not exist afterwards (where a traversal would have written). */
  mustNotExist?: (w: World) => string[];
  /** A known gap in berth: the row is expected to fail until it is fixed (then drop this). */
  gap?: string;
}

const ipam = (good: Conf) => good.ipam as Conf;
const withIpam = (good: Conf, over: Conf): Conf => ({ ...good, ipam: { ...ipam(good), ...over } });
const ranges = (w: World, ...sets: Conf[][]) => ({ ranges: sets.length ? sets : [[{ subnet: w.subnet }]] });

const rows: Row[] = [
  // Decoding
  { name: "truncated JSON", stdin: () => '{"cniVersion": "1.1.0", "name": ', code: 6, msg: /JSON|decode/i },
  { name: "empty stdin", stdin: () => "", code: 6, msg: /no network configuration/ },
  { name: "a JSON array instead of an object", stdin: () => "[1, 2]", code: 6, msg: /object/ },
  { name: "2 MiB of stdin", stdin: (g) => ({ ...g, pad: "x".repeat(2 * 1024 * 1024) }), code: 5, msg: /larger than \d+ bytes/ },
  // Versions
  { name: "unknown cniVersion", stdin: (g) => ({ ...g, cniVersion: "9.9.9" }), code: 1, msg: /9\.9\.9/ },
  {
    name: "cniVersion of the wrong type",
    stdin: (g) => ({ ...g, cniVersion: 1.1 }),
    code: 7,
    msg: /"cniVersion" must be a string/,
  },
  // Wrong types
  { name: "name is a number", stdin: (g) => ({ ...g, name: 42 }), code: 7, msg: /"name"/ },
  { name: "isGateway is a string", stdin: (g) => ({ ...g, isGateway: "yes" }), code: 7, msg: /isGateway/ },
  { name: "mtu is a string", stdin: (g) => ({ ...g, mtu: "1500" }), code: 7, msg: /mtu/ },
  { name: "mtu out of range", stdin: (g) => ({ ...g, mtu: 10 }), code: 7, msg: /mtu/ },
  { name: "bridge name too long", stdin: (g) => ({ ...g, bridge: "averyveryverylongbridge" }), code: 7, msg: /"bridge"/ },
  { name: "nftTable with nft syntax in it", stdin: (g) => ({ ...g, nftTable: "t; flush ruleset" }), code: 7, msg: /nftTable/ },
  {
    name: "hairpinMode with promiscMode",
    stdin: (g) => ({ ...g, hairpinMode: true, promiscMode: true }),
    code: 2,
    msg: /hairpinMode.*promiscMode|promiscMode.*hairpinMode/,
  },
  { name: "ipam is a string", stdin: (g) => ({ ...g, ipam: "host-local" }), code: 7, msg: /ipam/ },
  { name: "ipam.ranges is a string", stdin: (g) => withIpam(g, { ranges: "10.0.0.0/24" }), code: 7, msg: /ipam\.ranges/ },
  // Addresses
  { name: "invalid subnet CIDR", stdin: (g) => withIpam(g, { ranges: [[{ subnet: "10.1.2.300/24" }]] }), code: 7, msg: /subnet/ },
  {
    name: "subnet prefix too long",
    stdin: (g) => withIpam(g, { ranges: [[{ subnet: "10.1.2.0/33" }]] }),
    code: 7,
    msg: /subnet/,
  },
  {
    name: "overlapping range sets",
    stdin: (g, w) => withIpam(g, ranges(w, [{ subnet: w.subnet }], [{ subnet: `${w.base}.128/25` }])),
    code: 7,
    msg: /overlap/,
  },
  {
    name: "rangeStart outside its subnet",
    stdin: (g, w) => withIpam(g, ranges(w, [{ subnet: w.subnet, rangeStart: "192.0.2.10" }])),
    code: 7,
    msg: /rangeStart/,
  },
  {
    name: "rangeEnd before rangeStart",
    stdin: (g, w) => withIpam(g, ranges(w, [{ subnet: w.subnet, rangeStart: `${w.base}.50`, rangeEnd: `${w.base}.20` }])),
    code: 7,
    msg: /rangeEnd|rangeStart/,
  },
  {
    name: "gateway outside its subnet",
    stdin: (g, w) => withIpam(g, ranges(w, [{ subnet: w.subnet, gateway: "192.0.2.1" }])),
    code: 7,
    msg: /gateway/,
  },
  { name: "CNI_ARGS IP not an address", stdin: (g) => g, env: () => ({ CNI_ARGS: "IP=10.0.0.999" }), code: 7, msg: /IP/ },
  { name: "CNI_ARGS MAC not a MAC", stdin: (g) => g, env: () => ({ CNI_ARGS: "MAC=zz:zz" }), code: 7, msg: /MAC/ },
  { name: "CNI_ARGS unknown key", stdin: (g) => g, env: () => ({ CNI_ARGS: "FROB=1" }), code: 2, msg: /FROB/ },
  // Path traversal
  {
    name: "container id with ../",
    stdin: (g) => g,
    env: (w) => ({ CNI_CONTAINERID: `../../${w.prefix}-escape` }),
    code: 4,
    msg: /CNI_CONTAINERID/,
  },
  { name: "ifname with ../", stdin: (g) => g, env: () => ({ CNI_IFNAME: "../eth0" }), code: 4, msg: /CNI_IFNAME/ },
  { name: "ifname too long", stdin: (g) => g, env: () => ({ CNI_IFNAME: "eth0123456789abc" }), code: 4, msg: /CNI_IFNAME/ },
  {
    name: "relative dataDir",
    stdin: (g, w) => withIpam(g, { dataDir: `../../${w.prefix}-escape` }),
    code: 7,
    msg: /ipam\.dataDir/,
    mustNotExist: (w) => [resolve(`../../${w.prefix}-escape`), resolve("/", `${w.prefix}-escape`)],
  },
  {
    // Resolves inside the temp dir, so a regression (an accepted ADD) harms nothing.
    name: "absolute dataDir with a .. segment",
    stdin: (g, w) => withIpam(g, { dataDir: `${w.dataDir}/sub/../${w.prefix}-escape` }),
    code: 7,
    msg: /ipam\.dataDir/,
    mustNotExist: (w) => [resolve(w.dataDir, `${w.prefix}-escape`)],
  },
  {
    name: "ipam.type with a path",
    stdin: (g) => withIpam(g, { type: "../../bin/sh" }),
    code: 7,
    msg: /plugin type "\.\.\/\.\.\/bin\/sh" must be a plain file name/,
  },
  // Environment
  { name: "CNI_COMMAND missing", stdin: (g) => g, env: () => ({ CNI_COMMAND: undefined }), code: 4, msg: /CNI_COMMAND/ },
  { name: "CNI_COMMAND unknown", stdin: (g) => g, env: () => ({ CNI_COMMAND: "FROB" }), code: 4, msg: /CNI_COMMAND/ },
  {
    name: "CNI_CONTAINERID missing",
    stdin: (g) => g,
    env: () => ({ CNI_CONTAINERID: undefined }),
    code: 4,
    msg: /CNI_CONTAINERID/,
  },
  { name: "CNI_NETNS missing", stdin: (g) => g, env: () => ({ CNI_NETNS: undefined }), code: 4, msg: /CNI_NETNS/ },
  { name: "CNI_IFNAME missing", stdin: (g) => g, env: () => ({ CNI_IFNAME: undefined }), code: 4, msg: /CNI_IFNAME/ },
  { name: "CNI_PATH missing", stdin: (g) => g, env: () => ({ CNI_PATH: undefined }), code: 4, msg: /CNI_PATH/ },
  {
    name: "CNI_NETNS that does not exist",
    stdin: (g) => g,
    env: (_w, p) => ({ CNI_NETNS: `${p}-nonexistent` }),
    code: 4,
    msg: /CNI_NETNS/,
  },
  {
    name: "CNI_NETNS that is not a netns",
    stdin: (g) => g,
    env: () => ({ CNI_NETNS: "/etc/hostname" }),
    code: 4,
    msg: /CNI_NETNS/,
  },
  {
    name: "CNI_NETNS is the plugin's own netns",
    stdin: (g) => g,
    env: () => ({ CNI_NETNS: "/proc/self/ns/net" }),
    code: 8,
    msg: /CNI_NETNS/,
  },
  // Hostile CNI_* values
  {
    name: "container id with a newline",
    stdin: (g) => g,
    env: (w) => ({ CNI_CONTAINERID: `${w.prefix}-a\nb` }),
    code: 4,
    msg: /CNI_CONTAINERID/,
  },
  { name: "ifname with a newline", stdin: (g) => g, env: () => ({ CNI_IFNAME: "eth\n0" }), code: 4, msg: /CNI_IFNAME/ },
  { name: "ifname with a space", stdin: (g) => g, env: () => ({ CNI_IFNAME: "eth 0" }), code: 4, msg: /CNI_IFNAME/ },
  { name: "ifname with a colon", stdin: (g) => g, env: () => ({ CNI_IFNAME: "eth0:1" }), code: 4, msg: /CNI_IFNAME/ },
  { name: "ifname '.'", stdin: (g) => g, env: () => ({ CNI_IFNAME: "." }), code: 4, msg: /CNI_IFNAME/ },
  { name: "ifname '..'", stdin: (g) => g, env: () => ({ CNI_IFNAME: ".." }), code: 4, msg: /CNI_IFNAME/ },
  { name: "ifname of 4000 bytes", stdin: (g) => g, env: () => ({ CNI_IFNAME: "e".repeat(4000) }), code: 4, msg: /CNI_IFNAME/ },
  { name: "CNI_NETNS that is a directory", stdin: (g) => g, env: () => ({ CNI_NETNS: "/run/netns" }), code: 4, msg: /CNI_NETNS/ },
  {
    name: "CNI_NETNS that is a mount namespace",
    stdin: (g) => g,
    env: () => ({ CNI_NETNS: "/proc/self/ns/mnt" }),
    code: 4,
    msg: /CNI_NETNS/,
  },
  {
    // The test runner lives in the host's netns, as the plugin (or the fast-path server) does.
    name: "CNI_NETNS that is the host's netns (another process's path to it)",
    stdin: (g) => g,
    env: () => ({ CNI_NETNS: `/proc/${process.pid}/ns/net` }),
    code: 8,
    msg: /CNI_NETNS/,
  },
  {
    name: "CNI_NETNS that reaches the host's netns through ..",
    stdin: (g) => g,
    env: () => ({ CNI_NETNS: `/run/netns/../../proc/${process.pid}/ns/net` }),
    code: 4,
    msg: /CNI_NETNS/,
  },
  { name: "CNI_NETNS relative", stdin: (g) => g, env: (_w, p) => ({ CNI_NETNS: p.slice(1) }), code: 4, msg: /CNI_NETNS/ },
  // More wrong types
  { name: "cniVersions is a string", stdin: (g) => ({ ...g, cniVersions: "1.1.0" }), code: 7, msg: /cniVersions/ },
  { name: "ipMasq is a string", stdin: (g) => ({ ...g, ipMasq: "true" }), code: 7, msg: /ipMasq/ },
  { name: "dns is a string", stdin: (g) => ({ ...g, dns: "8.8.8.8" }), code: 7, msg: /dns/ },
  { name: "runtimeConfig is an array", stdin: (g) => ({ ...g, runtimeConfig: [] }), code: 7, msg: /runtimeConfig/ },
  { name: "args is a string", stdin: (g) => ({ ...g, args: "x" }), code: 7, msg: /args/ },
  { name: "logFile is a number", stdin: (g) => ({ ...g, logFile: 5 }), code: 7, msg: /logFile/ },
  { name: "hairpinMode is a number", stdin: (g) => ({ ...g, hairpinMode: 1 }), code: 7, msg: /hairpinMode/ },
  { name: "vlan is a string", stdin: (g) => ({ ...g, vlan: "10" }), code: 7, msg: /vlan/ },
  { name: "vlan out of range", stdin: (g) => ({ ...g, vlan: 5000 }), code: 7, msg: /vlan/ },
  { name: "isDefaultGateway is a string", stdin: (g) => ({ ...g, isDefaultGateway: "yes" }), code: 7, msg: /isDefaultGateway/ },
  { name: "macspoofchk is a number", stdin: (g) => ({ ...g, macspoofchk: 1 }), code: 7, msg: /macspoofchk/ },
  {
    name: "runtimeConfig.ips is a string",
    stdin: (g) => ({ ...g, runtimeConfig: { ips: "10.0.0.1" } }),
    code: 7,
    msg: /runtimeConfig\.ips/,
  },
  {
    name: "runtimeConfig.mac is a number",
    stdin: (g) => ({ ...g, runtimeConfig: { mac: 5 } }),
    code: 7,
    msg: /runtimeConfig\.mac/,
  },
  { name: "a prevResult on ADD that is a string", stdin: (g) => ({ ...g, prevResult: "x" }), code: 6, msg: /prevResult/ },
  { name: "ipam.dataDir is a number", stdin: (g) => withIpam(g, { dataDir: 5 }), code: 7, msg: /ipam\.dataDir/ },
  {
    name: "ipam.ranges entry is not an array",
    stdin: (g, w) => withIpam(g, { ranges: [{ subnet: w.subnet }] }),
    code: 7,
    msg: /ipam\.ranges/,
  },
  { name: "ipam subnet is a number", stdin: (g) => withIpam(g, { ranges: [[{ subnet: 5 }]] }), code: 7, msg: /subnet/ },
  { name: "ipam.routes is a string", stdin: (g) => withIpam(g, { routes: "0.0.0.0/0" }), code: 7, msg: /routes/ },
  { name: "ipam route dst not a CIDR", stdin: (g) => withIpam(g, { routes: [{ dst: "x" }] }), code: 7, msg: /dst/ },
  // Bad CIDRs and ranges
  {
    name: "rangeStart not an address",
    stdin: (g, w) => withIpam(g, ranges(w, [{ subnet: w.subnet, rangeStart: "ten" }])),
    code: 7,
    msg: /rangeStart/,
  },
  {
    name: "subnet /32 (no usable address)",
    stdin: (g, w) => withIpam(g, ranges(w, [{ subnet: `${w.base}.7/32` }])),
    code: 7,
    msg: /subnet/,
  },
  {
    name: "subnet with a mixed family gateway",
    stdin: (g, w) => withIpam(g, ranges(w, [{ subnet: w.subnet, gateway: "fd00::1" }])),
    code: 7,
    msg: /gateway/,
  },
  { name: "no ranges at all", stdin: (g) => withIpam(g, { ranges: [] }), code: 7, msg: /ranges/ },
  // Other commands
  {
    name: "DEL with a container id with ../",
    command: "DEL",
    stdin: (g) => g,
    env: (w) => ({ CNI_CONTAINERID: `../${w.prefix}` }),
    code: 4,
    msg: /CNI_CONTAINERID/,
  },
  {
    name: "DEL with an ifname with /",
    command: "DEL",
    stdin: (g) => g,
    env: () => ({ CNI_IFNAME: "a/b" }),
    code: 4,
    msg: /CNI_IFNAME/,
  },
  { name: "DEL with a config that is not JSON", command: "DEL", stdin: () => "{", code: 6, msg: /JSON/ },
  { name: "CHECK without prevResult", command: "CHECK", stdin: (g) => g, code: 7, msg: /prevResult/ },
  {
    name: "CHECK with a prevResult address that is no CIDR",
    command: "CHECK",
    stdin: (g) => ({ ...g, prevResult: { ips: [{ address: "bad" }] } }),
    code: 6,
    msg: /prevResult/,
  },
  {
    name: "GC with valid-attachments a string",
    command: "GC",
    stdin: (g) => ({ ...g, "cni.dev/valid-attachments": "all" }),
    code: 7,
    msg: /valid-attachments/,
  },
  {
    name: "GC with an attachment of the wrong shape",
    command: "GC",
    stdin: (g) => ({ ...g, "cni.dev/valid-attachments": [{ containerID: 5 }] }),
    code: 7,
    msg: /valid-attachments/,
  },
  {
    name: "STATUS with ipam.ranges a string",
    command: "STATUS",
    stdin: (g) => withIpam(g, { ranges: "x" }),
    code: 7,
    msg: /ranges/,
  },
  // Hostile CNI_ARGS
  {
    name: "CNI_ARGS a key without =",
    stdin: (g) => g,
    env: () => ({ CNI_ARGS: "IgnoreUnknown=1;JUSTAKEY" }),
    code: 4,
    msg: /CNI_ARGS/,
  },
  { name: "CNI_ARGS IP twice, one bad", stdin: (g) => g, env: () => ({ CNI_ARGS: "IP=10.0.0.1,nope" }), code: 7, msg: /IP/ },
  // Files named by the config that never end or never open
  { name: "resolvConf /dev/zero", stdin: (g) => withIpam(g, { resolvConf: "/dev/zero" }), code: 5, msg: /resolvConf/ },
  {
    name: "resolvConf a FIFO with no writer",
    stdin: (g, w) => withIpam(g, { resolvConf: join(w.dataDir, "fifo") }),
    code: 5,
    msg: /resolvConf/,
  },
  { name: "resolvConf a directory", stdin: (g) => withIpam(g, { resolvConf: "/etc" }), code: 5, msg: /resolvConf/ },
  {
    name: "logFile a FIFO with no reader (the error must still be answered)",
    stdin: (g, w) => ({ ...g, mtu: "x", logFile: join(w.dataDir, "fifo") }),
    code: 7,
    msg: /mtu/,
  },
  { name: "logFile /dev/full", stdin: (g) => ({ ...g, mtu: "x", logFile: "/dev/full" }), code: 7, msg: /mtu/ },
  // Hostile dataDirs
  {
    name: "dataDir under /proc",
    stdin: (g, w) => withIpam(g, { dataDir: `/proc/${w.prefix}-ipam` }),
    code: 5,
    msg: /lease database/,
  },
  { name: "dataDir that is a file", stdin: (g) => withIpam(g, { dataDir: "/etc/hostname" }), code: 5, msg: /lease database/ },
  {
    name: "dataDir of 5000 bytes",
    stdin: (g, w) => withIpam(g, { dataDir: `${w.dataDir}/${"d".repeat(5000)}` }),
    code: 5,
    msg: /lease database/,
  },
  {
    name: "dataDir with a NUL",
    stdin: (g, w) => withIpam(g, { dataDir: `${w.dataDir}/a\u0000b` }),
    code: 7,
    msg: /ipam\.dataDir/,
  },
];

/** Everything a bad invocation could have touched, as names; compared before and after each row. */
function snapshot(w: World, netnsName: string): string[] {
  const mine = (n: string) => n.includes(w.prefix) || n.startsWith("bv");
  const links = ipJson<{ ifname: string }>(["link", "show"]).map((l) => `link ${l.ifname}`);
  const inNetns = ipJson<{ ifname: string; flags: string[] }>(["link", "show"], netnsName).map(
    (l) => `netns-link ${l.ifname} ${l.flags.join(",")}`,
  );
  const netns = readdirSync("/run/netns").map((n) => `netns ${n}`);
  const files = ["/", "/etc", "/tmp", dirname(w.dataDir), "/var/lib"].flatMap((d) =>
    existsSync(d) ? readdirSync(d).map((f) => `file ${d}/${f}`) : [],
  );
  const data = readdirSync(w.dataDir).map((f) => `data ${f}`);
  return [...links, ...netns, ...files].filter(mine).concat(inNetns, data).sort();
}

function expectCleanError(o: CniOutcome, row: Row): void {
  expect(o.exitCode, describeOutcome(o)).not.toBe(0);
  // Exactly one JSON value on stdout, an object, nothing before or after it.
  const text = o.stdout.trim();
  expect(text.split("\n")).toHaveLength(1);
  const err = JSON.parse(text) as { cniVersion?: unknown; code?: unknown; msg?: unknown };
  expect(typeof err).toBe("object");
  expect(err.code, describeOutcome(o)).toBe(row.code);
  expect(typeof err.msg).toBe("string");
  expect(err.msg).toMatch(row.msg);
  expect(typeof err.cniVersion).toBe("string");
  for (const stream of [o.stdout, o.stderr]) {
    expect(stream).not.toMatch(/\n\s+at .+[:(]/); // a stack frame
    expect(stream).not.toMatch(/internal error/);
  }
}

for (const path of ["cold", "fast"] as const) {
  describe.skipIf(!BUILT)(`bad input to the berth-bridge executable, ${path} path`, () => {
    const world = new World(`bad${path[0]}`);
    const sockDir = mkdtempSync(`/tmp/${testPrefix()}-`);
    let server: ServerProcess | undefined;
    let ns: { name: string; path: string };
    let good: Conf;

    beforeAll(async () => {
      if (path === "fast") {
        server = await ServerProcess.start(join(sockDir, "cni.sock"));
        world.socket = server.socketPath;
      }
      ns = world.sandbox.createNetns("b");
      execFileSync("mkfifo", [join(world.dataDir, "fifo")]);
      good = world.config(50);
      // The good config really works: a bad row fails because of what it changed, nothing else.
      const ok = await world.run("ADD", { containerId: `${world.prefix}-good`, netns: ns.path }, good);
      expect(ok.exitCode, describeOutcome(ok)).toBe(0);
      const del = await world.run("DEL", { containerId: `${world.prefix}-good`, netns: ns.path }, good);
      expect(del.exitCode, describeOutcome(del)).toBe(0);
      expect(world.leases()).toEqual([]);
    });
    afterAll(async () => {
      await server?.kill();
      await world.cleanup();
      rmSync(sockDir, { recursive: true, force: true });
    });

    for (const row of rows) {
      (row.gap ? it.fails : it)(row.gap ? `${row.name} (known gap: ${row.gap})` : row.name, async () => {
        const before = snapshot(world, ns.name);
        const env = row.env?.(world, ns.path) ?? {};
        const who = { containerId: `${world.prefix}-bad`, netns: ns.path };
        const o = await world.run(row.command ?? "ADD", who, row.stdin(good, world), env);
        try {
          expectCleanError(o, row);
          expect(snapshot(world, ns.name)).toEqual(before);
          expect(world.leases()).toEqual([]);
          for (const p of row.mustNotExist?.(world) ?? []) expect(existsSync(p), p).toBe(false);
        } finally {
          // An ADD that wrongly succeeded must not spoil the rows after it.
          if (o.exitCode === 0) await world.run("DEL", who, row.stdin(good, world), env);
        }
      });
    }

    if (path === "fast") {
      it("the server logged no stack trace and still serves", async () => {
        expect(server!.log.join("")).not.toMatch(/\n\s+at .+[:(]/);
        expect(server!.running).toBe(true);
      });
    }
  });
}
