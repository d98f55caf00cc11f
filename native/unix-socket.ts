// Claiming a unix socket path before listen(): a socket file left by a server that died is
// removed; a live server, or a file that is not a socket, makes the caller refuse to start.
import { lstatSync, unlinkSync } from "node:fs";
import { connect } from "node:net";

export class SocketClaimError extends Error {
  override name = "SocketClaimError";
}

/**
 * Makes `path` free for a listen. `what` names the server in the error ("another CSI driver
 * is already listening on ..."). Throws SocketClaimError when the path is taken.
 */
export async function claimSocketPath(path: string, what = "server"): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // nothing there
  }
  if (!isSocket) throw new SocketClaimError(`${path} exists and is not a socket; refusing to replace it`);
  if (await socketIsLive(path)) throw new SocketClaimError(`another ${what} is already listening on ${path}`);
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
}

/**
 * Whether a server holds the socket at `path`. Only a refused connection (ECONNREFUSED: no
 * one listens on it) or a vanished file is stale; a connect that succeeds, a full backlog
 * (EAGAIN) or no answer within timeoutMs means a server is there.
 */
export function socketIsLive(path: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const timer = setTimeout(() => finish(true), timeoutMs);
    const finish = (live: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(live);
    };
    s.once("connect", () => finish(true));
    s.once("error", (e: NodeJS.ErrnoException) => finish(e.code !== "ECONNREFUSED" && e.code !== "ENOENT"));
  });
}
