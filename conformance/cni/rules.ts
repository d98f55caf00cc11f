// The CNI conformance rules, grouped by what they exercise. Every rule names its SPEC.md
// (containernetworking/cni, spec 1.1.0) section; its level is the spec's own word for it
// (MUST / SHOULD / MAY per RFC 2119). Rules observe only what a runtime can: exit codes,
// stdout, and the kernel state read back through iproute2.

import { sh } from "../../testing/kernel.ts";
import { asCniError, type CniOutcome, describeOutcome } from "../../testing/plugin-exec.ts";
import { linkNames } from "../../testing/sandbox.ts";
import { ALL_VERSIONS, addressOf, attachmentView, resultShapeProblems, versionAtLeast } from "../lib/cni-result.ts";
import {
  type Attachment,
  attachmentHostLinks,
  type ChainPlugin,
  expect,
  fail,
  hostLinkSet,
  kernelProblems,
  type Network,
  newHostLinks,
  type RuleGroup,
  RuleSkip,
  type RuleSpec,
  readInterface,
  type SuiteContext,
} from "./harness.ts";

function rule(id: string, level: RuleSpec["level"], description: string): RuleSpec {
  return { id, level, description };
}

/** Non-zero exit, the MUST part of every failure (SPEC §2 "Errors"). */
function expectRefused(o: CniOutcome): void {
  expect(o.exitCode !== 0 && o.exitCode !== null, `expected a non-zero exit, got ${describeOutcome(o)}`);
}

/** stdout is exactly one error object with `code` (SPEC §5 "Error"), msg naming `names` if given. */
function expectErrorCode(o: CniOutcome, code: number | number[], names?: string): void {
  expectRefused(o);
  const err = asCniError(o.json);
  expect(err, `stdout is not exactly one error JSON object: ${describeOutcome(o)}`);
  const codes = Array.isArray(code) ? code : [code];
  expect(codes.includes(err.code), `error code ${err.code} ("${err.msg}"), expected ${codes.join(" or ")}`);
  if (names) expect(err.msg.includes(names) || (err.details ?? "").includes(names), `msg "${err.msg}" does not name ${names}`);
}

function expectSuccess(o: CniOutcome, what: string): void {
  expect(o.exitCode === 0, `${what} failed: ${describeOutcome(o)}`);
}

// ---------------------------------------------------------------- VERSION

const VERSION_SHAPE = rule(
  "VERSION-SHAPE",
  "MUST",
  "VERSION exits 0 and prints {cniVersion, supportedVersions[]} (SPEC §2 VERSION, §5 Version success)",
);
const VERSION_ECHO = rule(
  "VERSION-ECHO",
  "MUST",
  "VERSION answers in the cniVersion given on input (SPEC §2 VERSION: Output cniVersion)",
);
const VERSION_NOSTDIN = rule(
  "VERSION-NOSTDIN",
  "SHOULD",
  "VERSION works with empty stdin (0.4.0 SPEC: VERSION takes no parameters; older runtimes send none)",
);
const VERSION_110 = rule(
  "VERSION-1.1.0",
  "MUST",
  "supportedVersions includes 1.1.0 (required to conform to SPEC 1.1.0; GC/STATUS rules need it)",
);

const versionGroup: RuleGroup = {
  name: "VERSION",
  rules: [VERSION_SHAPE, VERSION_ECHO, VERSION_NOSTDIN, VERSION_110],
  async run(ctx, rep) {
    const probe = await ctx.invoke("VERSION", { env: { CNI_COMMAND: "VERSION" }, stdin: { cniVersion: "1.1.0" } });
    const info = probe.json as { cniVersion?: unknown; supportedVersions?: unknown } | undefined;
    if (info && Array.isArray(info.supportedVersions))
      ctx.supported = info.supportedVersions.filter((v) => typeof v === "string");
    await rep.check(VERSION_SHAPE, () => {
      expectSuccess(probe, "VERSION");
      expect(info && typeof info.cniVersion === "string", `no cniVersion string: ${describeOutcome(probe)}`);
      expect(Array.isArray(info.supportedVersions) && info.supportedVersions.length > 0, "supportedVersions missing or empty");
      const bad = (info.supportedVersions as unknown[]).filter((v) => typeof v !== "string" || !/^\d+\.\d+\.\d+$/.test(v));
      expect(bad.length === 0, `supportedVersions has non-semver entries ${JSON.stringify(bad)}`);
    });
    await rep.check(VERSION_ECHO, async () => {
      const inputs = ["0.4.0", ctx.newest].filter((v, i, all) => ctx.supports(v) && all.indexOf(v) === i);
      if (inputs.length === 0) throw new RuleSkip("no supported version to ask in");
      for (const v of inputs) {
        const o = await ctx.invoke("VERSION", { env: { CNI_COMMAND: "VERSION" }, stdin: { cniVersion: v } });
        expectSuccess(o, `VERSION with cniVersion ${v}`);
        const got = (o.json as { cniVersion?: string } | undefined)?.cniVersion;
        expect(got === v, `asked in ${v}, answered in ${JSON.stringify(got)}`);
      }
    });
    await rep.check(VERSION_NOSTDIN, async () => {
      const o = await ctx.invoke("VERSION", { env: { CNI_COMMAND: "VERSION" } });
      expectSuccess(o, "VERSION without stdin");
      expect(Array.isArray((o.json as { supportedVersions?: unknown })?.supportedVersions), "no supportedVersions in the answer");
    });
    await rep.check(VERSION_110, () => {
      expect(ctx.supports("1.1.0"), `supportedVersions is ${JSON.stringify(ctx.supported)}`);
    });
  },
};

// ---------------------------------------------------------------- ADD per version

