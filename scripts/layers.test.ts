// berth's layers, checked on the sources: no import runs upward, production code never
// imports test helpers, and the conformance suites reach berth only through its executables,
// sockets and command line (which is what lets them be pointed at another implementation).
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const REPO = resolve(import.meta.dirname, "..");

/** What each top folder may import from the others (itself always). */
const MAY_IMPORT: Record<string, string[]> = {
  native: [],
  cni: ["native"],
  csi: ["native"],
  overlay: ["native", "cni"],
  bin: ["native", "cni", "csi", "overlay"],
  scripts: ["native", "cni", "csi", "overlay", "bin", "testing"],
  testing: ["native", "cni", "csi", "overlay", "bin"],
  conformance: ["testing"],
};

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === "node_modules" || e.name === "build" || e.name === "generated") continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (/\.(ts|mts|cts|mjs|cjs)$/.test(e.name) && !e.name.endsWith(".d.ts") && !e.name.endsWith(".d.cts")) out.push(p);
  }
  return out;
}

/** Relative module specifiers of static imports, re-exports and dynamic imports. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const specs: string[] = [];
  for (const m of text.matchAll(
    /(?:^|[\s;])(?:import|export)\s[^'"]*?from\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/gm,
  )) {
    const spec = m[1] ?? m[2];
    if (spec?.startsWith(".")) specs.push(spec);
  }
  return specs;
}

function violations(top: string, allowed: string[], tests: boolean): string[] {
  const bad: string[] = [];
  for (const file of sources(join(REPO, top))) {
    const isTest = /\.test\.ts$|\.bench\.ts$/.test(file);
    if (isTest !== tests) continue;
    for (const spec of importsOf(file)) {
      const target = relative(REPO, resolve(file, "..", spec));
      const targetTop = target.split("/")[0]!;
      if (targetTop === top || targetTop === "node_modules" || targetTop === "package.json") continue;
      if (!allowed.includes(targetTop)) bad.push(`${relative(REPO, file)} imports ${target}`);
    }
  }
  return bad;
}

describe("layers", () => {
  for (const [top, allowed] of Object.entries(MAY_IMPORT)) {
    it(`${top}/ imports only ${allowed.length ? allowed.join(", ") : "itself"} (tests: also testing/)`, () => {
      expect(violations(top, allowed, false)).toEqual([]);
      const testAllowed = top === "conformance" ? allowed : [...allowed, "testing"];
      expect(violations(top, testAllowed, true)).toEqual([]);
    });
  }
});
