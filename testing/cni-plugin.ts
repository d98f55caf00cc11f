// What the main-plugin tests (bridge, ptp, macvlan) share: calling a plugin function in-process
// the way its executable would be called, and reading state back from the kernel rather than
// from the plugin (the lease database: testing/leases.ts).
import { randomBytes } from "node:crypto";
import { handleInvocation } from "../cni/protocol/invocation.ts";
import type { Plugin, Result } from "../cni/protocol/types.ts";
import { ipJson } from "./kernel.ts";

/** A result on success, an error object ({code, msg}) on failure, {} for an empty stdout. */
export type Reply = Result & { code?: number; msg?: string };

export interface Outcome {
  exitCode: number;
  json: Reply;
}

/**
 * A random unique-local /64 prefix ending in `last`, e.g. "fd3c:1a2b:9f00:1". Groups have no
 * leading zeros, so the text matches the kernel's canonical form.
 */
export function ulaPrefix(last: number): string {
  const group = () => (0x1000 + (randomBytes(2).readUInt16BE() % 0xf000)).toString(16);
  return `fd${randomBytes(1).toString("hex")}:${group()}:${group()}:${last}`;
}

/** One CNI command through the plugin's function, with the env its executable would get. */
export async function invokePlugin(
  plugin: Plugin,
  command: string,
  config: Record<string, unknown>,
  c: { id: string; path?: string; ifname?: string },
): Promise<Outcome> {
  const env = {
    CNI_COMMAND: command,
    CNI_CONTAINERID: c.id,
    CNI_NETNS: c.path,
    CNI_IFNAME: c.ifname ?? "eth0",
    CNI_PATH: "/usr/lib/cni",
  };
  const out = await handleInvocation(plugin, env, Buffer.from(JSON.stringify(config)));
  return { exitCode: out.exitCode, json: out.stdout.trim() ? (JSON.parse(out.stdout) as Reply) : ({} as Reply) };
}

/** Host links whose names start with `prefix`, as the kernel lists them. */
export function hostLinksStartingWith(prefix: string): string[] {
  return ipJson<{ ifname: string }>(["link", "show"])
    .map((l) => l.ifname)
    .filter((n) => n.startsWith(prefix));
}