const addShape = (v: string) =>
  rule(
    `ADD-${v}-SHAPE`,
    "MUST",
    `ADD with cniVersion ${v} prints a result in exactly ${v}'s shape` +
      (!versionAtLeast(v, "0.3.0")
        ? " (ip4/ip6)"
        : !versionAtLeast(v, "1.0.0")
          ? " (ips[].version, interfaces with sandbox)"
          : " (no ips[].version, interfaces with sandbox)") +
      " (SPEC §5 ADD success; §2 ADD: output in the input's cniVersion)",
  );
const addKernel = (v: string) =>
  rule(
    `ADD-${v}-KERNEL`,
    "MUST",
    `after ADD ${v}, CNI_IFNAME exists in the netns with the reported addresses, MAC and routes; reported host interfaces exist (SPEC §2 ADD)`,
  );

const addGroup: RuleGroup = {
  name: "ADD",
  rules: ALL_VERSIONS.flatMap((v) => [addShape(v), addKernel(v)]),
  async run(ctx, rep) {
    for (const v of ALL_VERSIONS) {
      const shape = addShape(v);
      const kernel = addKernel(v);
      if (!rep.wants(shape) && !rep.wants(kernel)) continue;
      if (!ctx.supports(v)) {
        rep.record(shape, "SKIP", `plugin does not list ${v} in supportedVersions`);
        rep.record(kernel, "SKIP", `plugin does not list ${v} in supportedVersions`);
        continue;
      }
      const net = ctx.newNetwork();
      const a = await net.attach(v);
      await rep.check(shape, () => {
        expectSuccess(a.add, `ADD ${v}`);
        const problems = resultShapeProblems(v, a.add.json, a.ifname, a.netns.path);
        expect(problems.length === 0, problems.join("; "));
      });
      await rep.check(kernel, () => {
        expect(a.result, `ADD ${v} failed: ${describeOutcome(a.add)}`);
        const problems = kernelProblems(a);
        expect(problems.length === 0, problems.join("; "));
      });
      if (a.result) await net.detach(a);
      ctx.sandbox.deleteNetns(a.netns.name);
    }
  },
};

// ---------------------------------------------------------------- DEL

const DEL_REMOVES = rule(
  "DEL-REMOVES",
  "MUST",
  "DEL removes CNI_IFNAME from the netns, the attachment's host interfaces, and releases its address for reuse (SPEC §2 DEL)",
);
const DEL_TWICE = rule(
  "DEL-TWICE",
  "SHOULD",
  "a second DEL of the same attachment succeeds (SPEC §2 DEL: DEL should be idempotent)",
);
const DEL_NETNS_GONE = rule(
  "DEL-NETNS-GONE",
  "SHOULD",
  "DEL succeeds after the netns was deleted, and still releases the address (SPEC §2 DEL: complete even if resources are missing)",
);
const DEL_NO_NETNS = rule(
  "DEL-NO-CNI_NETNS",
  "SHOULD",
  "DEL without CNI_NETNS succeeds and releases the address (SPEC §2 DEL: when CNI_NETNS is not provided, clean up what is possible)",
);
const DEL_NO_PREV = rule(
  "DEL-NO-PREVRESULT",
  "SHOULD",
  "DEL without prevResult succeeds and removes the interface (SPEC §2 DEL: when prevResult is not provided, clean up)",
);
const DEL_UNKNOWN = rule("DEL-UNKNOWN", "SHOULD", "DEL of a container that was never added succeeds (SPEC §2 DEL)");

/** Proves the single address of a 1-address network is free again: a new ADD must get it. */
async function expectAddressReusable(net: Network, v: string, address: string): Promise<void> {
  const b = await net.attach(v);
  try {
    expect(b.result, `the address was not released: a new ADD on the 1-address pool failed: ${describeOutcome(b.add)}`);
    const got = attachmentView(b.result).ips.map((i) => i.address);
    expect(got.includes(address), `new ADD got ${got.join(",")}, expected the released ${address}`);
  } finally {
    if (b.result) await net.detach(b);
    net.ctx.sandbox.deleteNetns(b.netns.name);
  }
}

const delGroup: RuleGroup = {
  name: "DEL",
  rules: [DEL_REMOVES, DEL_TWICE, DEL_NETNS_GONE, DEL_NO_NETNS, DEL_NO_PREV, DEL_UNKNOWN],
  async run(ctx, rep) {
    const v = ctx.newest;
    if (rep.wants(DEL_REMOVES) || rep.wants(DEL_TWICE)) {
      const net = ctx.newNetwork(1);
      const a = await net.attach(v);
      await rep.check(DEL_REMOVES, async () => {
        expect(a.result, `ADD failed: ${describeOutcome(a.add)}`);
        const hostLinks = attachmentHostLinks(a, ctx.sandbox);
        expectSuccess(await net.detach(a), "DEL");
        expect(!readInterface(a.ifname, a.netns.name), `${a.ifname} still exists in the netns after DEL`);
        const left = hostLinks.filter((l) => hostLinkSet().has(l));
        expect(left.length === 0, `host interfaces ${left.join(", ")} still exist after DEL`);
        if (ctx.target.ipam.endsWith("static")) return;
        await expectAddressReusable(net, v, attachmentView(a.result).ips[0]!.address);
      });
      await rep.check(DEL_TWICE, async () => {
        expect(a.result, `ADD failed: ${describeOutcome(a.add)}`);
        expectSuccess(await net.detach(a), "first DEL");
        expectSuccess(await net.detach(a), "second DEL");
      });
      ctx.sandbox.deleteNetns(a.netns.name);
    }
    await rep.check(DEL_NETNS_GONE, async () => {
      const net = ctx.newNetwork(1);
      const a = await net.mustAttach(v);
      ctx.sandbox.deleteNetns(a.netns.name);
      expectSuccess(await net.detach(a), "DEL after the netns was deleted");
      if (!ctx.target.ipam.endsWith("static")) await expectAddressReusable(net, v, attachmentView(a.result).ips[0]!.address);
    });
    await rep.check(DEL_NO_NETNS, async () => {
      const net = ctx.newNetwork(1);
      const a = await net.mustAttach(v);
      try {
        expectSuccess(await net.detach(a, { withNetns: false }), "DEL without CNI_NETNS");
        if (!ctx.target.ipam.endsWith("static")) await expectAddressReusable(net, v, attachmentView(a.result).ips[0]!.address);
      } finally {
        ctx.sandbox.deleteNetns(a.netns.name);
      }
    });
    await rep.check(DEL_NO_PREV, async () => {
      const net = ctx.newNetwork(1);
      const a = await net.mustAttach(v);
      try {
        expectSuccess(await net.detach(a, { withPrevResult: false }), "DEL without prevResult");
        expect(!readInterface(a.ifname, a.netns.name), `${a.ifname} still exists in the netns after DEL`);
      } finally {
        ctx.sandbox.deleteNetns(a.netns.name);
      }
    });
    await rep.check(DEL_UNKNOWN, async () => {
      const net = ctx.newNetwork(1);
      const ns = ctx.sandbox.createNetns("d");
      try {
        const o = await net.invoke("DEL", v, { cid: ctx.newContainerId(), netnsPath: ns.path, ifname: "eth0" });
        expectSuccess(o, "DEL of an unknown container");
      } finally {
        ctx.sandbox.deleteNetns(ns.name);
      }
    });
  },
};

