// Malformed configurations and environments against the built berth-bridge executable (with
// berth-host-local IPAM), one row each. Every row must end with: a non-zero exit; stdout that
// is exactly one JSON error object with the expected code and a message naming the offending
// key or variable; no stack trace anywhere; and nothing left behind — no link, no change in
// any netns, no lease, no file where a path traversal would have put it.
import { existsSync, readdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ipJson } from "../../testing/kernel.ts";
import { type CniOutcome, describeOutcome } from "../lib/plugin-exec.ts";
import { BUILT, World } from "./world.ts";

type Conf = Record<string, unknown>;

interface Row {
  name: string;
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

describe.skipIf(!BUILT)("bad input to the berth-bridge executable", () => {
  const world = new World("bad");
  let ns: { name: string; path: string };
  let good: Conf;

  beforeAll(async () => {
    ns = world.sandbox.createNetns("b");
    good = world.config(50);
    // The good config really works: a bad row fails because of what it changed, nothing else.
    const ok = await world.run("ADD", { containerId: `${world.prefix}-good`, netns: ns.path }, good);
    expect(ok.exitCode, describeOutcome(ok)).toBe(0);
    const del = await world.run("DEL", { containerId: `${world.prefix}-good`, netns: ns.path }, good);
    expect(del.exitCode, describeOutcome(del)).toBe(0);
    expect(world.leases()).toEqual([]);
  });
  afterAll(() => world.cleanup());

  for (const row of rows) {
    (row.gap ? it.fails : it)(row.gap ? `${row.name} (known gap: ${row.gap})` : row.name, async () => {
      const before = snapshot(world, ns.name);
      const env = row.env?.(world, ns.path) ?? {};
      const who = { containerId: `${world.prefix}-bad`, netns: ns.path };
      const o = await world.run("ADD", who, row.stdin(good, world), env);
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
});
