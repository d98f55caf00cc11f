// Runs the standalone CNI fast-path server (`berth cni-server`) as a child process, the
// way the agent would host it, so tests can stop it cleanly or SIGKILL it by its PID.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import { resolve } from "node:path";

const CLI = resolve(import.meta.dirname, "../../bin/cli.ts");
const BUNDLE = resolve(import.meta.dirname, "../../build/berth.cjs");

export class ServerProcess {
  private exited: Promise<void>;
  readonly log: string[] = [];

  private constructor(
    readonly socketPath: string,
    private readonly child: ChildProcess,
  ) {
    this.exited = new Promise((done) => child.once("exit", () => done()));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * Starts a server on `socketPath` and resolves once it listens. `bundled` runs it as
   * installed (`berth cni-server` from build/berth.cjs, what the benchmark measures); the
   * default runs the command from the TypeScript sources, so tests see the code as it is now.
   */
  static start(socketPath: string, opts: { bundled?: boolean } = {}): Promise<ServerProcess> {
    if (opts.bundled && !existsSync(BUNDLE)) throw new Error(`${BUNDLE} not built: run npm run build`);
    const args = opts.bundled ? [BUNDLE, "cni-server"] : ["--import", "tsx", CLI, "cni-server"];
    const child = spawn(process.execPath, [...args, "--socket", socketPath], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const server = new ServerProcess(socketPath, child);
    child.stderr!.on("data", (b: Buffer) => server.log.push(b.toString()));
    return new Promise((done, fail) => {
      let out = "";
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        fail(new Error(`CNI server did not start: ${server.log.join("")}`));
      }, 20_000);
      child.stdout!.on("data", (b: Buffer) => {
        out += b.toString();
        if (out.includes("listening ")) {
          clearTimeout(timer);
          done(server);
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        fail(new Error(`CNI server exited with ${code}: ${server.log.join("")}`));
      });
    });
  }

  /** Graceful stop (SIGTERM): in-flight invocations answer, the socket file goes away. */
  async stop(): Promise<void> {
    if (this.running) this.child.kill("SIGTERM");
    await this.exited;
  }

  /** SIGKILL to this child's own PID: the agent dies mid-work, leaving its socket file behind. */
  async kill(): Promise<void> {
    if (this.running) this.child.kill("SIGKILL");
    await this.exited;
  }

  /** Invocations the server answered (its "served" log lines). */
  served(): number {
    return this.log.join("").split("cni server: served ").length - 1;
  }

  /**
   * served(), once it reaches `count` or `timeoutMs` passed: the log arrives on the server's
   * stderr pipe, which can trail the replies the launchers already returned.
   */
  async servedWhen(count: number, timeoutMs = 3000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (this.served() < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.served();
  }

  /** Open file descriptors of the server process (sockets, netlink, databases). */
  openFds(): string[] {
    return readFds(this.pid);
  }
}

function readFds(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).map((fd) => {
    try {
      return readlinkSync(`${dir}/${fd}`);
    } catch {
      return "(closed)";
    }
  });
}
