// The native launcher against scripted fake agents: what it forwards (type, CNI_*/BERTH_*
// environment only, stdin byte for byte up to 1 MiB + 1), that it replays an answer exactly,
// where it finds the socket, and what a runtime sees when the agent breaks mid-request.
import { spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import Module from "node:module";
import { createServer, type Server, type Socket } from "node:net";
import { dirname, join, resolve } from "node:path";
import type { Readable } from "node:stream";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { decodeRequest, encodeResponse, HEADER_BYTES, parseHeader, type Request } from "./wire.ts";

const LAUNCHER = resolve(import.meta.dirname, "../../build/cni/berth-bridge");
const built = existsSync(LAUNCHER) && !existsSync(`${LAUNCHER}.cjs`);

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: Buffer;
}

function launch(env: Record<string, string>, stdin: Buffer | string): Promise<Run> {
  return new Promise((done, fail) => {
    const child = spawn(LAUNCHER, [], { env: { PATH: "/usr/bin:/bin", ...env } });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.stdin.on("error", () => {});
    child.on("error", fail);
    child.on("close", (code) => done({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }));
    child.stdin.end(stdin);
  });
}

/** A fake agent: `onRequest` gets the decoded request and the socket, and answers (or not). */
function fakeAgent(path: string, onRequest: (req: Request, s: Socket) => void): Promise<Server> {
  const server = createServer((s) => {
    let buf = Buffer.alloc(0);
    s.on("data", (b: Buffer) => {
      buf = Buffer.concat([buf, b]);
      if (buf.length < HEADER_BYTES) return;
      const h = parseHeader(buf);
      if (buf.length === HEADER_BYTES + h.length) onRequest(decodeRequest(buf.subarray(HEADER_BYTES)), s);
    });
    s.on("error", () => {});
  });
  return new Promise((done) => server.listen(path, () => done(server)));
}

