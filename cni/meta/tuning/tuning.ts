// berth-tuning: adjusts the container interface after a main plugin created it — net.*
// sysctls in the container's netns, and link settings (mac, mtu, promisc, allmulti, txQLen)
// with per-attachment overrides in args.cni. The link's original settings are saved before
// the first change (a small JSON file, written atomically) and put back on DEL. Like the
// reference plugin, sysctls are not restored: they die with the netns.
import { existsSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { isNetlinkError } from "../../../native/netlink/error.ts";
import type { Link, LinkChanges } from "../../../native/netlink/link.ts";
import type { Rtnl } from "../../../native/netlink/socket.ts";
import { readSysctl, SysctlError, writeSysctl } from "../../../native/sysctl.ts";
import { openContainerNetns, openNetnsIfPresent, withRtnl } from "../../plugins/container-netns.ts";
import { kernelError } from "../../plugins/errors.ts";
import { gcAttachments, requestedMac } from "../../protocol/config.ts";
import { makeDirectory, readSmallFile } from "../../protocol/files.ts";
import { configSchema, Field, field, type Infer, validateConfig } from "../../protocol/schema.ts";
import { CniError, ErrorCode, type Plugin, type Request, type Result } from "../../protocol/types.ts";
import { requirePrevResult } from "../chained.ts";

export const DEFAULT_DATA_DIR = "/run/berth/tuning";
export const DEFAULT_ALLOWLIST = "/etc/cni/tuning/allowlist.conf";

const sysctlValue = new Field<string>((v, path) => {
  if (typeof v === "string") return v;
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  throw new CniError(ErrorCode.InvalidConfig, `invalid config: "${path}" must be a string, got ${JSON.stringify(v)}`);
});

/** Keys that may appear both in the config and in args.cni (the override wins). */
const linkFields = {
  mac: field.mac().describe("Set the container interface's MAC."),
  mtu: field.int(68, 65535).describe("Set the container interface's MTU."),
  promisc: field.boolean().describe("Turn promiscuous mode on or off."),
  allmulti: field.boolean().describe("Turn all-multicast mode on or off."),
  txQLen: field.int(0, 0xffffffff).describe("Set the transmit queue length."),
};

const schema = configSchema({
  ...linkFields,
  sysctl: field
    .anyObject()
    .describe('net.* sysctls set in the container\'s namespace, e.g. {"net.ipv4.conf.IFNAME.arp_filter": "1"}.'),
  dataDir: field
    .string({ nonEmpty: true })
    .default(DEFAULT_DATA_DIR)
    .describe("Where the link's settings are saved before the first change (DEL puts them back).", { extension: true }),
  sysctlAllowlist: field
    .string({ nonEmpty: true })
    .default(DEFAULT_ALLOWLIST)
    .describe("File of regexes a sysctl must match (one a line); no file allows every net.* sysctl.", {
      extension: true,
    }),
});

const overrideSchema = configSchema({ ...linkFields, sysctl: field.anyObject() });

interface TuningConf {
  mac?: string;
  mtu?: number;
  promisc?: boolean;
  allmulti?: boolean;
  txQLen?: number;
  /** Resolved keys (IFNAME replaced) as /proc/sys path segments, with their values. */
  sysctls: { key: string; segments: string[]; value: string }[];
  dataDir: string;
}

/** What DEL puts back: the link's settings before our first change. */
interface LinkBackup {
  network: string;
  containerId: string;
  ifname: string;
  mac?: string;
  mtu?: number;
  promisc?: boolean;
  allmulti?: boolean;
  txqlen?: number;
}

function argsCni(req: Request): Record<string, unknown> {
  const cni = req.config.args?.cni;
  return typeof cni === "object" && cni !== null && !Array.isArray(cni) ? (cni as Record<string, unknown>) : {};
}

function parseConf(req: Request): TuningConf {
  const base = validateConfig(req.config, schema);
  let over: Infer<typeof overrideSchema.fields>;
  try {
    over = validateConfig(argsCni(req), overrideSchema);
  } catch (e) {
    if (e instanceof CniError) throw new CniError(e.code, e.message.replace('config: "', 'config: "args.cni.'));
    throw e;
  }
  const sysctlObj = { ...(base.sysctl ?? {}), ...(over.sysctl ?? {}) };
  const allow = loadAllowlist(base.sysctlAllowlist);
  const sysctls = Object.entries(sysctlObj).map(([key, raw]) => {
    const value = sysctlValue.check(raw, `sysctl.${key}`);
    // Split before replacing: an ifname may contain dots ("eth0.100").
    const segments = (key.includes("/") ? key.split("/") : key.split(".")).map((s) => (s === "IFNAME" ? req.ifname : s));
    if (segments[0] !== "net" || segments.length < 2 || segments.some((s) => s === "" || s === "." || s === "..")) {
      throw new CniError(
        ErrorCode.InvalidConfig,
        `invalid config: "sysctl": ${JSON.stringify(key)} is not a net.* key (only network sysctls are namespaced)`,
      );
    }
    if (allow && !allow.some((re) => re.test(key) || re.test(segments.join(".")))) {
      throw new CniError(
        ErrorCode.UnsupportedField,
        `unsupported field: "sysctl": ${JSON.stringify(key)} is not in the allowlist ${base.sysctlAllowlist}`,
      );
    }
    return { key, segments, value };
  });
  return {
    mac: requestedMac(req) ?? over.mac ?? base.mac,
    mtu: over.mtu ?? base.mtu,
    promisc: over.promisc ?? base.promisc,
    allmulti: over.allmulti ?? base.allmulti,
    txQLen: over.txQLen ?? base.txQLen,
    sysctls,
    dataDir: base.dataDir,
  };
}

/** The allowlist's regexes (one a line, # comments), or null when there is no file: everything net.* is allowed. */
function loadAllowlist(file: string): RegExp[] | null {
  let text: string;
  try {
    text = readSmallFile(file, SMALL_FILE_BYTES);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new CniError(ErrorCode.IoFailure, `cannot read sysctl allowlist ${file}: ${(e as Error).message}`);
  }
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => {
      try {
        return new RegExp(l);
      } catch {
        throw new CniError(
          ErrorCode.InvalidConfig,
          `invalid sysctl allowlist ${file}: ${JSON.stringify(l)} is not a regular expression`,
        );
      }
    });
}

