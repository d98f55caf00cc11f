// The CNI_* environment: which variables each command needs, and what a valid value looks
// like. Every error is code 4 (InvalidEnvironment) and names the variable, except an
// unknown CNI_ARGS key, which is code 2 (an unsupported field) naming key and value.
import { CniError, type Command, ErrorCode } from "./types.ts";

export const COMMANDS: readonly Command[] = ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"];

/** The environment of one invocation, validated for its command. Unused variables are "" / []. */
export interface CniEnv {
  command: Command;
  containerId: string;
  netns: string;
  ifname: string;
  args: Record<string, string>;
  path: string[];
  /** CNI_NETNS_OVERRIDE=1|true: skip the "CNI_NETNS is our own netns" guard. */
  netnsOverride: boolean;
  /** Every CNI_* variable as given, to hand on to delegates unchanged. */
  vars: Record<string, string>;
}

export interface EnvOptions {
  /** CNI_ARGS keys the plugin understands beyond COMMON_CNI_ARGS (e.g. "IP", "MAC"). */
  knownArgs?: readonly string[];
}

/** Keys every runtime may send and every plugin accepts (libcni CommonArgs plus the Kubernetes pod identity). */
export const COMMON_CNI_ARGS: readonly string[] = [
  "IgnoreUnknown",
  "K8S_POD_NAME",
  "K8S_POD_NAMESPACE",
  "K8S_POD_INFRA_CONTAINER_ID",
  "K8S_POD_UID",
];

type Var = "CNI_CONTAINERID" | "CNI_NETNS" | "CNI_IFNAME" | "CNI_PATH";

/** SPEC "Parameters" plus libcni's CNI_PATH requirement; STATUS and VERSION need nothing more. */
const REQUIRED: Record<Command, readonly Var[]> = {
  ADD: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
  CHECK: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
  DEL: ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
  GC: ["CNI_PATH"],
  STATUS: [],
  VERSION: [],
};

function envError(msg: string): CniError {
  return new CniError(ErrorCode.InvalidEnvironment, msg);
}

/** CNI_COMMAND alone: VERSION must be answerable before anything else is looked at. */
export function parseCommand(env: Readonly<Record<string, string | undefined>>): Command {
  const raw = env.CNI_COMMAND;
  if (raw === undefined || raw === "") throw envError("required environment variable CNI_COMMAND is not set");
  if (!(COMMANDS as readonly string[]).includes(raw)) {
    throw envError(`CNI_COMMAND ${JSON.stringify(raw)} is not one of ${COMMANDS.join(", ")}`);
  }
  return raw as Command;
}

export function parseEnv(env: Readonly<Record<string, string | undefined>>, opts: EnvOptions = {}): CniEnv {
  const command = parseCommand(env);
  const vars: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (k.startsWith("CNI_") && v !== undefined) vars[k] = v;

  const required = REQUIRED[command];
  const missing = required.filter((name) => !env[name]);
  if (missing.length) {
    const noun = missing.length === 1 ? "variable" : "variables";
    throw envError(`required environment ${noun} ${missing.join(", ")} not set for ${command}`);
  }
  const uses = (name: Var) => required.includes(name) || (command === "DEL" && name === "CNI_NETNS");

  const out: CniEnv = {
    command,
    containerId: "",
    netns: "",
    ifname: "",
    args: {},
    path: [],
    netnsOverride: /^(1|true)$/i.test(env.CNI_NETNS_OVERRIDE ?? ""),
    vars,
  };
  if (uses("CNI_CONTAINERID")) out.containerId = validateContainerId(env.CNI_CONTAINERID ?? "");
  if (uses("CNI_NETNS") && env.CNI_NETNS) out.netns = validateNetnsPath(env.CNI_NETNS);
  if (uses("CNI_IFNAME")) out.ifname = validateIfname(env.CNI_IFNAME ?? "");
  if (env.CNI_PATH) out.path = env.CNI_PATH.split(":").filter((dir) => dir !== "");
  if (uses("CNI_PATH") && out.path.length === 0) throw envError("CNI_PATH has no directories");
  if (command !== "VERSION" && env.CNI_ARGS) out.args = parseCniArgs(env.CNI_ARGS, opts.knownArgs);
  return out;
}

