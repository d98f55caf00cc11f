// berth-firewall: forward acceptance for the pod's addresses and bridge isolation
// (ingressPolicy open / same-bridge / isolated), chained after a main plugin. Reference option
// names; the rules live in berth's nftables table (cni/nft/firewall.ts), never in iptables or
// firewalld. DEL and GC remove the pod's elements; a bridge's isolation stays with the bridge.
import { Rtnl } from "../../../native/netlink/socket.ts";
import { addFirewall, firewallOf, gcFirewall, type IngressPolicy, isolatedBridges, removeFirewall } from "../../nft/firewall.ts";
import { attachmentOf, validAttachmentsOf } from "../../nft/masquerade.ts";
import { DEFAULT_TABLE } from "../../nft/nft.ts";
import { configSchema, field, type Infer, validateConfig } from "../../protocol/schema.ts";
import { CniError, ErrorCode, type Plugin, type Request, type Result } from "../../protocol/types.ts";
import { containerAddresses, hostInterfaces, requirePrevResult } from "../chained.ts";

const schema = configSchema({
  backend: field
    .string({ oneOf: ["nftables", "iptables", "firewalld"] })
    .unsupported("iptables", "berth uses nftables only")
    .unsupported("firewalld", "berth uses nftables only")
    .describe("Firewall backend."),
  ingressPolicy: field
    .string({ oneOf: ["open", "same-bridge", "isolated"] })
    .default("open")
    .describe("open: no isolation; same-bridge: other bridges' containers cannot reach it; isolated: no other container can."),
  // Reference knobs for the iptables/firewalld backends: accepted, meaningless here.
  iptablesAdminChainName: field.string().describe("iptables backend's admin chain; accepted and ignored."),
  firewalldZone: field.string().describe("firewalld backend's zone; accepted and ignored."),
  nftTable: field
    .string({ pattern: /^[A-Za-z][A-Za-z0-9_]{0,31}$/, patternName: "an nftables identifier" })
    .default(DEFAULT_TABLE)
    .describe("The nftables table (inet family) for forward and isolation rules.", { extension: true }),
});

type FirewallConf = Infer<typeof schema.fields> & { ingressPolicy: IngressPolicy };

function parseConf(req: Request): FirewallConf {
  return validateConfig(req.config, schema) as FirewallConf;
}

/** The bridge among the result's host interfaces (policy other than open needs one). */
function bridgeOf(prev: Result, policy: IngressPolicy): string | undefined {
  if (policy === "open") return undefined;
  const nl = Rtnl.open();
  try {
    for (const i of hostInterfaces(prev)) {
      if (nl.linkGet(i.name)?.kind === "bridge") return i.name;
    }
  } finally {
    nl.close();
  }
  throw new CniError(
    ErrorCode.InvalidConfig,
    `invalid config: "ingressPolicy": "${policy}" needs a bridge among prevResult's host interfaces (chain berth-firewall after berth-bridge)`,
  );
}

async function add(req: Request): Promise<Result> {
  const conf = parseConf(req);
  const prev = requirePrevResult(req, "berth-firewall");
  const bridge = bridgeOf(prev, conf.ingressPolicy);
  const ips = containerAddresses(prev).map((a) => a.ip);
  await addFirewall(attachmentOf(req), ips, conf.ingressPolicy, bridge, conf.nftTable);
  return prev;
}

async function del(req: Request): Promise<void> {
  const conf = parseConf(req);
  await removeFirewall(attachmentOf(req), conf.nftTable);
}

async function check(req: Request): Promise<void> {
  const conf = parseConf(req);
  const prev = requirePrevResult(req, "berth-firewall");
  const have = new Set(await firewallOf(attachmentOf(req), conf.nftTable));
  for (const a of containerAddresses(prev)) {
    if (!have.has(a.ip))
      throw new CniError(
        ErrorCode.Internal,
        `CHECK: firewall acceptance for ${a.ip} is missing from nftables table ${conf.nftTable}`,
      );
  }
  const bridge = bridgeOf(prev, conf.ingressPolicy);
  if (bridge && !(await isolatedBridges(conf.nftTable)).includes(bridge)) {
    throw new CniError(ErrorCode.Internal, `CHECK: bridge ${bridge} is not isolated (ingressPolicy ${conf.ingressPolicy})`);
  }
}

async function gc(req: Request): Promise<void> {
  const conf = parseConf(req);
  await gcFirewall(req.config.name, validAttachmentsOf(req), conf.nftTable);
}

export const firewallPlugin: Plugin = {
  name: "berth-firewall",
  schema,
  add,
  del,
  check,
  gc,
};
