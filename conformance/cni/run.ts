// CNI spec conformance suite, black-box: runs plugin executables from --cni-path against the
// real kernel in throwaway netns and prints one line per rule, then "N passed, N failed".
//
//   node --import tsx conformance/cni/run.ts --cni-path /usr/lib/cni --type bridge --ipam host-local
//
// Exit status: 0 when no rule failed, 1 when any failed, 2 on bad usage.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Sandbox } from "../../testing/sandbox.ts";
import { type ChainPlugin, Reporter, type RuleGroup, SuiteContext, type Verdict } from "./harness.ts";
import { ruleGroups } from "./rules.ts";

export interface SuiteArgs {
  cniPath: string;
  type: string;
  ipam: string;
  /** Plugins chained after `type` in the chaining rules, in list order. */
  chain: ChainPlugin[];
  only?: string;
  json: boolean;
}

const USAGE = `usage: run.ts --cni-path DIR --type TYPE --ipam TYPE [--chain-type TYPE]... [--chain-config TYPE=JSON]...
              [--only PATTERN] [--json]
  --only PATTERN         run rules whose id matches the regular expression (case-insensitive)
  --chain-type T         plugin chained after TYPE in the chaining rules; repeat for a longer chain,
                         in list order (default: tuning, then loopback, if in DIR)
  --chain-config T=JSON  extra keys for chained plugin T's config, e.g. runtimeConfig with portMappings
  --json                 print one JSON document instead of lines`;

/** Keys the suite itself sets on every chained config. */
const RESERVED_CHAIN_KEYS = ["cniVersion", "name", "type", "prevResult"];

class UsageError extends Error {}

export function parseSuiteArgs(argv: string[]): SuiteArgs {
  const { values } = parseArgs({
    args: argv,
    options: {
      "cni-path": { type: "string" },
      type: { type: "string" },
      ipam: { type: "string" },
      "chain-type": { type: "string", multiple: true },
      "chain-config": { type: "string", multiple: true },
      only: { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) throw new UsageError("");
  const cniPath = values["cni-path"];
  if (!cniPath || !values.type || !values.ipam) throw new UsageError("--cni-path, --type and --ipam are required");
  for (const exe of [values.type, values.ipam, ...(values["chain-type"] ?? [])]) {
    if (!existsSync(join(cniPath, exe))) throw new UsageError(`no executable ${exe} in ${cniPath}`);
  }
  if (values.only !== undefined) {
    try {
      new RegExp(values.only, "i");
    } catch {
      throw new UsageError(`--only ${values.only} is not a regular expression`);
    }
  }
  const fallback = ["tuning", "loopback", "berth-loopback"].find((t) => existsSync(join(cniPath, t)));
  const types = values["chain-type"] ?? (fallback ? [fallback] : []);
  const extra = parseChainConfigs(values["chain-config"] ?? [], types);
  const chain = types.map((type) => ({ type, config: extra.get(type) ?? {} }));
  return { cniPath, type: values.type, ipam: values.ipam, chain, only: values.only, json: values.json ?? false };
}

/** `TYPE=JSON` arguments as a map from chained type to its extra config object. */
function parseChainConfigs(args: string[], types: string[]): Map<string, Record<string, unknown>> {
  const out = new Map<string, Record<string, unknown>>();
  for (const arg of args) {
    const eq = arg.indexOf("=");
    const type = eq > 0 ? arg.slice(0, eq) : "";
    if (!types.includes(type)) {
      throw new UsageError(
        `--chain-config ${arg}: expected TYPE=JSON with TYPE one of the chained types (${types.join(", ") || "none"})`,
      );
    }
    let conf: unknown;
    try {
      conf = JSON.parse(arg.slice(eq + 1));
    } catch (e) {
      throw new UsageError(`--chain-config ${type}: not JSON (${e instanceof Error ? e.message : String(e)})`);
    }
    if (typeof conf !== "object" || conf === null || Array.isArray(conf)) {
      throw new UsageError(`--chain-config ${type}: must be a JSON object`);
    }
    const reserved = Object.keys(conf).filter((k) => RESERVED_CHAIN_KEYS.includes(k));
    if (reserved.length > 0) throw new UsageError(`--chain-config ${type}: the suite sets ${reserved.join(", ")} itself`);
    out.set(type, { ...out.get(type), ...(conf as Record<string, unknown>) });
  }
  return out;
}

export async function runSuite(args: SuiteArgs, emit: (v: Verdict) => void): Promise<Verdict[]> {
  const only = args.only ? new RegExp(args.only, "i") : undefined;
  const selected = (id: string) => !only || only.test(id);
  const sandbox = new Sandbox();
  const rep = new Reporter(selected, emit);
  const ctx = new SuiteContext(sandbox, {
    target: { cniPath: args.cniPath, type: args.type, ipam: args.ipam },
    chain: args.chain,
  });
  try {
    for (const g of ruleGroups) {
      // The VERSION group always runs (its probe fills supportedVersions for the others).
      if (g !== ruleGroups[0] && !g.rules.some((r) => selected(r.id))) continue;
      await runGroup(g, ctx, rep);
    }
  } finally {
    sandbox.cleanup();
  }
  return rep.verdicts;
}

/** Runs a group; rules it never reached (setup threw) fail with the group's error. */
async function runGroup(g: RuleGroup, ctx: SuiteContext, rep: Reporter): Promise<void> {
  try {
    await g.run(ctx, rep);
  } catch (e) {
    const why = `group ${g.name} aborted: ${e instanceof Error ? e.message : String(e)}`;
    for (const r of g.rules) if (!rep.has(r.id)) rep.record(r, "FAIL", why);
  }
}

export function formatVerdict(v: Verdict): string {
  const tag = v.status === "PASS" ? "PASS  " : v.status === "FAIL" ? "FAIL  " : "SKIP  ";
  return `${tag}${v.id} [${v.level}] ${v.description}${v.why ? `: ${v.why}` : ""}`;
}

async function main(): Promise<number> {
  let args: SuiteArgs;
  try {
    args = parseSuiteArgs(process.argv.slice(2));
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`${msg ? `${msg}\n` : ""}${USAGE}\n`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write("the CNI conformance suite needs root (it creates netns and links)\n");
    return 2;
  }
  const started = Date.now();
  const verdicts = await runSuite(args, (v) => {
    if (!args.json) process.stdout.write(`${formatVerdict(v)}\n`);
  });
  const passed = verdicts.filter((v) => v.status === "PASS").length;
  const failed = verdicts.filter((v) => v.status === "FAIL").length;
  const skipped = verdicts.filter((v) => v.status === "SKIP").length;
  if (args.json) {
    const doc = {
      target: { cniPath: args.cniPath, type: args.type, ipam: args.ipam, chain: args.chain },
      verdicts,
      passed,
      failed,
      skipped,
    };
    process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
  } else {
    process.stdout.write(`# ${skipped} skipped, ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
    process.stdout.write(`${passed} passed, ${failed} failed\n`);
  }
  return failed > 0 ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(`conformance suite crashed: ${e instanceof Error ? e.stack : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