const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

export function validateContainerId(id: string): string {
  // SPEC: "Must not be empty" — a missing required variable, so code 4 (libcni says 3; the spec text wins).
  if (id === "") throw envError("required environment variable CNI_CONTAINERID is empty");
  if (!CONTAINER_ID.test(id)) {
    throw envError(
      `CNI_CONTAINERID ${JSON.stringify(id)} is invalid: it must start with a letter or digit and contain only letters, digits, "_", "." and "-"`,
    );
  }
  return id;
}

export function validateNetnsPath(path: string): string {
  if (!path.startsWith("/")) throw envError(`CNI_NETNS must be an absolute path, got ${JSON.stringify(path)}`);
  if (path.split("/").includes("..")) throw envError(`CNI_NETNS must not contain ".." segments, got ${JSON.stringify(path)}`);
  return path;
}

/** Linux IFNAMSIZ is 16 bytes with the terminating NUL. */
const MAX_IFNAME_BYTES = 15;

export function validateIfname(name: string): string {
  if (name === "") throw envError("required environment variable CNI_IFNAME is empty");
  const bytes = Buffer.byteLength(name);
  if (bytes > MAX_IFNAME_BYTES) {
    throw envError(`CNI_IFNAME ${JSON.stringify(name)} is ${bytes} bytes long; the kernel allows at most ${MAX_IFNAME_BYTES}`);
  }
  if (name === "." || name === "..") throw envError(`CNI_IFNAME must not be "." or "..", got ${JSON.stringify(name)}`);
  if (/[/:\s]/u.test(name) || name.includes("\0")) {
    throw envError(`CNI_IFNAME ${JSON.stringify(name)} must not contain "/", ":" or whitespace`);
  }
  return name;
}

/**
 * CNI_ARGS "K=V;K2=V2" → {K: V, K2: V2}. Empty segments (a trailing ";") are skipped; a
 * segment without "=" or with an empty key is malformed (code 4). Keys outside
 * COMMON_CNI_ARGS ∪ `known` are code 2 unless IgnoreUnknown=1|true, in which case they are
 * dropped so the plugin only sees keys it declared.
 */
export function parseCniArgs(raw: string, known: readonly string[] = []): Record<string, string> {
  const pairs: [string, string][] = [];
  for (const segment of raw.split(";")) {
    if (segment === "") continue;
    const eq = segment.indexOf("=");
    if (eq <= 0) throw envError(`CNI_ARGS is malformed: ${JSON.stringify(segment)} is not a KEY=VALUE pair`);
    pairs.push([segment.slice(0, eq), segment.slice(eq + 1)]);
  }
  let ignoreUnknown = false;
  for (const [k, v] of pairs) {
    if (k !== "IgnoreUnknown") continue;
    if (/^(1|true)$/i.test(v)) ignoreUnknown = true;
    else if (/^(0|false)$/i.test(v)) ignoreUnknown = false;
    else throw envError(`CNI_ARGS: IgnoreUnknown must be 1, true, 0 or false, got ${JSON.stringify(v)}`);
  }
  const args: Record<string, string> = {};
  for (const [k, v] of pairs) {
    if (!COMMON_CNI_ARGS.includes(k) && !known.includes(k)) {
      if (ignoreUnknown) continue;
      throw new CniError(
        ErrorCode.UnsupportedField,
        `CNI_ARGS: unknown key ${JSON.stringify(k)} (value ${JSON.stringify(v)}); set IgnoreUnknown=1 to ignore it`,
      );
    }
    args[k] = v;
  }
  return args;
}
