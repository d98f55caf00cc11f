// Writes docs/configuration.md, berth's configuration reference, from the sources of truth: each
// CNI plugin's config schema (Field docs: type, default, required, description), the keys every
// plugin reads (cni/protocol/config.ts), each command's --help text (run through bin/cli.ts), and the
// CSI driver's StorageClass parameters (csi/controller.ts). Nothing here restates an option;
// scripts/config-reference.test.ts fails when the file is out of date.
//
//   npm run docs                                            rewrite docs/configuration.md
//   node --import tsx scripts/config-reference.ts --out F   write it elsewhere
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { NETCONF_KEYS, RUNTIME_CONFIG_KEYS } from "../cni/protocol/config.ts";
import type { Field, Shape } from "../cni/protocol/schema.ts";
import type { Plugin } from "../cni/protocol/types.ts";
import { VOLUME_PARAMETERS } from "../csi/controller.ts";
import { VOLUME_OPTIONS } from "../csi/docker/volumes.ts";
import { BERTH_PLUGINS } from "../overlay/cni/registry.ts";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
export const OUTPUT = join(ROOT, "docs", "configuration.md");

type Role = "main" | "ipam" | "meta";

interface PluginInfo {
  role: Role;
  /** The containernetworking/plugins plugin whose option names berth takes, if any. */
  reference?: string;
  summary: string;
  /** runtimeConfig keys (capability arguments) the plugin reads. */
  capabilities: string[];
}

/** What a schema cannot say: each plugin's role, the reference it follows, its capabilities. */
export const PLUGIN_INFO: Record<string, PluginInfo> = {
  "berth-bridge": {
    role: "main",
    reference: "bridge",
    summary: "A veth pair from the container to a Linux bridge on the host, optionally the bridge as gateway.",
    capabilities: ["ips", "mac"],
  },
  "berth-ptp": {
    role: "main",
    reference: "ptp",
    summary: "A veth pair routed point-to-point: the host end holds the gateway address, no bridge.",
    capabilities: ["ips", "mac"],
  },
  "berth-macvlan": {
    role: "main",
    reference: "macvlan",
    summary: "A macvlan interface on a host interface (master) in the container.",
    capabilities: ["ips", "mac"],
  },
  "berth-loopback": {
    role: "main",
    reference: "loopback",
    summary: "Brings `lo` up in the container.",
    capabilities: [],
  },
  "berth-overlay": {
    role: "main",
    summary:
      "A pod on this host's share of the VXLAN overlay: a berth-bridge config with berth-host-local addresses from the subnet the agent (`berth agent`) leased, routes to the cluster networks and the overlay MTU. Answers STATUS 50 and ADD 11 until the agent holds a lease.",
    capabilities: ["ips", "mac"],
  },
  "berth-host-local": {
    role: "ipam",
    reference: "host-local",
    summary: "Addresses from ranges, leases kept in a SQLite database on the host. Keys go in the `ipam` section.",
    capabilities: ["ipRanges", "ips"],
  },
  "berth-static": {
    role: "ipam",
    reference: "static",
    summary: "Addresses given in the config or by the runtime; nothing is stored. Keys go in the `ipam` section.",
    capabilities: ["ips"],
  },
  "berth-portmap": {
    role: "meta",
    reference: "portmap",
    summary: "Host ports forwarded to the container (runtimeConfig.portMappings), as nftables map elements.",
    capabilities: ["portMappings"],
  },
  "berth-firewall": {
    role: "meta",
    reference: "firewall",
    summary: "Forwarding allowed for the container's addresses, and bridge isolation, in berth's nftables table.",
    capabilities: [],
  },
  "berth-tuning": {
    role: "meta",
    reference: "tuning",
    summary:
      "Sysctls and link settings on the container interface; args.cni may override mac, mtu, promisc, allmulti, txQLen and sysctl. The link's settings are put back on DEL.",
    capabilities: ["mac"],
  },
  "berth-bandwidth": {
    role: "meta",
    reference: "bandwidth",
    summary: "Rate limits on the container's traffic: a token bucket on the host veth (ingress) and on an IFB device (egress).",
    capabilities: ["bandwidth"],
  },
};