// ---------------------------------------------------------------- CHECK

const CHECK_OK = rule(
  "CHECK-AFTER-ADD",
  "MUST",
  "CHECK right after ADD succeeds and prints nothing (SPEC §2 CHECK: handle CHECK immediately after ADD; output nothing or an error)",
);
const CHECK_OLD = rule(
  "CHECK-BELOW-0.4.0",
  "SHOULD",
  "CHECK with cniVersion 0.3.1 is refused with code 1 (CHECK exists from 0.4.0; SPEC §5 error code 1 incompatible version)",
);
const CHECK_NO_IFACE = rule(
  "CHECK-IFACE-GONE",
  "SHOULD",
  "CHECK fails after CNI_IFNAME was deleted by hand (SPEC §2 CHECK: error if an interface in prevResult is missing)",
);
const CHECK_NO_ADDR = rule(
  "CHECK-ADDR-GONE",
  "SHOULD",
  "CHECK fails after the address was removed by hand (SPEC §2 CHECK: error if an address in prevResult is missing)",
);

const CHECK_NEIGHBOUR_GONE = rule(
  "CHECK-AFTER-NEIGHBOUR-DEL",
  "SHOULD",
  "CHECK of a healthy attachment still succeeds after other attachments on the same network are deleted (SPEC §2 CHECK: a runtime may treat a failed CHECK as permanently misconfigured)",
);

const checkGroup: RuleGroup = {
  name: "CHECK",
  rules: [CHECK_OK, CHECK_OLD, CHECK_NO_IFACE, CHECK_NO_ADDR, CHECK_NEIGHBOUR_GONE],
  async run(ctx, rep) {
    const v = ctx.newest;
    const onlyFrom040 = () => {
      if (!ctx.versionAtLeast(v, "0.4.0")) throw new RuleSkip("plugin supports no version with CHECK (0.4.0+)");
    };
    await rep.check(CHECK_OK, async () => {
      onlyFrom040();
      const net = ctx.newNetwork();
      const a = await net.mustAttach(v);
      const o = await net.check(a);
      expectSuccess(o, "CHECK");
      expect(o.stdout.trim() === "", `CHECK printed ${o.stdout.trim().slice(0, 120)}`);
      await net.detach(a);
      ctx.sandbox.deleteNetns(a.netns.name);
    });
    await rep.check(CHECK_OLD, async () => {
      ctx.requireVersion("0.3.1");
      const net = ctx.newNetwork();
      const a = await net.mustAttach("0.3.1");
      const o = await net.check(a);
      await net.detach(a);
      ctx.sandbox.deleteNetns(a.netns.name);
      expectErrorCode(o, 1);
    });
    await rep.check(CHECK_NO_IFACE, async () => {
      onlyFrom040();
      const net = ctx.newNetwork();
      const a = await net.mustAttach(v);
      sh("ip", ["-n", a.netns.name, "link", "del", a.ifname]);
      const o = await net.check(a);
      await net.detach(a);
      ctx.sandbox.deleteNetns(a.netns.name);
      expectRefused(o);
    });
    await rep.check(CHECK_NEIGHBOUR_GONE, async () => {
      onlyFrom040();
      const net = ctx.newNetwork();
      const atts: Attachment[] = [];
      try {
        for (let i = 0; i < 4; i++) atts.push(await net.mustAttach(v));
        // Delete in ascending order of host-side MAC: a bridge that takes its lowest port's MAC
        // (instead of pinning one) changes MAC at the first DEL.
        const hostMac = (a: Attachment) =>
          attachmentView(a.result).interfaces.find((i) => !i.sandbox && i.name !== ctx.sandbox.bridgeName)?.mac ?? "";
        atts.sort((x, y) => hostMac(x).localeCompare(hostMac(y)));
        while (atts.length > 1) {
          const gone = atts.shift()!;
          expectSuccess(await net.detach(gone), "DEL");
          ctx.sandbox.deleteNetns(gone.netns.name);
          for (const a of atts) expectSuccess(await net.check(a), `CHECK of ${a.cid} after DEL of ${gone.cid}`);
        }
      } finally {
        for (const a of atts) {
          await net.detach(a);
          ctx.sandbox.deleteNetns(a.netns.name);
        }
      }
    });
    await rep.check(CHECK_NO_ADDR, async () => {
      onlyFrom040();
      const net = ctx.newNetwork();
      const a = await net.mustAttach(v);
      for (const ip of attachmentView(a.result).ips) sh("ip", ["-n", a.netns.name, "addr", "del", ip.address, "dev", a.ifname]);
      const o = await net.check(a);
      await net.detach(a);
      ctx.sandbox.deleteNetns(a.netns.name);
      expectRefused(o);
    });
  },
};

