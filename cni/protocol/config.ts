// The network configuration on stdin: decode, check the keys every plugin relies on, pick
// the version, and upconvert prevResult. Plus the spec's precedence rules for values that can
// arrive by several routes (requested IPs and MAC) and the GC attachment list.
import { cidrFamily, ipFamily, isMac } from "../address/address.ts";
import { parseResult } from "./result.ts";
import { goFields } from "./schema.ts";
import { type Attachment, CniError, ErrorCode, type NetConf } from "./types.ts";
import { type CniVersion, pickVersion } from "./version.ts";

/** Configs are a few KiB; anything past this is a runaway writer, not a network config. */
export const MAX_CONFIG_BYTES = 1024 * 1024;

const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

function configError(msg: string): CniError {
  return new CniError(ErrorCode.InvalidConfig, `invalid config: ${msg}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function tooLargeError(limit = MAX_CONFIG_BYTES): CniError {
  return new CniError(ErrorCode.IoFailure, `network configuration on stdin is larger than ${limit} bytes`);
}

/** Decodes stdin into a JSON object (code 6 on failure). */
export function decodeConfig(stdin: Buffer): Record<string, unknown> {
  if (stdin.length > MAX_CONFIG_BYTES) throw tooLargeError();
  const text = stdin.toString("utf8");
  if (text.trim() === "") throw new CniError(ErrorCode.DecodeFailure, "no network configuration on stdin");
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new CniError(ErrorCode.DecodeFailure, `network configuration is not valid JSON: ${(e as Error).message}`);
  }
  if (!isObject(raw)) throw new CniError(ErrorCode.DecodeFailure, "network configuration must be a JSON object");
  return raw;
}

// The keys of the sections every plugin shares, as the reference types spell them. Each
// section's keys are matched the way Go's decoder matches them (see goFields); a plugin's own
// keys are matched by its schema, host-local's and static's by their parsers.
export const NETCONF_KEYS = [
  "cniVersion",
  "cniVersions",
  "name",
  "type",
  "capabilities",
  "ipam",
  "dns",
  "runtimeConfig",
  "args",
  "prevResult",
  "ipMasq",
  "logFile",
  "cni.dev/valid-attachments",
  "cni.dev/attachments",
] as const;
const IPAM_KEYS = ["type"];
const DNS_KEYS = ["nameservers", "domain", "search", "options"];
/** The capability arguments berth reads (CONVENTIONS.md names). */
export const RUNTIME_CONFIG_KEYS = ["portMappings", "ipRanges", "bandwidth", "dns", "ips", "mac"];
const ARGS_KEYS = ["cni"];
const ARGS_CNI_KEYS = ["ips", "mac"];
const ATTACHMENT_FIELDS = ["containerID", "ifname"];

/** `section` of `obj` with its keys matched to `names`, when it is an object; else unchanged. */
function matchSection(obj: Record<string, unknown>, section: string, names: readonly string[]): void {
  const v = obj[section];
  if (isObject(v)) obj[section] = goFields(v, names);
}

/** The config with the shared sections' keys spelled as declared (a copy where any differ). */
function matchSpecKeys(raw: Record<string, unknown>): Record<string, unknown> {
  const top = { ...goFields(raw, NETCONF_KEYS) };
  matchSection(top, "ipam", IPAM_KEYS);
  matchSection(top, "dns", DNS_KEYS);
  matchSection(top, "runtimeConfig", RUNTIME_CONFIG_KEYS);
  matchSection(top, "args", ARGS_KEYS);
  if (isObject(top.args)) {
    top.args = { ...top.args };
    matchSection(top.args as Record<string, unknown>, "cni", ARGS_CNI_KEYS);
  }
  return top;
}

/**
 * Decodes and checks the config for one invocation. The result has `cniVersion` set to the
 * version to answer in and `prevResult` in the newest result shape.
 */
export function parseNetConf(
  stdin: Buffer,
  opts: { command?: string } = {},
): { config: NetConf; version: CniVersion; droppedPrevResult?: string } {
  const raw = matchSpecKeys(decodeConfig(stdin));
  const version = pickVersion(raw.cniVersion, raw.cniVersions);

  if (raw.name === undefined || raw.name === "") throw configError(`"name" is required`);
  if (typeof raw.name !== "string" || !NETWORK_NAME.test(raw.name)) {
    throw configError(
      `"name" must start with a letter or digit and contain only letters, digits, "_", "." and "-", got ${JSON.stringify(raw.name)}`,
    );
  }
  if (raw.type === undefined || raw.type === "") throw configError(`"type" is required`);
  if (typeof raw.type !== "string") throw configError(`"type" must be a string, got ${JSON.stringify(raw.type)}`);

  for (const key of ["runtimeConfig", "args", "dns"] as const) {
    if (raw[key] !== undefined && raw[key] !== null && !isObject(raw[key])) {
      throw configError(`"${key}" must be an object, got ${JSON.stringify(raw[key])}`);
    }
  }
  if (raw.ipam !== undefined && raw.ipam !== null) {
    if (!isObject(raw.ipam)) throw configError(`"ipam" must be an object, got ${JSON.stringify(raw.ipam)}`);
    // An empty ipam object is what runtimes write for "no IPAM"; a present type must be a name.
    if (raw.ipam.type !== undefined && (typeof raw.ipam.type !== "string" || raw.ipam.type === "")) {
      throw configError(`"ipam.type" must be a non-empty string, got ${JSON.stringify(raw.ipam.type)}`);
    }
  }
  if (raw.ipMasq !== undefined && typeof raw.ipMasq !== "boolean") {
    throw configError(`"ipMasq" must be true or false, got ${JSON.stringify(raw.ipMasq)}`);
  }
  if (raw.logFile !== undefined && typeof raw.logFile !== "string") {
    throw configError(`"logFile" must be a string, got ${JSON.stringify(raw.logFile)}`);
  }

  const config = { ...raw, cniVersion: version } as NetConf;
  delete config.prevResult;
  if (raw.prevResult !== undefined && raw.prevResult !== null) {
    try {
      config.prevResult = parseResult(raw.prevResult, version, "prevResult");
    } catch (e) {
      // DEL works from what the plugin recorded at ADD; prevResult is only a hint there, and a
      // broken one must not keep an attachment's lease and links alive.
      if (opts.command !== "DEL" || !(e instanceof CniError)) throw e;
      return { config, version, droppedPrevResult: e.message };
    }
  }
  return { config, version };
}

/** The part of a Request the precedence rules read. */
interface Sources {
  config: NetConf;
  args: Record<string, string>;
}

function cniArgsSection(config: NetConf): Record<string, unknown> | undefined {
  const cni = config.args?.cni;
  if (cni === undefined || cni === null) return undefined;
  if (!isObject(cni)) throw configError(`"args.cni" must be an object, got ${JSON.stringify(cni)}`);
  return cni;
}

function checkIps(list: unknown, where: string): string[] {
  if (!Array.isArray(list)) throw configError(`"${where}" must be an array of IP addresses, got ${JSON.stringify(list)}`);
  return list.map((ip, i) => {
    const ok = typeof ip === "string" && (ip.includes("/") ? cidrFamily(ip) !== null : ipFamily(ip) !== null);
    if (!ok) throw configError(`"${where}[${i}]" must be an IP address (optionally with /prefix), got ${JSON.stringify(ip)}`);
    return ip as string;
  });
}

/**
 * The IPs the runtime asked for, by the spec's precedence: runtimeConfig.ips, else
 * args.cni.ips, else CNI_ARGS IP= (comma-separated). The CNI_ARGS copy is ignored whenever
 * `args` carries the value. [] when nothing was requested.
 */
export function requestedIps(req: Sources): string[] {
  const rc = req.config.runtimeConfig?.ips;
  if (rc !== undefined && rc !== null && !(Array.isArray(rc) && rc.length === 0)) return checkIps(rc, "runtimeConfig.ips");
  const fromArgs = cniArgsSection(req.config)?.ips;
  if (fromArgs !== undefined && fromArgs !== null) return checkIps(fromArgs, "args.cni.ips");
  const env = req.args.IP;
  if (env) return checkIps(env.split(","), "CNI_ARGS IP");
  return [];
}

function checkMac(mac: unknown, where: string): string {
  if (typeof mac !== "string" || !isMac(mac)) throw configError(`"${where}" must be a MAC address, got ${JSON.stringify(mac)}`);
  return mac;
}

/** The MAC the runtime asked for: runtimeConfig.mac, else args.cni.mac, else CNI_ARGS MAC=. */
export function requestedMac(req: Sources): string | undefined {
  const rc = req.config.runtimeConfig?.mac;
  if (rc !== undefined && rc !== null && rc !== "") return checkMac(rc, "runtimeConfig.mac");
  const fromArgs = cniArgsSection(req.config)?.mac;
  if (fromArgs !== undefined && fromArgs !== null && fromArgs !== "") return checkMac(fromArgs, "args.cni.mac");
  if (req.args.MAC) return checkMac(req.args.MAC, "CNI_ARGS MAC");
  return undefined;
}

const ATTACHMENT_KEYS = ["cni.dev/valid-attachments", "cni.dev/attachments"] as const;

/**
 * The attachments GC must keep: the union of "cni.dev/valid-attachments" and the key the
 * 1.1.0 tag spelled "cni.dev/attachments" (libcni sends both). Neither key, or null, is an
 * empty list: libcni leaves both out when the runtime names no valid attachment (cnitool gc
 * does, after it has run DEL for every attachment it cached), and the reference plugins'
 * decoder reads an absent list as empty. Every attachment of the network is then garbage.
 */
export function gcAttachments(config: NetConf): Attachment[] {
  const seen = new Map<string, Attachment>();
  for (const key of ATTACHMENT_KEYS) {
    const list: unknown = config[key];
    if (list === undefined || list === null) continue;
    if (!Array.isArray(list)) throw configError(`"${key}" must be an array, got ${JSON.stringify(list)}`);
    list.forEach((a, i) => {
      const fields = isObject(a) ? goFields(a, ATTACHMENT_FIELDS) : undefined;
      if (!fields || typeof fields.containerID !== "string" || fields.containerID === "" || typeof fields.ifname !== "string") {
        throw configError(`"${key}[${i}]" must be {"containerID": string, "ifname": string}, got ${JSON.stringify(a)}`);
      }
      seen.set(`${fields.containerID}\0${fields.ifname}`, { containerID: fields.containerID, ifname: fields.ifname });
    });
  }
  return [...seen.values()];
}
