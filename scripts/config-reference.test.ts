// docs/configuration.md is generated (scripts/config-reference.ts); these tests fail when it is
// out of date, when a plugin berth builds has no section, or when a command accepts a flag its
// --help (and so the reference) does not name.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseHostLocalConfig } from "../cni/ipam/ranges.ts";
import { validateConfig } from "../cni/protocol/schema.ts";
import { BERTH_PLUGINS } from "../overlay/cni/registry.ts";
import { type Command, commands, EXAMPLE_CONFLIST, OUTPUT, ROOT, render } from "./config-reference.ts";

let generated: string;
let dir: string;
let cmds: Command[];

beforeAll(async () => {
  cmds = await commands();
  generated = await render(cmds);
  dir = mkdtempSync(join(tmpdir(), "berth-config-reference-"));
  writeFileSync(join(dir, "configuration.md"), generated);
}, 120_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The text under `### title` up to the next heading of level 2 or 3. */
function section(doc: string, title: string): string {
  const start = doc.indexOf(`\n### ${title}\n`);
  if (start < 0) return "";
  const rest = doc.slice(start + 1);
  const end = rest.slice(4).search(/\n##+ /);
  return end < 0 ? rest : rest.slice(0, end + 4);
}

/** The long flags a command's source accepts: node:util parseArgs options, "--flag" comparisons and tables, agent FLAGS. */
function flagsInSource(file: string): string[] {
  const text = readFileSync(join(ROOT, file), "utf8");
  const flags = new Set<string>();
  for (const m of text.matchAll(/^\s+"?([a-z][a-z0-9-]*)"?: \{ type: "(?:string|boolean)"/gm)) flags.add(m[1]!);
  // A flag compared with (=== "--x"), or a key of a flag table ("--x": ..., table["--x"]).
  for (const m of text.matchAll(/(?:=== |\[|^\s+)"--([a-z][a-z0-9-]*)"/gm)) flags.add(m[1]!);
  const table = /const FLAGS[^=]*= \{([\s\S]*?)\n\};/.exec(text);
  if (table) for (const m of table[1]!.matchAll(/^\s+"?([a-z][a-z0-9-]*)"?: \[/gm)) flags.add(m[1]!);
  flags.delete("help");
  return [...flags].sort();
}

/** Read from the environment but not configuration: the search path, test hooks, the launcher-to-Node status pipe. */
const NOT_CONFIGURATION = ["PATH", "LISTEN_PID", "BERTH_TEST_LOG", "BERTH_STATUS_FD", "TOY_HANG", "ADD", "DEL"];

/** Non-test TypeScript and C sources under `dirs`. */
function sourceFiles(dirs: string[]): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== "build" && e.name !== "node_modules" && e.name !== "fixtures") walk(p);
      } else if (/\.(ts|c|h)$/.test(e.name) && !e.name.endsWith(".test.ts")) out.push(p);
    }
  };
  for (const d of dirs) walk(join(ROOT, d));
  return out;
}

/** The text under `## title` up to the next level-2 heading. */
function section2(doc: string, title: string): string {
  const start = doc.indexOf(`\n## ${title}\n`);
  if (start < 0) return "";
  const rest = doc.slice(start + 1);
  const end = rest.slice(3).search(/\n## /);
  return end < 0 ? rest : rest.slice(0, end + 3);
}

describe("configuration reference", () => {
  it("docs/configuration.md is what scripts/config-reference.ts generates (run npm run docs)", () => {
    const committed = readFileSync(OUTPUT, "utf8");
    expect(readFileSync(join(dir, "configuration.md"), "utf8")).toBe(generated);
    expect(committed, "docs/configuration.md is out of date: run npm run docs").toBe(generated);
  });

  it("has a section with an options table or 'No options' for every plugin in build/cni", () => {
    const plugins = readdirSync(join(ROOT, "build", "cni")).filter((f) => f.startsWith("berth-"));
    expect(plugins.length).toBeGreaterThan(5);
    for (const name of plugins) {
      const text = section(generated, name);
      expect(text, `no section for ${name}`).not.toBe("");
      expect(
        text.includes("| key | type |") || text.includes("| `ipam` key | type |") || text.includes("No options of its own."),
        name,
      ).toBe(true);
    }
  });

  it("names every flag each command accepts", () => {
    expect(cmds.map((c) => c.name)).toEqual(expect.arrayContaining(["berth up", "berth agent", "berth csi", "berth cni-server"]));
    for (const c of cmds) {
      const text = section(generated, c.name);
      expect(text, `no section for ${c.name}`).not.toBe("");
      const flags = c.source.flatMap(flagsInSource);
      expect(flags.length, `${c.name}: no flags found in ${c.source.join(", ")}`).toBeGreaterThan(0);
      const missing = flags.filter((f) => !new RegExp(`--${f}(?![a-z0-9-])`).test(text));
      expect(missing, `${c.name}: flags its --help does not name`).toEqual([]);
    }
  });

  it("its example conflist and the README's pass the plugins' own checks", async () => {
    const readme = /## Configuration[\s\S]*?```json\n([\s\S]*?)```/.exec(readFileSync(join(ROOT, "README.md"), "utf8"));
    expect(readme, "README.md has a Configuration section with a json example").not.toBeNull();
    for (const conflist of [EXAMPLE_CONFLIST, JSON.parse(readme![1]!)]) {
      for (const conf of conflist.plugins as Record<string, unknown>[]) {
        const load = BERTH_PLUGINS[conf.type as string];
        expect(load, `${String(conf.type)} is a berth plugin`).toBeDefined();
        const plugin = await load!();
        if (plugin.schema) expect(() => validateConfig(conf, plugin.schema as never)).not.toThrow();
        const ipam = conf.ipam as Record<string, unknown> | undefined;
        if (ipam?.type === "berth-host-local") expect(() => parseHostLocalConfig(ipam)).not.toThrow();
      }
    }
  });

  it("names every environment variable berth reads and the launcher's config keys", () => {
    const env = section2(generated, "Environment");
    const read = new Set<string>();
    for (const file of sourceFiles(["cni", "overlay", "csi", "bin", "native"])) {
      const text = readFileSync(file, "utf8");
      for (const m of text.matchAll(/\benv\.([A-Z][A-Z0-9_]+)|getenv\("([A-Z][A-Z0-9_]+)"\)/g)) read.add((m[1] ?? m[2])!);
    }
    for (const name of NOT_CONFIGURATION) read.delete(name);
    expect(read.size).toBeGreaterThan(5);
    const missing = [...read].filter((v) => !env.includes(`\`${v}\``));
    expect(missing, "environment variables the reference does not name").toEqual([]);
    const launcher = readFileSync(join(ROOT, "cni", "fastpath", "launcher", "launcher.c"), "utf8");
    for (const m of launcher.matchAll(/top_level_string\([^)]*"([A-Za-z]+)"/g)) expect(generated).toContain(`| \`${m[1]}\` |`);
  });

  it("shows bridge's keys with type, default and the reference plugin's name, and marks berth's own", () => {
    const bridge = section(generated, "berth-bridge");
    expect(bridge).toContain('| `bridge` | string: an interface name of 1-15 characters | `"cni0"` |  | bridge |');
    expect(bridge).toContain('| `nftTable` | string: an nftables identifier | `"berth"` |  | berth only |');
    expect(section(generated, "berth-host-local")).toContain("| `ranges[][].subnet` | CIDR |  | yes | host-local |");
  });
});
