// Traffic control (RTM_*QDISC, RTM_*TFILTER): the token bucket (tbf) and ingress qdiscs,
// and match-all filters (matchall, or u32 with one zero-mask key) whose one action is a
// mirred redirect — what berth-bandwidth needs to shape a pod in both directions. Every
// message starts with a struct tcmsg; kind-specific settings sit in TCA_OPTIONS.
// Rates here are in the kernel's unit, bytes per second (as `tc -j` prints them).
import { Attrs, InvalidValueError, type MessageView, type MessageWriter } from "./codec.ts";

export const TCMSG_LEN = 20;

const TCA_KIND = 1;
const TCA_OPTIONS = 2;

/** Parent of a device's root qdisc. */
export const TC_H_ROOT = 0xffffffff;
/** Parent of the ingress qdisc. */
export const TC_H_INGRESS = 0xfffffff1;
/** The ingress qdisc's handle (`ffff:`), also the parent its filters attach to. */
export const INGRESS_HANDLE = 0xffff0000;

export const ETH_P_ALL = 0x0003;

const TCA_TBF_PARMS = 1;
const TCA_TBF_RATE64 = 4;
const TCA_TBF_BURST = 6;
const TC_TBF_QOPT_LEN = 36; // two tc_ratespec (12 each), limit, buffer, mtu
const TC_LINKLAYER_ETHERNET = 1;
/**
 * psched ticks per microsecond: the kernel's PSCHED_SHIFT is 6, so a tick is 64 ns
 * (/proc/net/psched: 000003e8 00000040). tc converts buffer ticks to bytes with this.
 */
const TICKS_PER_US = 1000 / 64;

const TCA_U32_SEL = 5;
const TCA_U32_ACT = 7;
const TC_U32_SEL_LEN = 16;
const TC_U32_KEY_LEN = 16;
const TC_U32_TERMINAL = 1;
/** u32 handle `800::1`: node 1 of the root hash table, fixed so that a replace finds it again. */
export const U32_MATCH_ALL_HANDLE = 0x80000001;

const TCA_MATCHALL_ACT = 2;

const TCA_ACT_KIND = 1;
const TCA_ACT_OPTIONS = 2;
const TCA_MIRRED_PARMS = 2;
const TC_MIRRED_LEN = 28; // tc_gen (index, capab, action, refcnt, bindcnt), eaction, ifindex
const TC_ACT_PIPE = 3;
const TC_ACT_STOLEN = 4;
const TCA_EGRESS_REDIR = 1;
const TCA_EGRESS_MIRROR = 2;
const TCA_INGRESS_REDIR = 3;
const TCA_INGRESS_MIRROR = 4;

// ---------------------------------------------------------------- specs

/** A qdisc's place: the device's root, its ingress hook, or a class id. */
export type QdiscParent = "root" | "ingress" | number;

export interface TbfSpec {
  kind: "tbf";
  /** Device (index, or name resolved by Rtnl). */
  dev: number | string;
  /** Default "root". */
  parent?: QdiscParent;
  /** Default `1:` (0x10000). */
  handle?: number;
  bytesPerSec: number;
  /** Bucket size in bytes (the largest burst at line rate). */
  burstBytes: number;
  /** Queue limit in bytes; default from `latencyUs` as tc computes it. */
  limitBytes?: number;
  /** Longest a packet may wait in the queue, default 25 ms. */
  latencyUs?: number;
}

export interface IngressSpec {
  kind: "ingress";
  dev: number | string;
}

export type QdiscSpec = TbfSpec | IngressSpec;

/** Names a qdisc for get/delete. `kind` makes a delete refuse (EINVAL) a qdisc of another kind. */
export interface QdiscRef {
  dev: number | string;
  parent: QdiscParent;
  kind?: string;
}

export interface MirredSpec {
  kind: "mirred";
  /** redirect: the packet goes only to `dev`; mirror: a copy does. */
  mode: "redirect" | "mirror";
  /** Default "egress" (transmit on `dev`). */
  direction?: "egress" | "ingress";
  dev: number | string;
}

export interface FilterSpec {
  /** matchall, or u32 with one zero-mask key (for kernels built without cls_matchall). */
  kind: "matchall" | "u32";
  dev: number | string;
  /** "ingress" is the ingress qdisc (`ffff:`); a number is a qdisc handle or class id. */
  parent: "ingress" | number;
  /** Default 1. */
  prio?: number;
  /** Ethertype, default ETH_P_ALL. */
  protocol?: number;
  /** Default 1 for matchall, `800::1` for u32. */
  handle?: number;
  actions: MirredSpec[];
}

