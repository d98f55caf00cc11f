// berth-loopback: brings `lo` up inside the container. Passes prevResult through when
// chained, as the spec asks of a plugin that adds nothing to it.
import type { Plugin, Request, Result } from "../../protocol/types.ts";
import { CniError, ErrorCode } from "../../protocol/types.ts";
import { openContainerNetns, openNetnsIfPresent, withRtnl } from "../container-netns.ts";
import { kernelError } from "../errors.ts";

async function add(req: Request): Promise<Result> {
  const ns = openContainerNetns(req);
  try {
    await withRtnl(ns, (nl) => {
      try {
        nl.linkSet("lo", { up: true });
      } catch (e) {
        throw kernelError(`set lo up in ${req.netns}`, e);
      }
    });
  } finally {
    ns.close();
  }
  if (req.config.prevResult) return { ...req.config.prevResult, cniVersion: req.config.cniVersion };
  return {
    cniVersion: req.config.cniVersion,
    interfaces: [{ name: "lo", mac: "00:00:00:00:00:00", sandbox: req.netns }],
    ips: [
      { address: "127.0.0.1/8", interface: 0 },
      { address: "::1/128", interface: 0 },
    ],
  };
}

async function del(req: Request): Promise<void> {
  const ns = openNetnsIfPresent(req);
  if (!ns) return;
  try {
    await withRtnl(ns, (nl) => {
      try {
        nl.linkSet("lo", { up: false });
      } catch {
        // the namespace is going away; nothing to undo
      }
    });
  } finally {
    ns.close();
  }
}

async function check(req: Request): Promise<void> {
  const ns = openContainerNetns(req);
  try {
    await withRtnl(ns, (nl) => {
      const lo = nl.linkGet("lo");
      if (!lo?.up) throw new CniError(ErrorCode.Internal, `CHECK: lo is down in ${req.netns}`);
    });
  } finally {
    ns.close();
  }
}

export const loopbackPlugin: Plugin = { name: "berth-loopback", add, del, check };