/** The keys every plugin reads (cni/protocol/config.ts NETCONF_KEYS), described. */
export const COMMON_KEYS: Record<string, string> = {
  cniVersion: "The CNI version of the config and of the result: 0.1.0 to 1.1.0. Required unless cniVersions is set.",
  cniVersions: "Versions a conflist supports; the newest one berth supports is used.",
  name: "The network's name (letters, digits, `_`, `.`, `-`); part of lease and link names. Required.",
  type: "The plugin executable, e.g. berth-bridge. Required.",
  capabilities: "Capability arguments the plugin wants from the runtime (runtimeConfig below).",
  ipam: "The IPAM plugin (`type`: berth-host-local or berth-static) and its keys. `{}` means no IPAM.",
  dns: "DNS settings (nameservers, domain, search, options) the runtime may use.",
  runtimeConfig: "Capability arguments the runtime fills in (table below).",
  args: "Per-container arguments; berth reads args.cni.ips and args.cni.mac.",
  prevResult: "The previous plugin's result in a chain (set by the runtime).",
  ipMasq: "Spec key; the plugins that support it (berth-bridge, berth-ptp, berth-overlay) describe it below.",
  logFile: "File the plugin appends its log lines to (BERTH_CNI_LOG in the environment wins).",
  "cni.dev/valid-attachments": "GC: the attachments to keep (set by the runtime).",
  "cni.dev/attachments": "GC: the same, as the 1.1.0 tag spelled it (libcni sends both).",
};

/** runtimeConfig keys (RUNTIME_CONFIG_KEYS), described; who reads them comes from PLUGIN_INFO. */
export const RUNTIME_CONFIG: Record<string, string> = {
  portMappings: "`[{hostPort, containerPort, protocol, hostIP}]`: host ports to forward.",
  ipRanges: "Range sets, as ipam.ranges; tried before the config's.",
  bandwidth: "`{ingressRate, ingressBurst, egressRate, egressBurst}`; a key set in the config wins.",
  dns: "Accepted; no berth plugin reads it.",
  ips: "Addresses the container asks for (CIDR or bare IP); wins over args.cni.ips and CNI_ARGS IP=.",
  mac: "The container interface's MAC; wins over args.cni.mac and CNI_ARGS MAC=.",
};

/** Top-level config keys the plugin launchers (cni/fastpath/launcher/launcher.c) read before any plugin runs. */
export const LAUNCHER_KEYS: Record<string, string> = {
  berthSocket:
    "The fast-path socket this network's plugins hand their calls to (BERTH_CNI_SOCKET wins; default /run/berth/cni.sock).",
  agentSocket: "Read as berthSocket when that is absent.",
};

/** Environment variables berth reads, with who reads them. */
export const ENVIRONMENT: Record<string, [string, string]> = {
  BERTH_CNI_SOCKET: [
    "plugin launchers",
    'The fast-path socket (wins over berthSocket); "off" runs every call on the cold path (Node on the bundled plugin).',
  ],
  BERTH_CNI_LOG: ["plugins", "File each plugin call appends its log lines to (wins over logFile); default: the caller's stderr."],
  BERTH_LOG_LEVEL: ["agent, CSI driver, docker plugin", "pino log level (default info)."],
  NO_COLOR: ["agent, CSI driver", "Set: text log lines on a terminal carry no colour."],
  CSI_ENDPOINT: ["berth csi, berth up", "The CSI socket when --endpoint / --csi-endpoint is not given."],
  "LISTEN_FDS, LISTEN_FDNAMES": [
    "agent, cni-server, CSI driver",
    'Socket activation (systemd): a socket named "cni" is served as the fast path, one named "csi" as the CSI endpoint.',
  ],
  "KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT": [
    "agent --store kube",
    "The API server when no --kubeconfig is given (in-cluster service account).",
  ],
  BERTH_DATA_DIR: ["berth doctor", "berth's data directory (default /var/lib/berth)."],
  BERTH_NATIVE: ["every berth process", "Path of berth's native addon, instead of the one beside the bundle."],
  "BERTH_COMMAND, BERTH_ARGS": [
    "berth.service",
    "The subcommand the service runs (default up) and its flags, from /etc/berth/berth.env.",
  ],
  "CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH": [
    "plugins",
    "The CNI spec's invocation variables, set by the runtime.",
  ],
  CNI_NETNS_OVERRIDE: ["plugins", "1 or true: allow CNI_NETNS to be the plugin's own network namespace (as libcni's)."],
};

