// Argument checks that run before any lookup (spec: INVALID_ARGUMENT first). Each check names
// the field it rejects.
import { isAbsolute } from "node:path";
import { invalidArgument } from "./errors.ts";
import type { VolumeCapability__Output } from "./proto/generated/csi/v1/VolumeCapability.ts";

const MAX_STRING = 128;
const MAX_MAP = 4096;
const MAX_PATH = 4096;
// U+0000-U+0008, U+000B, U+000C, U+000E-U+001F, U+007F-U+009F (spec: banned in names).
const BANNED_IN_NAMES = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]/;
const ANY_CONTROL = /[\u0000-\u001F\u007F-\u009F]/;
// Our own ids: a letter prefix and a uuid; nothing else ever names a volume or snapshot.
const OUR_ID = /^(vol|snap)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function byteLength(s: string): number {
  return Buffer.byteLength(s, "utf8");
}

export function requireName(field: string, value: string): string {
  if (!value) throw invalidArgument(`${field} is required`);
  if (byteLength(value) > MAX_STRING) throw invalidArgument(`${field} is longer than ${MAX_STRING} bytes`);
  if (BANNED_IN_NAMES.test(value)) throw invalidArgument(`${field} contains control characters`);
  return value;
}

/**
 * Ids are opaque to the CO but ours: any string that is not shaped like one of our ids cannot
 * name a volume, so it is treated as unknown rather than probed against the filesystem.
 */
export function requireId(field: string, value: string): string {
  if (!value) throw invalidArgument(`${field} is required`);
  if (byteLength(value) > MAX_STRING) throw invalidArgument(`${field} is longer than ${MAX_STRING} bytes`);
  if (ANY_CONTROL.test(value)) throw invalidArgument(`${field} contains control characters`);
  return value;
}

export function isOurId(kind: "vol" | "snap", value: string): boolean {
  return OUR_ID.test(value) && value.startsWith(`${kind}-`);
}

/**
 * A path field that is present, not oversized and free of control characters; what else is
 * wrong with it is left to the caller (see volumePathMatch).
 */
export function requirePathField(field: string, value: string): string {
  if (!value) throw invalidArgument(`${field} is required`);
  if (byteLength(value) > MAX_PATH) throw invalidArgument(`${field} is longer than ${MAX_PATH} bytes`);
  if (ANY_CONTROL.test(value)) throw invalidArgument(`${field} contains control characters`);
  return value;
}

/**
 * The normalised form of a path given where the spec asks "is volume X at this path?"
 * (NodeGetVolumeStats, NodeExpandVolume): a relative or `..` path cannot be where any volume
 * is, so it answers undefined (the caller says NOT_FOUND) instead of INVALID_ARGUMENT.
 */
export function volumePathMatch(value: string): string | undefined {
  try {
    return requirePath("path", value);
  } catch {
    return undefined;
  }
}

/** An absolute, normalised path without `..` or control characters. */
export function requirePath(field: string, value: string): string {
  if (!value) throw invalidArgument(`${field} is required`);
  if (byteLength(value) > MAX_PATH) throw invalidArgument(`${field} is longer than ${MAX_PATH} bytes`);
  if (ANY_CONTROL.test(value)) throw invalidArgument(`${field} contains control characters`);
  if (!isAbsolute(value)) throw invalidArgument(`${field} must be an absolute path, got ${JSON.stringify(value)}`);
  const parts = value.split("/");
  if (parts.includes("..") || parts.includes(".")) throw invalidArgument(`${field} must not contain "." or ".." components`);
  if (value.length > 1 && value.endsWith("/")) return value.replace(/\/+$/, "");
  return value.replace(/\/{2,}/g, "/");
}

export function checkMap(field: string, map: Record<string, string> | undefined): Record<string, string> {
  const m = map ?? {};
  let size = 0;
  for (const [k, v] of Object.entries(m)) size += byteLength(k) + byteLength(v);
  if (size > MAX_MAP) throw invalidArgument(`${field} is larger than ${MAX_MAP} bytes`);
  return m;
}

export type AccessType = "mount" | "block";

export const SUPPORTED_MODES = new Set([
  "SINGLE_NODE_WRITER",
  "SINGLE_NODE_READER_ONLY",
  "SINGLE_NODE_SINGLE_WRITER",
  "SINGLE_NODE_MULTI_WRITER",
]);

export const FS_TYPES = new Set(["ext4", "xfs"]);

export interface Capability {
  accessType: AccessType;
  mode: string;
  fsType: string; // "" for block
  mountFlags: string[];
  mountGroup: string;
}

export interface CapabilityRules {
  /**
   * Whether the access mode must be given (default true). GetCapacity asks about a kind of
   * volume, not a use of one: external-provisioner's capacity tracking sends the access type
   * alone, and its objects never appear if that is refused.
   */
  requireMode?: boolean;
}

/** Parses one capability; rejects what berth cannot serve (node-local: no MULTI_NODE modes). */
export function parseCapability(
  field: string,
  cap: VolumeCapability__Output | null | undefined,
  rules: CapabilityRules = {},
): Capability {
  if (!cap) throw invalidArgument(`${field} is required`);
  const mode = cap.access_mode?.mode ?? "UNKNOWN";
  if (mode === "UNKNOWN" && rules.requireMode !== false) throw invalidArgument(`${field}.access_mode is required`);
  if (mode !== "UNKNOWN" && !SUPPORTED_MODES.has(mode))
    throw invalidArgument(`${field}: access mode ${mode} is not supported by node-local volumes`);
  if (cap.access_type === "block" || (cap.block && !cap.mount)) {
    return { accessType: "block", mode, fsType: "", mountFlags: [], mountGroup: "" };
  }
  if (cap.mount) {
    const fsType = cap.mount.fs_type ?? "";
    if (fsType && !FS_TYPES.has(fsType))
      throw invalidArgument(`${field}: fs_type ${JSON.stringify(fsType)} is not supported (ext4, xfs)`);
    const flags = cap.mount.mount_flags ?? [];
    if (flags.reduce((n, f) => n + byteLength(f), 0) > MAX_MAP) throw invalidArgument(`${field}.mount_flags exceed 4 KiB`);
    return { accessType: "mount", mode, fsType, mountFlags: flags, mountGroup: cap.mount.volume_mount_group ?? "" };
  }
  throw invalidArgument(`${field}: access_type (block or mount) is required`);
}

export function parseCapabilities(
  field: string,
  caps: VolumeCapability__Output[] | undefined,
  rules: CapabilityRules = {},
): Capability[] {
  if (!caps || caps.length === 0) throw invalidArgument(`${field} is required`);
  return caps.map((c, i) => parseCapability(`${field}[${i}]`, c, rules));
}

export function isReadOnlyMode(mode: string): boolean {
  return mode === "SINGLE_NODE_READER_ONLY";
}

/** Modes that allow only one publication on the node at a time. */
export function isSinglePublisherMode(mode: string): boolean {
  return mode === "SINGLE_NODE_WRITER" || mode === "SINGLE_NODE_SINGLE_WRITER" || mode === "SINGLE_NODE_READER_ONLY";
}
