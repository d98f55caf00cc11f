// The machinery the CNI conformance rules run on: rule specs and verdicts, and a suite context
// that makes networks and attachments the way a runtime would (env + stdin, prevResult on
// DEL/CHECK), plus kernel read-back through iproute2.

import { execFileSync } from "node:child_process";
import { ipJson } from "../../testing/kernel.ts";
import { type CniCommand, type CniOutcome, describeOutcome, execPlugin } from "../../testing/plugin-exec.ts";
import { linkNames, type Sandbox } from "../../testing/sandbox.ts";
import { ipamIsPool, type NetworkShape, networkConfig, type PluginTarget } from "../lib/cni-netconf.ts";
import { type AttachmentView, attachmentView, versionAtLeast } from "../lib/cni-result.ts";

export type Level = "MUST" | "SHOULD" | "MAY";

export interface RuleSpec {
  id: string;
  level: Level;
  /** What is checked, ending with the SPEC.md section it comes from. */
  description: string;
}

export type Status = "PASS" | "FAIL" | "SKIP";

export interface Verdict {
  id: string;
  level: Level;
  description: string;
  status: Status;
  why?: string;
}

/** Thrown inside a check to fail it with a reason. */
export class RuleFailure extends Error {}
/** Thrown inside a check when the rule cannot be exercised against this plugin. */
export class RuleSkip extends Error {}

export function fail(why: string): never {
  throw new RuleFailure(why);
}

export function expect(cond: unknown, why: string): asserts cond {
  if (!cond) throw new RuleFailure(why);
}

/** Collects verdicts; a group of rules shares one setup and reports each rule separately. */
export class Reporter {
  readonly verdicts: Verdict[] = [];
  constructor(
    private readonly selected: (id: string) => boolean,
    private readonly emit: (v: Verdict) => void,
  ) {}

  wants(spec: RuleSpec): boolean {
    return this.selected(spec.id);
  }

  record(spec: RuleSpec, status: Status, why?: string): void {
    if (!this.selected(spec.id) || this.verdicts.some((v) => v.id === spec.id)) return;
    const v: Verdict = { id: spec.id, level: spec.level, description: spec.description, status, why };
    this.verdicts.push(v);
    this.emit(v);
  }

  /** Runs one rule's assertions; any throw is that rule's failure, never the suite's. */
  async check(spec: RuleSpec, body: () => Promise<void> | void): Promise<boolean> {
    if (!this.selected(spec.id)) return true;
    try {
      await body();
      this.record(spec, "PASS");
      return true;
    } catch (e) {
      if (e instanceof RuleSkip) this.record(spec, "SKIP", e.message);
      else this.record(spec, "FAIL", e instanceof Error ? e.message : String(e));
      return false;
    }
  }

  has(id: string): boolean {
    return this.verdicts.some((v) => v.id === id);
  }
}

export interface RuleGroup {
  name: string;
  rules: RuleSpec[];
  run(ctx: SuiteContext, rep: Reporter): Promise<void>;
}

/** One (container id, netns, ifname) the suite attached to a network. */
export interface Attachment {
  cid: string;
  ifname: string;
  netns: { name: string; path: string };
  network: Network;
  cniVersion: string;
  add: CniOutcome;
  /** The ADD result, when ADD succeeded. */
  result?: Record<string, unknown>;
}

export interface InvokeOptions {
  cid?: string;
  netnsPath?: string;
  ifname?: string;
  /** Replaces the environment entirely beyond CNI_PATH (to drop or corrupt variables). */
  env?: Record<string, string | undefined>;
  stdin?: string | object;
}

export class Network {
  constructor(
    readonly ctx: SuiteContext,
    readonly shape: NetworkShape,
  ) {}

  get name(): string {
    return this.shape.name;
  }

  config(cniVersion: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { ...networkConfig(this.ctx.target, this.ctx.sandbox, this.shape, cniVersion), ...extra };
  }

  invoke(
    command: CniCommand,
    cniVersion: string,
    o: InvokeOptions & { extra?: Record<string, unknown> } = {},
  ): Promise<CniOutcome> {
    return this.ctx.invoke(command, {
      ...o,
      stdin: o.stdin ?? this.config(cniVersion, o.extra),
    });
  }

