// IPAM for the main plugins. berth's own IPAM plugins run in-process (one Node start per
// ADD instead of two); any other type is executed from CNI_PATH as the spec describes.
// Either way the IPAM plugin sees the same request: the full network config and env.
import { delegateAdd, delegateCheck, delegateDel, delegateGc, delegateStatus } from "../exec/delegate.ts";
import { CniError, ErrorCode, type Plugin, type Request, type Result } from "../protocol/types.ts";

type Loader = () => Promise<Plugin>;

/** In-process IPAM plugins, loaded lazily so a command that needs none pays nothing. */
const BUILTIN: Record<string, Loader> = {
  "berth-host-local": async () => (await import("../ipam/host-local/host-local.ts")).hostLocalPlugin,
  "berth-static": async () => (await import("../ipam/static/static.ts")).staticPlugin,
};

export function ipamType(req: Request): string | undefined {
  const ipam = req.config.ipam;
  if (ipam === undefined || ipam === null) return undefined;
  if (typeof ipam !== "object" || typeof ipam.type !== "string" || ipam.type === "") {
    throw new CniError(ErrorCode.InvalidConfig, `invalid config: "ipam.type" must be a non-empty string`);
  }
  return ipam.type;
}

async function builtin(type: string): Promise<Plugin | undefined> {
  const load = BUILTIN[type];
  return load ? load() : undefined;
}

/** A request for the IPAM plugin: same env and config; IPAM results carry no interfaces. */
function forIpam(req: Request, command: Request["command"]): Request {
  return { ...req, command };
}

export async function ipamAdd(req: Request): Promise<Result> {
  const type = ipamType(req);
  if (!type) throw new CniError(ErrorCode.InvalidConfig, `invalid config: "ipam" is required`);
  const p = await builtin(type);
  const result = p ? await p.add(forIpam(req, "ADD")) : await delegateAdd(type, req.stdin, req);
  if (!result.ips || result.ips.length === 0) {
    throw new CniError(ErrorCode.InvalidConfig, `IPAM plugin "${type}" returned no IP addresses`);
  }
  return result;
}

export async function ipamDel(req: Request): Promise<void> {
  const type = ipamType(req);
  if (!type) return;
  const p = await builtin(type);
  if (p) await p.del(forIpam(req, "DEL"));
  else await delegateDel(type, req.stdin, req);
}

export async function ipamCheck(req: Request): Promise<void> {
  const type = ipamType(req);
  if (!type) return;
  const p = await builtin(type);
  if (p) await p.check(forIpam(req, "CHECK"));
  else await delegateCheck(type, req.stdin, req);
}

export async function ipamGc(req: Request): Promise<void> {
  const type = ipamType(req);
  if (!type) return;
  const p = await builtin(type);
  if (p) await p.gc?.(forIpam(req, "GC"));
  else await delegateGc(type, req.stdin, req);
}

export async function ipamStatus(req: Request): Promise<void> {
  const type = ipamType(req);
  if (!type) return;
  const p = await builtin(type);
  if (p) await p.status?.(forIpam(req, "STATUS"));
  else await delegateStatus(type, req.stdin, req);
}
