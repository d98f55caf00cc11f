// berth-host-local through the real CNI protocol: handleInvocation in-process for most cases
// (env + stdin JSON in, stdout JSON out), and the executable itself for the end-to-end path.
// State is read back from the SQLite file with a separate connection.
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { addNetns, delNetns, sh, testPrefix } from "../../../testing/kernel.ts";
import { handleInvocation } from "../../protocol/invocation.ts";
import { DATABASE_FILE } from "../store.ts";
import { closeLeaseStores, hostLocalPlugin } from "./host-local.ts";

const MAIN = join(import.meta.dirname, "main.ts");

let netnsName: string;
let dir: string;

beforeAll(() => {
  netnsName = `${testPrefix()}hl`;
  addNetns(netnsName);
});
afterAll(() => delNetns(netnsName));

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-hostlocal-`));
});
afterEach(() => {
  closeLeaseStores();
  rmSync(dir, { recursive: true, force: true });
});

function conf(ipam: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    cniVersion: "1.1.0",
    name: "hlnet",
    type: "berth-bridge",
    ipam: { type: "berth-host-local", dataDir: dir, ...ipam },
    ...extra,
  };
}

function env(command: string, containerId = "ctr1", ifname = "eth0", extra: Record<string, string> = {}): Record<string, string> {
  return {
    CNI_COMMAND: command,
    CNI_CONTAINERID: containerId,
    CNI_NETNS: `/var/run/netns/${netnsName}`,
    CNI_IFNAME: ifname,
    CNI_PATH: "/opt/cni/bin",
    ...extra,
  };
}

async function invoke(e: Record<string, string>, config: Record<string, unknown>) {
  const out = await handleInvocation(hostLocalPlugin, e, Buffer.from(JSON.stringify(config)));
  return { exitCode: out.exitCode, json: out.stdout ? JSON.parse(out.stdout) : undefined };
}

function leasesOnDisk(): { ip: string; network: string; container_id: string; ifname: string }[] {
  const db = new Database(join(dir, DATABASE_FILE), { readonly: true });
  try {
    return db.prepare("SELECT ip, network, container_id, ifname FROM leases ORDER BY address").all() as never;
  } finally {
    db.close();
  }
}

const ranges = [[{ subnet: "10.60.0.0/24" }], [{ subnet: "fd60::/64", gateway: "fd60::ff" }]];

describe("berth-host-local", () => {
  it("ADD returns a trimmed result (no interfaces, no ips[].interface) with routes and dns", async () => {
    const resolv = join(dir, "resolv.conf");
    writeFileSync(resolv, "nameserver 10.60.0.10\nsearch svc.local\n");
    const { exitCode, json } = await invoke(env("ADD"), conf({ ranges, routes: [{ dst: "0.0.0.0/0" }], resolvConf: resolv }));
    expect(exitCode).toBe(0);
    expect(json).toEqual({
      cniVersion: "1.1.0",
      ips: [
        { address: "10.60.0.2/24", gateway: "10.60.0.1" },
        { address: "fd60::1/64", gateway: "fd60::ff" },
      ],
      routes: [{ dst: "0.0.0.0/0" }],
      dns: { nameservers: ["10.60.0.10"], search: ["svc.local"] },
    });
    expect(leasesOnDisk()).toEqual([
      { ip: "10.60.0.2", network: "hlnet", container_id: "ctr1", ifname: "eth0" },
      { ip: "fd60::1", network: "hlnet", container_id: "ctr1", ifname: "eth0" },
    ]);
  });

  it("answers in the requested version (0.4.0 adds ips[].version; 0.2.0 is ip4/ip6)", async () => {
    const v04 = await invoke(env("ADD"), conf({ ranges }, { cniVersion: "0.4.0" }));
    expect(v04.json.ips[0]).toEqual({ version: "4", address: "10.60.0.2/24", gateway: "10.60.0.1" });
    const v02 = await invoke(env("ADD", "ctr2"), conf({ ranges }, { cniVersion: "0.2.0" }));
    expect(v02.json.ip4).toEqual(expect.objectContaining({ ip: "10.60.0.3/24", gateway: "10.60.0.1" }));
  });

  it("re-ADD returns the same addresses; DEL releases and is idempotent", async () => {
    const first = await invoke(env("ADD"), conf({ ranges }));
    const again = await invoke(env("ADD"), conf({ ranges }));
    expect(again.json).toEqual(first.json);
    expect(leasesOnDisk()).toHaveLength(2);
    expect((await invoke(env("DEL"), conf({ ranges }))).exitCode).toBe(0);
    expect(leasesOnDisk()).toEqual([]);
    expect(await invoke(env("DEL"), conf({ ranges }))).toEqual({ exitCode: 0, json: undefined });
  });

  it("DEL succeeds with nothing held, no database yet, or ranges that no longer parse", async () => {
    expect((await invoke(env("DEL"), conf({ ranges }))).exitCode).toBe(0);
    await invoke(env("ADD"), conf({ ranges }));
    const broken = await invoke(env("DEL"), conf({ ranges: [[{ subnet: "10.60.0.1/24" }]] }));
    expect(broken.exitCode).toBe(0);
    expect(leasesOnDisk()).toEqual([]);
  });

  it("takes a requested IP from CNI_ARGS IP=, args.cni.ips and runtimeConfig.ips (which wins)", async () => {
    const viaEnv = await invoke(env("ADD", "a", "eth0", { CNI_ARGS: "IP=10.60.0.77" }), conf({ ranges: [ranges[0]] }));
    expect(viaEnv.json.ips[0].address).toBe("10.60.0.77/24");
    const viaArgs = await invoke(env("ADD", "b"), conf({ ranges: [ranges[0]] }, { args: { cni: { ips: ["10.60.0.78"] } } }));
    expect(viaArgs.json.ips[0].address).toBe("10.60.0.78/24");
    const both = await invoke(
      env("ADD", "c", "eth0", { CNI_ARGS: "IP=10.60.0.90" }),
      conf({ ranges }, { runtimeConfig: { ips: ["10.60.0.79/24", "fd60::79"] }, args: { cni: { ips: ["10.60.0.91"] } } }),
    );
    expect(both.json.ips.map((i: { address: string }) => i.address)).toEqual(["10.60.0.79/24", "fd60::79/64"]);

    const taken = await invoke(env("ADD", "d", "eth0", { CNI_ARGS: "IP=10.60.0.77" }), conf({ ranges: [ranges[0]] }));
    expect(taken).toEqual({
      exitCode: 1,
      json: {
        cniVersion: "1.1.0",
        code: 101,
        msg: "requested IP 10.60.0.77 is already leased to container a interface eth0 in network hlnet",
      },
    });
    const outside = await invoke(env("ADD", "d", "eth0", { CNI_ARGS: "IP=10.61.0.1" }), conf({ ranges: [ranges[0]] }));
    expect(outside.json.code).toBe(7);
  });

  it("bad config is code 7 naming the key, never a stack", async () => {
    const out = await invoke(
      env("ADD"),
      conf({ ranges: [[{ subnet: "10.60.0.0/24" }, { subnet: "10.61.0.0/24", rangeStart: "10.62.0.5" }]] }),
    );
    expect(out.exitCode).toBe(1);
    expect(out.json.code).toBe(7);
    expect(out.json.msg).toBe("invalid ipam config: ipam.ranges[0][1].rangeStart 10.62.0.5 is outside subnet 10.61.0.0/24");
  });

  it("exhaustion fails ADD with code 100 and turns STATUS to 50; a DEL makes it ready again", async () => {
    const tiny = [[{ subnet: "10.60.0.0/30" }]]; // only 10.60.0.2
    expect((await invoke(env("STATUS"), conf({ ranges: tiny }))).exitCode).toBe(0);
    await invoke(env("ADD", "a"), conf({ ranges: tiny }));
    const full = await invoke(env("ADD", "b"), conf({ ranges: tiny }));
    expect(full.json).toEqual({
      cniVersion: "1.1.0",
      code: 100,
      msg: "no free address in 10.60.0.0/30 (range set 0) for network hlnet",
    });
    const status = await invoke(env("STATUS"), conf({ ranges: tiny }));
    expect(status.exitCode).toBe(1);
    expect(status.json.code).toBe(50);
    expect(status.json.msg).toMatch(/range set 0 \(10\.60\.0\.0\/30\) of network hlnet/);
    await invoke(env("DEL", "a"), conf({ ranges: tiny }));
    expect((await invoke(env("STATUS"), conf({ ranges: tiny }))).exitCode).toBe(0);
  });

  it("STATUS is 50 when the store cannot be written", async () => {
    // Tests run as root, which ignores file modes: make the database path a directory instead.
    const ro = join(dir, "ro");
    mkdirSync(join(ro, DATABASE_FILE), { recursive: true });
    const out = await invoke(env("STATUS"), conf({ ranges, dataDir: ro }));
    expect(out.exitCode).toBe(1);
    expect(out.json.code).toBe(50);
    expect(out.json.msg).toMatch(/lease store unavailable: cannot open lease database/);
  });

  it("STATUS is 50 when the database sits on a read-only mount", async () => {
    const state = join(dir, "state");
    mkdirSync(state);
    await invoke(env("ADD"), conf({ ranges, dataDir: state }));
    closeLeaseStores();
    sh("mount", ["--bind", state, state]);
    try {
      sh("mount", ["-o", "remount,ro,bind", state]);
      const out = await invoke(env("STATUS"), conf({ ranges, dataDir: state }));
      expect(out.exitCode).toBe(1);
      expect(out.json.code).toBe(50);
      expect(out.json.msg).toMatch(/lease store unavailable/);
    } finally {
      closeLeaseStores();
      sh("umount", [state]);
    }
    expect((await invoke(env("STATUS"), conf({ ranges, dataDir: state }))).exitCode).toBe(0);
  });

  it("CHECK passes right after ADD and fails when the lease is gone or prevResult disagrees", async () => {
    const added = await invoke(env("ADD"), conf({ ranges }));
    expect(await invoke(env("CHECK"), conf({ ranges }, { prevResult: added.json }))).toEqual({ exitCode: 0, json: undefined });
    const wrong = { ...added.json, ips: [{ address: "10.60.0.99/24" }, added.json.ips[1]] };
    const mismatch = await invoke(env("CHECK"), conf({ ranges }, { prevResult: wrong }));
    expect(mismatch.json).toMatchObject({
      code: 102,
      msg: "10.60.0.2 is leased to container ctr1 interface eth0 in network hlnet but missing from prevResult.ips",
    });
    await invoke(env("DEL"), conf({ ranges }));
    const gone = await invoke(env("CHECK"), conf({ ranges }, { prevResult: added.json }));
    expect(gone.json).toMatchObject({ code: 102, msg: "no address is leased to container ctr1 interface eth0 in network hlnet" });
  });

  it("GC drops leases not in cni.dev/valid-attachments ∪ cni.dev/attachments, in this network only", async () => {
    for (const c of ["keep1", "keep2", "leak1", "leak2"]) await invoke(env("ADD", c), conf({ ranges: [ranges[0]] }));
    await invoke(env("ADD", "leak1"), conf({ ranges: [ranges[0]] }, { name: "othernet" }));
    const gc = await invoke(
      { CNI_COMMAND: "GC", CNI_PATH: "/opt/cni/bin" },
      conf(
        { ranges: [ranges[0]] },
        {
          "cni.dev/valid-attachments": [{ containerID: "keep1", ifname: "eth0" }],
          "cni.dev/attachments": [{ containerID: "keep2", ifname: "eth0" }],
        },
      ),
    );
    expect(gc).toEqual({ exitCode: 0, json: undefined });
    expect(leasesOnDisk().map((l) => `${l.network}/${l.container_id}`)).toEqual(["hlnet/keep1", "hlnet/keep2", "othernet/leak1"]);
  });

  it("runs as an executable: ADD, STATUS and DEL through stdin/stdout and exit codes", async () => {
    const stdinOf = (c: Record<string, unknown>) => JSON.stringify(c);
    const run = (command: string, containerId: string) =>
      new Promise<{ code: number; stdout: string }>((resolve) => {
        const child = execFile(
          process.execPath,
          ["--import", "tsx", MAIN],
          { env: { ...process.env, ...env(command, containerId) }, encoding: "utf8" },
          (err, stdout) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout }),
        );
        child.stdin!.end(stdinOf(conf({ ranges: [[{ subnet: "10.60.0.0/30" }]] })));
      });
    const add = await run("ADD", "exe1");
    expect(add.code).toBe(0);
    expect(JSON.parse(add.stdout)).toEqual({ cniVersion: "1.1.0", ips: [{ address: "10.60.0.2/30", gateway: "10.60.0.1" }] });
    const status = await run("STATUS", "");
    expect(status.code).toBe(1);
    expect(JSON.parse(status.stdout).code).toBe(50);
    expect((await run("DEL", "exe1")).code).toBe(0);
    expect(leasesOnDisk()).toEqual([]);
  }, 30_000);
});