  /** ADD into a fresh netns (or the given one). */
  async attach(
    cniVersion: string,
    o: { netns?: { name: string; path: string }; ifname?: string; cid?: string } = {},
  ): Promise<Attachment> {
    const netns = o.netns ?? this.ctx.sandbox.createNetns("c");
    const cid = o.cid ?? this.ctx.newContainerId();
    const ifname = o.ifname ?? "eth0";
    const add = await this.invoke("ADD", cniVersion, { cid, netnsPath: netns.path, ifname });
    const a: Attachment = { cid, ifname, netns, network: this, cniVersion, add };
    if (add.exitCode === 0 && typeof add.json === "object" && add.json !== null) a.result = add.json as Record<string, unknown>;
    return a;
  }

  /** ADD that must succeed; throws a RuleFailure naming the plugin's answer otherwise. */
  async mustAttach(cniVersion: string, o: Parameters<Network["attach"]>[1] = {}): Promise<Attachment> {
    const a = await this.attach(cniVersion, o);
    if (!a.result) fail(`ADD failed: ${describeOutcome(a.add)}`);
    return a;
  }

  /** DEL the way a runtime does, with prevResult from 0.4.0 on. */
  detach(a: Attachment, o: { withNetns?: boolean; withPrevResult?: boolean } = {}): Promise<CniOutcome> {
    const extra =
      (o.withPrevResult ?? true) && a.result && this.ctx.versionAtLeast(a.cniVersion, "0.4.0") ? { prevResult: a.result } : {};
    return this.invoke("DEL", a.cniVersion, {
      cid: a.cid,
      ifname: a.ifname,
      netnsPath: (o.withNetns ?? true) ? a.netns.path : undefined,
      extra,
    });
  }

  check(a: Attachment, prevResult: unknown = a.result): Promise<CniOutcome> {
    return this.invoke("CHECK", a.cniVersion, {
      cid: a.cid,
      ifname: a.ifname,
      netnsPath: a.netns.path,
      extra: { prevResult },
    });
  }
}

/** A plugin chained after the main one: its executable name in cniPath and extra config keys. */
export interface ChainPlugin {
  type: string;
  /** Merged into the plugin's config (e.g. runtimeConfig, or an implementation's own knobs). */
  config: Record<string, unknown>;
}

export interface SuiteOptions {
  target: PluginTarget;
  /** Plugins after the main one in the chaining rules, in list order (empty: those rules skip). */
  chain: ChainPlugin[];
}

export class SuiteContext {
  /** supportedVersions from VERSION; filled by the VERSION group, which runs first. */
  supported: string[] = [];
  private containerSeq = 0;
  private networkSeq = 0;

  constructor(
    readonly sandbox: Sandbox,
    readonly opts: SuiteOptions,
  ) {}

  get target(): PluginTarget {
    return this.opts.target;
  }

  versionAtLeast(v: string, min: string): boolean {
    return versionAtLeast(v, min);
  }

  supports(v: string): boolean {
    return this.supported.includes(v);
  }

  /** The newest version the plugin supports; rules that are not about versions use it. */
  get newest(): string {
    const order = ["1.1.0", "1.0.0", "0.4.0", "0.3.1", "0.3.0", "0.2.0", "0.1.0"];
    return order.find((v) => this.supports(v)) ?? "1.0.0";
  }

  requireVersion(v: string): void {
    if (!this.supports(v)) throw new RuleSkip(`plugin does not support cniVersion ${v}`);
  }

  requirePool(): void {
    if (!ipamIsPool(this.target.ipam)) throw new RuleSkip(`IPAM ${this.target.ipam} has no address pool`);
  }

  newContainerId(): string {
    return `${this.sandbox.prefix}-cid-${this.containerSeq++}`;
  }

  /** A network with its own name and /24, optionally a pool of only `size` addresses (.10 on). */
  newNetwork(poolSize?: number): Network {
    const { subnet, base } = this.sandbox.allocateSubnet();
    const shape: NetworkShape = { name: `${this.sandbox.prefix}-net${this.networkSeq++}`, subnet, base };
    if (poolSize !== undefined) {
      shape.rangeStart = 10;
      shape.rangeEnd = 10 + poolSize - 1;
    }
    return new Network(this, shape);
  }

