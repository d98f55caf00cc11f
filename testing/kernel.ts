// Test helpers for anything that touches the kernel: unique names per test run, a throwaway
// netns, and read-back through iproute2's JSON output (never through our own API).
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";

/** Per-run tag set by the global setup; every kernel object a test makes starts with `bt<run>`. */
export const RUN = process.env.BERTH_TEST_RUN ?? "000";

/** A fresh name prefix (9 chars) for one test: leaves 6 chars for interface names. */
export function testPrefix(): string {
  return `bt${RUN}${randomBytes(2).toString("hex")}`;
}

export function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: "utf8", input, stdio: ["pipe", "pipe", "pipe"] });
}

/** Runs `ip -j [-d] <args>` (in netns `ns` when given) and parses its JSON. */
// biome-ignore lint/suspicious/noExplicitAny: callers read whatever fields they assert on
export function ipJson<T = any>(args: string[], ns?: string): T[] {
  const full = ns ? ["-n", ns, "-j", "-d", ...args] : ["-j", "-d", ...args];
  const out = sh("ip", full).trim();
  return out ? (JSON.parse(out) as T[]) : [];
}

// biome-ignore lint/suspicious/noExplicitAny: callers read whatever fields they assert on
export function bridgeJson<T = any>(args: string[], ns?: string): T[] {
  const full = ns ? ["-n", ns, "-j", ...args] : ["-j", ...args];
  const out = sh("bridge", full).trim();
  return out ? (JSON.parse(out) as T[]) : [];
}

export function addNetns(name: string): void {
  sh("ip", ["netns", "add", name]);
}

export function delNetns(name: string): void {
  try {
    sh("ip", ["netns", "del", name]);
  } catch {
    // already gone
  }
}

export function delLink(name: string, ns?: string): void {
  try {
    sh("ip", ns ? ["-n", ns, "link", "del", name] : ["link", "del", name]);
  } catch {
    // already gone
  }
}

/**
 * busybox ping from netns `fromNs`: one packet, one second, up to `tries` times, because a
 * whole suite running on two CPUs can delay one reply past the second. Unreachable is
 * unreachable every time; a single-shot check passes tries = 1.
 */
export function ping(fromNs: string, ip: string, tries = 3): boolean {
  for (let attempt = 0; attempt < tries; attempt++) {
    try {
      sh("ip", ["netns", "exec", fromNs, "busybox", "ping", "-c1", "-W1", ip]);
      return true;
    } catch {
      // try again
    }
  }
  return false;
}
