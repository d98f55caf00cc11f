// scripts/setup.sh (the README's `npm run setup`): the package list covers what `berth doctor`
// tells an operator to install, a second run installs nothing, and a Node too old is named.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { TOOL_CHECKS } from "../bin/doctor.ts";

const SCRIPT = resolve(import.meta.dirname, "setup.sh");

function packages(): string[] {
  const text = readFileSync(SCRIPT, "utf8");
  const list = /^PACKAGES=\(\n([\s\S]*?)\n\)/m.exec(text)?.[1] ?? "";
  return list.split(/\s+/).filter(Boolean);
}

describe("scripts/setup.sh", () => {
  it("is valid bash and installs every package berth doctor names", () => {
    expect(spawnSync("bash", ["-n", SCRIPT]).status).toBe(0);
    const pkgs = packages();
    expect(pkgs.length).toBeGreaterThan(20);
    for (const p of [...TOOL_CHECKS.map((c) => c.pkg), "iproute2"]) expect(pkgs).toContain(p);
  });

  it("on a machine it has set up, installs nothing", () => {
    // Checked first, so that this test never runs apt-get: a missing package fails it instead.
    const missing = packages().filter(
      (p) => !/^Status: install ok installed$/m.test(spawnSync("dpkg", ["-s", p], { encoding: "utf8" }).stdout),
    );
    expect(missing).toEqual([]);
    const r = spawnSync("bash", [SCRIPT], { encoding: "utf8", env: { ...process.env, SETUP_STEPS: "apt" } });
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe(`setup: Debian packages: all ${packages().length} present\nsetup: done\n`);
    expect(r.status).toBe(0);
  });

  it("names a Node that is too old, before touching anything", () => {
    const dir = mkdtempSync(join(tmpdir(), "berth-setup-"));
    try {
      writeFileSync(join(dir, "node"), '#!/bin/sh\n[ "$1" = --version ] && echo v18.19.0 && exit 0\nexit 1\n', { mode: 0o755 });
      const r = spawnSync("bash", [SCRIPT], { encoding: "utf8", env: { ...process.env, PATH: `${dir}:/usr/bin:/bin` } });
      expect(r.stderr).toBe("setup: Node.js v18.19.0 is too old: berth needs >= 20.10\n");
      expect(r.status).toBe(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
