// Identity service and capability discovery: GetPluginInfo, GetPluginCapabilities, Probe,
// ControllerGetCapabilities, NodeGetCapabilities, NodeGetInfo, and "advertised means implemented".

import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describeError, expectOk, fail, skip } from "./checklist.ts";
import { CsiCallError } from "./client.ts";
import { rule, type SuiteContext } from "./context.ts";

// RFC 1035-like, as S8 words it: alphanumeric at both ends, dashes and dots between.
const PLUGIN_NAME = /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/;

export async function identityRules(ctx: SuiteContext): Promise<void> {
  const { t, client } = ctx;
  const info = await t.check(rule("identity.info", "MUST", "GetPluginInfo answers OK"), () =>
    expectOk(client.call<{ name: string; vendor_version: string }>("Identity", "GetPluginInfo", {}), "GetPluginInfo"),
  );
  await t.soft(rule("identity.info-name", "MUST", "name is set, at most 63 chars, DNS-like"), async () => {
    if (!info.name) fail("name is empty");
    if (info.name.length > 63) fail(`name "${info.name}" is ${info.name.length} chars`);
    if (!PLUGIN_NAME.test(info.name)) fail(`name "${info.name}" is not alphanumerics with dashes and dots between`);
  });
  await t.soft(rule("identity.info-vendor-version", "MUST", "vendor_version is set"), async () => {
    if (!info.vendor_version) fail("vendor_version is empty");
  });
  await t.soft(rule("identity.capabilities", "MUST", "GetPluginCapabilities answers with known types only"), async () => {
    const res = await expectOk(
      client.call<{ capabilities: { service?: { type: string } | null; volume_expansion?: { type: string } | null }[] }>(
        "Identity",
        "GetPluginCapabilities",
        {},
      ),
      "GetPluginCapabilities",
    );
    for (const c of res.capabilities) {
      const type = c.service?.type ?? c.volume_expansion?.type;
      if (!type || type === "UNKNOWN") fail(`capability ${JSON.stringify(c)} has no known type`);
    }
  });
  await t.soft(rule("identity.capabilities-stable", "MUST", "GetPluginCapabilities gives the same answer twice"), async () => {
    const a = await client.call("Identity", "GetPluginCapabilities", {});
    const b = await client.call("Identity", "GetPluginCapabilities", {});
    if (JSON.stringify(a) !== JSON.stringify(b)) fail(`${JSON.stringify(a)} then ${JSON.stringify(b)}`);
  });
  await t.soft(rule("identity.probe", "MUST", "Probe answers OK and is (or becomes) ready"), async () => {
    for (let i = 0; i < 20; i++) {
      const res = await expectOk(client.call<{ ready: { value: boolean } | null }>("Identity", "Probe", {}), "Probe");
      if (res.ready === null || res.ready.value) return; // unset means ready (S10)
      await sleep(500);
    }
    fail("ready stayed false for 10 s");
  });

  if (!ctx.caps.plugin.has("CONTROLLER_SERVICE")) {
    t.skipRule(rule("controller.capabilities", "MUST", "ControllerGetCapabilities answers"), "CONTROLLER_SERVICE not advertised");
  } else {
    await t.soft(rule("controller.capabilities", "MUST", "ControllerGetCapabilities answers with known types only"), async () => {
      const res = await expectOk(
        client.call<{ capabilities: { rpc?: { type: string } | null }[] }>("Controller", "ControllerGetCapabilities", {}),
        "ControllerGetCapabilities",
      );
      for (const c of res.capabilities) if (!c.rpc || c.rpc.type === "UNKNOWN") fail(`capability ${JSON.stringify(c)}`);
    });
  }

  if (!ctx.caps.hasNode) {
    t.skipRule(rule("node.capabilities", "MUST", "NodeGetCapabilities answers"), "the plugin has no node service");
    return;
  }
  await t.soft(rule("node.capabilities", "MUST", "NodeGetCapabilities answers with known types only"), async () => {
    const res = await expectOk(
      client.call<{ capabilities: { rpc?: { type: string } | null }[] }>("Node", "NodeGetCapabilities", {}),
      "NodeGetCapabilities",
    );
    for (const c of res.capabilities) if (!c.rpc || c.rpc.type === "UNKNOWN") fail(`capability ${JSON.stringify(c)}`);
  });
  const nodeInfo = await t.check(rule("node.info", "MUST", "NodeGetInfo answers OK"), () =>
    expectOk(
      client.call<{ node_id: string; max_volumes_per_node: number; accessible_topology: { segments: object } | null }>(
        "Node",
        "NodeGetInfo",
        {},
      ),
      "NodeGetInfo",
    ),
  );
  await t.soft(rule("node.info-node-id", "MUST", "node_id is set and at most 256 bytes"), async () => {
    if (!nodeInfo.node_id) fail("node_id is empty");
    if (Buffer.byteLength(nodeInfo.node_id) > 256) fail(`node_id is ${Buffer.byteLength(nodeInfo.node_id)} bytes`);
  });
  await t.soft(rule("node.info-max-volumes", "MUST", "max_volumes_per_node is not negative"), async () => {
    if (nodeInfo.max_volumes_per_node < 0) fail(`max_volumes_per_node = ${nodeInfo.max_volumes_per_node}`);
  });
  await t.soft(rule("node.info-topology", "MUST", "accessible_topology only with VOLUME_ACCESSIBILITY_CONSTRAINTS"), async () => {
    const has = ctx.caps.plugin.has("VOLUME_ACCESSIBILITY_CONSTRAINTS");
    const topo = nodeInfo.accessible_topology;
    if (!has && topo && Object.keys(topo.segments).length > 0) fail(`topology ${JSON.stringify(topo)} without the capability`);
  });
}