/** An allowlist or a link backup is a few hundred bytes; anything past this is not one. */
const SMALL_FILE_BYTES = 256 * 1024;

function backupFile(dataDir: string, network: string, containerId: string, ifname: string): string {
  return join(dataDir, `${network}-${containerId}-${ifname}.json`);
}

/** Writes through a temporary name: a crash never leaves half a backup. */
function writeBackup(file: string, backup: LinkBackup, dataDir: string): void {
  try {
    makeDirectory(dataDir);
    const tmp = `${file}.tmp${process.pid}`;
    writeFileSync(tmp, JSON.stringify(backup));
    renameSync(tmp, file);
  } catch (e) {
    throw new CniError(ErrorCode.IoFailure, `cannot write link backup ${file}: ${(e as Error).message}`);
  }
}

/** What a backup file must hold; one that does not (damaged, hand-edited) is treated as absent. */
const backupSchema = configSchema({
  network: field.string().require(),
  containerId: field.string().require(),
  ifname: field.string().require(),
  mac: field.mac(),
  mtu: field.int(68, 65535),
  promisc: field.boolean(),
  allmulti: field.boolean(),
  txqlen: field.int(0, 0xffffffff),
});

function readBackup(file: string): LinkBackup | null {
  try {
    const raw: unknown = JSON.parse(readSmallFile(file, SMALL_FILE_BYTES));
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return null;
    return validateConfig(raw as Record<string, unknown>, backupSchema);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    // A corrupt backup cannot be restored from; it must not block DEL forever.
    return null;
  }
}

function linkChanges(conf: TuningConf): LinkChanges {
  const c: LinkChanges = {};
  if (conf.mac !== undefined) c.mac = conf.mac;
  if (conf.mtu !== undefined) c.mtu = conf.mtu;
  if (conf.promisc !== undefined) c.promisc = conf.promisc;
  if (conf.allmulti !== undefined) c.allmulti = conf.allmulti;
  if (conf.txQLen !== undefined) c.txqlen = conf.txQLen;
  return c;
}

/** Applies link changes; a device that refuses a MAC change while up (EBUSY) is taken down for it. */
function setLink(nl: Rtnl, link: Link, changes: LinkChanges): void {
  try {
    nl.linkSet(link.index, changes);
  } catch (e) {
    if (!(changes.mac && isNetlinkError(e, "EBUSY") && link.up)) throw e;
    nl.linkSet(link.index, { up: false });
    nl.linkSet(link.index, changes);
    nl.linkSet(link.index, { up: true });
  }
}

function sysctlError(what: string, e: unknown): CniError {
  if (e instanceof SysctlError && e.code === "ENOENT") {
    return new CniError(
      ErrorCode.InvalidConfig,
      `invalid config: "sysctl": ${what} does not exist in the container's network namespace`,
    );
  }
  return kernelError(`sysctl ${what}`, e);
}

