// berth-bandwidth: rate limits on a pod's traffic, chained after a veth-based main plugin.
//   ingress (to the pod):   a token bucket (tbf) as the root qdisc of the host veth
//   egress (from the pod):  the host veth's ingress is redirected (ingress qdisc + u32 match-all
//                           + mirred) to an IFB device `bwp<net><attachment>` carrying the tbf
// Rates in bits/s and bursts in bits, from the config or runtimeConfig.bandwidth (a key set in
// the config wins). Traffic control goes through `tc` (execFile, argument arrays): berth's
// netlink codec has no RTM_*QDISC/TFILTER messages yet. Every command is idempotent
// (`replace`), so a repeated ADD converges; DEL and GC delete the IFB by its deterministic name.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { Rtnl } from "../../../native/netlink/socket.ts";
import { gcAttachments } from "../../spec/config.ts";
import { configSchema, field, type Infer, validateConfig } from "../../spec/schema.ts";
import { CniError, ErrorCode, type Plugin, type Request, type Result } from "../../spec/types.ts";
import { hostInterfaces, requirePrevResult } from "../chained.ts";

/** tbf latency, as the reference plugin uses. */
const LATENCY = "25ms";
/** The largest burst tc's tbf takes in bytes (u32). */
const MAX_BURST_BITS = 0xffffffff * 8;

const rateFields = {
  ingressRate: field.int(0),
  ingressBurst: field.int(0, MAX_BURST_BITS),
  egressRate: field.int(0),
  egressBurst: field.int(0, MAX_BURST_BITS),
};

const schema = configSchema({
  ...rateFields,
  /** berth extension: IFB name prefix (the name is prefix + hashes, 15 bytes in all). */
  ifbPrefix: field.string({ pattern: /^[a-z][a-z0-9]{0,8}$/, patternName: "1-9 lowercase letters and digits" }).default("bwp"),
});
const runtimeSchema = configSchema(rateFields);

interface Limit {
  rate: number; // bits/s
  burst: number; // bits
}

interface BandwidthConf {
  ingress?: Limit;
  egress?: Limit;
  ifbPrefix: string;
}

function limit(dir: "ingress" | "egress", rate: number | undefined, burst: number | undefined): Limit | undefined {
  if (!rate && !burst) return undefined;
  if (!rate || !burst) {
    throw new CniError(
      ErrorCode.InvalidConfig,
      `invalid config: "${dir}Rate" and "${dir}Burst" must both be set (got rate ${rate ?? 0}, burst ${burst ?? 0})`,
    );
  }
  return { rate, burst };
}

function parseConf(req: Request): BandwidthConf {
  const conf = validateConfig(req.config, schema);
  const rtRaw = req.config.runtimeConfig?.bandwidth;
  let rt: Infer<typeof runtimeSchema.fields> = {};
  if (rtRaw !== undefined && rtRaw !== null) {
    if (typeof rtRaw !== "object" || Array.isArray(rtRaw)) {
      throw new CniError(
        ErrorCode.InvalidConfig,
        `invalid config: "runtimeConfig.bandwidth" must be an object, got ${JSON.stringify(rtRaw)}`,
      );
    }
    try {
      rt = validateConfig(rtRaw as Record<string, unknown>, runtimeSchema);
    } catch (e) {
      if (e instanceof CniError) throw new CniError(e.code, e.message.replace('config: "', 'config: "runtimeConfig.bandwidth.'));
      throw e;
    }
  }
  return {
    ingress: limit("ingress", conf.ingressRate ?? rt.ingressRate, conf.ingressBurst ?? rt.ingressBurst),
    egress: limit("egress", conf.egressRate ?? rt.egressRate, conf.egressBurst ?? rt.egressBurst),
    ifbPrefix: conf.ifbPrefix,
  };
}

function hex(s: string, n: number): string {
  return createHash("sha256").update(s).digest("hex").slice(0, n);
}

