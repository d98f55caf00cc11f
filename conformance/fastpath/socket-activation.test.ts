// Socket activation as a service manager does it, with Debian's systemd-socket-activate: it
// binds the socket, waits for the first connection, then execs berth (same PID) with the
// listening socket as descriptor 3 and LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES set. The first
// call after "boot" must start the server through the socket and be answered by it: for the
// CNI fast path, an ADD through a launcher copy that has no cold path to fall back to; for
// CSI, a Probe.
import { type ChildProcess, spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Cluster } from "../../testing/cluster.ts";
import { ipJson, testPrefix } from "../../testing/kernel.ts";
import { execPlugin } from "../../testing/plugin-exec.ts";
import { until } from "../../testing/poll.ts";
import { Sandbox } from "../../testing/sandbox.ts";
import { CsiClient } from "../csi/client.ts";
import { networkConfig } from "../lib/cni-netconf.ts";

const REPO = resolve(import.meta.dirname, "../..");
const CLI = join(REPO, "bin", "cli.ts");
const CNI = join(REPO, "build", "cni");
const ACTIVATE = "/usr/bin/systemd-socket-activate";
const haveActivate = existsSync(ACTIVATE);
const built = existsSync(join(CNI, "berth-bridge"));
if (!haveActivate) console.warn("SKIPPED: socket activation — needs systemd-socket-activate (Debian package systemd)");
if (!built) console.warn("SKIPPED: socket activation of the CNI server — run `npm run build` (build/cni launchers)");

/** systemd-socket-activate holding `socket` and, on the first connection, exec'ing `argv`. */
class Activated {
  private out = "";
  private err = "";
  readonly exited: Promise<number | null>;

  constructor(
    readonly socket: string,
    fdname: string | undefined,
    argv: string[],
    private readonly child: ChildProcess = spawn(
      ACTIVATE,
      ["-l", socket, ...(fdname ? [`--fdname=${fdname}`] : []), process.execPath, "--import", "tsx", CLI, ...argv],
      { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] },
    ),
  ) {
    child.stdout!.on("data", (b: Buffer) => {
      this.out += b.toString();
    });
    child.stderr!.on("data", (b: Buffer) => {
      this.err += b.toString();
    });
    this.exited = new Promise((done) => child.once("exit", (code) => done(code)));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get stdout(): string {
    return this.out;
  }

  get stderr(): string {
    return this.err;
  }

  /** The executable this PID runs now: systemd-socket-activate until the first connection, then node. */
  exe(): string {
    return readlinkSync(`/proc/${this.pid}/exe`);
  }

  async listening(): Promise<void> {
    await until(() => this.err.includes("Listening on"), Boolean, "socket bound", 10_000, 20);
  }

  async stop(): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGTERM");
    return this.exited;
  }
}