interface Probe {
  service: "Controller" | "Node";
  cap: string;
  method: string;
  request: (ctx: SuiteContext) => object;
}

// One harmless call per optional RPC: an unknown id, so nothing is created.
const OPTIONAL_RPCS: Probe[] = [
  {
    service: "Controller",
    cap: "CREATE_DELETE_VOLUME",
    method: "DeleteVolume",
    request: (c) => ({ volume_id: `${c.tag}-nope` }),
  },
  {
    service: "Controller",
    cap: "PUBLISH_UNPUBLISH_VOLUME",
    method: "ControllerUnpublishVolume",
    request: (c) => ({ volume_id: `${c.tag}-nope`, node_id: c.nodeId || "node" }),
  },
  { service: "Controller", cap: "LIST_VOLUMES", method: "ListVolumes", request: () => ({}) },
  { service: "Controller", cap: "GET_CAPACITY", method: "GetCapacity", request: () => ({}) },
  {
    service: "Controller",
    cap: "CREATE_DELETE_SNAPSHOT",
    method: "DeleteSnapshot",
    request: (c) => ({ snapshot_id: `${c.tag}-nope` }),
  },
  { service: "Controller", cap: "LIST_SNAPSHOTS", method: "ListSnapshots", request: () => ({}) },
  { service: "Controller", cap: "GET_SNAPSHOT", method: "GetSnapshot", request: (c) => ({ snapshot_id: `${c.tag}-nope` }) },
  { service: "Controller", cap: "GET_VOLUME", method: "ControllerGetVolume", request: (c) => ({ volume_id: `${c.tag}-nope` }) },
  {
    service: "Controller",
    cap: "EXPAND_VOLUME",
    method: "ControllerExpandVolume",
    request: (c) => ({ volume_id: `${c.tag}-nope`, capacity_range: { required_bytes: c.settings.volumeBytes } }),
  },
  {
    service: "Controller",
    cap: "MODIFY_VOLUME",
    method: "ControllerModifyVolume",
    request: (c) => ({ volume_id: `${c.tag}-nope`, mutable_parameters: { x: "y" } }),
  },
  {
    service: "Node",
    cap: "STAGE_UNSTAGE_VOLUME",
    method: "NodeUnstageVolume",
    request: (c) => ({ volume_id: `${c.tag}-nope`, staging_target_path: join(c.root, "nope-staging") }),
  },
  {
    service: "Node",
    cap: "GET_VOLUME_STATS",
    method: "NodeGetVolumeStats",
    request: (c) => ({ volume_id: `${c.tag}-nope`, volume_path: join(c.root, "nope-target") }),
  },
  {
    service: "Node",
    cap: "EXPAND_VOLUME",
    method: "NodeExpandVolume",
    request: (c) => ({ volume_id: `${c.tag}-nope`, volume_path: join(c.root, "nope-target") }),
  },
];

/** Codes that say "the server broke" rather than answering the request. */
const BROKEN = new Set(["INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED"]);

export async function capabilityConsistencyRules(ctx: SuiteContext): Promise<void> {
  for (const p of OPTIONAL_RPCS) {
    const id = `caps.${p.service.toLowerCase()}.${p.cap.toLowerCase().replaceAll("_", "-")}`;
    const serviceThere = p.service === "Controller" ? ctx.caps.plugin.has("CONTROLLER_SERVICE") : ctx.caps.hasNode;
    const advertised = (p.service === "Controller" ? ctx.caps.controller : ctx.caps.node).has(p.cap);
    const r = advertised
      ? rule(id, "MUST", `${p.method} is implemented (${p.cap} advertised)`)
      : rule(id, "MUST", `${p.method} without ${p.cap}: UNIMPLEMENTED or a proper answer`);
    await ctx.t.soft(r, async () => {
      if (!serviceThere) skip(`no ${p.service} service`);
      try {
        await ctx.client.call(p.service, p.method, p.request(ctx));
      } catch (e) {
        if (!(e instanceof CsiCallError)) throw e;
        if (advertised && e.code === "UNIMPLEMENTED") fail(`advertised but answered ${describeError(e)}`);
        if (BROKEN.has(e.code)) fail(`answered ${describeError(e)}`);
      }
    });
  }
}
