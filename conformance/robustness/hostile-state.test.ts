// Hostile state and hostile timing, on both paths (cold: a Node process per call; fast: the
// `berth cni-server` answering the launcher): a prevResult that is broken or empty, a lease
// database that cannot be read, veths left retired by a fast-path server that was killed, an
// overlay runtime file that is partial or not JSON, an overlay dataDir under /proc, and frames
// on the fast-path socket that do not follow the protocol. Each case asserts the exit code, the
// CNI code, no stack trace on stdout or stderr, and nothing left behind, read back from the
// kernel (links on the host and in the container netns) and from the lease database.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ipJson, testPrefix } from "../../testing/kernel.ts";
import { asCniError, type CniOutcome, describeOutcome } from "../../testing/plugin-exec.ts";
import { ServerProcess } from "../fastpath/server-process.ts";
import { addressOf, BUILT, World } from "./world.ts";

type Conf = Record<string, unknown>;
const PATHS = ["cold", "fast"] as const;
const STACK_FRAME = /\n\s+at .+[:(]/;

/** A failed call that printed one clean CNI error with `code` (any code but 999 when undefined). */
function expectCniError(o: CniOutcome, code?: number): void {
  expect(o.exitCode, describeOutcome(o)).toBe(1);
  const err = asCniError(o.json);
  expect(err, describeOutcome(o)).toBeDefined();
  if (code === undefined) expect(err!.code, describeOutcome(o)).not.toBe(999);
  else expect(err!.code, describeOutcome(o)).toBe(code);
  expectNoStack(o);
}

function expectOk(o: CniOutcome): void {
  expect(o.exitCode, describeOutcome(o)).toBe(0);
  expectNoStack(o);
}

function expectNoStack(o: CniOutcome): void {
  for (const stream of [o.stdout, o.stderr]) {
    expect(stream).not.toMatch(STACK_FRAME);
    expect(stream).not.toMatch(/internal error/);
  }
}

/** Polls until `f` holds (the fast path deletes retired links in the background). */
async function eventually(f: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!f() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
}

for (const path of PATHS) {
  describe.skipIf(!BUILT)(`hostile state on the ${path} path`, () => {
    const world = new World(`hs${path[0]}`);
    const sockDir = mkdtempSync(`/tmp/${testPrefix()}-`);
    const servers: ServerProcess[] = [];
    let n = 0;
    const attachment = () => {
      const ns = world.sandbox.createNetns("h");
      return { ns, who: { containerId: `${world.prefix}-h${n++}`, netns: ns.path } };
    };
    /** Nothing of this attachment is left: no link in its netns, no host veth, no lease. */
    const expectGone = async (ns: { name: string }, containerId: string) => {
      await eventually(() => world.linksIn(ns.name).length === 0 && world.hostVeths().length === 0);
      expect(world.linksIn(ns.name)).toEqual([]);
      expect(world.hostVeths()).toEqual([]);
      expect(world.leases().filter((l) => l.container_id === containerId)).toEqual([]);
      expect(world.masqueradedAddresses()).toEqual([]);
    };

    beforeAll(async () => {
      if (path === "fast") {
        const s = await ServerProcess.start(join(sockDir, "cni.sock"));
        servers.push(s);
        world.socket = s.socketPath;
      }
    });
    afterAll(async () => {
      for (const s of servers) await s.kill();
      await world.cleanup();
      rmSync(sockDir, { recursive: true, force: true });
    });

    const badPrevResults: [string, unknown][] = [
      ["an address that is not a CIDR", { ips: [{ address: "bad" }] }],
      ["a string", "prevResult"],
      ["a number", 42],
      ["interfaces of the wrong type", { interfaces: "eth0", ips: 7 }],
      ["an unknown cniVersion", { cniVersion: "9.9.9", ips: [] }],
    ];
    for (const [what, prevResult] of badPrevResults) {
      it(`DEL with a prevResult that is ${what} removes the lease and the veth pair`, async () => {
        const conf = world.config(50);
        const { ns, who } = attachment();
        const add = await world.run("ADD", who, conf);
        expectOk(add);
        expect(world.leases().map((l) => l.ip)).toContain(addressOf(add.json));
        const del = await world.run("DEL", who, { ...conf, prevResult });
        expectOk(del);
        expect(del.stdout).toBe("");
        await expectGone(ns, who.containerId);
        // And DEL again, with nothing left to remove.
        expectOk(await world.run("DEL", who, { ...conf, prevResult }));
      });
    }

    it("DEL with a well-formed prevResult that names other addresses still removes the masquerade element", async () => {
      const conf = world.config(50);
      const { ns, who } = attachment();
      const add = await world.run("ADD", who, conf);
      expectOk(add);
      const ip = addressOf(add.json);
      expect(world.masqueradedAddresses()).toContain(ip);
      const lie = { cniVersion: "1.1.0", ips: [{ address: "192.0.2.77/24" }] };
      expectOk(await world.run("DEL", who, { ...conf, prevResult: lie }));
      await expectGone(ns, who.containerId);
      expect(world.masqueradedAddresses()).not.toContain(ip);
    });

    it("DEL without prevResult and without the netns still frees the lease and the host veth", async () => {
      const conf = world.config(50);
      const { ns, who } = attachment();
      expectOk(await world.run("ADD", who, conf));
      expectOk(await world.run("DEL", { containerId: who.containerId }, conf));
      await expectGone(ns, who.containerId);
    });

    for (const [what, prevResult] of [
      ["{}", {}],
      ["without the container interface", { cniVersion: "1.1.0", interfaces: [], ips: [] }],
    ] as const) {
      it(`CHECK with prevResult ${what} fails; with the ADD result it passes`, async () => {
        const conf = world.config(50);
        const { ns, who } = attachment();
        const add = await world.run("ADD", who, conf);
        expectOk(add);
        expectCniError(await world.run("CHECK", who, { ...conf, prevResult }));
        expectOk(await world.run("CHECK", who, { ...conf, prevResult: add.json }));
        expectOk(await world.run("DEL", who, { ...conf, prevResult: add.json }));
        await expectGone(ns, who.containerId);
      });
    }

    it("overlay: a runtime file that is missing, partial, of the wrong shape, not JSON, not a regular file or too big is 'not ready', never a crash", async () => {
      const runDir = join(world.dataDir, "run");
      mkdirSync(runDir, { recursive: true });
      const overlayConf: Conf = {
        cniVersion: "1.1.0",
        name: `${world.network}-ov`,
        type: "berth-overlay",
        runDir,
        dataDir: join(world.dataDir, "overlay"),
        bridge: world.sandbox.bridgeName,
        nftTable: world.table,
      };
      const subnet = world.subnet;
      const file = join(runDir, "overlay.json");
      const big = JSON.stringify({ ready: true, subnet, subnets: [subnet], networks: [subnet], pad: "x".repeat(1 << 20) });
      const files: [string, string | (() => void)][] = [
        ["missing", () => {}],
        ["a directory", () => mkdirSync(file)],
        ["a FIFO without a writer", () => execFileSync("mkfifo", [file])],
        ["a symlink to /dev/zero", () => execFileSync("ln", ["-s", "/dev/zero", file])],
        ["1 MiB", big],
        ["partial (no subnets/networks)", JSON.stringify({ ready: true, subnet })],
        ["subnets not an array", JSON.stringify({ ready: true, subnet, subnets: subnet, networks: [subnet] })],
        ["subnets of numbers", JSON.stringify({ ready: true, subnet, subnets: [42], networks: [subnet] })],
        ["a subnet that is no CIDR", JSON.stringify({ ready: true, subnet, subnets: ["10.1.2.300/24"], networks: [subnet] })],
        ["no subnets at all", JSON.stringify({ ready: true, subnet, subnets: [], networks: [] })],
        ["mtu a string", JSON.stringify({ ready: true, subnet, subnets: [subnet], networks: [subnet], mtu: "1450" })],
        ["ready a string", JSON.stringify({ ready: "yes", subnet, subnets: [subnet], networks: [subnet] })],
        ["null", "null"],
        ["an array", "[1,2]"],
        ["empty", ""],
        ["truncated JSON", '{"ready": true, "sub'],
        ["binary", "\u0000\u0001\u0002\ufffd"],
      ];
      const { ns, who } = attachment();
      for (const [what, make] of files) {
        rmSync(file, { recursive: true, force: true });
        if (typeof make === "string") writeFileSync(file, make);
        else make();
        const add = await world.run("ADD", who, overlayConf, {}, "berth-overlay");
        expect(add.stdout, what).not.toMatch(/internal error/);
        expectCniError(add, 11);
        const status = await world.run("STATUS", { containerId: "" }, overlayConf, {}, "berth-overlay");
        expectCniError(status, 50);
        expectOk(await world.run("DEL", who, overlayConf, {}, "berth-overlay"));
        const gc = await world.run(
          "GC",
          { containerId: "" },
          { ...overlayConf, "cni.dev/valid-attachments": [] },
          {},
          "berth-overlay",
        );
        expectOk(gc);
        expect(world.linksIn(ns.name), what).toEqual([]);
      }
    });

    it("overlay: DEL (and GC) free lease and links when both its saved record and the runtime file are damaged", async () => {
      const { subnet } = world.sandbox.allocateSubnet(24);
      const runDir = join(world.dataDir, "run-rec");
      const dataDir = join(world.dataDir, "overlay-rec");
      mkdirSync(runDir, { recursive: true });
      const runtime = { ready: true, subnet, subnets: [subnet], networks: [subnet], vni: 1, device: "berth.1", updatedAt: "x" };
      writeFileSync(join(runDir, "overlay.json"), JSON.stringify(runtime));
      const conf: Conf = {
        cniVersion: "1.1.0",
        name: `${world.network}-or`,
        type: "berth-overlay",
        runDir,
        dataDir,
        bridge: world.sandbox.bridgeName,
      };
      const leases = () => {
        const db = new Database(join(dataDir, "ipam", "ipam.db"), { readonly: true });
        try {
          return db.prepare("SELECT ip FROM leases WHERE network = ?").all(conf.name);
        } finally {
          db.close();
        }
      };
      for (const [what, record] of [
        ["not JSON", "{"],
        ["null", "null"],
        ["of the wrong shape", JSON.stringify({ type: "berth-bridge", ipam: 5 })],
        ["another plugin's", JSON.stringify({ type: "berth-ptp", name: conf.name, ipam: { type: "berth-host-local" } })],
      ] as const) {
        const { ns, who } = attachment();
        writeFileSync(join(runDir, "overlay.json"), JSON.stringify(runtime));
        const add = await world.run("ADD", who, conf, {}, "berth-overlay");
        expectOk(add);
        expect(leases()).toHaveLength(1);
        writeFileSync(join(dataDir, "attachments", `${conf.name}-${who.containerId}-eth0.json`), record);
        writeFileSync(join(runDir, "overlay.json"), JSON.stringify({ ready: true, subnet }));
        const check = await world.run("CHECK", who, { ...conf, prevResult: add.json }, {}, "berth-overlay");
        expectNoStack(check);
        const del = await world.run("DEL", who, conf, {}, "berth-overlay");
        expectOk(del);
        expect(leases(), what).toEqual([]);
        await eventually(() => world.linksIn(ns.name).length === 0);
        expect(world.linksIn(ns.name), what).toEqual([]);
      }
      // GC, too, works without a usable runtime file: what the lease database and the kernel hold.
      const { ns, who } = attachment();
      writeFileSync(join(runDir, "overlay.json"), JSON.stringify(runtime));
      expectOk(await world.run("ADD", who, conf, {}, "berth-overlay"));
      writeFileSync(join(runDir, "overlay.json"), JSON.stringify({ ready: true, subnet }));
      expectOk(await world.run("GC", { containerId: "" }, { ...conf, "cni.dev/valid-attachments": [] }, {}, "berth-overlay"));
      expect(leases()).toEqual([]);
      expect(world.linksIn(ns.name)).toEqual([]);
    });

    it("overlay: a dataDir under /proc is a clean error at once, never a hang", async () => {
      const runDir = join(world.dataDir, "run-proc");
      mkdirSync(runDir, { recursive: true });
      writeFileSync(
        join(runDir, "overlay.json"),
        JSON.stringify({
          ready: true,
          subnet: world.subnet,
          subnets: [world.subnet],
          networks: [world.subnet],
          gateways: [`${world.base}.1`],
          vni: 1,
          device: "berth.1",
          updatedAt: new Date().toISOString(),
        }),
      );
      const { ns, who } = attachment();
      const conf: Conf = {
        cniVersion: "1.1.0",
        name: `${world.network}-op`,
        type: "berth-overlay",
        runDir,
        dataDir: `/proc/${world.prefix}/x`,
        bridge: world.sandbox.bridgeName,
        nftTable: world.table,
      };
      const t0 = Date.now();
      const add = await world.run("ADD", who, conf, {}, "berth-overlay");
      expect(Date.now() - t0).toBeLessThan(20_000);
      expectCniError(add);
      expect(world.linksIn(ns.name)).toEqual([]);
      expect(existsSync(`/proc/${world.prefix}`)).toBe(false);
      // The fast-path server is still answering.
      expectOk(await world.run("VERSION", who, conf, {}, "berth-overlay"));
    });

    it("tuning: a dataDir under /proc, an allowlist that never ends or never opens: clean errors at once", async () => {
      const conf = world.config(50);
      const { ns, who } = attachment();
      const add = await world.run("ADD", who, conf);
      expectOk(add);
      const fifo = join(world.dataDir, "allow-fifo");
      execFileSync("mkfifo", [fifo]);
      const tuning = (extra: Conf): Conf => ({
        cniVersion: "1.1.0",
        name: world.network,
        type: "berth-tuning",
        prevResult: add.json,
        dataDir: join(world.dataDir, "tuning"),
        ...extra,
      });
      const cases: [string, Conf][] = [
        ["dataDir under /proc", { mac: "02:11:22:33:44:55", dataDir: `/proc/${world.prefix}/t` }],
        ["allowlist /dev/zero", { sysctl: { "net.ipv4.conf.IFNAME.rp_filter": "1" }, sysctlAllowlist: "/dev/zero" }],
        ["allowlist a FIFO", { sysctl: { "net.ipv4.conf.IFNAME.rp_filter": "1" }, sysctlAllowlist: fifo }],
      ];
      for (const [what, extra] of cases) {
        const t0 = Date.now();
        const o = await world.run("ADD", who, tuning(extra), {}, "berth-tuning");
        expect(Date.now() - t0, what).toBeLessThan(20_000);
        expectCniError(o, 5);
      }
      expect(existsSync(`/proc/${world.prefix}`)).toBe(false);
      expectOk(await world.run("DEL", who, conf));
      await expectGone(ns, who.containerId);
    });

    it("a lease database that cannot be read: DEL (bridge, ptp) removes the links and reports code 5; GC is not 999", async () => {
      const w = new World(`db${path[0]}`);
      w.socket = world.socket;
      try {
        const conf = w.config(50);
        const ns = w.sandbox.createNetns("d");
        const who = { containerId: `${w.prefix}-d`, netns: ns.path };
        expectOk(await w.run("ADD", who, conf));
        const ptpConf = { ...conf, name: `${w.network}-p`, type: "berth-ptp" };
        const nsPtp = w.sandbox.createNetns("p");
        const viaPtp = { containerId: `${w.prefix}-p`, netns: nsPtp.path };
        expectOk(await w.run("ADD", viaPtp, ptpConf, {}, "berth-ptp"));
        expect(w.leases()).toHaveLength(1);
        // Replaced (a new inode), so an open handle in the server is not reused.
        const db = join(w.dataDir, "ipam.db");
        for (const f of [`${db}-wal`, `${db}-shm`]) rmSync(f, { force: true });
        writeFileSync(`${db}.new`, Buffer.alloc(8192, 0x5a));
        renameSync(`${db}.new`, db);
        const del = await w.run("DEL", who, conf);
        expectCniError(del, 5);
        await eventually(() => w.linksIn(ns.name).length === 0 && w.hostVeths().length === 0);
        expect(w.linksIn(ns.name)).toEqual([]);
        expect(w.hostVeths()).toEqual([]);
        expectCniError(await w.run("DEL", viaPtp, ptpConf, {}, "berth-ptp"), 5);
        await eventually(() => w.linksIn(nsPtp.name).length === 0);
        expect(w.linksIn(nsPtp.name)).toEqual([]);
        const gc = await w.run("GC", { containerId: "" }, { ...conf, "cni.dev/valid-attachments": [] });
        expectCniError(gc, 5);
        expectCniError(
          await w.run("GC", { containerId: "" }, { ...ptpConf, "cni.dev/valid-attachments": [] }, {}, "berth-ptp"),
          5,
        );
      } finally {
        await w.cleanup();
      }
    });

    // An empty file is what SQLite itself leaves when it dies between creating the file and
    // writing its first page: it opens as a new, empty database.
    const corruptions: [string, (db: string, sound: Buffer) => void, "opens empty"?][] = [
      ["garbage", (db) => writeFileSync(db, Buffer.alloc(8192, 0x5a))],
      ["cut to its first page", (db, sound) => writeFileSync(db, sound.subarray(0, 4096))],
      [
        "zeroed after its first page",
        (db, sound) => writeFileSync(db, Buffer.concat([sound.subarray(0, 4096), Buffer.alloc(sound.length - 4096)])),
      ],
      ["empty", (db) => writeFileSync(db, ""), "opens empty"],
      ["a directory", (db) => mkdirSync(db)],
    ];
    for (const [what, corrupt, opensEmpty] of corruptions) {
      it(`a lease database that is ${what}: every command answers a spec error or succeeds, never 999; ADD leaves nothing`, async () => {
        const w = new World(`dc${path[0]}`);
        w.socket = world.socket;
        try {
          const conf = w.config(50);
          const ns = w.sandbox.createNetns("c");
          const other = w.sandbox.createNetns("o");
          const who = { containerId: `${w.prefix}-c`, netns: ns.path };
          const add = await w.run("ADD", who, conf);
          expectOk(add);
          // The sound database folded into one file; the damaged one replaces it (a new inode, so
          // an open handle in the server is not reused).
          const db = join(w.dataDir, "ipam.db");
          const h = new Database(db);
          h.pragma("wal_checkpoint(TRUNCATE)");
          h.close();
          const sound = readFileSync(db);
          for (const f of [`${db}-wal`, `${db}-shm`, db]) rmSync(f, { force: true });
          corrupt(db, sound);
          const fresh = { containerId: `${w.prefix}-o`, netns: other.path };
          const addAgain = await w.run("ADD", fresh, conf);
          if (opensEmpty) {
            expectOk(addAgain);
            expectOk(await w.run("DEL", fresh, conf));
          } else expectCniError(addAgain);
          await eventually(() => w.linksIn(other.name).length === 0);
          expect(w.linksIn(other.name)).toEqual([]);
          expectNoStack(await w.run("CHECK", who, { ...conf, prevResult: add.json }));
          expect(asCniError((await w.run("CHECK", who, { ...conf, prevResult: add.json })).json)?.code).not.toBe(999);
          const status = await w.run("STATUS", { containerId: "" }, conf);
          if (opensEmpty) expectOk(status);
          else expectCniError(status, 50);
          const del = await w.run("DEL", who, conf);
          expectNoStack(del);
          if (del.exitCode !== 0) expectCniError(del, 5);
          await eventually(() => w.linksIn(ns.name).length === 0);
          expect(w.linksIn(ns.name)).toEqual([]);
          const gc = await w.run("GC", { containerId: "" }, { ...conf, "cni.dev/valid-attachments": [] });
          expectNoStack(gc);
          if (gc.exitCode !== 0) expectCniError(gc, 5);
        } finally {
          await w.cleanup();
        }
      });
    }

    it("veths retired by a fast-path server killed after its DELs: a DEL on this path removes them", {
      timeout: 120_000,
    }, async () => {
      const left = await retiredByCrash(world, sockDir, servers, 30);
      console.log(`${path}: ${left.length} of 30 attachments left retired links after the kill`);
      expect(left.length).toBeGreaterThan(0); // the kill did cut background deletes short
      for (const a of left) expectOk(await world.run("DEL", a.who, world.config(50)));
      for (const a of left) expect(world.linksIn(a.ns.name), a.ns.name).toEqual([]);
      expect(ipJson(["link", "show", "master", world.sandbox.bridgeName])).toEqual([]);
    });

    it("veths retired by a fast-path server killed after its DELs: GC on this path removes them", {
      timeout: 120_000,
    }, async () => {
      const left = await retiredByCrash(world, sockDir, servers, 30);
      console.log(`${path}: ${left.length} of 30 attachments left retired links after the kill`);
      expect(left.length).toBeGreaterThan(0);
      const gc = await world.run("GC", { containerId: "" }, { ...world.config(50), "cni.dev/valid-attachments": [] });
      expectOk(gc);
      for (const a of left) expect(world.linksIn(a.ns.name), a.ns.name).toEqual([]);
      expect(world.integrity()).toEqual(["ok"]);
    });

    it("kill -9 of a fast-path server at random points of mixed ADD/DEL load: DEL + GC on this path leave nothing", {
      timeout: 120_000,
    }, async () => {
      const conf = world.config(50);
      const all: { ns: { name: string; path: string }; who: { containerId: string; netns: string } }[] = [];
      for (let round = 0; round < 3; round++) {
        const crashing = await ServerProcess.start(join(sockDir, `kill-${round}.sock`));
        servers.push(crashing);
        const saved = world.socket;
        world.socket = crashing.socketPath;
        const batch = Array.from({ length: 16 }, () => attachment());
        all.push(...batch);
        try {
          const first = await Promise.all(batch.slice(0, 8).map((a) => world.run("ADD", a.who, conf)));
          for (const o of first) expectOk(o);
          const load = [
            ...batch.slice(0, 8).map((a) => world.run("DEL", a.who, conf)),
            ...batch.slice(8).map((a) => world.run("ADD", a.who, conf)),
          ];
          await new Promise((r) => setTimeout(r, Math.random() * 150));
          await crashing.kill();
          // Each call was answered, lost with code 11 (try again), or ran cold once the server was gone.
          for (const o of await Promise.all(load)) {
            expectNoStack(o);
            if (o.exitCode !== 0) expectCniError(o, 11);
          }
        } finally {
          world.socket = saved;
        }
      }
      for (const o of await Promise.all(all.map((a) => world.run("DEL", a.who, conf)))) expectOk(o);
      expectOk(await world.run("GC", { containerId: "" }, { ...conf, "cni.dev/valid-attachments": [] }));
      await eventually(() => all.every((a) => world.linksIn(a.ns.name).length === 0));
      expect(all.filter((a) => world.linksIn(a.ns.name).length > 0).map((a) => a.ns.name)).toEqual([]);
      expect(world.hostVeths()).toEqual([]);
      expect(world.bridgePorts()).toEqual([]);
      expect(world.leases()).toEqual([]);
      expect(world.integrity()).toEqual(["ok"]);
    });

    if (path === "fast") {
      it("hostile frames on the fast-path socket get a decode error or nothing; the server goes on", async () => {
        const server = servers[0]!;
        const header = (magic: string, version: number, kind: number, length: number) => {
          const h = Buffer.alloc(12);
          h.write(magic, 0, "latin1");
          h.writeUInt16LE(version, 4);
          h.writeUInt16LE(kind, 6);
          h.writeUInt32LE(length, 8);
          return h;
        };
        const u32 = (v: number) => {
          const b = Buffer.alloc(4);
          b.writeUInt32LE(v);
          return b;
        };
        const str = (s: string) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);
        const body = (...parts: Buffer[]) => Buffer.concat(parts);
        const frame = (b: Buffer) => Buffer.concat([header("BCNI", 1, 1, b.length), b]);
        const frames: [string, Buffer][] = [
          ["bad magic", Buffer.concat([header("XXXX", 1, 1, 4), u32(0)])],
          ["unknown version", Buffer.concat([header("BCNI", 99, 1, 4), u32(0)])],
          ["a response frame", Buffer.concat([header("BCNI", 1, 2, 4), u32(0)])],
          ["a body of 4 GiB", header("BCNI", 1, 1, 0xffffffff)],
          ["a type longer than the body", frame(body(u32(1000), Buffer.from("berth-bridge")))],
          ["an environment count of 2^32-1", frame(body(str("berth-bridge"), u32(0xffffffff)))],
          ["an environment entry without =", frame(body(str("berth-bridge"), u32(1), str("CNI_COMMAND"), str("{}")))],
          ["stray bytes after the frame", Buffer.concat([frame(body(str("berth-bridge"), u32(0), str("{}"))), u32(7)])],
          ["a type with a path in it", frame(body(str("../../../bin/sh"), u32(1), str("CNI_COMMAND=VERSION"), str("{}")))],
          ["a type with a newline", frame(body(str("berth-bridge\n"), u32(1), str("CNI_COMMAND=ADD"), str("{}")))],
          [
            "ADD with a config that is not JSON",
            frame(
              body(
                str("berth-bridge"),
                u32(4),
                str("CNI_COMMAND=ADD"),
                str(`CNI_CONTAINERID=${world.prefix}-frame`),
                str("CNI_IFNAME=eth0"),
                str("CNI_NETNS=/nonexistent"),
                str("\u0000\u00ff not json"),
              ),
            ),
          ],
        ];
        for (const [what, bytes] of frames) {
          const raw = await exchange(server.socketPath, bytes);
          if (raw.length === 0) continue; // dropped: a request the server will never see whole
          const text = raw.subarray(12).toString("latin1");
          expect(text, what).not.toMatch(STACK_FRAME);
          expect(text, what).toMatch(/"code":(6|7|4|1)\b/);
        }
        const log = server.log.join("");
        expect(log).not.toMatch(STACK_FRAME);
        expect(server.running).toBe(true);
        expectOk(await world.run("VERSION", { containerId: "x" }, world.config(50)));
      });
    }
  });
}