/** `<prefix><network 4 hex><attachment hex>`, 15 bytes: deterministic, so DEL and GC find it by name. */
export function ifbName(prefix: string, network: string, containerId: string, ifname: string): string {
  return `${prefix}${hex(network, 4)}${hex(`${containerId}/${ifname}`, 15 - prefix.length - 4)}`;
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: "utf8", timeout: 15_000 }, (err, stdout, stderr) => {
      if (err) reject(new CniError(ErrorCode.Internal, `${cmd} ${args.join(" ")}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

/** Runs a removal; "already gone" answers are success. */
async function removeQuietly(cmd: string, args: string[]): Promise<void> {
  try {
    await run(cmd, args);
  } catch (e) {
    const msg = (e as Error).message;
    if (!/Cannot find device|does not exist|No such file|handle of zero|Invalid handle|Cannot delete qdisc/.test(msg)) throw e;
  }
}

function tbfArgs(dev: string, l: Limit): string[] {
  // tc reads a bare burst as bytes; rates are given in bit/s explicitly.
  return [
    "qdisc",
    "replace",
    "dev",
    dev,
    "root",
    "handle",
    "1:",
    "tbf",
    "rate",
    `${l.rate}bit`,
    "burst",
    String(Math.ceil(l.burst / 8)),
    "latency",
    LATENCY,
  ];
}

/** The host end of the pod's veth: the result's host interface that is a veth. */
function hostVeth(prev: Result): { name: string; mtu: number } | undefined {
  const nl = Rtnl.open();
  try {
    for (const i of hostInterfaces(prev)) {
      const l = nl.linkGet(i.name);
      if (l?.kind === "veth") return { name: l.name, mtu: l.mtu };
    }
    return undefined;
  } finally {
    nl.close();
  }
}

async function add(req: Request): Promise<Result> {
  const conf = parseConf(req);
  const prev = requirePrevResult(req, "berth-bandwidth");
  if (!conf.ingress && !conf.egress) return prev;
  const veth = hostVeth(prev);
  if (!veth) {
    throw new CniError(
      ErrorCode.InvalidConfig,
      `invalid config: berth-bandwidth needs a host veth among prevResult's interfaces (chain it after berth-bridge or berth-ptp)`,
    );
  }
  const ifb = ifbName(conf.ifbPrefix, req.config.name, req.containerId, req.ifname);
  try {
    if (conf.ingress) await run("tc", tbfArgs(veth.name, conf.ingress));
    if (conf.egress) {
      const nl = Rtnl.open();
      const exists = nl.linkGet(ifb) !== null;
      nl.close();
      if (!exists) await run("ip", ["link", "add", ifb, "mtu", String(veth.mtu), "type", "ifb"]);
      await run("ip", ["link", "set", ifb, "up"]);
      await run("tc", tbfArgs(ifb, conf.egress));
      await run("tc", ["qdisc", "replace", "dev", veth.name, "handle", "ffff:", "ingress"]);
      await run("tc", [
        ...["filter", "replace", "dev", veth.name, "parent", "ffff:", "protocol", "all", "prio", "1", "handle", "800::1"],
        ...["u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb],
      ]);
    }
  } catch (e) {
    await teardown(veth.name, ifb).catch(() => {});
    throw e;
  }
  return prev;
}

async function teardown(veth: string | undefined, ifb: string): Promise<void> {
  await removeQuietly("ip", ["link", "del", ifb]);
  if (veth) {
    await removeQuietly("tc", ["qdisc", "del", "dev", veth, "root"]);
    await removeQuietly("tc", ["qdisc", "del", "dev", veth, "ingress"]);
  }
}

async function del(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const ifb = ifbName(conf.ifbPrefix, req.config.name, req.containerId, req.ifname);
  const prev = req.config.prevResult;
  await teardown(prev ? hostVeth(prev)?.name : undefined, ifb);
}

interface TcQdisc {
  kind: string;
  root?: boolean;
  options?: { rate?: number; burst?: number };
}

async function checkTbf(dev: string, l: Limit, what: string): Promise<void> {
  let qdiscs: TcQdisc[];
  try {
    qdiscs = JSON.parse((await run("tc", ["-j", "qdisc", "show", "dev", dev])) || "[]") as TcQdisc[];
  } catch {
    throw new CniError(ErrorCode.Internal, `CHECK: ${what} device ${dev} is missing`);
  }
  const tbf = qdiscs.find((q) => q.kind === "tbf" && q.root);
  if (!tbf) throw new CniError(ErrorCode.Internal, `CHECK: ${what} token bucket on ${dev} is missing`);
  // tc reports the rate in bytes/s.
  if (tbf.options?.rate !== Math.floor(l.rate / 8)) {
    throw new CniError(
      ErrorCode.Internal,
      `CHECK: ${what} rate on ${dev} is ${(tbf.options?.rate ?? 0) * 8} bit/s, configured ${l.rate}`,
    );
  }
}

async function check(req: Request): Promise<void> {
  const conf = parseConf(req);
  const prev = requirePrevResult(req, "berth-bandwidth");
  if (!conf.ingress && !conf.egress) return;
  const veth = hostVeth(prev);
  if (!veth) throw new CniError(ErrorCode.Internal, "CHECK: the host veth is missing");
  if (conf.ingress) await checkTbf(veth.name, conf.ingress, "ingress");
  if (conf.egress) await checkTbf(ifbName(conf.ifbPrefix, req.config.name, req.containerId, req.ifname), conf.egress, "egress");
}

/** GC: IFB devices of this network whose attachment is not valid (the reference has no GC). */
async function gc(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const keep = new Set(gcAttachments(req.config).map((a) => ifbName(conf.ifbPrefix, req.config.name, a.containerID, a.ifname)));
  const mine = `${conf.ifbPrefix}${hex(req.config.name, 4)}`;
  const nl = Rtnl.open();
  let stale: string[];
  try {
    stale = nl
      .linkList()
      .filter((l) => l.kind === "ifb" && l.name.length === 15 && l.name.startsWith(mine) && !keep.has(l.name))
      .map((l) => l.name);
  } finally {
    nl.close();
  }
  for (const name of stale) await removeQuietly("ip", ["link", "del", name]);
}

export const bandwidthPlugin: Plugin = {
  name: "berth-bandwidth",
  add,
  del,
  check,
  gc,
};