// ---------------------------------------------------------------- errors from env and config

interface ErrorCase {
  id: string;
  /** Level of "refused at all"; the exact code is always SHOULD. */
  level?: RuleSpec["level"];
  what: string;
  code: number;
  names?: string;
  cite: string;
  /** Runs the bad invocation; receives a fresh netns path and a valid config. */
  invoke(ctx: SuiteContext, netnsPath: string, config: Record<string, unknown>): Promise<CniOutcome>;
}

function addEnv(netnsPath: string, cid: string): Record<string, string | undefined> {
  return { CNI_COMMAND: "ADD", CNI_CONTAINERID: cid, CNI_NETNS: netnsPath, CNI_IFNAME: "eth0" };
}

const errorCases: ErrorCase[] = [
  {
    id: "ERR-UNKNOWN-VERSION",
    what: 'ADD with cniVersion "99.0.0"',
    code: 1,
    cite: "SPEC §5 error code 1: incompatible CNI version",
    invoke: (ctx, ns, conf) =>
      ctx.invoke("ADD", { env: addEnv(ns, ctx.newContainerId()), stdin: { ...conf, cniVersion: "99.0.0" } }),
  },
  ...(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] as const).map(
    (variable): ErrorCase => ({
      id: `ERR-MISSING-${variable}`,
      // Without CNI_COMMAND no operation was asked for, so exiting 0 is not a false success; still, code 4 names it.
      level: variable === "CNI_COMMAND" ? "SHOULD" : "MUST",
      what: `ADD without ${variable}`,
      code: 4,
      names: variable,
      cite: "SPEC §2 Parameters (required for ADD); §5 error code 4: msg should name the variable",
      invoke: (ctx, ns, conf) =>
        ctx.invoke("ADD", { env: { ...addEnv(ns, ctx.newContainerId()), [variable]: undefined }, stdin: conf }),
    }),
  ),
  {
    id: "ERR-UNKNOWN-COMMAND",
    what: 'CNI_COMMAND "FROB"',
    code: 4,
    names: "FROB",
    cite: "SPEC §2 Parameters: CNI_COMMAND is one of ADD, DEL, CHECK, GC, STATUS, VERSION; §5 error code 4",
    invoke: (ctx, ns, conf) =>
      ctx.invoke("ADD", { env: { ...addEnv(ns, ctx.newContainerId()), CNI_COMMAND: "FROB" }, stdin: conf }),
  },
  {
    id: "ERR-BAD-JSON",
    what: "ADD with a truncated JSON config",
    code: 6,
    cite: "SPEC §5 error code 6: failed to decode content",
    invoke: (ctx, ns, conf) =>
      ctx.invoke("ADD", { env: addEnv(ns, ctx.newContainerId()), stdin: JSON.stringify(conf).slice(0, 25) }),
  },
  {
    id: "ERR-NO-NAME",
    what: "ADD with a config that has no name",
    code: 7,
    cite: "SPEC §1 name is required; §5 error code 7: invalid network config",
    invoke: (ctx, ns, conf) => {
      const { name: _drop, ...rest } = conf;
      return ctx.invoke("ADD", { env: addEnv(ns, ctx.newContainerId()), stdin: rest });
    },
  },
];

const errRefused = (c: ErrorCase) =>
  rule(c.id, c.level ?? "MUST", `${c.what} fails with a non-zero exit and creates nothing (SPEC §2 Errors; ${c.cite})`);
const errCode = (c: ErrorCase) =>
  rule(
    `${c.id}-CODE`,
    "SHOULD",
    `${c.what}: stdout is only an error JSON with code ${c.code}${c.names ? ` naming ${c.names}` : ""} (${c.cite})`,
  );
const ERR_SHAPE = rule(
  "ERR-SHAPE",
  "SHOULD",
  "the error JSON carries cniVersion (the config's), numeric code and string msg (SPEC §5 Error)",
);
const ERR_NETNS_MISSING = rule(
  "ERR-NETNS-NOT-FOUND",
  "MUST",
  "ADD with a CNI_NETNS path that does not exist fails (SPEC §2 ADD: the interface must be created in CNI_NETNS)",
);

const errorGroup: RuleGroup = {
  name: "ERR",
  rules: [...errorCases.flatMap((c) => [errRefused(c), errCode(c)]), ERR_SHAPE, ERR_NETNS_MISSING],
  async run(ctx, rep) {
    const v = ctx.newest;
    for (const c of errorCases) {
      if (!rep.wants(errRefused(c)) && !rep.wants(errCode(c))) continue;
      const net = ctx.newNetwork(1);
      const ns = ctx.sandbox.createNetns("e");
      const hostBefore = hostLinkSet();
      const o = await c.invoke(ctx, ns.path, net.config(v));
      await rep.check(errRefused(c), async () => {
        expectRefused(o);
        const inNs = linkNames(ns.name).filter((l) => l !== "lo");
        expect(inNs.length === 0, `the failed ADD left ${inNs.join(", ")} in the netns`);
        const newHost = newHostLinks(hostBefore, ctx.sandbox);
        expect(newHost.length === 0, `the failed ADD left host links ${newHost.join(", ")}`);
      });
      await rep.check(errCode(c), () => expectErrorCode(o, c.code, c.names));
      ctx.sandbox.deleteNetns(ns.name);
    }
    await rep.check(ERR_SHAPE, async () => {
      const net = ctx.newNetwork(1);
      const ns = ctx.sandbox.createNetns("e");
      const o = await ctx.invoke("ADD", {
        env: { ...addEnv(ns.path, ctx.newContainerId()), CNI_IFNAME: undefined },
        stdin: net.config(v),
      });
      ctx.sandbox.deleteNetns(ns.name);
      expectRefused(o);
      const err = asCniError(o.json);
      expect(err, `no error JSON: ${describeOutcome(o)}`);
      expect(err.cniVersion === v, `error cniVersion is ${JSON.stringify(err.cniVersion)}, config had ${v}`);
    });
    await rep.check(ERR_NETNS_MISSING, async () => {
      const net = ctx.newNetwork(1);
      const path = `/run/netns/${ctx.sandbox.prefix}-nonexistent`;
      const hostBefore = hostLinkSet();
      const o = await net.invoke("ADD", v, { cid: ctx.newContainerId(), netnsPath: path, ifname: "eth0" });
      expectRefused(o);
      const newHost = newHostLinks(hostBefore, ctx.sandbox);
      expect(newHost.length === 0, `the failed ADD left host links ${newHost.join(", ")}`);
    });
  },
};

