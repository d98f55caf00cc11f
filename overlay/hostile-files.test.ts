// The agent's own files and directories can be hostile or damaged: a state dir under /proc (where
// Node's recursive mkdir spins forever), an identity.json that is a FIFO (a read that never
// ends) or valid JSON of the wrong shape. Each agent runs in a host namespace of its own
// (testing/cluster.ts), so nothing it might create reaches this machine's netns.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, type Host, sleep } from "../testing/cluster.ts";

const STACK = /\n\s+at .+\(.*:\d+:\d+\)/;

async function exitOf(host: Host, extra: string[]): Promise<{ code: number | null; output: string }> {
  const agent = host.startAgent(extra);
  const code = await Promise.race([agent.exited, sleep(15_000).then(() => "hung" as const)]);
  if (code === "hung") {
    await agent.stop("SIGKILL");
    return { code: null, output: `still running after 15 s\n${agent.output()}` };
  }
  return { code, output: agent.output() };
}

describe.sequential("the agent's files and directories", () => {
  let cluster: Cluster | undefined;

  beforeAll(async () => {
    cluster = await Cluster.create({ store: "local" }, (c) => {
      cluster = c;
    });
  }, 60_000);

  afterAll(async () => {
    await cluster?.destroy();
  });

  it("a state dir under /proc is one line and exit 2, not a hang", async () => {
    const host = await cluster!.addHost();
    const r = await exitOf(host, ["--state-dir", "/proc/berth-hostile/state"]);
    expect(r.code, r.output).toBe(2);
    expect(r.output).toMatch(/--state-dir \/proc\/berth-hostile\/state/);
    expect(r.output).not.toMatch(STACK);
  });

  it("an identity.json that is a FIFO is one line and exit 2, not a hang", async () => {
    const host = await cluster!.addHost();
    execFileSync("mkfifo", [join(host.stateDir, "identity.json")]);
    const r = await exitOf(host, []);
    expect(r.code, r.output).toBe(2);
    expect(r.output).toMatch(/identity\.json/);
    expect(r.output).not.toMatch(STACK);
  });

  it("an identity.json of the wrong shape (null) is replaced by a fresh identity, and the agent runs", async () => {
    const host = await cluster!.addHost();
    const file = join(host.stateDir, "identity.json");
    writeFileSync(file, "null");
    host.startAgent();
    await host.waitReady();
    const identity = JSON.parse(readFileSync(file, "utf8")) as { hostId: string; vtepMAC: string };
    expect(identity.hostId).toMatch(/^[0-9a-f-]{36}$/);
    expect((await host.device())?.address).toBe(identity.vtepMAC);
    expect(host.agent!.output()).not.toMatch(STACK);
    await host.stopAgent();
  });
});