export interface FilterRef {
  dev: number | string;
  parent: "ingress" | number;
  prio: number;
  protocol?: number;
  /** 0 (default): every filter at this prio. */
  handle?: number;
  kind?: string;
}

// ---------------------------------------------------------------- decoded

export interface TbfInfo {
  bytesPerSec: number;
  /** Bucket size in bytes, derived from the buffer time (see ticksToBytes). */
  burstBytes: number;
  limitBytes: number;
  /** Bucket size as the kernel holds it: time at `bytesPerSec`, in 64 ns ticks. */
  bufferTicks: number;
}

export interface Qdisc {
  ifindex: number;
  kind: string;
  handle: number;
  parent: number;
  tbf?: TbfInfo;
}

export interface MirredAction {
  kind: "mirred";
  mode: "redirect" | "mirror";
  direction: "egress" | "ingress";
  ifindex: number;
}

/** An action of another kind: only its name is decoded. */
export interface OtherAction {
  kind: string;
}

export type TcAction = MirredAction | OtherAction;

export interface Filter {
  ifindex: number;
  kind: string;
  parent: number;
  handle: number;
  prio: number;
  protocol: number;
  actions: TcAction[];
}

// ---------------------------------------------------------------- helpers

/** `tc`'s notation for a handle or parent: "root", "ingress", "1:", "ffff:", "1:a". */
export function formatHandle(h: number): string {
  if (h === TC_H_ROOT) return "root";
  if (h === TC_H_INGRESS) return "ingress";
  const major = (h >>> 16).toString(16);
  const minor = h & 0xffff;
  return minor ? `${major}:${minor.toString(16)}` : `${major}:`;
}

export function qdiscParentId(p: QdiscParent): number {
  return p === "root" ? TC_H_ROOT : p === "ingress" ? TC_H_INGRESS : p >>> 0;
}

export function filterParentId(p: "ingress" | number): number {
  return p === "ingress" ? INGRESS_HANDLE : p >>> 0;
}

/** tbf's queue limit the way tc computes it from a latency: rate × latency + burst, in bytes. */
export function tbfLimit(bytesPerSec: number, burstBytes: number, latencyUs: number): number {
  return Math.min(0xffffffff, Math.trunc((bytesPerSec * latencyUs) / 1e6 + burstBytes));
}

/**
 * Bytes a bucket of `ticks` holds at `bytesPerSec`. tc's tc_calc_xmitsize first truncates the
 * time to whole microseconds, so `tc -j` prints up to one microsecond's worth of bytes less.
 */
export function ticksToBytes(bytesPerSec: number, ticks: number): number {
  return Math.trunc((bytesPerSec * (ticks / TICKS_PER_US)) / 1e6);
}

/** Ticks to send `bytes` at `bytesPerSec` (tc's tc_calc_xmittime). */
export function bytesToTicks(bytesPerSec: number, bytes: number): number {
  return Math.min(0xffffffff, Math.trunc(1e6 * (bytes / bytesPerSec) * TICKS_PER_US));
}

function checkInt(what: string, v: number, min: number, max: number): void {
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new InvalidValueError(`${what} must be an integer ${min}..${max}, got ${v}`);
  }
}

/** info = TC_H_MAKE(prio << 16, htons(protocol)). */
function filterInfo(prio: number, protocol: number): number {
  checkInt("filter prio", prio, 1, 0xffff);
  checkInt("filter protocol", protocol, 0, 0xffff);
  return ((prio << 16) | ((protocol & 0xff) << 8) | (protocol >>> 8)) >>> 0;
}

// ---------------------------------------------------------------- encoding

export function writeTcmsg(w: MessageWriter, ifindex: number, handle: number, parent: number, info = 0): void {
  const h = w.struct(TCMSG_LEN);
  w.putI32(h + 4, ifindex);
  w.putU32(h + 8, handle);
  w.putU32(h + 12, parent);
  w.putU32(h + 16, info);
}

