// The conformance run: connect, discover capabilities, run every scenario, then undo
// everything the suite created. `ConformanceRun.cleanup()` is safe to call at any time
// (SIGINT) and more than once.
import { mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { testPrefix } from "../../testing/kernel.ts";
import { Checklist, describeError, fail, type Outcome, ScenarioBlocked } from "./checklist.ts";
import { CsiCallError, CsiClient } from "./client.ts";
import { type Capabilities, MiB, rule, SuiteContext, type SuiteSettings } from "./context.ts";
import { capacityRules, createDeleteRules, expandRules, listVolumesRules } from "./controller-rules.ts";
import { capabilityConsistencyRules, identityRules } from "./identity-rules.ts";
import { forceUnmount, mountsUnder } from "./kernel-view.ts";
import { Ledger } from "./ledger.ts";
import { nodeRules } from "./node-rules.ts";
import { snapshotRules } from "./snapshot-rules.ts";

export interface SuiteOptions {
  endpoint: string;
  /** where staging and target paths go; default a fresh `bt…` directory in the temp dir */
  stagingRoot?: string;
  only?: RegExp;
  params?: Record<string, string>;
  accessType?: "mount" | "block";
  fsType?: string;
  volumeBytes?: number;
  print?: (line: string) => void;
}

export interface SuiteReport {
  outcomes: Outcome[];
  passed: number;
  failed: number;
  skipped: number;
  /** things the final cleanup could not undo */
  leftovers: string[];
  summary: string;
}

const SCENARIOS: [string, (ctx: SuiteContext) => Promise<void>][] = [
  ["identity", identityRules],
  ["caps", capabilityConsistencyRules],
  ["create", createDeleteRules],
  ["list", listVolumesRules],
  ["capacity", capacityRules],
  ["snapshot", snapshotRules],
  ["expand", expandRules],
  ["node", nodeRules],
];

export class ConformanceRun {
  readonly checklist: Checklist;
  private readonly ledger = new Ledger();
  private readonly client: CsiClient;
  private readonly root: string;
  private cleaned: Promise<string[]> | undefined;

  constructor(private readonly opts: SuiteOptions) {
    this.checklist = new Checklist(opts.only, opts.print ?? ((l) => console.log(l)));
    this.client = CsiClient.connect(opts.endpoint);
    // Every path contains a bt… test prefix so the leak check finds anything left behind.
    this.root = opts.stagingRoot ? join(opts.stagingRoot, `${testPrefix()}-csi`) : join(tmpdir(), `${testPrefix()}-csi`);
  }

  async run(): Promise<SuiteReport> {
    const t = this.checklist;
    mkdirSync(this.root, { recursive: true });
    try {
      await this.client.waitReady(10_000);
    } catch (e) {
      await t.soft(rule("endpoint.connect", "MUST", "the endpoint accepts connections"), async () =>
        fail(`cannot connect to ${this.opts.endpoint}: ${describeError(e)}`),
      );
      return this.finish();
    }
    const settings: SuiteSettings = {
      params: this.opts.params ?? {},
      accessType: this.opts.accessType ?? "mount",
      fsType: this.opts.fsType ?? "",
      volumeBytes: this.opts.volumeBytes ?? 32 * MiB,
    };
    const ctx = new SuiteContext(this.client, t, this.ledger, await this.discover(), settings, this.root);
    if (ctx.caps.hasNode) {
      try {
        ctx.nodeId = (await this.client.call<{ node_id: string }>("Node", "NodeGetInfo", {})).node_id;
      } catch {
        // reported by node.info
      }
    }
    for (const [name, scenario] of SCENARIOS) {
      try {
        await scenario(ctx);
      } catch (e) {
        if (e instanceof ScenarioBlocked) continue; // the failing rule is already reported
        await t.soft(rule(`${name}.scenario`, "MUST", `the ${name} scenario runs to the end`), async () =>
          fail(`stopped by ${describeError(e)}`),
        );
      }
    }
    await t.soft(rule("errors.shape", "MUST", "every error reply has a message and no status details"), async () => {
      const bad = this.client.errors.filter((e) => !e.message || e.hasStatusDetails);
      if (bad.length)
        fail(
          bad
            .slice(0, 3)
            .map((e) => `${e.method} ${e.code} ${e.hasStatusDetails ? "has details" : "has no message"}`)
            .join("; "),
        );
    });
    return this.finish();
  }

  private async discover(): Promise<Capabilities> {
    const caps: Capabilities = { plugin: new Set(), expansion: new Set(), controller: new Set(), node: new Set(), hasNode: true };
    type PluginCaps = { capabilities: { service?: { type: string } | null; volume_expansion?: { type: string } | null }[] };
    type RpcCaps = { capabilities: { rpc?: { type: string } | null }[] };
    try {
      const res = await this.client.call<PluginCaps>("Identity", "GetPluginCapabilities", {});
      for (const c of res.capabilities) {
        if (c.service) caps.plugin.add(c.service.type);
        if (c.volume_expansion) caps.expansion.add(c.volume_expansion.type);
      }
    } catch {
      // reported by identity.capabilities
    }
    if (caps.plugin.has("CONTROLLER_SERVICE")) {
      try {
        const res = await this.client.call<RpcCaps>("Controller", "ControllerGetCapabilities", {});
        for (const c of res.capabilities) if (c.rpc) caps.controller.add(c.rpc.type);
      } catch {
        // reported by controller.capabilities
      }
    }
    try {
      const res = await this.client.call<RpcCaps>("Node", "NodeGetCapabilities", {});
      for (const c of res.capabilities) if (c.rpc) caps.node.add(c.rpc.type);
    } catch (e) {
      if (e instanceof CsiCallError && e.code === "UNIMPLEMENTED") caps.hasNode = false;
    }
    return caps;
  }

  private async finish(): Promise<SuiteReport> {
    const leftovers = await this.cleanup();
    const t = this.checklist;
    await t.soft(
      rule("cleanup.complete", "MUST", "everything the suite created could be removed through the driver"),
      async () => {
        if (leftovers.length) fail(leftovers.join("; "));
      },
    );
    return {
      outcomes: t.outcomes,
      passed: t.count("PASS"),
      failed: t.count("FAIL"),
      skipped: t.count("SKIP"),
      leftovers,
      summary: t.summary(),
    };
  }

  /** Undoes everything recorded, then removes our directory (unmounting what the driver left). */
  cleanup(): Promise<string[]> {
    this.cleaned ??= (async () => {
      const problems = await this.ledger.release(this.client);
      for (const m of mountsUnder(this.root)) {
        problems.push(`${m} was still mounted after the driver's unpublish/unstage`);
        forceUnmount(m);
      }
      try {
        rmSync(this.root, { recursive: true, force: true });
      } catch (e) {
        problems.push(`removing ${this.root}: ${(e as Error).message}`);
      }
      this.client.close();
      return problems;
    })();
    return this.cleaned;
  }
}

export async function runSuite(opts: SuiteOptions): Promise<SuiteReport> {
  return new ConformanceRun(opts).run();
}
