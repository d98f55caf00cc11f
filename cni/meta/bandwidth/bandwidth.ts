// berth-bandwidth: rate limits on a pod's traffic, chained after a veth-based main plugin.
//   ingress (to the pod):   a token bucket (tbf) as the root qdisc of the host veth
//   egress (from the pod):  the host veth's ingress is redirected (ingress qdisc + a match-all
//                           filter + mirred) to an IFB device `bwp<net><attachment>` carrying the tbf
// Rates in bits/s and bursts in bits, from the config or runtimeConfig.bandwidth (a key set in
// the config wins). Everything is programmed over netlink (native/netlink/tc.ts), no `tc` or `ip`
// process: every request is a replace, so a repeated ADD converges; DEL and GC find the IFB by
// its deterministic name, remove only our redirect filter from the veth's ingress (the ingress
// qdisc goes when nothing else is on it) and a root qdisc only when it is a tbf.
import { isNetlinkError } from "../../../native/netlink/error.ts";
import type { Link } from "../../../native/netlink/link.ts";
import { Rtnl } from "../../../native/netlink/socket.ts";
import type { Filter, MirredAction, Qdisc, TbfSpec } from "../../../native/netlink/tc.ts";
import { shortHash } from "../../digest.ts";
import { gcAttachments } from "../../protocol/config.ts";
import { configSchema, field, type Infer, validateConfig } from "../../protocol/schema.ts";
import { CniError, ErrorCode, type Plugin, type Request, type Result } from "../../protocol/types.ts";
import { hostInterfaces, requirePrevResult } from "../chained.ts";

/** tbf latency, as the reference plugin uses. */
const LATENCY_US = 25_000;
/** Our tbf's handle, `1:`. */
const TBF_HANDLE = 0x10000;
/** Priority of our redirect filter on the veth's ingress. */
const FILTER_PRIO = 1;
/** The largest bucket the kernel takes (TCA_TBF_BURST is a u32 of bytes). */
const MAX_BURST_BITS = 0xffffffff * 8;

const rateFields = {
  ingressRate: field.int(0).describe("Rate limit of traffic to the container, in bits/s (needs ingressBurst)."),
  ingressBurst: field.int(0, MAX_BURST_BITS).describe("Bucket size of the ingress limit, in bits."),
  egressRate: field.int(0).describe("Rate limit of traffic from the container, in bits/s (needs egressBurst)."),
  egressBurst: field.int(0, MAX_BURST_BITS).describe("Bucket size of the egress limit, in bits."),
};

