// A throwaway world for one run of a black-box suite: netns, a bridge name, a dummy master
// link, a temp dataDir and a private /16 of IPv4 subnets. Everything is named with one unique
// prefix and removed by cleanup(), which also runs on SIGINT/SIGTERM and normal exit.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { addNetns, delLink, delNetns, ipJson, sh, testPrefix } from "./kernel.ts";

interface RouteJson {
  dst: string;
}

export class Sandbox {
  readonly prefix = testPrefix();
  /** Bridge name the suite gives bridge-type plugins (≤ 15 bytes). */
  readonly bridgeName = `${this.prefix}br`;
  readonly dataDir = mkdtempSync(join(tmpdir(), `${this.prefix}-`));
  private readonly netnsNames = new Set<string>();
  private readonly hostLinks = new Set<string>();
  private readonly secondOctet: number;
  private nextSubnet = 0;
  private nextNetns = 0;
  private cleaned = false;
  private readonly onSignal = (sig: NodeJS.Signals) => {
    this.cleanup();
    process.kill(process.pid, sig);
  };
  private readonly onExit = () => this.cleanup();

  constructor() {
    this.secondOctet = pickFreeSecondOctet();
    process.once("SIGINT", this.onSignal);
    process.once("SIGTERM", this.onSignal);
    process.once("exit", this.onExit);
  }

  /** A fresh, aligned /prefixLen (16 < prefixLen ≤ 24) inside this run's private 10.X.0.0/16; the /16 overlaps no host route. */
  allocateSubnet(prefixLen = 24): { subnet: string; base: string } {
    const span = 2 ** (24 - prefixLen);
    const third = Math.ceil(this.nextSubnet / span) * span;
    if (third + span > 256) throw new Error("sandbox ran out of subnets");
    this.nextSubnet = third + span;
    const base = `10.${this.secondOctet}.${third}`;
    return { subnet: `${base}.0/${prefixLen}`, base };
  }

  /** Creates a netns named `<prefix>-<label><n>` and returns its name and path. */
  createNetns(label: string): { name: string; path: string } {
    const name = `${this.prefix}-${label}${this.nextNetns++}`;
    addNetns(name);
    this.netnsNames.add(name);
    return { name, path: `/run/netns/${name}` };
  }

  deleteNetns(name: string): void {
    delNetns(name);
    this.netnsNames.delete(name);
  }

  /** A dummy link on the host, made on first use, to serve as macvlan/ipvlan master; never eth0. */
  macvlanMaster(): string {
    const name = `${this.prefix}m`;
    if (!this.hostLinks.has(name)) {
      sh("ip", ["link", "add", name, "type", "dummy"]);
      sh("ip", ["link", "set", name, "up"]);
      this.hostLinks.add(name);
    }
    return name;
  }

  cleanup(): void {
    if (this.cleaned) return;
    this.cleaned = true;
    process.off("SIGINT", this.onSignal);
    process.off("SIGTERM", this.onSignal);
    process.off("exit", this.onExit);
    // Deleting a netns destroys the veth pairs inside it, and with them their host ends.
    for (const ns of this.netnsNames) delNetns(ns);
    this.netnsNames.clear();
    delLink(this.bridgeName);
    for (const l of this.hostLinks) delLink(l);
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Picks X so that 10.X.0.0/16 overlaps none of the host's IPv4 routes. */
function pickFreeSecondOctet(): number {
  const routes = ipJson<RouteJson>(["-4", "route", "show", "table", "all"]);
  const taken = routes.map((r) => r.dst).filter((d) => d !== "default" && /^\d/.test(d));
  for (let attempt = 0; attempt < 200; attempt++) {
    const x = 100 + Math.floor(Math.random() * 150);
    const lo = ipv4ToInt(`10.${x}.0.0`);
    const hi = lo + 0xffff;
    const clash = taken.some((dst) => {
      const [addr, len] = dst.split("/");
      const bits = len === undefined ? 32 : Number(len);
      const start = ipv4ToInt(addr!) & (bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0);
      const end = start + 2 ** (32 - bits) - 1;
      return start <= hi && end >= lo;
    });
    if (!clash) return x;
  }
  throw new Error("no free 10.X.0.0/16 for the sandbox");
}

export function ipv4ToInt(a: string): number {
  return a.split(".").reduce((n, o) => n * 256 + Number(o), 0);
}

/** Names of the links in a netns (or on the host when ns is undefined). */
export function linkNames(ns?: string): string[] {
  return ipJson<{ ifname: string }>(["link", "show"], ns).map((l) => l.ifname);
}
