// A throwaway single-member etcd for tests: random loopback ports, a temp data dir, and
// stop/start by PID (to simulate an outage with the data kept).
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
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

/** PEM files of a throwaway CA and the certificates it signed. */
export interface TestPki {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** Makes a CA, a server certificate for 127.0.0.1 and a client certificate with openssl. */
export function makeTestPki(dir: string): TestPki {
  const run = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ext = join(dir, "ext.cnf");
  writeFileSync(ext, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n");
  run([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "1",
    "-subj",
    "/CN=berth-test-ca",
  ]);
  for (const who of ["server", "client"]) {
    run(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${who}.key`, "-out", `${who}.csr`, "-subj", `/CN=berth-${who}`]);
    run([
      "x509",
      "-req",
      "-in",
      `${who}.csr`,
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${who}.crt`,
      "-days",
      "1",
      "-extfile",
      ext,
    ]);
  }
  return {
    ca: join(dir, "ca.crt"),
    serverCert: join(dir, "server.crt"),
    serverKey: join(dir, "server.key"),
    clientCert: join(dir, "client.crt"),
    clientKey: join(dir, "client.key"),
  };
}

export class EtcdProcess {
  private child: ChildProcess | undefined;
  private stderr = "";

  private constructor(
    readonly dataDir: string,
    readonly clientPort: number,
    readonly peerPort: number,
    /** With TLS: clients must present a certificate signed by pki.ca. */
    readonly pki?: TestPki,
  ) {}

  get endpoint(): string {
    return `${this.pki ? "https" : "http"}://127.0.0.1:${this.clientPort}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  static async start(options: { tls?: boolean } = {}): Promise<EtcdProcess> {
    const dir = mkdtempSync(join(tmpdir(), "berth-etcd-"));
    const pki = options.tls ? makeTestPki(dir) : undefined;
    const p = new EtcdProcess(dir, await freePort(), await freePort(), pki);
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
        ...(this.pki
          ? [
              "--cert-file",
              this.pki.serverCert,
              "--key-file",
              this.pki.serverKey,
              "--trusted-ca-file",
              this.pki.ca,
              "--client-cert-auth",
            ]
          : []),
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
      if (await this.healthy()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`etcd did not become healthy within 15 s: ${this.stderr}`);
  }

  private async healthy(): Promise<boolean> {
    if (!this.pki) {
      try {
        return (await fetch(`${this.endpoint}/health`)).ok;
      } catch {
        return false; // not listening yet
      }
    }
    const pki = this.pki;
    return new Promise((resolve) => {
      const req = request(
        `${this.endpoint}/health`,
        { ca: readFileSync(pki.ca), cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey) },
        (res) => {
          res.resume();
          resolve(res.statusCode === 200);
        },
      );
      req.on("error", () => resolve(false));
      req.end();
    });
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