// ---------------------------------------------------------------- invalid names, ADD twice

interface BadName {
  id: string;
  level: RuleSpec["level"];
  what: string;
  cite: string;
  cid?: string;
  ifname?: string;
}

const badNames: BadName[] = [
  {
    id: "INPUT-IFNAME-TOO-LONG",
    level: "MUST",
    what: "a 16-byte CNI_IFNAME",
    cite: "SPEC §2 Parameters: CNI_IFNAME the plugin cannot use must be an error; Linux names are < 16 bytes",
    ifname: "eth0123456789abc",
  },
  {
    id: "INPUT-IFNAME-SLASH",
    level: "MUST",
    what: 'CNI_IFNAME "eth/0"',
    cite: "SPEC §2 Parameters: CNI_IFNAME must not contain /",
    ifname: "eth/0",
  },
  {
    id: "INPUT-IFNAME-TRAVERSAL",
    level: "MUST",
    what: 'CNI_IFNAME "../x"',
    cite: "SPEC §2 Parameters: CNI_IFNAME must not contain /",
    ifname: "../x",
  },
  {
    id: "INPUT-IFNAME-DOTDOT",
    level: "MUST",
    what: 'CNI_IFNAME ".."',
    cite: 'SPEC §2 Parameters: CNI_IFNAME must not be "." or ".."',
    ifname: "..",
  },
  {
    id: "INPUT-CONTAINERID-SLASH",
    level: "SHOULD",
    what: 'CNI_CONTAINERID "a/../../b"',
    cite: "SPEC §2 Parameters: CNI_CONTAINERID is alphanumeric then [A-Za-z0-9_.-]",
    cid: "a/../../b",
  },
];

const badNameRule = (b: BadName) =>
  rule(b.id, b.level, `ADD with ${b.what} fails and leaves no link and no address allocation behind (${b.cite})`);
const ADD_TWICE = rule(
  "ADD-IFNAME-EXISTS",
  "MUST",
  "ADD of a second container with an existing CNI_IFNAME in the same netns fails and leaves the first intact (SPEC §2 ADD: if the interface exists, return an error)",
);
const ADD_TWICE_NO_LEAK = rule(
  "ADD-IFNAME-EXISTS-NO-LEAK",
  "SHOULD",
  "that failed ADD releases the address it allocated (SPEC §4 Plugin Delegation: on failure call the IPAM DEL)",
);

const inputGroup: RuleGroup = {
  name: "INPUT",
  rules: [...badNames.map(badNameRule), ADD_TWICE, ADD_TWICE_NO_LEAK],
  async run(ctx, rep) {
    const v = ctx.newest;
    for (const b of badNames) {
      await rep.check(badNameRule(b), async () => {
        const net = ctx.newNetwork(1);
        const ns = ctx.sandbox.createNetns("i");
        try {
          const hostBefore = hostLinkSet();
          const o = await net.invoke("ADD", v, {
            cid: b.cid ?? ctx.newContainerId(),
            netnsPath: ns.path,
            ifname: b.ifname ?? "eth0",
          });
          if (o.exitCode === 0) {
            await net.invoke("DEL", v, { cid: b.cid ?? "", netnsPath: ns.path, ifname: b.ifname ?? "eth0" });
            fail(`ADD succeeded: ${describeOutcome(o)}`);
          }
          const inNs = linkNames(ns.name).filter((l) => l !== "lo");
          expect(inNs.length === 0, `left ${inNs.join(", ")} in the netns`);
          const newHost = newHostLinks(hostBefore, ctx.sandbox);
          expect(newHost.length === 0, `left host links ${newHost.join(", ")}`);
          if (!ctx.target.ipam.endsWith("static")) {
            const ok = await net.attach(v, { netns: ns });
            expect(ok.result, `the 1-address pool is exhausted afterwards (leaked allocation): ${describeOutcome(ok.add)}`);
            await net.detach(ok);
          }
        } finally {
          ctx.sandbox.deleteNetns(ns.name);
        }
      });
    }
    if (!rep.wants(ADD_TWICE) && !rep.wants(ADD_TWICE_NO_LEAK)) return;
    const net = ctx.newNetwork(2);
    const first = await net.attach(v);
    const second = first.result ? await net.attach(v, { netns: first.netns }) : undefined;
    await rep.check(ADD_TWICE, () => {
      expect(first.result && second, `first ADD failed: ${describeOutcome(first.add)}`);
      expectRefused(second.add);
      const problems = kernelProblems(first, undefined, [ctx.sandbox.bridgeName]);
      expect(problems.length === 0, `the first attachment was damaged: ${problems.join("; ")}`);
    });
    await rep.check(ADD_TWICE_NO_LEAK, async () => {
      ctx.requirePool();
      expect(first.result && second && second.add.exitCode !== 0, "precondition (ADD-IFNAME-EXISTS) not met");
      const third = await net.attach(v);
      try {
        expect(third.result, `the 2-address pool is exhausted: the failed ADD kept its address: ${describeOutcome(third.add)}`);
      } finally {
        if (third.result) await net.detach(third);
        ctx.sandbox.deleteNetns(third.netns.name);
      }
    });
    if (second) await net.detach({ ...second, result: undefined });
    if (first.result) await net.detach(first);
    ctx.sandbox.deleteNetns(first.netns.name);
  },
};