/** RTM_NEWQDISC body for `spec` on device `ifindex`. */
export function encodeQdisc(w: MessageWriter, ifindex: number, spec: QdiscSpec): void {
  if (spec.kind === "ingress") {
    writeTcmsg(w, ifindex, INGRESS_HANDLE, TC_H_INGRESS);
    w.string(TCA_KIND, "ingress");
    return;
  }
  if (spec.kind !== "tbf") throw new InvalidValueError(`unsupported qdisc kind "${(spec as { kind: string }).kind}"`);
  const rate = spec.bytesPerSec;
  checkInt("tbf rate (bytes/s)", rate, 1, Number.MAX_SAFE_INTEGER);
  checkInt("tbf burst (bytes)", spec.burstBytes, 1, 0xffffffff);
  const latency = spec.latencyUs ?? 25_000;
  checkInt("tbf latency (µs)", latency, 0, 0xffffffff);
  const limit = spec.limitBytes ?? tbfLimit(rate, spec.burstBytes, latency);
  checkInt("tbf limit (bytes)", limit, 0, 0xffffffff);

  writeTcmsg(w, ifindex, spec.handle ?? 0x10000, qdiscParentId(spec.parent ?? "root"));
  w.string(TCA_KIND, "tbf");
  // iproute2 nests TCA_OPTIONS without NLA_F_NESTED; qdiscs parse it either way.
  const opts = w.nest(TCA_OPTIONS, false);
  const q = Buffer.alloc(TC_TBF_QOPT_LEN);
  // Rate: a link-layer-aware ratespec, so the kernel computes times itself (no rate table).
  q[1] = TC_LINKLAYER_ETHERNET;
  q.writeUInt32LE(Math.min(rate, 0xffffffff), 8);
  // Peak rate stays zero (bytes 12..23): no second bucket.
  q.writeUInt32LE(limit, 24);
  // The buffer in ticks is what kernels before TCA_TBF_BURST (3.13) read; newer ones derive it.
  q.writeUInt32LE(bytesToTicks(rate, spec.burstBytes), 28);
  w.bytes(TCA_TBF_PARMS, q);
  if (rate > 0xffffffff) w.u64(TCA_TBF_RATE64, rate);
  w.u32(TCA_TBF_BURST, spec.burstBytes);
  w.end(opts);
}

/** RTM_GETQDISC / RTM_DELQDISC body naming the qdisc at `parent`. */
export function encodeQdiscRef(w: MessageWriter, ifindex: number, ref: QdiscRef): void {
  writeTcmsg(w, ifindex, 0, qdiscParentId(ref.parent));
  if (ref.kind !== undefined) w.string(TCA_KIND, ref.kind);
}

function encodeActions(w: MessageWriter, type: number, actions: MirredSpec[], targets: number[]): void {
  if (actions.length === 0) throw new InvalidValueError("a filter needs at least one action");
  const list = w.nest(type, false);
  actions.forEach((a, i) => {
    if (a.kind !== "mirred") throw new InvalidValueError(`unsupported action kind "${(a as { kind: string }).kind}"`);
    if (a.mode !== "redirect" && a.mode !== "mirror") throw new InvalidValueError(`mirred mode must be redirect or mirror`);
    const ingress = a.direction === "ingress";
    // Actions are numbered from 1 in the order they run.
    const act = w.nest(i + 1, false);
    w.string(TCA_ACT_KIND, "mirred");
    const opts = w.nest(TCA_ACT_OPTIONS, false);
    const p = Buffer.alloc(TC_MIRRED_LEN);
    // A redirect ends the packet's path here (stolen); a mirror lets it continue (pipe).
    p.writeInt32LE(a.mode === "redirect" ? TC_ACT_STOLEN : TC_ACT_PIPE, 8);
    const eaction =
      a.mode === "redirect" ? (ingress ? TCA_INGRESS_REDIR : TCA_EGRESS_REDIR) : ingress ? TCA_INGRESS_MIRROR : TCA_EGRESS_MIRROR;
    p.writeInt32LE(eaction, 20);
    p.writeUInt32LE(targets[i] as number, 24);
    w.bytes(TCA_MIRRED_PARMS, p);
    w.end(opts);
    w.end(act);
  });
  w.end(list);
}

/** RTM_NEWTFILTER body; `targets` are the ifindexes of the actions' devices, in order. */
export function encodeFilter(w: MessageWriter, ifindex: number, spec: FilterSpec, targets: number[]): void {
  const prio = spec.prio ?? 1;
  const protocol = spec.protocol ?? ETH_P_ALL;
  const info = filterInfo(prio, protocol);
  const parent = filterParentId(spec.parent);
  if (spec.kind === "u32") {
    const handle = spec.handle ?? U32_MATCH_ALL_HANDLE;
    writeTcmsg(w, ifindex, handle, parent, info);
    w.string(TCA_KIND, "u32");
    const opts = w.nest(TCA_OPTIONS, false);
    // One key with mask 0 and value 0 matches every packet; terminal: the actions decide.
    const sel = Buffer.alloc(TC_U32_SEL_LEN + TC_U32_KEY_LEN);
    sel[0] = TC_U32_TERMINAL;
    sel[2] = 1; // nkeys
    w.bytes(TCA_U32_SEL, sel);
    encodeActions(w, TCA_U32_ACT, spec.actions, targets);
    w.end(opts);
  } else if (spec.kind === "matchall") {
    writeTcmsg(w, ifindex, spec.handle ?? 1, parent, info);
    w.string(TCA_KIND, "matchall");
    const opts = w.nest(TCA_OPTIONS, false);
    encodeActions(w, TCA_MATCHALL_ACT, spec.actions, targets);
    w.end(opts);
  } else {
    throw new InvalidValueError(`unsupported filter kind "${(spec as { kind: string }).kind}"`);
  }
}

