// A throwaway single-member etcd for tests: random loopback ports, a temp data dir, and
// stop/start by PID (to simulate an outage with the data kept).
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export class EtcdProcess {
  private child: ChildProcess | undefined;
  private stderr = "";

  private constructor(
    readonly dataDir: string,
    readonly clientPort: number,
    readonly peerPort: number,
  ) {}

  get endpoint(): string {
    return `http://127.0.0.1:${this.clientPort}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  static async start(): Promise<EtcdProcess> {
    const dir = mkdtempSync(join(tmpdir(), "berth-etcd-"));
    const p = new EtcdProcess(dir, await freePort(), await freePort());
    await p.resume();
    return p;
  }

  /** Starts (again) on the same ports and data dir; resolves once it answers /health. */
  async resume(): Promise<void> {
    if (this.child) return;
    const name = "berth-test";
    const peer = `http://127.0.0.1:${this.peerPort}`;
    this.stderr = "";
    const child = spawn(
      "etcd",
      [
        "--name",
        name,
        "--data-dir",
        join(this.dataDir, "data"),
        "--listen-client-urls",
        this.endpoint,
        "--advertise-client-urls",
        this.endpoint,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        `${name}=${peer}`,
        "--log-level",
        "error",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    child.stderr?.on("data", (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
    this.child = child;
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`etcd exited (${child.exitCode}): ${this.stderr}`);
      try {
        const res = await fetch(`${this.endpoint}/health`);
        if (res.ok) return;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`etcd did not become healthy within 15 s: ${this.stderr}`);
  }

  /** Kills the process by PID (SIGKILL: an outage, not a graceful stop) and waits for it to exit. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    if (child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
  }

  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