/** Sends `bytes` on a fresh connection, half-closes, and reads until the server closes (≤ 3 s). */
function exchange(socketPath: string, bytes: Buffer): Promise<Buffer> {
  return new Promise((done) => {
    const s = connect(socketPath);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => s.destroy(), 3000);
    s.on("error", () => {});
    s.on("connect", () => s.end(bytes));
    s.on("data", (b: Buffer) => chunks.push(b));
    s.on("close", () => {
      clearTimeout(timer);
      done(Buffer.concat(chunks));
    });
  });
}

/**
 * A fast-path server of its own ADDs and DELs `count` attachments, and is SIGKILLed as soon as
 * the last DEL has answered: its background deletes of the retired veths are cut short.
 * Returns the attachments whose netns still holds a link.
 */
async function retiredByCrash(
  world: World,
  sockDir: string,
  servers: ServerProcess[],
  count: number,
): Promise<{ ns: { name: string; path: string }; who: { containerId: string; netns: string } }[]> {
  const crashing = await ServerProcess.start(join(sockDir, `crash-${servers.length}.sock`));
  servers.push(crashing);
  const saved = world.socket;
  world.socket = crashing.socketPath;
  const conf = world.config(50);
  const all = Array.from({ length: count }, (_, i) => {
    const ns = world.sandbox.createNetns("r");
    return { ns, who: { containerId: `${world.prefix}-r${servers.length}-${i}`, netns: ns.path } };
  });
  try {
    const adds = await Promise.all(all.map((a) => world.run("ADD", a.who, conf)));
    for (const o of adds) expectOk(o);
    const dels = await Promise.all(all.map((a) => world.run("DEL", a.who, conf)));
    await crashing.kill();
    for (const o of dels) expectOk(o);
  } finally {
    world.socket = saved;
  }
  expect(world.leases().filter((l) => all.some((a) => a.who.containerId === l.container_id))).toEqual([]);
  return all.filter((a) => world.linksIn(a.ns.name).length > 0);
}
