// berth-static through the CNI protocol (handleInvocation: env + stdin JSON in, stdout JSON out).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addNetns, delNetns, testPrefix } from "../../../testing/kernel.ts";
import { handleInvocation } from "../../protocol/invocation.ts";
import { staticPlugin } from "./static.ts";

let netnsName: string;
beforeAll(() => {
  netnsName = `${testPrefix()}st`;
  addNetns(netnsName);
});
afterAll(() => delNetns(netnsName));

function conf(ipam: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { cniVersion: "1.1.0", name: "stnet", type: "berth-bridge", ipam: { type: "berth-static", ...ipam }, ...extra };
}

async function invoke(command: string, config: Record<string, unknown>, cniArgs?: string) {
  const env: Record<string, string> = {
    CNI_COMMAND: command,
    CNI_CONTAINERID: "ctr1",
    CNI_NETNS: `/var/run/netns/${netnsName}`,
    CNI_IFNAME: "eth0",
    CNI_PATH: "/opt/cni/bin",
  };
  if (cniArgs) env.CNI_ARGS = cniArgs;
  const out = await handleInvocation(staticPlugin, env, Buffer.from(JSON.stringify(config)));
  return { exitCode: out.exitCode, json: out.stdout ? JSON.parse(out.stdout) : undefined };
}

const addresses = [
  { address: "10.70.0.5/24", gateway: "10.70.0.1" },
  { address: "FD70:0::5/64", gateway: "fd70::1" },
];

