import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { delNetns, sh, testPrefix } from "../testing/kernel.ts";
import { type CheckResult, runDoctor, TOOL_CHECKS } from "./doctor.ts";

function netnsNames(): string[] {
  try {
    return readdirSync("/run/netns");
  } catch {
    return [];
  }
}

async function doctor(args: string[], scratchNetns: string, searchPath?: string[]): Promise<{ code: number; out: string }> {
  let out = "";
  const code = await runDoctor(args, { scratchNetns, searchPath, write: (t) => (out += t) });
  return { code, out };
}

describe("berth doctor", () => {
  const made: string[] = [];
  afterEach(() => {
    for (const ns of made.splice(0)) delNetns(ns);
  });
  function scratchName(): string {
    const name = `${testPrefix()}doc`;
    made.push(name);
    return name;
  }

  it("passes on this machine and removes its throwaway netns", async () => {
    const ns = scratchName();
    const { code, out } = await doctor([], ns);
    expect(code).toBe(0);
    for (const line of [
      /^ok\s+root\s+uid 0$/m,
      /^ok\s+CAP_NET_ADMIN\s+effective$/m,
      /^ok\s+CAP_SYS_ADMIN\s+effective$/m,
      /^ok\s+kernel\s+Linux 6\./m,
      /^ok\s+native addon\s+loaded$/m,
      /^ok\s+netns\s+created, entered and deleted/m,
      /^ok\s+veth links\s/m,
      /^ok\s+bridge links\s/m,
      /^ok\s+vxlan links\s/m,
      /^ok\s+macvlan links\s/m,
      /^ok\s+\/dev\/loop-control\s+present$/m,
      /^ok\s+mkfs\.ext4\s+.*\/mkfs\.ext4, .*\/resize2fs, .*\/e2fsck$/m,
      /^ok\s+mkfs\.xfs\s+.*\/mkfs\.xfs, .*\/xfs_growfs$/m,
      /^ok\s+nft\s+.*\/nft$/m,
      /^ok\s+conntrack\s+.*\/conntrack$/m,
      /^ok\s+fsfreeze\s+.*\/fsfreeze$/m,
      // ext4 without quota support on these machines: a warning with the fallback, not a failure.
      /^warn\s+project quota\s+.* is on ext4 at \/.* — fix: dir-volume capacity falls back to loop-backed filesystems/m,
    ]) {
      expect(out).toMatch(line);
    }
    const forward = sh("cat", ["/proc/sys/net/ipv4/ip_forward"]).trim();
    expect(out).toMatch(
      forward === "1" ? /^ok\s+ip forwarding\s+net\.ipv4\.ip_forward = 1$/m : /^warn\s+ip forwarding\s+.*isGateway/m,
    );
    expect(out).toMatch(/berth can run on this host\n$/);
    expect(netnsNames()).not.toContain(ns);
    expect(sh("ip", ["netns", "list"])).not.toContain(ns);
  });

  it("prints machine-readable results with --json", async () => {
    const ns = scratchName();
    const { code, out } = await doctor(["--json"], ns);
    expect(code).toBe(0);
    const parsed = JSON.parse(out) as { ok: boolean; checks: CheckResult[] };
    expect(parsed.ok).toBe(true);
    const byName = new Map(parsed.checks.map((c) => [c.name, c]));
    expect(byName.get("CAP_SYS_ADMIN")?.status).toBe("ok");
    expect(byName.get("vxlan links")?.status).toBe("ok");
    expect(byName.get("project quota")).toMatchObject({ status: "warn", fix: expect.stringContaining("loop-backed") });
    expect(parsed.checks.every((c) => c.status !== "MISSING")).toBe(true);
    expect(netnsNames()).not.toContain(ns);
  });

  it("fails and says how to fix it when tools are missing", async () => {
    const ns = scratchName();
    const empty = mkdtempSync(join(tmpdir(), `${ns}-path-`));
    try {
      const { code, out } = await doctor([], ns, [empty]);
      expect(code).toBe(1);
      // Each missing tool names the exact Debian package that holds it.
      expect(out).toMatch(/^MISSING mkfs\.ext4\s+mkfs\.ext4, resize2fs, e2fsck not on PATH — fix: install e2fsprogs \(/m);
      expect(out).toMatch(/^warn\s+mkfs\.xfs\s+mkfs\.xfs, xfs_growfs not on PATH — fix: install xfsprogs \(/m);
      expect(out).toMatch(/^warn\s+fsfreeze\s+fsfreeze not on PATH — fix: install util-linux \(/m);
      expect(out).toMatch(/^MISSING nft\s+nft not on PATH — fix: install nftables \(/m);
      expect(out).toMatch(/^warn\s+conntrack\s+conntrack not on PATH — fix: install conntrack \(/m);
      expect(out).toMatch(/^warn\s+veth links\s+not checked: iproute2 `ip` not found/m);
      expect(out).toMatch(/2 required item\(s\) missing\n$/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
    expect(netnsNames()).not.toContain(ns);
  });

  it("names the Debian package that really holds each tool", () => {
    for (const check of [...TOOL_CHECKS, { tools: ["ip"], pkg: "iproute2" }]) {
      for (const tool of check.tools) {
        // dpkg -S matches the pattern against every installed package's file list.
        const owners = sh("dpkg", ["-S", `bin/${tool}`])
          .trim()
          .split("\n")
          .filter((l) => new RegExp(`bin/${tool.replace(".", "\\.")}$`).test(l))
          .map((l) => l.split(":")[0]);
        expect(owners, tool).toContain(check.pkg);
      }
    }
  });

  it("rejects unknown arguments with usage", async () => {
    let err = "";
    const writeError = (t: string) => {
      err += t;
    };
    expect(await runDoctor(["--bogus"], { writeError })).toBe(2);
    expect(err).toMatch(/^berth doctor: unknown argument "--bogus"\nusage:/);
    err = "";
    expect(await runDoctor(["--data-dir", "relative"], { writeError })).toBe(2);
    expect(err).toMatch(/--data-dir must be an absolute path/);
    let help = "";
    expect(await runDoctor(["--help"], { write: (t) => (help += t) })).toBe(0);
    expect(help).toMatch(/usage: berth doctor/);
  });
});