// ---------------------------------------------------------------- GC and STATUS (1.1.0)

const GC_RELEASES = rule(
  "GC-RELEASES",
  "SHOULD",
  "GC releases the address of an attachment missing from cni.dev/valid-attachments: the next ADD gets it (SPEC §2 GC)",
);
const GC_KEEPS = rule(
  "GC-KEEPS-VALID",
  "MUST",
  "GC keeps every resource of attachments listed in cni.dev/valid-attachments: interface, address and lease (SPEC §2 GC)",
);
const GC_SILENT = rule("GC-OUTPUT", "MUST", "a successful GC exits 0 and prints nothing (SPEC §2 GC: output nothing on success)");
const GC_OLD = rule(
  "GC-BELOW-1.1.0",
  "SHOULD",
  "GC with cniVersion 1.0.0 is refused with code 1 (GC exists from 1.1.0; SPEC §5 error code 1)",
);
const STATUS_OK = rule(
  "STATUS-HEALTHY",
  "MUST",
  "STATUS on a healthy network exits 0 (SPEC §2 STATUS: succeed when ready for ADD)",
);
const ADD_EXHAUSTED = rule(
  "ADD-POOL-EXHAUSTED",
  "MUST",
  "ADD on an exhausted address pool fails with an error (SPEC §2 ADD, §2 Errors)",
);
const STATUS_EXHAUSTED = rule(
  "STATUS-POOL-EXHAUSTED",
  "SHOULD",
  "STATUS on an exhausted pool fails with code 50 or 51 (SPEC §2 STATUS: if the plugin knows it cannot serve ADD it must error)",
);
const STATUS_OLD = rule(
  "STATUS-BELOW-1.1.0",
  "SHOULD",
  "STATUS with cniVersion 1.0.0 is refused with code 1 (STATUS exists from 1.1.0; SPEC §5 error code 1)",
);

function gcEnv(): Record<string, string> {
  return { CNI_COMMAND: "GC" };
}

const gcStatusGroup: RuleGroup = {
  name: "GC/STATUS",
  rules: [GC_RELEASES, GC_KEEPS, GC_SILENT, GC_OLD, STATUS_OK, ADD_EXHAUSTED, STATUS_EXHAUSTED, STATUS_OLD],
  async run(ctx, rep) {
    if (rep.wants(GC_RELEASES) || rep.wants(GC_KEEPS) || rep.wants(GC_SILENT)) {
      if (!ctx.supports("1.1.0")) {
        for (const r of [GC_RELEASES, GC_KEEPS, GC_SILENT]) rep.record(r, "SKIP", "plugin does not support cniVersion 1.1.0");
      } else {
        const net = ctx.newNetwork(2);
        const stale = await net.attach("1.1.0");
        const live = await net.attach("1.1.0");
        const valid = [{ containerID: live.cid, ifname: live.ifname }];
        // The runtime lost the stale attachment: its netns is gone and no DEL ever ran.
        ctx.sandbox.deleteNetns(stale.netns.name);
        const gc = await ctx.invoke("GC", {
          env: gcEnv(),
          stdin: { ...net.config("1.1.0"), "cni.dev/valid-attachments": valid, "cni.dev/attachments": valid },
        });
        const setupOk = () =>
          expect(
            stale.result && live.result,
            `ADDs before GC failed: ${describeOutcome(stale.add)} / ${describeOutcome(live.add)}`,
          );
        await rep.check(GC_SILENT, () => {
          setupOk();
          expectSuccess(gc, "GC");
          expect(gc.stdout.trim() === "", `GC printed ${gc.stdout.trim().slice(0, 120)}`);
        });
        let reused: Attachment | undefined;
        await rep.check(GC_RELEASES, async () => {
          setupOk();
          reused = await net.attach("1.1.0");
          expect(reused.result, `ADD after GC failed, the stale lease was kept: ${describeOutcome(reused.add)}`);
          const staleAddr = attachmentView(stale.result).ips[0]?.address;
          const got = attachmentView(reused.result).ips.map((i) => i.address);
          expect(staleAddr && got.includes(staleAddr), `ADD after GC got ${got.join(",")}, expected the freed ${staleAddr}`);
        });
        await rep.check(GC_KEEPS, async () => {
          setupOk();
          // The shared bridge's MAC may move when another port leaves; only the attachment's own state counts.
          const problems = kernelProblems(live, undefined, [ctx.sandbox.bridgeName]);
          expect(problems.length === 0, problems.join("; "));
          // Its lease must still be held: with both addresses in use, one more ADD must fail.
          if (reused?.result) {
            const extra = await net.attach("1.1.0");
            if (extra.result) await net.detach(extra);
            ctx.sandbox.deleteNetns(extra.netns.name);
            expect(
              !extra.result,
              "GC released the valid attachment's address: another ADD got an address from the 2-address pool",
            );
          }
        });
        for (const a of [reused, live]) {
          if (a?.result) await net.detach(a);
          if (a) ctx.sandbox.deleteNetns(a.netns.name);
        }
      }
    }
    await rep.check(GC_OLD, async () => {
      ctx.requireVersion("1.0.0");
      const net = ctx.newNetwork(1);
      const o = await ctx.invoke("GC", { env: gcEnv(), stdin: { ...net.config("1.0.0"), "cni.dev/valid-attachments": [] } });
      expectErrorCode(o, 1);
    });
    await rep.check(STATUS_OK, async () => {
      ctx.requireVersion("1.1.0");
      const net = ctx.newNetwork(1);
      const o = await ctx.invoke("STATUS", { env: { CNI_COMMAND: "STATUS" }, stdin: net.config("1.1.0") });
      expectSuccess(o, "STATUS");
    });
    if (rep.wants(ADD_EXHAUSTED) || rep.wants(STATUS_EXHAUSTED)) {
      const net = ctx.newNetwork(1);
      const v = ctx.newest;
      const holder = await net.attach(v);
      await rep.check(ADD_EXHAUSTED, async () => {
        ctx.requirePool();
        expect(holder.result, `first ADD failed: ${describeOutcome(holder.add)}`);
        const more = await net.attach(v);
        if (more.result) await net.detach(more);
        ctx.sandbox.deleteNetns(more.netns.name);
        expectRefused(more.add);
      });
      await rep.check(STATUS_EXHAUSTED, async () => {
        ctx.requirePool();
        ctx.requireVersion("1.1.0");
        expect(holder.result, `first ADD failed: ${describeOutcome(holder.add)}`);
        const o = await ctx.invoke("STATUS", { env: { CNI_COMMAND: "STATUS" }, stdin: net.config("1.1.0") });
        expectErrorCode(o, [50, 51]);
      });
      if (holder.result) await net.detach(holder);
      ctx.sandbox.deleteNetns(holder.netns.name);
    }
    await rep.check(STATUS_OLD, async () => {
      ctx.requireVersion("1.0.0");
      const net = ctx.newNetwork(1);
      const o = await ctx.invoke("STATUS", { env: { CNI_COMMAND: "STATUS" }, stdin: net.config("1.0.0") });
      expectErrorCode(o, 1);
    });
  },
};