async function add(req: Request): Promise<Result> {
  const conf = parseConf(req);
  const prev = requirePrevResult(req, "berth-tuning");
  const ns = openContainerNetns(req);
  try {
    for (const s of conf.sysctls) {
      try {
        writeSysctl(s.segments, s.value, ns);
      } catch (e) {
        throw sysctlError(s.key, e);
      }
    }
    const changes = linkChanges(conf);
    const link = await withRtnl(ns, (nl) => {
      const link = nl.linkGet(req.ifname);
      if (!link) throw new CniError(ErrorCode.InvalidConfig, `interface ${req.ifname} does not exist in ${req.netns}`);
      if (Object.keys(changes).length === 0) return link;
      const file = backupFile(conf.dataDir, req.config.name, req.containerId, req.ifname);
      // A repeated ADD keeps the first backup: that one holds the original settings.
      if (!existsSync(file)) {
        writeBackup(
          file,
          {
            network: req.config.name,
            containerId: req.containerId,
            ifname: req.ifname,
            mac: changes.mac !== undefined ? link.mac : undefined,
            mtu: changes.mtu !== undefined ? link.mtu : undefined,
            promisc: changes.promisc !== undefined ? link.promisc : undefined,
            allmulti: changes.allmulti !== undefined ? link.allmulti : undefined,
            txqlen: changes.txqlen !== undefined ? link.txqlen : undefined,
          },
          conf.dataDir,
        );
      }
      try {
        setLink(nl, link, changes);
      } catch (e) {
        throw kernelError(`set ${JSON.stringify(changes)} on ${req.ifname}`, e);
      }
      return nl.linkGet(link.index)!;
    });
    return {
      ...prev,
      interfaces: prev.interfaces?.map((i) =>
        i.name === req.ifname && i.sandbox ? { ...i, mac: link.mac ?? i.mac, mtu: link.mtu } : i,
      ),
    };
  } finally {
    ns.close();
  }
}

async function del(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const file = backupFile(conf.dataDir, req.config.name, req.containerId, req.ifname);
  const backup = readBackup(file);
  if (!backup) return;
  const ns = openNetnsIfPresent(req);
  if (ns) {
    try {
      await withRtnl(ns, (nl) => {
        const link = nl.linkGet(req.ifname);
        if (!link) return; // the main plugin's DEL may have run first
        const changes: LinkChanges = {};
        if (backup.mac !== undefined) changes.mac = backup.mac;
        if (backup.mtu !== undefined) changes.mtu = backup.mtu;
        if (backup.promisc !== undefined) changes.promisc = backup.promisc;
        if (backup.allmulti !== undefined) changes.allmulti = backup.allmulti;
        if (backup.txqlen !== undefined) changes.txqlen = backup.txqlen;
        if (Object.keys(changes).length > 0) setLink(nl, link, changes);
      });
    } catch (e) {
      throw kernelError(`restore ${req.ifname}`, e);
    } finally {
      ns.close();
    }
  }
  rmSync(file, { force: true });
}

async function check(req: Request): Promise<void> {
  const conf = parseConf(req);
  requirePrevResult(req, "berth-tuning");
  const ns = openContainerNetns(req);
  try {
    for (const s of conf.sysctls) {
      let have: string;
      try {
        have = readSysctl(s.segments, ns);
      } catch (e) {
        throw sysctlError(s.key, e);
      }
      if (have.trim() !== s.value.trim()) {
        throw new CniError(
          ErrorCode.Internal,
          `CHECK: sysctl ${s.key} is ${JSON.stringify(have)}, configured ${JSON.stringify(s.value)}`,
        );
      }
    }
    await withRtnl(ns, (nl) => {
      const link = nl.linkGet(req.ifname);
      if (!link) throw new CniError(ErrorCode.Internal, `CHECK: interface ${req.ifname} is missing from ${req.netns}`);
      const wrong: string[] = [];
      if (conf.mac !== undefined && link.mac?.toLowerCase() !== conf.mac.toLowerCase())
        wrong.push(`mac ${link.mac} (want ${conf.mac})`);
      if (conf.mtu !== undefined && link.mtu !== conf.mtu) wrong.push(`mtu ${link.mtu} (want ${conf.mtu})`);
      if (conf.promisc !== undefined && link.promisc !== conf.promisc)
        wrong.push(`promisc ${link.promisc} (want ${conf.promisc})`);
      if (conf.allmulti !== undefined && link.allmulti !== conf.allmulti)
        wrong.push(`allmulti ${link.allmulti} (want ${conf.allmulti})`);
      if (conf.txQLen !== undefined && link.txqlen !== conf.txQLen) wrong.push(`txqlen ${link.txqlen} (want ${conf.txQLen})`);
      if (wrong.length > 0) throw new CniError(ErrorCode.Internal, `CHECK: ${req.ifname} has ${wrong.join(", ")}`);
    });
  } finally {
    ns.close();
  }
}

/** GC: backups of this network's attachments that are no longer valid (their netns is gone: nothing to restore). */
async function gc(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const valid = new Set(gcAttachments(req.config).map((a) => `${a.containerID}\0${a.ifname}`));
  let names: string[];
  try {
    names = readdirSync(conf.dataDir);
  } catch {
    return; // no backups ever written
  }
  for (const name of names) {
    if (!name.startsWith(`${req.config.name}-`) || !name.endsWith(".json")) continue;
    const b = readBackup(join(conf.dataDir, name));
    if (b && b.network !== req.config.name) continue;
    if (b && valid.has(`${b.containerId}\0${b.ifname}`)) continue;
    rmSync(join(conf.dataDir, name), { force: true });
  }
}

export const tuningPlugin: Plugin = {
  name: "berth-tuning",
  cniArgs: ["MAC"],
  schema,
  add,
  del,
  check,
  gc,
};