const schema = configSchema({
  ...rateFields,
  ifbPrefix: field
    .string({ pattern: /^[a-z][a-z0-9]{0,8}$/, patternName: "1-9 lowercase letters and digits" })
    .default("bwp")
    .describe("Name prefix of the IFB device that carries egress shaping (prefix + hashes, 15 bytes).", {
      extension: true,
    }),
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
  // The kernel counts bytes: below 8 bit/s the rate would round down to "unlimited".
  if (rate < 8) throw new CniError(ErrorCode.InvalidConfig, `invalid config: "${dir}Rate" must be at least 8 bit/s, got ${rate}`);
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

const hex = shortHash;

/** `<prefix><network 4 hex><attachment hex>`, 15 bytes: deterministic, so DEL and GC find it by name. */
export function ifbName(prefix: string, network: string, containerId: string, ifname: string): string {
  return `${prefix}${hex(network, 4)}${hex(`${containerId}/${ifname}`, 15 - prefix.length - 4)}`;
}

/** A kernel failure as a CNI error naming the step (a CniError passes through). */
function kernelError(what: string, e: unknown): CniError {
  if (e instanceof CniError) return e;
  return new CniError(ErrorCode.Internal, `${what}: ${e instanceof Error ? e.message : String(e)}`);
}

/** Answers meaning "nothing there to remove": the device or the qdisc is gone. */
function isGone(e: unknown): boolean {
  return isNetlinkError(e, "ENODEV") || isNetlinkError(e, "ENOENT");
}

function withRtnl<T>(fn: (nl: Rtnl) => Promise<T>): Promise<T> {
  const nl = Rtnl.open();
  return fn(nl).finally(() => nl.close());
}

/** Bits → the kernel's bytes: the rate rounds down (never above the configured one), the burst up. */
function tbf(dev: number | string, l: Limit): TbfSpec {
  return {
    kind: "tbf",
    dev,
    parent: "root",
    handle: TBF_HANDLE,
    bytesPerSec: Math.floor(l.rate / 8),
    burstBytes: Math.ceil(l.burst / 8),
    latencyUs: LATENCY_US,
  };
}

/** tbf drops a packet larger than its bucket outright: a burst below one full frame blackholes. */
function requireFullFrame(dir: "ingress" | "egress", l: Limit, veth: Link): void {
  const frame = veth.mtu + 14;
  if (Math.ceil(l.burst / 8) < frame) {
    throw new CniError(
      ErrorCode.InvalidConfig,
      `invalid config: "${dir}Burst" ${l.burst} bits is smaller than one full-size frame on ${veth.name} ` +
        `(MTU ${veth.mtu} + 14 = ${frame} bytes = ${frame * 8} bits); such packets would all be dropped`,
    );
  }
}

/** The host end of the pod's veth: the result's host interface that is a veth. */
function hostVeth(nl: Rtnl, prev: Result): Link | undefined {
  for (const i of hostInterfaces(prev)) {
    const l = nl.linkGet(i.name);
    if (l?.kind === "veth") return l;
  }
  return undefined;
}

/** Creates the IFB (or adopts ours from an earlier ADD) and brings it up. */
function ensureIfb(nl: Rtnl, name: string, mtu: number): Link {
  let ifb = nl.linkGet(name);
  if (!ifb) {
    try {
      nl.linkAdd({ kind: "ifb", name, mtu, up: true });
    } catch (e) {
      if (!isNetlinkError(e, "EEXIST")) throw e; // a concurrent ADD of the same attachment
    }
    ifb = nl.linkGet(name);
    if (!ifb) throw new CniError(ErrorCode.TryAgainLater, `IFB ${name} vanished while being created`);
  }
  if (ifb.kind !== "ifb") {
    throw new CniError(ErrorCode.Internal, `${name} exists but is a ${ifb.kind ?? "physical"} device, not an IFB`);
  }
  if (!ifb.up || ifb.mtu !== mtu) nl.linkSet(ifb.index, { up: true, mtu });
  return ifb;
}

/** Does this filter's mirred redirect to `ifindex`? */
function redirectsTo(f: Filter, ifindex: number): boolean {
  return f.actions
    .filter((a): a is MirredAction => a.kind === "mirred")
    .some((a) => a.mode === "redirect" && a.ifindex === ifindex);
}

/** Everything arriving on the veth (what the pod sends) leaves through the IFB instead. */
function redirectToIfb(nl: Rtnl, veth: string, ifb: Link): void {
  const actions = [{ kind: "mirred" as const, mode: "redirect" as const, dev: ifb.index }];
  const base = { dev: veth, parent: "ingress" as const, prio: FILTER_PRIO, actions };
  // A filter's kind is fixed per prio: a repeated ADD keeps the kind the first one chose.
  const atPrio = nl.filterList(veth, "ingress").filter((f) => f.prio === FILTER_PRIO);
  if (atPrio.some((f) => redirectsTo(f, ifb.index))) return; // already in place
  const kind = atPrio[0]?.kind;
  if (kind === "matchall") {
    // cls_matchall cannot be changed in place (any replace is EEXIST): make it anew.
    nl.filterDel({ dev: veth, parent: "ingress", prio: FILTER_PRIO, kind: "matchall" });
  }
  if (kind !== "u32") {
    try {
      nl.filterReplace({ kind: "matchall", ...base });
      return;
    } catch (e) {
      // Kernels built without cls_matchall ("TC classifier not found"): u32 with a zero mask.
      if (!isNetlinkError(e, "ENOENT")) throw e;
    }
  }
  // u32: replace our node where it is; a new one gets its handles from the kernel (a fixed
  // 800::1 collides with another program's u32 at another prio, which owns hash table 800:).
  const node = atPrio.find((f) => f.kind === "u32" && f.actions.length > 0);
  nl.filterReplace({ kind: "u32", ...base, handle: node?.handle ?? 0 });
}

async function add(req: Request): Promise<Result> {
  const conf = parseConf(req);
  const prev = requirePrevResult(req, "berth-bandwidth");
  if (!conf.ingress && !conf.egress) return prev;
  const ifb = ifbName(conf.ifbPrefix, req.config.name, req.containerId, req.ifname);
  return withRtnl(async (nl) => {
    const veth = hostVeth(nl, prev);
    if (!veth) {
      throw new CniError(
        ErrorCode.InvalidConfig,
        `invalid config: berth-bandwidth needs a host veth among prevResult's interfaces (chain it after berth-bridge or berth-ptp)`,
      );
    }
    if (conf.ingress) requireFullFrame("ingress", conf.ingress, veth);
    if (conf.egress) requireFullFrame("egress", conf.egress, veth);
    let step = "";
    try {
      if (conf.ingress) {
        step = `token bucket on ${veth.name}`;
        nl.qdiscReplace(tbf(veth.name, conf.ingress));
      }
      if (conf.egress) {
        step = `IFB ${ifb}`;
        const ifbLink = ensureIfb(nl, ifb, veth.mtu);
        step = `token bucket on ${ifb}`;
        nl.qdiscReplace(tbf(ifb, conf.egress));
        step = `ingress qdisc on ${veth.name}`;
        nl.qdiscReplace({ kind: "ingress", dev: veth.name });
        step = `redirect from ${veth.name} to ${ifb}`;
        redirectToIfb(nl, veth.name, ifbLink);
      }
    } catch (e) {
      await teardown(nl, veth.name, ifb).catch(() => {});
      throw kernelError(`berth-bandwidth: ${step}`, e);
    }
    return prev;
  });
}

/** Deletes the qdisc at `parent` if it is of `kind` (someone else's stays); gone is fine. */
function removeQdisc(nl: Rtnl, dev: string, parent: "root" | "ingress", kind: string): void {
  try {
    nl.qdiscDel({ dev, parent, kind });
  } catch (e) {
    // EINVAL: the kernel's "must match existing qdisc", i.e. not ours.
    if (!isGone(e) && !isNetlinkError(e, "EINVAL")) throw e;
  }
}

/**
 * Removes our redirect from the veth's ingress: the filter at our prio whose mirred points at
 * our IFB (or at a device that no longer exists). Other filters, and so the ingress qdisc
 * holding them, stay; the qdisc goes once nothing is left on it.
 */
function removeRedirect(nl: Rtnl, veth: string, ifbIndex: number | undefined): void {
  let filters: Filter[];
  try {
    filters = nl.filterList(veth, "ingress");
  } catch (e) {
    if (isGone(e)) return;
    throw e;
  }
  const ours = (f: Filter) =>
    f.prio === FILTER_PRIO &&
    f.actions
      .filter((a): a is MirredAction => a.kind === "mirred")
      .some((a) => a.ifindex === ifbIndex || (ifbIndex === undefined && !nl.linkGet(a.ifindex)));
  let rest = filters;
  if (filters.some(ours)) {
    try {
      nl.filterDel({ dev: veth, parent: "ingress", prio: FILTER_PRIO });
    } catch (e) {
      if (!isGone(e)) throw e;
    }
    // Everything at our prio went (u32 also lists its hash table there).
    rest = filters.filter((f) => f.prio !== FILTER_PRIO);
  }
  if (rest.length === 0) removeQdisc(nl, veth, "ingress", "ingress");
}

async function teardown(nl: Rtnl, veth: string | undefined, ifb: string): Promise<void> {
  // Only an IFB: a device of another kind that happens to carry the name is not ours.
  const dev = nl.linkGet(ifb);
  if (veth) {
    removeRedirect(nl, veth, dev?.kind === "ifb" ? dev.index : undefined);
    removeQdisc(nl, veth, "root", "tbf");
  }
  if (dev?.kind !== "ifb") return;
  try {
    await nl.linkDelAsync(dev.index);
  } catch (e) {
    if (!isGone(e)) throw e;
  }
}

async function del(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const ifb = ifbName(conf.ifbPrefix, req.config.name, req.containerId, req.ifname);
  const prev = req.config.prevResult;
  await withRtnl(async (nl) => {
    try {
      await teardown(nl, prev ? hostVeth(nl, prev)?.name : undefined, ifb);
    } catch (e) {
      throw kernelError("berth-bandwidth: DEL", e);
    }
  });
}

function checkTbf(nl: Rtnl, dev: Link, l: Limit, what: string): void {
  const q: Qdisc | null = nl.qdiscGet({ dev: dev.name, parent: "root" });
  if (q?.kind !== "tbf" || !q.tbf)
    throw new CniError(ErrorCode.Internal, `CHECK: ${what} token bucket on ${dev.name} is missing`);
  const want = tbf(dev.name, l);
  if (q.tbf.bytesPerSec !== want.bytesPerSec) {
    throw new CniError(
      ErrorCode.Internal,
      `CHECK: ${what} rate on ${dev.name} is ${q.tbf.bytesPerSec * 8} bit/s, configured ${l.rate}`,
    );
  }
  // The kernel keeps the bucket as a time in 64 ns ticks: allow that rounding, and 1%. It
  // reports that time as a u32 of ticks, so a bucket over ~275 s of traffic cannot be read back.
  const slack = Math.max(want.burstBytes * 0.01, want.bytesPerSec * 64e-9 + 1);
  const readable = (want.burstBytes / want.bytesPerSec) * 1e9 < 0xffffffff * 64;
  if (readable && Math.abs(q.tbf.burstBytes - want.burstBytes) > slack) {
    throw new CniError(
      ErrorCode.Internal,
      `CHECK: ${what} burst on ${dev.name} is ${q.tbf.burstBytes * 8} bits, configured ${l.burst}`,
    );
  }
}

async function check(req: Request): Promise<void> {
  const conf = parseConf(req);
  const prev = requirePrevResult(req, "berth-bandwidth");
  if (!conf.ingress && !conf.egress) return;
  await withRtnl(async (nl) => {
    const veth = hostVeth(nl, prev);
    if (!veth) throw new CniError(ErrorCode.Internal, "CHECK: the host veth is missing");
    if (conf.ingress) checkTbf(nl, veth, conf.ingress, "ingress");
    if (conf.egress) {
      const name = ifbName(conf.ifbPrefix, req.config.name, req.containerId, req.ifname);
      const ifb = nl.linkGet(name);
      if (ifb?.kind !== "ifb") throw new CniError(ErrorCode.Internal, `CHECK: egress device ${name} is missing`);
      if (!ifb.up) throw new CniError(ErrorCode.Internal, `CHECK: egress device ${name} is down`);
      checkTbf(nl, ifb, conf.egress, "egress");
      const redirected = nl
        .filterList(veth.name, "ingress")
        .some((f) =>
          f.actions.some((a) => a.kind === "mirred" && "ifindex" in a && a.mode === "redirect" && a.ifindex === ifb.index),
        );
      if (!redirected) {
        throw new CniError(ErrorCode.Internal, `CHECK: traffic from the pod on ${veth.name} is not redirected to ${name}`);
      }
    }
  });
}

/** GC: IFB devices of this network whose attachment is not valid (the reference has no GC). */
async function gc(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const keep = new Set(gcAttachments(req.config).map((a) => ifbName(conf.ifbPrefix, req.config.name, a.containerID, a.ifname)));
  const mine = `${conf.ifbPrefix}${hex(req.config.name, 4)}`;
  await withRtnl(async (nl) => {
    const stale = (await nl.linkListAsync()).filter(
      (l) => l.kind === "ifb" && l.name.length === 15 && l.name.startsWith(mine) && !keep.has(l.name),
    );
    for (const l of stale) {
      try {
        await nl.linkDelAsync(l.index);
      } catch (e) {
        if (!isGone(e)) throw kernelError(`berth-bandwidth: GC of ${l.name}`, e);
      }
    }
  });
}

export const bandwidthPlugin: Plugin = {
  name: "berth-bandwidth",
  schema,
  add,
  del,
  check,
  gc,
};
