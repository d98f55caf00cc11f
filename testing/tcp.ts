// TCP through a port mapping, for the portmap tests: a one-shot `busybox nc -l` server in a
// netns and a client, sent only once the server is listening (on a loaded machine the server's
// process can take seconds to start, and a send before that is refused by the pod's kernel).
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";

const servers: ChildProcess[] = [];

/** Kills every server these helpers started that is still running. */
export function killTcpServers(): void {
  for (const s of servers.splice(0)) if (s.pid && s.exitCode === null && s.signalCode === null) process.kill(s.pid, "SIGKILL");
}

function listening(netns: string, port: number): boolean {
  try {
    const out = execFileSync("ip", ["netns", "exec", netns, "ss", "-Hltn", `sport = :${port}`], { encoding: "utf8" });
    return out.trim().length > 0;
  } catch {
    return false;
  }
}

/** Starts `busybox nc -l` on `port` in `netns`; resolves once it listens, with what it will have received. */
export async function tcpServer(netns: string, port: number): Promise<{ received: Promise<string> }> {
  // Its stdin stays open: busybox nc closes the connection once its stdin ends, and a server
  // reading /dev/null could close before a slow client has written (the client then dies of
  // EPIPE with nothing delivered).
  const child = spawn("ip", ["netns", "exec", netns, "busybox", "nc", "-l", "-p", String(port)], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  child.stdin!.on("error", () => {});
  servers.push(child);
  let got = "";
  child.stdout!.on("data", (d) => {
    got += d;
  });
  const received = new Promise<string>((done) => child.on("exit", () => done(got)));
  const deadline = Date.now() + 30_000;
  while (!listening(netns, port)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`nc -l ${port} in ${netns} exited`);
    if (Date.now() > deadline) throw new Error(`nc -l ${port} in ${netns} not listening after 30 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { received };
}

/** Sends `text` to `address:port` with `busybox nc` (from `netns`, when given). */
export function tcpSend(address: string, port: number, text: string, netns?: string): void {
  const cmd = netns ? ["ip", "netns", "exec", netns, "busybox"] : ["busybox"];
  const r = spawnSync(cmd[0]!, [...cmd.slice(1), "nc", "-w", "2", address, String(port)], { encoding: "utf8", input: text });
  if (r.error || r.status !== 0)
    throw new Error(`nc ${address} ${port}: ${r.error ? `${r.error.message}, ` : ""}exit ${r.status ?? r.signal}: ${r.stderr}`);
}

/**
 * Starts a server in `netns` on `port`, sends `text` to `address:hostPort` once it listens,
 * and returns what the server got. A refused send fails at once: the server is listening, so
 * only a broken mapping refuses it.
 */
export async function deliveredThrough(
  netns: string,
  port: number,
  address: string,
  hostPort: number,
  text: string,
  from?: string,
): Promise<string> {
  const server = await tcpServer(netns, port);
  tcpSend(address, hostPort, text, from);
  return server.received;
}