describe.skipIf(!built)("berth launcher", () => {
  const dir = mkdtempSync(`/tmp/${testPrefix()}-`);
  const sock = join(dir, "agent.sock");
  const servers: Server[] = [];

  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("forwards type, CNI_*/BERTH_* env and stdin; replays stdout, stderr and exit code exactly", async () => {
    let got: Request | undefined;
    servers.push(
      await fakeAgent(sock, (req, s) => {
        got = req;
        s.end(encodeResponse({ exitCode: 42, stdout: Buffer.from([0, 1, 2, 255, 10]), stderr: "log line\n" }));
      }),
    );
    const stdin = '{"cniVersion":"1.0.0","name":"n"}';
    const r = await launch(
      { BERTH_CNI_SOCKET: sock, CNI_COMMAND: "ADD", CNI_ARGS: "A=b=c;X=", SECRET: "no", BERTH_X: "1" },
      stdin,
    );
    expect(r.code).toBe(42);
    expect([...r.stdout]).toEqual([0, 1, 2, 255, 10]);
    expect(r.stderr.toString()).toBe("log line\n");
    expect(got!.type).toBe("berth-bridge");
    expect(got!.env).toEqual({ BERTH_CNI_SOCKET: sock, CNI_COMMAND: "ADD", CNI_ARGS: "A=b=c;X=", BERTH_X: "1" });
    expect(got!.stdin.toString()).toBe(stdin);
  });

  it("a runtime that stops reading stdout gets the agent's exit code, not death by SIGPIPE", async () => {
    servers.push(
      await fakeAgent(sock, (_req, s) => s.end(encodeResponse({ exitCode: 3, stdout: Buffer.alloc(1 << 20, 0x7b), stderr: "" }))),
    );
    const r = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; read: number }>((done, fail) => {
      const child = spawn(LAUNCHER, [], { env: { PATH: "/usr/bin:/bin", BERTH_CNI_SOCKET: sock, CNI_COMMAND: "ADD" } });
      let read = 0;
      // 1 MiB does not fit a pipe: the launcher is still writing when the reader goes away.
      child.stdout.once("data", (b: Buffer) => {
        read = b.length;
        child.stdout.destroy();
      });
      child.on("error", fail);
      child.on("exit", (code, signal) => done({ code, signal, read }));
      child.stdin.end('{"cniVersion":"1.0.0"}');
    });
    expect(r.read).toBeGreaterThan(0);
    expect(r.read).toBeLessThan(1 << 20);
    expect(r.signal).toBeNull();
    expect(r.code).toBe(3);
  });

  it("is a freestanding static executable: no program interpreter, no dynamic section, no libc", () => {
    const elf = readFileSync(LAUNCHER);
    expect(elf.subarray(0, 4).toString("latin1")).toBe("\x7fELF");
    expect(elf[4]).toBe(2); // 64-bit
    const phoff = Number(elf.readBigUInt64LE(32));
    const phentsize = elf.readUInt16LE(54);
    const phnum = elf.readUInt16LE(56);
    const types = Array.from({ length: phnum }, (_, i) => elf.readUInt32LE(phoff + i * phentsize));
    expect(types).toContain(1); // PT_LOAD
    expect(types).not.toContain(2); // PT_DYNAMIC
    expect(types).not.toContain(3); // PT_INTERP
    // A static glibc is ~750 KiB; the launcher with its own runtime is ~20.
    expect(elf.length).toBeLessThan(64 * 1024);
    expect(elf.includes("GNU C Library")).toBe(false);
  });

  it("sends at most 1 MiB + 1 of stdin, so the plugin can report the size error", async () => {
    let size = -1;
    servers.push(
      await fakeAgent(sock, (req, s) => {
        size = req.stdin.length;
        s.end(encodeResponse({ exitCode: 0, stdout: "", stderr: "" }));
      }),
    );
    const r = await launch({ BERTH_CNI_SOCKET: sock, CNI_COMMAND: "ADD" }, Buffer.alloc(3 * 1024 * 1024, 0x61));
    expect(r.code).toBe(0);
    expect(size).toBe(1024 * 1024 + 1);
  });

  it("finds the socket in the config's top-level berthSocket / agentSocket, never in a nested object", async () => {
    let calls = 0;
    servers.push(
      await fakeAgent(sock, (_req, s) => {
        calls++;
        s.end(encodeResponse({ exitCode: 0, stdout: "from agent\n", stderr: "" }));
      }),
    );
    for (const key of ["berthSocket", "agentSocket"]) {
      const r = await launch({ CNI_COMMAND: "VERSION" }, `{"cniVersion":"1.0.0", "ipam":{"x":"}"}, "${key}" : "${sock}"}`);
      expect(r.stdout.toString()).toBe("from agent\n");
    }
    expect(calls).toBe(2);
    // Nested only: the default socket (absent here or not ours) is tried, then Node: a real VERSION reply.
    const nested = await launch(
      { CNI_COMMAND: "VERSION", BERTH_CNI_SOCKET: join(dir, "none.sock") },
      `{"cniVersion":"1.0.0","prevResult":{"berthSocket":"${sock}"}}`,
    );
    expect(JSON.parse(nested.stdout.toString())).toMatchObject({ cniVersion: "1.0.0" });
    expect(calls).toBe(2);
  });

  it("agent closes after taking the request: error 11 in the config's version, no cold-path retry", async () => {
    let calls = 0;
    servers.push(
      await fakeAgent(sock, (_req, s) => {
        calls++;
        s.destroy();
      }),
    );
    const r = await launch({ BERTH_CNI_SOCKET: sock, CNI_COMMAND: "ADD" }, '{"cniVersion":"0.4.0","name":"n"}');
    expect(r.code).toBe(1);
    expect(r.stdout.toString()).toBe(
      '{"cniVersion":"0.4.0","code":11,"msg":"berth agent connection lost during the request; try again"}\n',
    );
    expect(calls).toBe(1);
  });

  it("a malformed reply is error 11, not garbage on stdout", async () => {
    servers.push(await fakeAgent(sock, (_req, s) => s.end(Buffer.from("HTTP/1.1 400 Bad Request\r\n\r\n"))));
    const r = await launch({ BERTH_CNI_SOCKET: sock, CNI_COMMAND: "DEL" }, '{"cniVersion":"7.7.7"}');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ cniVersion: "1.1.0", code: 11 });
  });

  it("a stale socket file (no listener) falls back to Node at once", async () => {
    const stale = join(dir, "stale.sock");
    // A listener that dies by SIGKILL leaves its socket file behind, as a crashed agent does.
    const script = `require("net").createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, "SIGKILL"))`;
    spawnSync(process.execPath, ["-e", script]);
    expect(existsSync(stale)).toBe(true);
    const t0 = performance.now();
    const r = await launch({ BERTH_CNI_SOCKET: stale, CNI_COMMAND: "VERSION" }, '{"cniVersion":"0.3.1"}');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ cniVersion: "0.3.1" });
    expect(performance.now() - t0).toBeLessThan(5000);
  });

  it("a cold ADD that ends with _exit (no VM teardown) still gives its exit code, output, log lines and code cache", () => {
    const launcher = join(dirname(LAUNCHER), "berth-loopback");
    const nodeDir = resolve(dirname(LAUNCHER), "../cni-node");
    const bundle = join(nodeDir, "berth-loopback.cjs");
    const st = statSync(bundle);
    const cache = `${bundle}.ADD.${st.ino}-${st.size}-${Math.floor(st.mtimeMs)}.v8cache`;
    const ns = `${testPrefix()}-lo`;
    const log = join(dir, "cold.log");
    spawnSync("ip", ["netns", "add", ns]);
    try {
      const add = (netns: string) =>
        spawnSync(launcher, [], {
          env: {
            PATH: "/usr/bin:/bin",
            BERTH_CNI_SOCKET: "off",
            BERTH_CNI_LOG: log,
            CNI_COMMAND: "ADD",
            CNI_CONTAINERID: "lo1",
            CNI_NETNS: netns,
            CNI_IFNAME: "lo",
            CNI_PATH: dirname(LAUNCHER),
          },
          input: '{"cniVersion":"1.1.0","name":"lo","type":"berth-loopback"}',
        });
      rmSync(cache, { force: true });
      const ok = add(`/run/netns/${ns}`);
      expect(ok.status, ok.stderr.toString()).toBe(0);
      expect(JSON.parse(ok.stdout.toString())).toMatchObject({ interfaces: [{ name: "lo", sandbox: `/run/netns/${ns}` }] });
      expect(statSync(cache).size).toBeGreaterThan(1000); // the 'exit' handler ran before _exit
      const bad = add(`/run/netns/${ns}-missing`);
      expect(bad.status).toBe(1);
      expect(JSON.parse(bad.stdout.toString())).toMatchObject({ code: 4 });
      expect(readFileSync(log, "utf8")).toMatch(/berth-loopback\[\d+\] .*error 4/);
    } finally {
      spawnSync("ip", ["netns", "del", ns]);
    }
  });

  describe("cold path: Node as the launcher's child", () => {
    // A private install: the launcher as berth-fake, the real boot.cjs, and a scripted bundle.
    const install = join(dir, "install");
    const fake = join(install, "cni", "berth-fake");
    /** Runs berth-fake cold, with `script` as its bundle (undefined: the bundle as it is). */
    const runFake = (script: string | undefined, env: Record<string, string> = {}) => {
      if (script !== undefined) writeFileSync(join(install, "cni-node", "berth-fake.cjs"), script);
      const t0 = performance.now();
      return new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; ms: number }>(
        (done, fail) => {
          const child = spawn(fake, [], { env: { PATH: "/usr/bin:/bin", BERTH_CNI_SOCKET: "off", ...env } });
          const out: Buffer[] = [];
          const err: Buffer[] = [];
          child.stdout.on("data", (b: Buffer) => out.push(b));
          child.stderr.on("data", (b: Buffer) => err.push(b));
          child.on("error", fail);
          // 'close': the process has ended and stdout and stderr are at EOF, as a runtime waits.
          child.on("close", (code, signal) =>
            done({
              code,
              signal,
              stdout: Buffer.concat(out).toString(),
              stderr: Buffer.concat(err).toString(),
              ms: performance.now() - t0,
            }),
          );
          child.stdin.end("{}");
        },
      );
    };
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0] !== "Z";
      } catch {
        return false;
      }
    };
    const gone = async (pid: number) => {
      for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 20));
      return !alive(pid);
    };

    beforeAll(() => {
      mkdirSync(join(install, "cni"), { recursive: true });
      mkdirSync(join(install, "cni-node"), { recursive: true });
      copyFileSync(LAUNCHER, fake);
      chmodSync(fake, 0o755);
      copyFileSync(resolve(dirname(LAUNCHER), "../cni-node/boot.cjs"), join(install, "cni-node", "boot.cjs"));
    });

    it("ends at Node's status byte, sent after every 'exit' listener; Node's teardown is not waited for", async () => {
      // Node's own exit joins its worker threads: one blocked reading a FIFO that nobody opens
      // makes that teardown hang for good (run directly, this Node never ends). The launcher
      // still ends with the status, and its end kills the stuck Node (PR_SET_PDEATHSIG).
      const fifo = join(dir, "never-written");
      rmSync(fifo, { force: true });
      expect(spawnSync("mkfifo", [fifo]).status).toBe(0);
      const r = await runFake(`
        const { Worker } = require("node:worker_threads");
        const w = new Worker(${JSON.stringify(`require("fs").readFileSync(${JSON.stringify(fifo)})`)}, { eval: true });
        w.on("online", () => setTimeout(() => {
          process.stdout.write(JSON.stringify({ pid: process.pid, fd: process.env.BERTH_STATUS_FD ?? null }));
          process.stderr.write("a log line\\n");
          process.once("exit", () => process.stderr.write("from a late 'exit' listener\\n"));
          process.exit(3);
        }, 50));
      `);
      expect(r.code, JSON.stringify(r)).toBe(3);
      expect(r.signal).toBeNull();
      expect(r.stderr).toBe("a log line\nfrom a late 'exit' listener\n");
      const { pid, fd } = JSON.parse(r.stdout);
      expect(fd).toBeNull(); // boot.cjs takes the variable out of the plugin's environment
      expect(r.ms).toBeLessThan(5000);
      expect(await gone(pid)).toBe(true);
    });

    it("compiles the bundle's pre-wrapped twin named by its identity; with a stale one or none, the bundle itself", async () => {
      const bundle = join(install, "cni-node", "berth-fake.cjs");
      const identity = () => {
        const st = statSync(bundle);
        return `${st.ino}-${st.size}-${Math.floor(st.mtimeMs)}`;
      };
      // What scripts/bundle.mjs writes: the bundle without its shebang (the line stays), wrapped as
      // the CommonJS loader wraps a module. Here the twin says which of the two ran.
      const body = (who: string) =>
        `\nprocess.stdout.write("${who} " + require("path").basename(__filename));\nthrow new Error("at line 3");\n`;
      writeFileSync(bundle, `#!/usr/bin/node${body("bundle")}`);
      const twin = `${bundle}.${identity()}.wrapped.js`;
      writeFileSync(twin, Module.wrap(body("twin")));
      try {
        const first = await runFake(undefined);
        expect(first.stdout).toBe("twin berth-fake.cjs");
        expect(first.code).toBe(1);
        expect(first.stderr).toContain(`${bundle}:3`); // stack traces name the bundle, at its own line
        writeFileSync(bundle, `#!/usr/bin/node${body("bundle")}// a new version\n`);
        const stale = await runFake(undefined);
        expect(stale.stdout).toBe("bundle berth-fake.cjs");
        expect(stale.stderr).toContain(`${bundle}:3`);
      } finally {
        rmSync(twin, { force: true });
      }
    });

    it("a Node that dies without a status: its signal is the launcher's; an uncaught error is exit 1", async () => {
      const killed = await runFake(`process.stdout.write("partial"); process.kill(process.pid, "SIGKILL");`);
      expect(killed.signal).toBe("SIGKILL");
      expect(killed.stdout).toBe("partial");
      const thrown = await runFake(`throw new Error("boom in the bundle");`);
      expect(thrown.code).toBe(1);
      expect(thrown.stderr).toContain("boom in the bundle");
      const exited = await runFake(`process.exit(7);`);
      expect(exited.code).toBe(7);
      const idle = await runFake(`process.stdout.write("done"); process.exitCode = 5;`); // ends by running out of work
      expect(idle.code).toBe(5);
      expect(idle.stdout).toBe("done");
    });

    it("a runtime that ignores SIGCHLD or closed fds 0 and 1 still gets Node's status, nothing added", () => {
      // Both set up by a wrapper that then execs the launcher, as a runtime's own code would.
      const wrap = (setup: string, script: string) => {
        writeFileSync(join(install, "cni-node", "berth-fake.cjs"), script);
        return spawnSync("python3", ["-c", `import os, signal, sys\n${setup}\nos.execv(sys.argv[1], [sys.argv[1]])`, fake], {
          env: { PATH: "/usr/bin:/bin", BERTH_CNI_SOCKET: "off" },
          input: "{}",
        });
      };
      const ignored = wrap(
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN)",
        `process.stdout.write("partial"); process.kill(process.pid, "SIGTERM");`,
      );
      expect(ignored.signal).toBe("SIGTERM");
      expect(ignored.stdout.toString()).toBe("partial");
      const closed = wrap("os.close(0); os.close(1)", `try { require("fs").writeSync(1, "{"); } catch {} process.exit(3);`);
      expect(closed.status, closed.stderr.toString()).toBe(3);
    });

    it("a BERTH_STATUS_FD in the runtime's environment is not Node's: nothing is written to it", async () => {
      writeFileSync(join(install, "cni-node", "berth-fake.cjs"), `process.stdout.write("ok"); process.exitCode = 4;`);
      const r = await new Promise<{ code: number | null; stdout: string; fd9: number }>((done, fail) => {
        const stdio = ["pipe", "pipe", "pipe", "ignore", "ignore", "ignore", "ignore", "ignore", "ignore", "pipe"] as const;
        const child = spawn(fake, [], {
          env: { PATH: "/usr/bin:/bin", BERTH_CNI_SOCKET: "off", BERTH_STATUS_FD: "9" },
          stdio: [...stdio],
        });
        const out: Buffer[] = [];
        let fd9 = 0;
        child.stdout!.on("data", (b: Buffer) => out.push(b));
        (child.stdio as unknown as Readable[])[9]!.on("data", (b: Buffer) => {
          fd9 += b.length;
        });
        child.on("error", fail);
        child.on("close", (code) => done({ code, stdout: Buffer.concat(out).toString(), fd9 }));
        child.stdin!.end("{}");
      });
      expect(r.code).toBe(4);
      expect(r.stdout).toBe("ok");
      expect(r.fd9).toBe(0);
    });

    it("a runtime that kills the launcher kills the Node plugin with it", async () => {
      const pidFile = join(dir, "fake.pid");
      rmSync(pidFile, { force: true });
      writeFileSync(
        join(install, "cni-node", "berth-fake.cjs"),
        `require("fs").writeFileSync(${JSON.stringify(pidFile)}, String(process.pid)); setTimeout(() => {}, 20000);`,
      );
      const child = spawn(fake, [], {
        env: { PATH: "/usr/bin:/bin", BERTH_CNI_SOCKET: "off" },
        stdio: ["pipe", "ignore", "ignore"],
      });
      child.stdin.end("{}");
      let pid = 0;
      for (let i = 0; i < 250 && !pid; i++) {
        await new Promise((r) => setTimeout(r, 20));
        if (existsSync(pidFile)) pid = Number(readFileSync(pidFile, "utf8"));
      }
      expect(pid).toBeGreaterThan(0);
      expect(alive(pid)).toBe(true);
      const ended = new Promise((r) => child.on("exit", r));
      child.kill("SIGKILL");
      await ended;
      expect(await gone(pid)).toBe(true);
    });
  });

  it("the cold path keeps a V8 code cache per bundle version and command; a corrupt one is replaced, never fatal", async () => {
    // berth-static's VERSION: a bundle and command no other test leans on.
    const launcher = join(dirname(LAUNCHER), "berth-static");
    const nodeDir = resolve(dirname(LAUNCHER), "../cni-node");
    const bundle = join(nodeDir, "berth-static.cjs");
    const st = statSync(bundle);
    const cache = `${bundle}.VERSION.${st.ino}-${st.size}-${Math.floor(st.mtimeMs)}.v8cache`;
    const version = (command = "VERSION") => {
      const r = spawnSync(launcher, [], {
        env: { PATH: "/usr/bin:/bin", BERTH_CNI_SOCKET: "off", CNI_COMMAND: command },
        input: '{"cniVersion":"1.0.0"}',
      });
      return { code: r.status, stdout: r.stdout, stderr: r.stderr };
    };
    rmSync(cache, { force: true });
    const first = version();
    expect(first.code, first.stderr.toString()).toBe(0);
    expect(JSON.parse(first.stdout.toString()).supportedVersions).toContain("1.1.0");
    expect(statSync(cache).size).toBeGreaterThan(1000);
    const good = readFileSync(cache);
    const junk = Buffer.alloc(good.length, 0x5a);
    writeFileSync(cache, junk);
    const second = version();
    expect(second.code, second.stderr.toString()).toBe(0);
    expect(second.stderr.toString()).toBe("");
    expect(second.stdout.equals(first.stdout)).toBe(true);
    expect(readFileSync(cache).equals(junk)).toBe(false);
    // A command outside the spec's six shares one "OTHER" cache, and a failed run writes none.
    const before = readdirSync(nodeDir).filter((f) => f.startsWith("berth-static.cjs.OTHER."));
    for (const f of before) rmSync(join(nodeDir, f));
    expect(version("FROB").code).not.toBe(0);
    expect(readdirSync(nodeDir).filter((f) => f.startsWith("berth-static.cjs.OTHER.") || f.includes(".FROB."))).toEqual([]);
  });
});