export interface Command {
  /** "berth up", or "berth install / uninstall" for commands that share one --help. */
  name: string;
  help: string;
  /** The files that parse its flags (bin/cli.ts's import for it, plus FLAG_SOURCES). */
  source: string[];
}

/** Flags parsed outside the module bin/cli.ts imports for the command. */
const FLAG_SOURCES: Record<string, string[]> = { agent: ["overlay/config.ts"] };
/** Commands `berth --help` lists that take no flags. */
const NO_HELP = new Set(["version"]);

/** Every command `berth --help` lists, with its --help; those printing the same text are one. */
export async function commands(): Promise<Command[]> {
  const top = await helpText(["--help"]);
  const names = [...top.matchAll(/^ {2}([a-z][a-z-]*) /gm)].map((m) => m[1]!).filter((n) => !NO_HELP.has(n));
  const cli = readFileSync(join(ROOT, "bin", "cli.ts"), "utf8");
  const helps = await Promise.all(names.map((n) => helpText([n, "--help"])));
  const out: Command[] = [];
  names.forEach((n, i) => {
    const imported = new RegExp(`case "${n}":[\\s\\S]*?import\\("([^"]+)"\\)`).exec(cli)?.[1];
    const source = [...(imported ? [join("bin", imported)] : []), ...(FLAG_SOURCES[n] ?? [])];
    const same = out.find((c) => c.help === helps[i]);
    if (same) {
      same.name += ` / ${n}`;
      for (const f of source) if (!same.source.includes(f)) same.source.push(f);
    } else out.push({ name: `berth ${n}`, help: helps[i]!, source });
  });
  return out;
}

const run = promisify(execFile);

/** A command's --help text, as `berth` prints it (from the source tree). */
export async function helpText(argv: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, ["--import", "tsx", join(ROOT, "bin", "cli.ts"), ...argv], {
    cwd: ROOT,
    env: { ...process.env, CSI_ENDPOINT: "" },
    timeout: 60_000,
  });
  return stdout;
}

/** A value in a table cell: pipes escaped, newlines folded. */
function cell(text: string): string {
  return text.replace(/\|/g, "\\|").replace(/\s*\n\s*/g, " ");
}

function code(v: unknown): string {
  return `\`${JSON.stringify(v)}\``;
}

interface Row {
  key: string;
  field: Field<unknown, boolean>;
}

/** Every key of a shape, nested objects' keys as path.key (arrays as path[]). */
function rows(shape: Shape, prefix = ""): Row[] {
  const out: Row[] = [];
  for (const [name, field] of Object.entries(shape)) {
    const key = `${prefix}${name}`;
    out.push({ key, field });
    const nested = field.doc.fields;
    if (nested) {
      const depth = (field.doc.type.match(/array of /g) ?? []).length;
      out.push(...rows(nested, `${key}${"[]".repeat(depth)}.`));
    }
  }
  return out;
}

function describeField(f: Field<unknown, boolean>): string {
  let text = f.doc.description ?? "";
  for (const u of f.unsupportedValues) text += ` ${code(u.value)} is refused (${u.reason}).`;
  return text.trim();
}