/** RTM_DELTFILTER body. */
export function encodeFilterRef(w: MessageWriter, ifindex: number, ref: FilterRef): void {
  writeTcmsg(w, ifindex, ref.handle ?? 0, filterParentId(ref.parent), filterInfo(ref.prio, ref.protocol ?? ETH_P_ALL));
  if (ref.kind !== undefined) w.string(TCA_KIND, ref.kind);
}

/** RTM_GETTFILTER dump body: the filters of one parent on one device. */
export function encodeFilterDump(w: MessageWriter, ifindex: number, parent: "ingress" | number): void {
  writeTcmsg(w, ifindex, 0, filterParentId(parent));
}

// ---------------------------------------------------------------- decoding

function decodeTbf(opts: Attrs): TbfInfo | undefined {
  const at = opts.offset(TCA_TBF_PARMS);
  if (at === undefined || opts.size(TCA_TBF_PARMS) < TC_TBF_QOPT_LEN) return undefined;
  const b = opts.buf;
  const bytesPerSec = opts.u64(TCA_TBF_RATE64) ?? b.readUInt32LE(at + 8);
  const bufferTicks = b.readUInt32LE(at + 28);
  return {
    bytesPerSec,
    burstBytes: ticksToBytes(bytesPerSec, bufferTicks),
    limitBytes: b.readUInt32LE(at + 24),
    bufferTicks,
  };
}

export function decodeQdisc(m: MessageView): Qdisc {
  const { buf, payload, end } = m;
  const a = new Attrs(buf, payload + TCMSG_LEN, end);
  const q: Qdisc = {
    ifindex: buf.readInt32LE(payload + 4),
    kind: a.string(TCA_KIND) ?? "",
    handle: buf.readUInt32LE(payload + 8),
    parent: buf.readUInt32LE(payload + 12),
  };
  const opts = a.nested(TCA_OPTIONS);
  if (q.kind === "tbf" && opts) {
    const tbf = decodeTbf(opts);
    if (tbf) q.tbf = tbf;
  }
  return q;
}

function decodeActions(list: Attrs | undefined): TcAction[] {
  if (!list) return [];
  const found: [number, TcAction][] = [];
  Attrs.each(list.buf, list.start, list.end, (order, off, len) => {
    const act = new Attrs(list.buf, off, off + len);
    const kind = act.string(TCA_ACT_KIND) ?? "";
    const opts = act.nested(TCA_ACT_OPTIONS);
    const at = opts?.offset(TCA_MIRRED_PARMS);
    if (kind === "mirred" && opts && at !== undefined && opts.size(TCA_MIRRED_PARMS) >= TC_MIRRED_LEN) {
      const eaction = list.buf.readInt32LE(at + 20);
      found.push([
        order,
        {
          kind,
          mode: eaction === TCA_EGRESS_MIRROR || eaction === TCA_INGRESS_MIRROR ? "mirror" : "redirect",
          direction: eaction === TCA_INGRESS_REDIR || eaction === TCA_INGRESS_MIRROR ? "ingress" : "egress",
          ifindex: list.buf.readUInt32LE(at + 24),
        },
      ]);
    } else {
      found.push([order, { kind }]);
    }
  });
  return found.sort((x, y) => x[0] - y[0]).map(([, a]) => a);
}

export function decodeFilter(m: MessageView): Filter {
  const { buf, payload, end } = m;
  const a = new Attrs(buf, payload + TCMSG_LEN, end);
  const info = buf.readUInt32LE(payload + 16);
  const kind = a.string(TCA_KIND) ?? "";
  const opts = a.nested(TCA_OPTIONS);
  const actions = kind === "u32" ? opts?.nested(TCA_U32_ACT) : kind === "matchall" ? opts?.nested(TCA_MATCHALL_ACT) : undefined;
  return {
    ifindex: buf.readInt32LE(payload + 4),
    kind,
    parent: buf.readUInt32LE(payload + 12),
    handle: buf.readUInt32LE(payload + 8),
    prio: info >>> 16,
    protocol: ((info & 0xff) << 8) | ((info >>> 8) & 0xff),
    actions: decodeActions(actions),
  };
}