describe("berth-static", () => {
  it("ADD returns the configured addresses (canonical), routes and dns", async () => {
    const out = await invoke(
      "ADD",
      conf({
        addresses,
        routes: [{ dst: "0.0.0.0/0" }, { dst: "10.80.0.1/16", gw: "10.70.0.254" }],
        dns: { nameservers: ["10.70.0.10"], domain: "example.com", search: ["example.com"] },
      }),
    );
    expect(out).toEqual({
      exitCode: 0,
      json: {
        cniVersion: "1.1.0",
        ips: [
          { address: "10.70.0.5/24", gateway: "10.70.0.1" },
          { address: "fd70::5/64", gateway: "fd70::1" },
        ],
        routes: [{ dst: "0.0.0.0/0" }, { dst: "10.80.0.0/16", gw: "10.70.0.254" }],
        dns: { nameservers: ["10.70.0.10"], domain: "example.com", search: ["example.com"] },
      },
    });
  });

  it("reads Go-cased keys as the reference static plugin's decoder does", async () => {
    const out = await invoke(
      "ADD",
      conf({
        Addresses: [{ Address: "10.70.0.5/24", GATEWAY: "10.70.0.1" }],
        Routes: [{ DST: "0.0.0.0/0" }],
        DNS: { Nameservers: ["10.70.0.10"], Domain: "example.com" },
      }),
    );
    expect(out.json).toEqual({
      cniVersion: "1.1.0",
      ips: [{ address: "10.70.0.5/24", gateway: "10.70.0.1" }],
      routes: [{ dst: "0.0.0.0/0" }],
      dns: { nameservers: ["10.70.0.10"], domain: "example.com" },
    });
  });

  it("CNI_ARGS IP= and GATEWAY= add to the configured addresses", async () => {
    const out = await invoke("ADD", conf({ addresses: [addresses[0]] }), "IP=10.71.0.5/24,fd71::5/64;GATEWAY=10.71.0.1,fd71::1");
    expect(out.json.ips).toEqual([
      { address: "10.70.0.5/24", gateway: "10.70.0.1" }, // has its own gateway: kept
      { address: "10.71.0.5/24", gateway: "10.71.0.1" },
      { address: "fd71::5/64", gateway: "fd71::1" },
    ]);
  });

  it("args.cni.ips replaces the configured addresses; runtimeConfig.ips wins over both", async () => {
    const viaArgs = await invoke("ADD", conf({ addresses }, { args: { cni: { ips: ["10.72.0.5/24"] } } }), "IP=10.73.0.5/24");
    expect(viaArgs.json.ips).toEqual([{ address: "10.72.0.5/24" }]);
    const viaRuntime = await invoke(
      "ADD",
      conf({ addresses }, { runtimeConfig: { ips: ["10.74.0.5/24"] }, args: { cni: { ips: ["10.72.0.5/24"] } } }),
      "GATEWAY=10.74.0.1",
    );
    expect(viaRuntime.json.ips).toEqual([{ address: "10.74.0.5/24", gateway: "10.74.0.1" }]);
  });

  it.each<[string, Record<string, unknown>, Record<string, unknown>, string | undefined, RegExp]>([
    ["no address at all", {}, {}, undefined, /needs at least one address/],
    ["addresses not an array", { addresses: "10.0.0.1/24" }, {}, undefined, /ipam\.addresses must be an array/],
    [
      "address without prefix",
      { addresses: [{ address: "10.70.0.5" }] },
      {},
      undefined,
      /ipam\.addresses\[0\]\.address .*no prefix length/,
    ],
    ["prefix too long", { addresses: [{ address: "10.70.0.5/33" }] }, {}, undefined, /ipam\.addresses\[0\]\.address .*\/33/],
    [
      "gateway wrong family",
      { addresses: [{ address: "10.70.0.5/24", gateway: "fd00::1" }] },
      {},
      undefined,
      /ipam\.addresses\[0\]\.gateway fd00::1 is IPv6/,
    ],
    [
      "gateway garbage",
      { addresses: [{ address: "10.70.0.5/24", gateway: "gw" }] },
      {},
      undefined,
      /ipam\.addresses\[0\]\.gateway "gw" is not an IP/,
    ],
    ["duplicate", { addresses: [addresses[0], addresses[0]] }, {}, undefined, /10\.70\.0\.5 is listed twice/],
    ["bad CNI_ARGS IP", { addresses }, {}, "IP=10.75.0.5", /CNI_ARGS IP\[0\] .*no prefix length/],
    ["bad GATEWAY", { addresses }, {}, "GATEWAY=nope", /CNI_ARGS GATEWAY\[0\]/],
    ["bad runtimeConfig.ips", { addresses }, { runtimeConfig: { ips: ["x/24"] } }, undefined, /runtimeConfig\.ips\[0\]/],
    ["bad route", { addresses, routes: [{ dst: "nope" }] }, {}, undefined, /ipam\.routes\[0\]\.dst/],
    ["bad dns", { addresses, dns: { nameservers: "10.0.0.1" } }, {}, undefined, /ipam\.dns\.nameservers must be an array/],
    ["bad nameserver", { addresses, dns: { nameservers: ["ns1"] } }, {}, undefined, /ipam\.dns\.nameservers\[0\]/],
  ])("%s → code 7", async (_name, ipam, extra, cniArgs, msg) => {
    const out = await invoke("ADD", conf(ipam, extra), cniArgs);
    expect(out.exitCode).toBe(1);
    expect(out.json.code).toBe(7);
    expect(out.json.msg).toMatch(msg);
  });

  it("DEL is a no-op that always succeeds", async () => {
    expect(await invoke("DEL", conf({ addresses }))).toEqual({ exitCode: 0, json: undefined });
    expect(await invoke("DEL", conf({}))).toEqual({ exitCode: 0, json: undefined });
  });

  it("CHECK compares the configured addresses with prevResult", async () => {
    const added = await invoke("ADD", conf({ addresses }));
    expect((await invoke("CHECK", conf({ addresses }, { prevResult: added.json }))).exitCode).toBe(0);
    const other = { ...added.json, ips: [added.json.ips[0]] };
    const out = await invoke("CHECK", conf({ addresses }, { prevResult: other }));
    expect(out.json).toMatchObject({ code: 102, msg: "static address fd70::5 is missing from prevResult.ips" });
  });
});