function pluginSection(name: string, plugin: Plugin): string {
  const info = PLUGIN_INFO[name];
  if (!info) throw new Error(`scripts/config-reference.ts: no PLUGIN_INFO for ${name}`);
  const lines = [`### ${name}`, "", info.summary, ""];
  const facts = [
    info.reference
      ? `Takes the option names of the reference plugin \`${info.reference}\` (containernetworking/plugins); berth's additions say "berth only".`
      : "berth's own plugin: no reference counterpart (flannel has this role).",
  ];
  if (info.capabilities.length) facts.push(`Capability arguments: ${info.capabilities.map((c) => `\`${c}\``).join(", ")}.`);
  if (plugin.cniArgs?.length) facts.push(`CNI_ARGS keys: ${plugin.cniArgs.map((a) => `\`${a}\``).join(", ")}.`);
  lines.push(facts.join(" "), "");
  const schema = plugin.schema;
  if (!schema || Object.keys(schema.fields).length === 0) return [...lines, "No options of its own.", ""].join("\n");
  const where = info.role === "ipam" ? "`ipam` key" : "key";
  lines.push(`| ${where} | type | default | required | reference | description |`, "| --- | --- | --- | --- | --- | --- |");
  for (const { key, field } of rows(schema.fields)) {
    if (!field.doc.description) throw new Error(`${name}: key ${key} has no description (Field.describe)`);
    const reference = info.reference && !field.doc.extension ? info.reference : "berth only";
    const fallback = field.fallback === undefined ? "" : code(field.fallback);
    lines.push(
      `| \`${key}\` | ${cell(field.doc.type)} | ${cell(fallback)} | ${field.required ? "yes" : ""} | ${reference} | ${cell(describeField(field))} |`,
    );
  }
  for (const [a, b] of schema.rules.exclusive ?? []) lines.push("", `\`${a}\` and \`${b}\` cannot both be set.`);
  lines.push("");
  return lines.join("\n");
}

export const EXAMPLE_CONFLIST = {
  cniVersion: "1.0.0",
  name: "berth",
  plugins: [
    {
      type: "berth-bridge",
      bridge: "berth0",
      isGateway: true,
      ipMasq: true,
      ipam: { type: "berth-host-local", ranges: [[{ subnet: "10.86.0.0/16" }]], routes: [{ dst: "0.0.0.0/0" }] },
    },
    { type: "berth-portmap", capabilities: { portMappings: true } },
    { type: "berth-firewall" },
    { type: "berth-bandwidth", capabilities: { bandwidth: true } },
  ],
};