describe.skipIf(!haveActivate)("socket activation (systemd-socket-activate)", () => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-sa-`));
  const running: Activated[] = [];
  const activate = (socket: string, fdname: string | undefined, argv: string[]) => {
    const a = new Activated(socket, fdname, argv);
    running.push(a);
    return a;
  };

  afterEach(async () => {
    for (const a of running.splice(0)) await a.stop();
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  describe.skipIf(!built)("berth cni-server", () => {
    let sandbox: Sandbox;
    const bin = join(dir, "bin");

    beforeAll(() => {
      sandbox = new Sandbox();
      // Launchers with no ../cni-node beside them: a call that went cold would fail.
      mkdirSync(bin);
      for (const t of ["berth-bridge", "berth-host-local"]) copyFileSync(join(CNI, t), join(bin, t));
    });

    afterAll(() => sandbox?.cleanup());

    it("the first ADD after boot starts the server through the passed socket and is served on the fast path", {
      timeout: 60_000,
    }, async () => {
      const socket = join(dir, "cni.sock");
      const unused = join(dir, "not-bound.sock");
      const server = activate(socket, "cni", ["cni-server", "--socket", unused]);
      await server.listening();
      expect(server.exe()).toBe(ACTIVATE); // nothing of berth runs before the first call

      const { subnet, base } = sandbox.allocateSubnet(24);
      const net = { name: `${sandbox.prefix}-sa`, subnet, base };
      const conf = networkConfig({ cniPath: bin, type: "berth-bridge", ipam: "berth-host-local" }, sandbox, net, "1.1.0");
      const ns = sandbox.createNetns("sa");
      const env = {
        CNI_CONTAINERID: `${sandbox.prefix}-sa`,
        CNI_NETNS: ns.path,
        CNI_IFNAME: "eth0",
        BERTH_CNI_SOCKET: socket,
      };
      const add = await execPlugin({ cniPath: bin, type: "berth-bridge", env: { ...env, CNI_COMMAND: "ADD" }, stdin: conf });
      expect(add.exitCode, `${add.stdout}${add.stderr}\n${server.stderr}`).toBe(0);
      expect(JSON.stringify(add.json)).toContain(`"${base}.`);
      // The launcher's PID is now berth: systemd-socket-activate exec'd it on the connection.
      expect(server.exe()).toBe(process.execPath);
      expect(server.stdout).toBe(`listening ${socket}\n`);
      expect(server.stderr).toContain(`passed by the service manager as \\"cni\\"`); // in a JSON log line
      expect(server.stderr).toMatch(/cni server: served pid \d+ berth-bridge ADD/);
      // --socket was not bound: the passed socket replaced it.
      expect(existsSync(unused)).toBe(false);

      const del = await execPlugin({ cniPath: bin, type: "berth-bridge", env: { ...env, CNI_COMMAND: "DEL" }, stdin: conf });
      expect(del.exitCode, del.stdout).toBe(0);
      expect(server.stderr).toMatch(/cni server: served pid \d+ berth-bridge DEL/);

      // Stopping leaves the socket file to the service manager, which owns it.
      expect(await server.stop()).toBe(0);
      expect(existsSync(socket)).toBe(true);
    });

    it("a passed socket that is not a listening unix stream socket is refused in one line, exit 2", {
      timeout: 30_000,
    }, async () => {
      const socket = join(dir, "dgram.sock");
      const child = spawn(
        ACTIVATE,
        ["--datagram", "-l", socket, "--fdname=cni", process.execPath, "--import", "tsx", CLI, "cni-server"],
        { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] },
      );
      let err = "";
      child.stderr.on("data", (b: Buffer) => {
        err += b.toString();
      });
      const exited = new Promise<number | null>((done) => child.once("exit", (c) => done(c)));
      try {
        await until(() => err.includes("Listening on"), Boolean, "socket bound", 10_000, 20);
        // A datagram to the socket is the "connection" that starts the server.
        await new Promise<void>((done, fail) =>
          spawn("python3", [
            "-c",
            `import socket;s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM);s.sendto(b"x",${JSON.stringify(socket)})`,
          ])
            .once("exit", (c) => (c === 0 ? done() : fail(new Error(`python3 exited ${c}`))))
            .once("error", fail),
        );
        expect(await exited, err).toBe(2);
        expect(err).toMatch(
          /berth cni-server: passed socket "cni" \(descriptor 3\) is a non-listening unix dgram socket; berth needs a listening unix stream socket/,
        );
        expect(err).not.toMatch(/\n\s+at /); // no stack trace
      } finally {
        if (child.exitCode === null) child.kill("SIGKILL");
      }
    });
  });

  describe.skipIf(!built)("berth up (the agent and the CSI driver)", () => {
    let cluster: Cluster | undefined;
    let sandbox: Sandbox;
    const bin = join(dir, "bin-up");

    beforeAll(() => {
      sandbox = new Sandbox();
      mkdirSync(bin);
      for (const t of ["berth-bridge", "berth-host-local"]) copyFileSync(join(CNI, t), join(bin, t));
    });

    afterAll(async () => {
      await cluster?.destroy();
      sandbox?.cleanup();
    });

    it("serves the passed cni and csi sockets: the first ADD starts it and is served by the agent, then a Probe", {
      timeout: 90_000,
    }, async () => {
      cluster = await Cluster.create({ store: "local", clusterCidrs: ["10.249.0.0/16"] }, (c) => {
        cluster = c;
      });
      const host = await cluster.addHost();
      const cniSocket = join(host.runDir, "cni.sock");
      const csiSocket = join(host.dir, "csi.sock");
      // The agent runs in the host's netns, as `ip netns exec NS systemd-socket-activate ... berth up`.
      cluster.agentOptions.agentCommand = [
        ACTIVATE,
        "-l",
        cniSocket,
        "-l",
        csiSocket,
        "--fdname=cni:csi",
        process.execPath,
        "--import",
        "tsx",
        CLI,
        "up",
        "--csi-dir",
        join(host.dir, "csi"),
        "--log-level",
        "debug",
      ];
      const agent = host.startAgent();
      await until(() => agent.output().includes(`Listening on ${csiSocket}`), Boolean, "sockets bound", 10_000, 20);
      expect(readlinkSync(`/proc/${agent.pid}/exe`)).toBe(ACTIVATE);

      const { subnet, base } = sandbox.allocateSubnet(24);
      const net = { name: `${sandbox.prefix}-up`, subnet, base };
      const conf = networkConfig({ cniPath: bin, type: "berth-bridge", ipam: "berth-host-local" }, sandbox, net, "1.1.0");
      const ns = sandbox.createNetns("up");
      const env = {
        CNI_CONTAINERID: `${sandbox.prefix}-up`,
        CNI_NETNS: ns.path,
        CNI_IFNAME: "eth0",
        BERTH_CNI_SOCKET: cniSocket,
      };
      const add = await execPlugin({ cniPath: bin, type: "berth-bridge", env: { ...env, CNI_COMMAND: "ADD" }, stdin: conf });
      expect(add.exitCode, `${add.stdout}${add.stderr}\n${agent.output()}`).toBe(0);
      expect(JSON.stringify(add.json)).toContain(`"${base}.`);
      expect(readlinkSync(`/proc/${agent.pid}/exe`)).toBe(process.execPath);
      await until(
        () => agent.output(),
        (o) => /cni server: served pid \d+ berth-bridge ADD/.test(o),
        "served line",
      );
      expect(agent.output()).toContain('"passedAs":"cni"');
      // The agent's netns holds the bridge: the plugin ran inside the agent.
      expect(ipJson(["link", "show", "dev", sandbox.bridgeName], host.ns)).toHaveLength(1);

      const csi = CsiClient.connect(`unix://${csiSocket}`);
      try {
        const probe = await csi.call<{ ready?: { value?: boolean } | null }>("Identity", "Probe", {}, 20_000);
        expect(probe.ready?.value).toBe(true);
      } finally {
        csi.close();
      }
      expect(agent.output()).toContain(`"component":"berth-up","endpoint":"unix://${csiSocket}","msg":"CSI driver serving"`);

      const del = await execPlugin({ cniPath: bin, type: "berth-bridge", env: { ...env, CNI_COMMAND: "DEL" }, stdin: conf });
      expect(del.exitCode, del.stdout).toBe(0);
      await agent.stop("SIGTERM");
      expect(await agent.exited, agent.output()).toBe(0);
      expect(existsSync(cniSocket) && existsSync(csiSocket)).toBe(true);
    });
  });

  it("berth csi: the first Probe starts the driver through the passed socket, unnamed (no --endpoint needed)", {
    timeout: 60_000,
  }, async () => {
    const socket = join(dir, "csi.sock");
    const state = join(dir, "csi");
    // No --fdname: LISTEN_FDNAMES is absent, and a command that serves one socket takes the only one.
    const driver = activate(socket, undefined, ["csi", "--state-dir", state, "--data-dir", join(state, "volumes")]);
    await driver.listening();
    expect(driver.exe()).toBe(ACTIVATE);

    const csi = CsiClient.connect(`unix://${socket}`);
    try {
      const probe = await csi.call<{ ready?: { value?: boolean } | null }>("Identity", "Probe", {}, 45_000);
      expect(probe.ready?.value, driver.stderr).toBe(true);
      const info = await csi.call<{ name?: string }>("Identity", "GetPluginInfo", {});
      expect(info.name).toBe("berth.csi.local");
    } finally {
      csi.close();
    }
    expect(driver.exe()).toBe(process.execPath);
    expect(driver.stderr).toContain('"passedAs":"unknown"');
    expect(driver.stderr).toContain(`"endpoint":"unix://${socket}"`);
    expect(await driver.stop()).toBe(0);
    expect(existsSync(socket)).toBe(true);
    expect(existsSync(join(state, "csi.db"))).toBe(true);
  });

  it("the LISTEN_* variables are taken out of the environment and the descriptors are close-on-exec", {
    timeout: 30_000,
  }, async () => {
    // A probe program run the same way: it takes the socket, then reports what a child would inherit.
    const socket = join(dir, "probe.sock");
    const script = join(dir, "probe.ts");
    writeFileSync(
      script,
      `import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { takeListener } from ${JSON.stringify(join(REPO, "native", "listen-fds.ts"))};
const taken = takeListener("cni");
const childEnv = execFileSync("env", { encoding: "utf8" }).split("\\n").filter((l) => l.startsWith("LISTEN_"));
const flags = readFileSync("/proc/self/fdinfo/3", "utf8").match(/flags:\\s+(\\d+)/)[1];
const childFds = execFileSync("ls", ["/proc/self/fd"], { encoding: "utf8" }).trim().split("\\n");
process.stdout.write(JSON.stringify({ taken, childEnv, flags, childFds }));
`,
    );
    const child = spawn(ACTIVATE, ["-l", socket, "--fdname=cni", process.execPath, "--import", "tsx", script], {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
    });
    child.stderr.on("data", (b: Buffer) => {
      err += b.toString();
    });
    const exited = new Promise<number | null>((done) => child.once("exit", (c) => done(c)));
    try {
      await until(() => err.includes("Listening on"), Boolean, "socket bound", 10_000, 20);
      const c = connect(socket);
      c.on("error", () => {});
      expect(await exited, err).toBe(0);
      c.destroy();
      const r = JSON.parse(out) as { taken: unknown; childEnv: string[]; flags: string; childFds: string[] };
      expect(r.taken).toEqual({ fd: 3, name: "cni", path: socket });
      expect(r.childEnv).toEqual([]);
      const flags = Number.parseInt(r.flags, 8);
      expect(flags & 0o2000000, "O_CLOEXEC").toBe(0o2000000);
      expect(flags & 0o4000, "O_NONBLOCK").toBe(0o4000);
      // ls's own descriptors: 0-2 and the one it reads /proc/self/fd with; never the socket.
      expect(r.childFds).toEqual(["0", "1", "2", "3"]);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  });
});