// ---------------------------------------------------------------- chaining

const CHAIN_PASS = rule(
  "CHAIN-PREVRESULT",
  "MUST",
  "each plugin after the main one, given the previous result as prevResult, outputs it in the config's cniVersion with every interface and IP kept (SPEC §2 ADD: pass prevResult through; §3)",
);
const CHAIN_CHECK = rule(
  "CHAIN-CHECK",
  "MUST",
  "CHECK in list order with the chain's final result as prevResult succeeds (SPEC §2 CHECK: allow later plugins' changes; §3)",
);
const CHAIN_GC = rule(
  "CHAIN-GC-KEEPS-VALID",
  "MUST",
  "GC of every plugin in the list, with the attachment in cni.dev/valid-attachments, exits 0, prints nothing, and CHECK of the chain still succeeds (SPEC §2 GC; §3)",
);
const CHAIN_DEL = rule(
  "CHAIN-DEL-REVERSE",
  "MUST",
  "DEL in reverse list order with the final prevResult succeeds for each plugin and removes the interface (SPEC §3 Execution of network configurations)",
);
const CHAIN_DEL_AGAIN = rule(
  "CHAIN-DEL-AGAIN",
  "MUST",
  "the chain's DEL repeated after everything is gone succeeds for each plugin (SPEC §2 DEL: plugins should generally complete a DEL action without error even if some resources are missing)",
);
const CHAIN_RULES = [CHAIN_PASS, CHAIN_CHECK, CHAIN_GC, CHAIN_DEL, CHAIN_DEL_AGAIN];

/** Options the chained plugin needs (tuning changes the MTU so CHECK sees a later modification). */
function chainPluginOptions(type: string): Record<string, unknown> {
  if (/tuning$/.test(type)) return { mtu: 1400 };
  return {};
}

const chainGroup: RuleGroup = {
  name: "CHAIN",
  rules: CHAIN_RULES,
  async run(ctx, rep) {
    const chain = ctx.opts.chain;
    const v = ctx.newest;
    if (chain.length === 0 || !ctx.versionAtLeast(v, "0.4.0")) {
      const why = chain.length === 0 ? "no plugin to chain after it in the CNI path (--chain-type)" : "needs cniVersion 0.4.0+";
      for (const r of CHAIN_RULES) rep.record(r, "SKIP", why);
      return;
    }
    const net = ctx.newNetwork();
    const a = await net.attach(v);
    const names = chain.map((c) => c.type).join(" → ");
    // Built the way a runtime builds each list entry: the network's name and version injected.
    const confOf = (link: ChainPlugin, cniVersion: string, extra: Record<string, unknown> = {}) => ({
      ...chainPluginOptions(link.type),
      ...link.config,
      cniVersion,
      name: net.name,
      type: link.type,
      ...extra,
    });
    const env = (command: string) => ({
      CNI_COMMAND: command,
      CNI_CONTAINERID: a.cid,
      CNI_NETNS: a.netns.path,
      CNI_IFNAME: a.ifname,
    });

    // ADD in list order, each plugin getting the previous one's result.
    let prev = a.result;
    let addProblem = a.result ? undefined : `ADD failed: ${describeOutcome(a.add)}`;
    for (const link of chain) {
      if (!prev) break;
      const o = await ctx.invoke("ADD", { env: env("ADD"), stdin: confOf(link, v, { prevResult: prev }) }, link.type);
      const out = o.json as Record<string, unknown> | undefined;
      if (o.exitCode !== 0 || typeof out !== "object" || out === null) {
        addProblem = `chained ${link.type} ADD failed: ${describeOutcome(o)}`;
        prev = undefined;
        break;
      }
      const lost = lostBy(prev, out);
      if (lost) addProblem ??= `${link.type}: ${lost}`;
      if (out.cniVersion !== v) addProblem ??= `${link.type} answered in cniVersion ${String(out.cniVersion)}, config said ${v}`;
      prev = out;
    }
    const final = prev;

    /** CHECK of the main plugin and then each chained one, in list order, with the final result. */
    const checkChain = async (when: string) => {
      expect(final, "the chain's ADD did not succeed");
      expectSuccess(await net.check(a, final), `${ctx.target.type} CHECK ${when}`);
      for (const link of chain) {
        const o = await ctx.invoke("CHECK", { env: env("CHECK"), stdin: confOf(link, v, { prevResult: final }) }, link.type);
        expectSuccess(o, `${link.type} CHECK ${when}`);
      }
    };
    /** DEL in reverse list order, the main plugin last, every one with the final result. */
    const delChain = async (when: string) => {
      const p = final ?? a.result;
      const extra = p ? { prevResult: p } : {};
      for (const link of [...chain].reverse()) {
        const o = await ctx.invoke("DEL", { env: env("DEL"), stdin: confOf(link, v, extra) }, link.type);
        expectSuccess(o, `${link.type} DEL ${when}`);
      }
      const o = await net.invoke("DEL", v, { cid: a.cid, netnsPath: a.netns.path, ifname: a.ifname, extra });
      expectSuccess(o, `${ctx.target.type} DEL ${when}`);
    };

    await rep.check(CHAIN_PASS, () => {
      expect(!addProblem, `${names}: ${addProblem}`);
    });
    await rep.check(CHAIN_CHECK, () => checkChain("after ADD"));
    await rep.check(CHAIN_GC, async () => {
      ctx.requireVersion("1.1.0");
      expect(final, "the chain's ADD did not succeed");
      const valid = [{ containerID: a.cid, ifname: a.ifname }];
      const gcConf = { "cni.dev/valid-attachments": valid, "cni.dev/attachments": valid };
      const gcs: [string, Record<string, unknown>][] = [
        [ctx.target.type, net.config("1.1.0", gcConf)],
        ...chain.map((link): [string, Record<string, unknown>] => [link.type, confOf(link, "1.1.0", gcConf)]),
      ];
      for (const [type, stdin] of gcs) {
        const o = await ctx.invoke("GC", { env: { CNI_COMMAND: "GC" }, stdin }, type);
        expectSuccess(o, `${type} GC`);
        expect(o.stdout.trim() === "", `${type} GC printed ${JSON.stringify(o.stdout.slice(0, 200))}`);
      }
      await checkChain("after GC");
    });
    await rep.check(CHAIN_DEL, async () => {
      expect(a.result, "ADD did not succeed");
      await delChain("(first, reverse order)");
      expect(!readInterface(a.ifname, a.netns.name), `${a.ifname} still exists after the chain's DEL`);
    });
    await rep.check(CHAIN_DEL_AGAIN, () => delChain("(repeated)"));
    ctx.sandbox.deleteNetns(a.netns.name);
  },
};