/** The whole reference, as docs/configuration.md holds it. */
export async function render(given?: Command[]): Promise<string> {
  for (const k of NETCONF_KEYS) if (!COMMON_KEYS[k]) throw new Error(`COMMON_KEYS lacks ${k}`);
  for (const k of RUNTIME_CONFIG_KEYS) if (!RUNTIME_CONFIG[k]) throw new Error(`RUNTIME_CONFIG lacks ${k}`);
  const cmds = given ?? (await commands());
  const plugins = await Promise.all(Object.entries(BERTH_PLUGINS).map(async ([n, load]) => [n, await load()] as const));

  const out: string[] = [
    "# Configuration reference",
    "",
    "<!-- Generated by scripts/config-reference.ts from the plugins' schemas, the commands' --help",
    "     and the CSI driver's parameters. Do not edit; run `npm run docs`. -->",
    "",
    "- [CNI network configuration](#cni-network-configuration): [keys every plugin reads](#keys-every-plugin-reads), " +
      (["main", "ipam", "meta"] as const)
        .map((role) =>
          plugins
            .filter(([n]) => PLUGIN_INFO[n]?.role === role)
            .map(([n]) => `[${n}](#${n})`)
            .join(", "),
        )
        .join(", "),
    `- [Commands](#commands): ${cmds.map((c) => `[${c.name}](#${anchor(c.name)})`).join(", ")}`,
    "- [Environment](#environment)",
    "- [CSI StorageClass parameters](#csi-storageclass-parameters)",
    "- [Docker volume options](#docker-volume-options)",
    "",
    "## CNI network configuration",
    "",
    "A network is a conflist in the runtime's CNI config directory (`/etc/cni/net.d`; `berth install`",
    "writes `10-berth.conflist`): a main plugin, then meta plugins chained after it. Keys are",
    "matched as the reference plugins' Go decoder matches them (case-insensitively); keys a plugin",
    "does not declare are ignored. A bad value is CNI error 7 naming the key; a valid value berth",
    "does not implement is error 2.",
    "",
    "```json",
    JSON.stringify(EXAMPLE_CONFLIST, null, 2),
    "```",
    "",
    "### Keys every plugin reads",
    "",
    "| key | description |",
    "| --- | --- |",
    ...NETCONF_KEYS.map((k) => `| \`${k}\` | ${cell(COMMON_KEYS[k]!)} |`),
    "",
    "`runtimeConfig` (capability arguments; a plugin gets one only when its config lists it under",
    "`capabilities`):",
    "",
    "| key | read by | description |",
    "| --- | --- | --- |",
    ...RUNTIME_CONFIG_KEYS.map((k) => {
      const readers = plugins.filter(([n]) => PLUGIN_INFO[n]?.capabilities.includes(k)).map(([n]) => n);
      return `| \`${k}\` | ${readers.join(", ")} | ${cell(RUNTIME_CONFIG[k]!)} |`;
    }),
    "",
  ];
  for (const [role, title] of [
    ["main", "Main plugins"],
    ["ipam", "IPAM plugins"],
    ["meta", "Meta plugins (chained)"],
  ] as const) {
    out.push(`## ${title}`, "");
    for (const [n, p] of plugins) if (PLUGIN_INFO[n]?.role === role) out.push(pluginSection(n, p));
  }
  for (const [n] of plugins) if (!PLUGIN_INFO[n]) throw new Error(`scripts/config-reference.ts: no PLUGIN_INFO for ${n}`);

  out.push("## Commands", "", "Each section is the command's `--help`.", "");
  const agentHelp = cmds.find((c) => c.name === "berth agent")?.help ?? "\0";
  for (const c of cmds) {
    let text = c.help;
    // berth up prints the agent's flags after its own; they have their own section.
    if (c.name === "berth up" && text.endsWith(agentHelp))
      text = `${text.slice(0, -agentHelp.length)}[agent flags: see berth agent]`;
    out.push(`### ${c.name}`, "", "```text", text.trimEnd(), "```", "");
  }

  out.push(
    "## Environment",
    "",
    "| variable | read by | description |",
    "| --- | --- | --- |",
    ...Object.entries(ENVIRONMENT).map(
      ([k, [who, d]]) =>
        `| ${k
          .split(", ")
          .map((v) => `\`${v}\``)
          .join(", ")} | ${who} | ${cell(d)} |`,
    ),
    "",
    "Every berth-* plugin's launcher also reads these top-level config keys:",
    "",
    "| key | description |",
    "| --- | --- |",
    ...Object.entries(LAUNCHER_KEYS).map(([k, d]) => `| \`${k}\` | ${cell(d)} |`),
    "",
  );
  out.push(
    "## CSI StorageClass parameters",
    "",
    "`parameters` of a StorageClass (CreateVolume). Keys starting with `csi.storage.k8s.io/` (added",
    "by the provisioner) are ignored; any other key is INVALID_ARGUMENT. `mutable_parameters` are",
    "not supported. The filesystem comes from the volume capability's `fsType` (`csi.storage.k8s.io/fstype`).",
    "",
    "| parameter | description |",
    "| --- | --- |",
    ...Object.entries(VOLUME_PARAMETERS).map(([k, d]) => `| \`${k}\` | ${cell(d)} |`),
    "",
    "## Docker volume options",
    "",
    "`docker volume create -d <plugin> -o KEY=VALUE` with `berth docker-plugin` (or `berth up --docker`);",
    "any other key is refused. Network options (`-o berth.*` on `docker network create`) are in the",
    "docker-plugin's usage above.",
    "",
    "| option | description |",
    "| --- | --- |",
    ...Object.entries(VOLUME_OPTIONS).map(([k, d]) => `| \`${k}\` | ${cell(d)} |`),
    "",
  );
  return out.join("\n");
}

/** GitHub's heading anchor. */
function anchor(heading: string): string {
  return heading
    .toLowerCase()
    .replace(/[^a-z0-9 -]/g, "")
    .replace(/ /g, "-");
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const i = process.argv.indexOf("--out");
  const file = i > 0 ? process.argv[i + 1]! : OUTPUT;
  render().then(
    (text) => {
      writeFileSync(file, text);
      process.stdout.write(`wrote ${file}\n`);
    },
    (e: unknown) => {
      process.stderr.write(`config-reference: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