  invoke(command: CniCommand, o: InvokeOptions, type = this.target.type): Promise<CniOutcome> {
    const env = o.env ?? {
      CNI_COMMAND: command,
      CNI_CONTAINERID: o.cid,
      CNI_NETNS: o.netnsPath,
      CNI_IFNAME: o.ifname,
    };
    return execPlugin({ cniPath: this.target.cniPath, type, env, stdin: o.stdin });
  }
}

// ---- kernel read-back (iproute2 JSON, never the plugin's own view) ----

interface AddrJson {
  ifname: string;
  address?: string;
  mtu?: number;
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

export function readInterface(ifname: string, ns?: string): AddrJson | undefined {
  try {
    return ipJson<AddrJson>(["addr", "show", "dev", ifname], ns)[0];
  } catch {
    return undefined;
  }
}

/** Problems between what the result claims and what the kernel holds; empty when they agree. */
export function kernelProblems(
  a: Attachment,
  view: AttachmentView = attachmentView(a.result),
  skipMacOf: string[] = [],
): string[] {
  const p: string[] = [];
  const dev = readInterface(a.ifname, a.netns.name);
  if (!dev) return [`${a.ifname} does not exist in netns ${a.netns.name}`];
  const local = new Set((dev.addr_info ?? []).map((i) => `${i.local}/${i.prefixlen}`));
  if (view.ips.length === 0) p.push("result lists no IP addresses");
  for (const ip of view.ips)
    if (!local.has(ip.address)) p.push(`${ip.address} not on ${a.ifname} (kernel has ${[...local].join(", ")})`);
  const mine = view.interfaces.find((i) => i.name === a.ifname && i.sandbox);
  if (mine?.mac && mine.mac.toLowerCase() !== dev.address?.toLowerCase())
    p.push(`${a.ifname} MAC is ${dev.address}, result says ${mine.mac}`);
  for (const host of view.interfaces.filter((i) => !i.sandbox)) {
    const h = readInterface(host.name);
    if (!h) p.push(`host interface ${host.name} from the result does not exist`);
    else if (host.mac && !skipMacOf.includes(host.name) && host.mac.toLowerCase() !== h.address?.toLowerCase())
      p.push(`host interface ${host.name} MAC is ${h.address}, result says ${host.mac}`);
  }
  const routes = ipJson<{ dst: string }>(["-4", "route", "show"], a.netns.name).map((r) =>
    r.dst === "default" ? "0.0.0.0/0" : r.dst,
  );
  for (const r of view.routes) {
    if (!r.dst.includes(":") && !routes.includes(r.dst))
      p.push(`route ${r.dst} from the result is not in the netns (has ${routes.join(", ")})`);
  }
  return p;
}

/** Host links the result says belong to this attachment alone (veth peers; not the shared bridge). */
export function attachmentHostLinks(a: Attachment, sandbox: Sandbox): string[] {
  return attachmentView(a.result)
    .interfaces.filter((i) => !i.sandbox && i.name !== sandbox.bridgeName)
    .map((i) => i.name);
}

export function hostLinkSet(): Set<string> {
  return new Set(linkNames());
}

/**
 * Host links that appeared since `before` and may be the implementation's doing in this
 * sandbox. Other tests on the host create links meanwhile: a bridge other than the sandbox's,
 * or a link enslaved to another bridge, cannot come from a call configured with this sandbox's
 * bridge, so they are not counted; nor is a link whose peer lives in another namespace (if that
 * namespace is the rule's own, the rule sees the peer there), nor a test object of another
 * test run (named bt<run tag>..., as every test on this host names what it creates).
 */
export function newHostLinks(before: Set<string>, sandbox: Sandbox): string[] {
  const rows = JSON.parse(execFileSync("ip", ["-j", "-d", "link", "show"], { encoding: "utf8" }) || "[]") as {
    ifname: string;
    master?: string;
    link_netnsid?: number;
    linkinfo?: { info_kind?: string };
  }[];
  return rows
    .filter((l) => !before.has(l.ifname) && l.ifname !== sandbox.bridgeName)
    .filter((l) => l.linkinfo?.info_kind !== "bridge")
    .filter((l) => l.master === undefined || l.master === sandbox.bridgeName)
    .filter((l) => l.link_netnsid === undefined)
    .filter((l) => !/^bt[0-9a-f]{3}/.test(l.ifname) || l.ifname.startsWith(sandbox.prefix))
    .map((l) => l.ifname);
}