/** What `after` lost of `before`'s interfaces and IPs; undefined when it kept them all. */
function lostBy(before: unknown, after: unknown): string | undefined {
  const b = attachmentView(before);
  const x = attachmentView(after);
  const ip = b.ips.find((i) => !x.ips.some((y) => y.address === i.address));
  if (ip) return `${ip.address} lost by the chain`;
  const it = b.interfaces.find((i) => !x.interfaces.some((y) => y.name === i.name));
  if (it) return `interface ${it.name} lost by the chain`;
  return undefined;
}

// ---------------------------------------------------------------- parallel

const PARALLEL_N = 20;
const PAR_ADD = rule(
  "PARALLEL-ADD",
  "MUST",
  `${PARALLEL_N} parallel ADDs into ${PARALLEL_N} netns all succeed with ${PARALLEL_N} distinct addresses, each on its interface (SPEC: runtimes may run operations for different containers in parallel)`,
);
const PAR_DEL = rule(
  "PARALLEL-DEL",
  "MUST",
  `${PARALLEL_N} parallel DELs all succeed and remove every interface and host link (SPEC §2 DEL; parallel operations)`,
);

const parallelGroup: RuleGroup = {
  name: "PARALLEL",
  rules: [PAR_ADD, PAR_DEL],
  async run(ctx, rep) {
    const v = ctx.newest;
    if (ctx.target.ipam.endsWith("static")) {
      rep.record(PAR_ADD, "SKIP", "static IPAM gives every container the same address");
      rep.record(PAR_DEL, "SKIP", "static IPAM gives every container the same address");
      return;
    }
    const net = ctx.newNetwork();
    const netns = Array.from({ length: PARALLEL_N }, () => ctx.sandbox.createNetns("p"));
    const atts = await Promise.all(netns.map((ns) => net.attach(v, { netns: ns })));
    await rep.check(PAR_ADD, () => {
      const failed = atts.filter((a) => !a.result);
      expect(failed.length === 0, `${failed.length} ADDs failed, e.g. ${failed[0] ? describeOutcome(failed[0].add) : ""}`);
      const addrs = atts.map((a) => addressOf(attachmentView(a.result).ips[0]?.address ?? ""));
      const dup = addrs.filter((x, i) => addrs.indexOf(x) !== i);
      expect(dup.length === 0, `duplicate addresses handed out: ${[...new Set(dup)].join(", ")}`);
      for (const a of atts) {
        // The shared bridge's MAC may legitimately move as other ports join; check the attachment's own links.
        const problems = kernelProblems(a, undefined, [ctx.sandbox.bridgeName]);
        expect(problems.length === 0, `${a.netns.name}: ${problems.join("; ")}`);
      }
    });
    const hostLinks = atts.flatMap((a) => (a.result ? attachmentHostLinks(a, ctx.sandbox) : []));
    const dels = await Promise.all(atts.filter((a) => a.result).map((a) => net.detach(a)));
    await rep.check(PAR_DEL, () => {
      const failed = dels.filter((o) => o.exitCode !== 0);
      expect(failed.length === 0, `${failed.length} DELs failed, e.g. ${failed[0] ? describeOutcome(failed[0]) : ""}`);
      const stillIn = atts.filter((a) => readInterface(a.ifname, a.netns.name));
      expect(stillIn.length === 0, `${stillIn.length} netns still have ${atts[0]?.ifname}`);
      const host = hostLinkSet();
      const left = hostLinks.filter((l) => host.has(l));
      expect(left.length === 0, `host links left: ${left.join(", ")}`);
    });
    for (const ns of netns) ctx.sandbox.deleteNetns(ns.name);
  },
};

/** In run order; VERSION first because later groups use the versions it finds. */
export const ruleGroups: RuleGroup[] = [
  versionGroup,
  addGroup,
  delGroup,
  checkGroup,
  errorGroup,
  inputGroup,
  gcStatusGroup,
  chainGroup,
  parallelGroup,
];
