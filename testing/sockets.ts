// Unix socket servers in states a claimer must tell apart, run by python3 so that Node's
// event loop (which accepts at once) is not involved.
import { type ChildProcess, spawn } from "node:child_process";

const BACKLOGGED = `
import socket, sys, time
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(0)
held = []
while True:
    c = socket.socket(socket.AF_UNIX)
    c.setblocking(False)
    try:
        c.connect(path)
    except BlockingIOError:
        break
    held.append(c)
print("full", flush=True)
time.sleep(120)
`;

/**
 * A server listening on `path` that never accepts, its backlog filled by its own connections:
 * a further connect fails with EAGAIN. Resolves once it is full; kill() ends it.
 */
export async function backloggedServer(path: string): Promise<ChildProcess> {
  const child = spawn("python3", ["-c", BACKLOGGED, path], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`backlogged server exited ${code}`)));
    child.stdout!.once("data", () => resolve());
  });
  return child;
}
