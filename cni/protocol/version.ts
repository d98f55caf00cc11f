// CNI spec versions: which ones berth speaks, how to compare them, and which commands each allows.
import { CniError, ErrorCode } from "./types.ts";

/** Every version berth answers in, oldest first (what VERSION reports). */
export const SUPPORTED_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number];

export const NEWEST_VERSION: CniVersion = "1.1.0";
/** SPEC: a config without cniVersion is 0.1.0 (and so gets an ip4-style result). */
export const IMPLICIT_VERSION: CniVersion = "0.1.0";

export function isSupportedVersion(v: unknown): v is CniVersion {
  return typeof v === "string" && (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/** Validates a config's cniVersion (absent → 0.1.0); anything else unknown is code 1 naming it. */
export function requireSupportedVersion(v: unknown): CniVersion {
  if (v === undefined) return IMPLICIT_VERSION;
  if (typeof v !== "string") {
    throw new CniError(ErrorCode.InvalidConfig, `invalid config: "cniVersion" must be a string, got ${JSON.stringify(v)}`);
  }
  if (!isSupportedVersion(v)) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `incompatible CNI version: "${v}" is not supported`,
      `supported versions: ${SUPPORTED_VERSIONS.join(", ")}`,
    );
  }
  return v;
}

/** Orders two supported versions: negative when a < b. */
export function compareVersions(a: CniVersion, b: CniVersion): number {
  return SUPPORTED_VERSIONS.indexOf(a) - SUPPORTED_VERSIONS.indexOf(b);
}

export function versionAtLeast(v: CniVersion, min: CniVersion): boolean {
  return compareVersions(v, min) >= 0;
}

/**
 * The version to answer in when a conflist declares `cniVersions` next to `cniVersion`:
 * the highest one berth supports (SPEC 1.1). Unknown entries in the list are skipped;
 * if none is supported the single `cniVersion` decides (and is validated as usual).
 */
export function pickVersion(cniVersion: unknown, cniVersions: unknown): CniVersion {
  if (cniVersions !== undefined) {
    if (!Array.isArray(cniVersions) || !cniVersions.every((v) => typeof v === "string")) {
      throw new CniError(ErrorCode.InvalidConfig, `invalid config: "cniVersions" must be an array of strings`);
    }
    const candidates: unknown[] = cniVersion === undefined ? cniVersions : [...cniVersions, cniVersion];
    const supported = candidates.filter(isSupportedVersion).sort(compareVersions);
    const highest = supported.at(-1);
    if (highest) return highest;
  }
  return requireSupportedVersion(cniVersion);
}

/** The oldest version in which each command exists (libcni: CHECK ≥ 0.4.0, GC/STATUS ≥ 1.1.0). */
const COMMAND_SINCE: Record<string, CniVersion> = { CHECK: "0.4.0", GC: "1.1.0", STATUS: "1.1.0" };

export function requireCommandInVersion(command: string, v: CniVersion): void {
  const since = COMMAND_SINCE[command];
  if (since && !versionAtLeast(v, since)) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `incompatible CNI version: ${command} needs cniVersion ${since} or newer, config has "${v}"`,
    );
  }
}
